"""The folder of one search, --path/--name: what marks it as this toolkit's, what
it records, and the checks before a new search replaces it or --resume continues it.

A new search writes MARKER into its folder: a manifest of the options that define
the search and a fingerprint of its dataset.  Only a folder carrying MARKER is ever
deleted (by a new search of the same name); --resume continues a search only when
the command and the dataset match the manifest and every checkpoint is readable.
Everything here runs before Ray starts and imports neither Ray nor torch.
"""
import contextlib
import glob
import hashlib
import json
import os
import shutil
import zipfile

import numpy as np

from dataset import meta_path
from utils import GhostError, one_line

MARKER = ".ghost_tracks_search.json"
CHECKPOINT = "checkpoint.pt"
# the options that define a search: manifest key -> how the command line names it
OPTIONS = {"space": "--space", "num_samples": "-n", "epochs": "--epochs",
           "max_macs": "--max-macs", "select": "--select", "schedule": "--schedule",
           "batch": "--batch", "seed": "--seed", "network": "--network",
           "inputs": "--inputs"}
NEW_SEARCH = "start a new search without --resume (it replaces this one) or under another --name"



def add_options(p):
    """training.py's --path, --name and --resume: where the search's folder is."""
    p.add_argument("--path", default="ray_results",
                   help="folder for Ray's output: metrics and checkpoints (default ray_results)")
    p.add_argument("--name", default="ghost_search",
                   help="name of the search's folder under --path; a new search replaces "
                        "an earlier search of this toolkit there, never another folder "
                        "(default ghost_search)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted search stored under --path/--name "
                        "(with the same search options and dataset)")

def folder_of(args):
    return os.path.join(os.path.abspath(args.path), args.name)


def check(args, network, splits):
    """This search's manifest, once a new search may take --path/--name (free, or a
    search of this toolkit) or --resume may continue the search there (the same
    options and dataset, readable checkpoints).  Creates nothing."""
    record = manifest(args, network, args.filename, splits)
    if args.resume:
        check_resume(folder_of(args), record)
    else:
        check_new(folder_of(args))
    return record


def manifest(args, network, prefix, splits):
    """What defines the search of this command: its options (with the network the
    dataset resolved) and the dataset's fingerprint."""
    options = {key: getattr(args, key) for key in OPTIONS if key != "network"}
    return {"toolkit": "ghost_tracks", "search": {**options, "network": network},
            "dataset": fingerprint(prefix, splits)}


def fingerprint(prefix, splits):
    """The dataset's location, each split's shape, and hashes of its _features.json
    and of every array's bytes (hashed in place, no copy)."""
    content = hashlib.sha256()
    for data, labels in splits.values():
        for array in (data, labels):
            content.update(np.ascontiguousarray(array).data)
    json_hash = None
    with contextlib.suppress(OSError):
        with open(meta_path(prefix), "rb") as f:
            json_hash = hashlib.sha256(f.read()).hexdigest()
    return {"prefix": os.path.realpath(prefix),
            "shapes": {s: list(data.shape) for s, (data, _) in splits.items()},
            "features_json": json_hash, "arrays": content.hexdigest()}


def is_search(folder):
    """Whether `folder` is a search folder of this toolkit (a real folder, not a
    link, with MARKER in it)."""
    return (os.path.isdir(folder) and not os.path.islink(folder)
            and os.path.isfile(os.path.join(folder, MARKER)))


def check_new(folder):
    """A new search may take `folder`: it does not exist, or it is a search of this
    toolkit (which the new search replaces)."""
    if os.path.lexists(folder) and not is_search(folder):
        raise GhostError(f"{folder} exists but is not a search folder of this toolkit "
                         f"(no {MARKER} in it), so it is not replaced: choose another "
                         "--name or --path, or remove it yourself")


def start(folder, record):
    """Replace the search in `folder` (only one of this toolkit) by a new one:
    an empty folder holding only MARKER."""
    check_new(folder)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    tmp = os.path.join(folder, f".{MARKER}.tmp{os.getpid()}")
    try:
        os.makedirs(folder)
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        os.replace(tmp, os.path.join(folder, MARKER))
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise GhostError(f"cannot start the search in {folder} ({e.strerror or e})")


def check_resume(folder, record):
    """--resume may continue the search in `folder`: it is one of this toolkit, it
    was made by the same options from the same dataset, and every checkpoint of its
    trials is readable.  Otherwise one line saying what differs and what to do."""
    if not os.path.lexists(folder):
        raise GhostError(f"--resume: there is no search in {folder}; start a new search "
                         "without --resume")
    if not is_search(folder):
        raise GhostError(f"--resume: {folder} is not a search folder of this toolkit (no "
                         f"{MARKER}); {NEW_SEARCH}")
    stored = read_marker(folder)
    differences = compare(stored, record)
    if differences:
        raise GhostError(f"--resume: this command differs from the search in {folder}: "
                         + "; ".join(differences)
                         + f"; repeat the stored search's options and dataset, or {NEW_SEARCH}")
    if not glob.glob(os.path.join(folder, "experiment_state-*.json")):
        raise GhostError(f"--resume: the search in {folder} stopped before it saved any "
                         f"state; {NEW_SEARCH}")
    check_checkpoints(folder)


def read_marker(folder):
    path = os.path.join(folder, MARKER)
    try:
        with open(path) as f:
            stored = json.load(f)
        if not (isinstance(stored, dict) and isinstance(stored.get("search"), dict)
                and isinstance(stored.get("dataset"), dict)):
            raise ValueError("not a search manifest")
    except (OSError, ValueError) as e:
        raise GhostError(f"--resume: cannot read {path} ({one_line(e)}); {NEW_SEARCH}")
    return stored


def show(value):
    return "the default" if value is None else str(value)


def compare(stored, record):
    """The differences between the stored manifest and this command's, in words."""
    out = []
    for key, option in OPTIONS.items():
        here, there = record["search"][key], stored["search"].get(key)
        if here != there:
            out.append(f"{option} {show(here)} here, {show(there)} in the stored search")
    old, new = stored["dataset"], record["dataset"]
    if old.get("prefix") != new["prefix"] and old.get("arrays") != new["arrays"]:
        out.append(f"-f {new['prefix']} here, {old.get('prefix')} in the stored search")
    elif old.get("shapes") != new["shapes"]:
        out.append(f"the dataset's splits are {new['shapes']} here, {old.get('shapes')} "
                   "in the stored search")
    elif old.get("arrays") != new["arrays"]:
        out.append(f"the arrays of {new['prefix']} changed since the stored search")
    elif old.get("features_json") != new["features_json"]:
        out.append(f"{meta_path(new['prefix'])} changed since the stored search")
    return out


def check_checkpoints(folder):
    """Every trial checkpoint in `folder` is a complete torch file (a zip archive
    whose entries pass their CRC check), read without torch."""
    for trial in sorted(glob.glob(os.path.join(folder, "*", "checkpoint_*"))):
        path = os.path.join(trial, CHECKPOINT)
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            problem = f"{bad} is corrupted" if bad else None
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
            problem = e.strerror if isinstance(e, OSError) else one_line(e)
        if problem:
            name, step = os.path.relpath(trial, folder).split(os.sep)
            raise GhostError(f"--resume: trial {name} of the search in {folder}: its "
                             f"{step}/{CHECKPOINT} cannot be read ({problem}); {NEW_SEARCH}")
