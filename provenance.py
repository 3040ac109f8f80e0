"""Where an artifact comes from: the toolkit's version and git commit, the library
versions, the date, the dataset, the search and its result.  Recorded in the saved
config, the ONNX metadata and the C++ header's comment.  Files are recorded by name,
size and SHA-256 of their content (file_record), never by a path of the machine
that wrote them."""
import datetime
import hashlib
import json
import os
import platform
import subprocess
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))


def toolkit_version():
    """pyproject.toml's version and, in a git checkout, the commit (+ "-dirty" with
    uncommitted changes); "unknown" parts where they cannot be found."""
    try:
        with open(os.path.join(HERE, "pyproject.toml"), "rb") as f:
            version = tomllib.load(f)["project"]["version"]
    except (OSError, KeyError, ValueError):
        version = "unknown"
    try:
        def git(*args):
            return subprocess.run(["git", "-C", HERE, *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        commit = git("rev-parse", "--short=12", "HEAD")
        commit += "-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return version, commit


def file_record(path):
    """A file as provenance records it: {"name", "bytes", "sha256"} (of its content);
    only its name where there is no such file (a model built in memory)."""
    if not os.path.isfile(path):
        return {"name": os.path.basename(path)}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return {"name": os.path.basename(path), "bytes": os.path.getsize(path),
            "sha256": digest.hexdigest()}


def input_files(recorded):
    """A dataset's input files as recorded: file_record's dicts; the paths an older
    toolkit recorded, as their file names."""
    return [f if isinstance(f, dict) else {"name": os.path.basename(str(f))}
            for f in recorded or []]


def library_versions():
    import onnx
    import torch
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "onnx": str(onnx.__version__)}


def record(dataset_prefix, meta, search, hyperparameters, test_metrics, files=()):
    """The provenance of a trained model, plain data: the dataset by the name of its
    prefix and its `files` (file_record of each file read), its input files as
    make_dataset recorded them."""
    version, commit = toolkit_version()
    return {
        "toolkit": f"ghost-tracks {version}", "commit": commit,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **library_versions(),
        "dataset": {"name": os.path.basename(os.path.normpath(dataset_prefix)),
                    "files": [file_record(f) for f in files if os.path.isfile(f)],
                    "track": meta.track,
                    "input_files": input_files(meta.input_files), "seed": meta.seed,
                    "balance": meta.balance, "counts": meta.counts,
                    "tracks_read": meta.tracks_read},
        "search": search, "hyperparameters": hyperparameters,
        "test_metrics": {k: v for k, v in test_metrics.items()
                         if k in ("auc", "loss", "accuracy") or k.startswith("rejection@")},
    }


def comment_lines(prov):
    """The provenance as `key: value` lines (nested values as compact JSON)."""
    return [f"{k}: {json.dumps(v, separators=(',', ':')) if isinstance(v, (dict, list)) else v}"
            for k, v in prov.items()]
