"""What the tests share besides fixtures (those are in conftest.py): running a script
as a user would (from a warm fork server), the one-line error check, sample files,
what is made once per test run, the searches and briefly trained models, Ray clusters
and processes, compiling a C++ header."""
import glob
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from forkserver import SOCKET, ForkServer

from features import DERIVED

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = shutil.which("g++") or shutil.which("c++")
# the fixtures that start a Ray search: a module's own, and the session's trained model
# (conftest marks their users `ray`)
SEARCH_FIXTURES = {"budget_search", "stopped", "contested", "readme_session"}
RAY_FIXTURES = SEARCH_FIXTURES | {"trained_model"}

# The search of the session's trained model (conftest.trained_model); the options that
# change its config, weights or files are the ones test_training's reproducibility
# check repeats.
SEARCH = ["-n", "2", "--epochs", "2", "--batch", "512", "--cpu", "1", "--seed", "3",
          "--int8", "--baseline"]


def run_script(script, *args, cwd=None, timeout=600):
    """Run one of the toolkit's scripts as a user would: its exit code, stdout and
    stderr as a CompletedProcess: main() through cli.run_cli, as the script's
    `__main__` does, in a child forked from a warm process (forkserver.ForkServer: the
    imports and ROOT's compiler are paid once per test run, not once per run of a
    script; a training.py child starts its own Ray as a new process would).  The
    tests of signals and of the interpreter's own exit start real processes instead."""
    return _forked(script.removesuffix(".py"), args, cwd, timeout)


def run_code(code, *args, cwd=None, timeout=600, env=None):
    """`python - ARGS` with `code` on stdin, as a child of the warm fork server (see
    run_script): a CompletedProcess."""
    return _forked("-", args, cwd, timeout, stdin=code, env=env)


def _forked(script, args, cwd, timeout, **kw):
    argv = [str(a) for a in args]
    server = fork_server()
    result = server.run(script, argv, server.folder, timeout, cwd=cwd, **kw)
    if result.rc is None:
        raise subprocess.TimeoutExpired([script, *argv], timeout, result.stdout, result.stderr)
    return subprocess.CompletedProcess([script, *argv], result.rc, result.stdout,
                                       result.stderr)


_FORKS = []  # the run's fork server, found or started on first use


def fork_server():
    """The test run's forkserver.ForkServer, one for all pytest-xdist workers: the
    first that needs it starts it (behind a file lock) in a folder named after the
    run's process, which the server removes when the run ends; its ROOT compiler is
    warmed on a small sample of its own."""
    if not _FORKS:
        from filelock import FileLock
        owner = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
        folder = os.path.join(tempfile.gettempdir(), f"ghost_tracks_forks_{owner}")
        os.makedirs(folder, exist_ok=True)
        with FileLock(os.path.join(folder, "start.lock")):
            server = ForkServer(os.path.join(folder, SOCKET))
            try:
                server.connect().close()  # a server of this run is listening
            except OSError:
                if os.path.exists(server.socket_path):  # left by a server that died
                    os.remove(server.socket_path)
                server = ForkServer.start(folder, owner, os.path.join(folder, "warm.root"))
        _FORKS.append(server)
    return _FORKS[0]


def assert_clean_error(proc, *needles):
    """Exit code 2, no traceback, and a one-line `error:` naming the needles."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def sample_file(folder, name, **kw):
    """make_sample's file `name` in `folder` (made once: an existing file is kept)."""
    from make_sample import make_sample
    path = str(Path(folder) / name)
    if not os.path.exists(path):
        make_sample(path, **kw)
    return path


def write_tracks(path, columns, tree=None):
    """{branch: array} as the tree of an Allen file (default kalman_validator's)."""
    from features import DEFAULT_TREE
    from rootwrite import write_root
    write_root(str(path), tree or DEFAULT_TREE, columns)
    return str(path)


def descendants(pid):
    """The PIDs of `pid`'s descendants (Ray's processes, for a driver)."""
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def alive(pid):
    """Whether process `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_ray_cluster(cpus):
    """`ray start --head` on a free port with `cpus` CPUs, as a user starts the
    cluster that --address joins: (its port, the environment to run scripts in).
    Stop it with stop_ray_cluster."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = subprocess.run([ray_cli, "start", "--head", f"--port={port}", f"--num-cpus={cpus}",
                            "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert start.returncode == 0, start.stderr
    return port, env


def stop_ray_cluster(port, grace=5):
    """Stop the Ray cluster that `ray start --head --port=port` started, and only it
    (`ray stop` stops every Ray process of the machine, another run's too): SIGTERM
    to the processes naming its session folder and to their descendants, SIGKILL to
    those still alive after `grace` seconds."""
    cmdlines = {}
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                cmdlines[int(path.split("/")[2])] = f.read().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
    sessions = {m.group(0) for line in cmdlines.values() if f"--gcs_server_port={port} " in line
                for m in [re.search(r"/\S*/session_[^/\s]+", line)] if m}
    pids = [pid for pid, line in cmdlines.items() if any(s in line for s in sessions)]
    pids += [kid for pid in pids for kid in descendants(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while any(map(alive, pids)) and time.time() < deadline:
            time.sleep(0.2)


def made_once(tmp_path_factory, name, make):
    """make(folder) -> a picklable value, made once per test run in the folder `name`:
    under pytest-xdist every worker gets the first one's (the folder beside the
    workers' own, behind a file lock), so no worker repeats a Ray search or a dataset."""
    from filelock import FileLock
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / name
    with FileLock(f"{folder}.lock"):
        done = base / f"{name}.pickle"
        if done.exists():
            return pickle.loads(done.read_bytes())
        folder.mkdir(exist_ok=True)
        value = make(folder)
        done.write_bytes(pickle.dumps(value))
    return value


def script_help(script):
    """A script's --help as a user sees it."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT_DIR, script), "--help"],
                          capture_output=True, text=True, cwd=ROOT_DIR, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def expand(pattern):
    """Shell-like brace expansion: "a{b,c}{d,e}" -> {"abd", "abe", "acd", "ace"}."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return {pattern}
    return {name for alt in match.group(1).split(",")
            for name in expand(pattern[:match.start()] + alt + pattern[match.end():])}


def help_outputs(script):
    """The files a script's --help lists (cli.outputs_text), {section heading:
    [(names, what they hold)]}: each row's comma-separated names brace-expanded."""
    text = script_help(script)
    sections, heading, rows = {}, None, None
    for line in text.splitlines():
        if line.startswith("files ") and line.endswith(":"):
            heading, rows = line, []
            sections[heading] = rows
        elif heading and line.startswith("  ") and not line.startswith("   "):
            rows.append([set().union(*(expand(n.strip()) for n in line.split(", "))), ""])
        elif heading and line.startswith(" " * 6):
            rows[-1][1] = " ".join((rows[-1][1] + " " + line.strip()).split())
    return {h: [tuple(row) for row in r] for h, r in sections.items()}


def listed(rows, skip=(), **placeholders):
    """Every file name of help_outputs' `rows` but those whose description starts with
    one of `skip`, each placeholder (e.g. PREFIX) replaced by its value."""
    names = set()
    for row_names, what in rows:
        if not what.startswith(tuple(skip)):
            names |= row_names
    for key, value in placeholders.items():
        names = {n.replace(key, value) for n in names}
    return names


def lines_starting(text, prefix):
    """The lines of `text` that start with `prefix` (e.g. "warning:")."""
    return [ln for ln in text.splitlines() if ln.startswith(prefix)]


def recount(prefix, source):
    """Write `prefix`_features.json: `source`'s, with the counts and the class weights
    of the arrays under `prefix` (a dataset changed on purpose stays consistent)."""
    import json

    from make_dataset import class_weights
    with open(f"{source}_features.json") as f:
        meta = json.load(f)
    labels = {s: np.load(f"{prefix}_{s}_labels.npy").ravel() for s in ("train", "valid", "test")}
    meta["counts"] = {s: {"ghost": int(y.sum()), "real": int(len(y) - y.sum())}
                      for s, y in labels.items()}
    if meta.get("class_weights") is not None:
        meta["class_weights"] = class_weights(labels["train"])
    with open(f"{prefix}_features.json", "w") as f:
        json.dump(meta, f)
    return prefix


@dataclass
class SavedSearch:
    """A training.py --save run: its model folder, its Ray folder and its console."""
    models: Path   # --output-dir: the model files and training_report/
    ray: Path      # --path
    stdout: str


def search(prefix, folder, *options):
    """training.py -f prefix ... --save in-process, its Ray folder and models under
    `folder`; returns the model folder."""
    import training
    out = Path(folder) / "models"
    code = training.main(["-f", str(prefix), *map(str, options), "--path",
                          str(Path(folder) / "ray"), "--save", "--output-dir", str(out)])
    assert code in (None, 0), f"the search ended with {code}"  # 128 + n: signal n
    return out


def run_inference(*args):
    """inference.main in-process; returns its exit code."""
    import inference
    return inference.main([str(a) for a in args])


def torch_scores(models, name, data):
    """Reference probabilities: model `name` of conftest.quick_models, its .pth weights
    through models.load_model, a plain forward pass."""
    import torch

    from architecture import ModelConfig
    from models import load_model
    model = load_model(ModelConfig.from_dict(models[f"{name}_config"]),
                       torch.load(models[f"{name}_pth"], weights_only=True))
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(data))).numpy().ravel()


def train_briefly(config, prefix, epochs=13, batch=512):
    """A model of the saved-config record `config` trained briefly on the train split
    of `prefix` with trainer.Trainer (Adam, learning rate 1e-2), so that the metrics
    mean something; with config["int8"], then fine-tuned for INT8 as training.py
    does (trainer.quantize).  Returns it in eval mode."""
    import torch

    import trainer
    from architecture import ModelConfig
    from dataset import load_split
    from models import build_model
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    train = load_split(prefix, "train")
    model = build_model(ModelConfig.from_dict({**config, "int8": False}))
    settings = trainer.TrainSettings(optimizer="adam", lr=1e-2, batch=batch, epochs=epochs,
                                     seed=0)
    x, y = trainer.to_tensors(model, train, cpu)
    loop = trainer.Trainer(model, trainer.make_optimizer(settings, model, cpu), x, y, batch,
                           seed=0, settings=settings)
    for _ in range(epochs):
        loop.epoch()
    if config.get("int8"):
        model = trainer.quantize(model, settings, train, cpu, epochs=2)
    return model.eval()


def quick_models_in(d, raw_dataset, norm_dataset):
    """Models trained briefly (train_briefly), so the metrics mean something: net1 and
    int8 on raw_dataset (with its derived inputs), net0 on norm_dataset (none), each
    as .onnx, .pth and a config .pkl ({name}, {name}_pth, {name}_pkl, {name}_config);
    "foreign": net1 as tf2onnx would write a Keras model (no metadata, other names);
    "forward": an untrained forward model (8 inputs).  Written into the folder `d`."""
    import onnx
    import torch

    from architecture import ModelConfig
    from artifacts import SavedConfig, onnx_bytes
    from dataset import load_meta
    from features import features_for
    from models import build_model
    meta = load_meta(raw_dataset)
    base = {"n_features": 13, "l0": 16, "activation": "relu", "track": "matching",
            "features": meta.features, "normalization": meta.normalization.to_dict(),
            "inputs": "standard", "standardization": meta.standardization.to_dict(),
            "threshold": 0.5, "derived": [x.to_dict() for x in meta.derived]}
    norm_meta = load_meta(norm_dataset)  # no derived inputs: its scalings cover the features
    norm = {"network": 0, "int8": False, "derived": [],
            "normalization": norm_meta.normalization.to_dict(),
            "standardization": norm_meta.standardization and norm_meta.standardization.to_dict()}
    paths = {}
    for name, extra, prefix in (("net1", {"network": 1, "int8": False}, raw_dataset),
                                ("net0", norm, norm_dataset),
                                ("int8", {"network": 1, "int8": True}, raw_dataset)):
        config = {**base, **extra}
        model = train_briefly(config, prefix)
        paths[name] = str(d / f"{name}.onnx")
        with open(paths[name], "wb") as f:
            f.write(onnx_bytes(model, SavedConfig.from_dict(config)))
        torch.save(model.state_dict(), d / f"{name}.pth")
        with open(d / f"{name}.pkl", "wb") as f:
            pickle.dump(config, f)
        paths[f"{name}_pth"], paths[f"{name}_pkl"] = str(d / f"{name}.pth"), str(d / f"{name}.pkl")
        paths[f"{name}_config"] = config
    proto = onnx.load(paths["net1"])
    del proto.metadata_props[:]
    renames = {"features": "dense_input", "probabilities": "dense_1"}
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = renames.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    onnx.checker.check_model(proto)
    paths["foreign"] = str(d / "keras_like.onnx")
    onnx.save(proto, paths["foreign"])
    forward = {**base, "n_features": 8, "track": "forward", "features": features_for("forward"),
               "inputs": "minmax", "normalization": {"offsets": [0.0] * 8, "scales": [1.0] * 8},
               "standardization": None, "network": 1, "int8": False, "derived": []}
    paths["forward"] = str(d / "forward.onnx")
    with open(paths["forward"], "wb") as f:
        f.write(onnx_bytes(build_model(ModelConfig.from_dict(forward)).eval(),
                           SavedConfig.from_dict(forward)))
    return paths


# reads n x n_features float32 from argv[1], writes n float32 probabilities to argv[2]
DRIVER = r"""
#include <cstdio>
#include <vector>
#include HEADER
int main(int argc, char** argv) {
    std::FILE* in = std::fopen(argv[1], "rb");
    std::vector<float> x(NAMESPACE::n_features);
    std::vector<float> p;
    while (std::fread(x.data(), sizeof(float), x.size(), in) == x.size())
        p.push_back(NAMESPACE::ghost_probability(x.data()));
    std::fclose(in);
    std::FILE* out = std::fopen(argv[2], "wb");
    std::fwrite(p.data(), sizeof(float), p.size(), out);
    std::fclose(out);
    return 0;
}
"""


def compile_and_run(header, namespace, x, folder, opt="-O2", driver_code=DRIVER,
                    dtype=np.float32):
    """Compile the header `header` (namespace `namespace`) with a small driver in
    `folder` and score the rows of `x` with it: the probabilities (float32), or
    what `driver_code` writes (`dtype`)."""
    assert CXX, "a C++ compiler (g++) is needed: ROOT needs one too"
    folder = Path(folder)
    driver, exe = folder / "driver.cpp", folder / f"score_{namespace}"
    driver.write_text(driver_code)
    build = subprocess.run([CXX, opt, "-std=c++17", "-Wall", f"-I{header.parent}",
                            f'-DHEADER="{header.name}"', f"-DNAMESPACE={namespace}",
                            str(driver), "-o", str(exe)], capture_output=True, text=True,
                           timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    x.astype(np.float32).tofile(folder / "x.bin")
    subprocess.run([str(exe), str(folder / "x.bin"), str(folder / "p.bin")], check=True,
                   timeout=120)
    return np.fromfile(folder / "p.bin", dtype=dtype)


# Derived inputs beside the matching defaults (chi2_ndof := chi2 / ndof, dqop, sin_theta
# with abs, the data-fitted kick := residual(pr_match_dtx, qop)), so that the models of
# derived_models_in hold every operation of derived.py's language
EXTRA_DERIVED = ["lchi := log(chi2 + 1)",
                 "spread := max(pr_match_dx, pr_match_dy) - min(pr_match_dx, pr_match_dy)",
                 "hits := -sqrt(n_velo * n_scifi) / 2"]
# derived_models' derived inputs: matching's defaults, then EXTRA_DERIVED (new names)
N_DERIVED = len(DERIVED["matching"]) + len(EXTRA_DERIVED)


def derived_models_in(d, matching_file):
    """A matching dataset with derived inputs (make_dataset.py --derived EXTRA_DERIVED
    beside the defaults: the residual fitted on its train split's real tracks) and
    network 1 trained briefly on it (train_briefly), float and INT8, each saved as
    training.py --save saves a model (artifacts.save_model_files: .pth, config,
    .onnx, .hpp): {"prefix": the dataset, "float"/"int8": the folder/stem, the stem
    the header's C++ namespace}."""
    import make_dataset
    from artifacts import SavedConfig, save_model_files
    from dataset import load_meta
    from outputs import AtomicOutputs
    prefix = str(d / "derived")
    args = ["-f", matching_file, "--output", prefix, "--track", "matching"]
    for text in EXTRA_DERIVED:
        args += ["--derived", text]
    assert make_dataset.main(args) in (None, 0)
    meta = load_meta(prefix)
    paths = {"prefix": prefix}
    for name, stem, int8 in (("float", "ghost_model", False),
                             ("int8", "ghost_model_int8", True)):
        config = {"network": 1, "n_features": len(meta.features), "hidden": [16, 8],
                  "activation": "relu", "track": "matching", "features": meta.features,
                  "inputs": "standard", "standardization": meta.standardization.to_dict(),
                  "derived": [x.to_dict() for x in meta.derived], "int8": int8,
                  "threshold": 0.5}
        model = train_briefly(config, prefix, epochs=4)
        with AtomicOutputs() as out:
            save_model_files(out, str(d), stem, model, SavedConfig.from_dict(config))
        paths[name] = d / stem
    return paths
