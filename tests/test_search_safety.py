"""training.py never deletes what is not its own search, continues only the search
it was given, refuses what cannot be learned before Ray starts, and ends on a
failing trial, a signal or a full disk with one line."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT_DIR, assert_clean_error, run_script
from search_folder import MARKER

SEARCH = ["-n", "2", "--epochs", "3", "--batch", "512", "--cpu", "1"]


def _children(pid):
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


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def stopped(raw_dataset, tmp_path_factory):
    """A search stopped by SIGTERM once its first trial is done, started in a folder
    that held an older search of this toolkit (its marker and a stale file)."""
    tmp = tmp_path_factory.mktemp("stopped")
    folder = tmp / "ray" / "ghost_search"
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("{}\n")
    (folder / "stale.txt").write_text("an older search\n")
    args = ["-f", raw_dataset, *SEARCH, "--path", str(tmp / "ray")]
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(ROOT_DIR, "training.py"),
                             *args, "--save", "--output-dir", str(tmp / "m")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children = []
    for line in proc.stdout:
        if line.startswith("[1/2]"):
            children = _children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    return {"proc": proc, "err": err, "children": children, "folder": folder,
            "tmp": tmp, "args": args}


def test_sigterm_ends_the_search_with_one_line_and_keeps_it(stopped):
    proc, err, folder = stopped["proc"], stopped["err"], stopped["folder"]
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "SIGTERM received" not in err  # Ray's dump
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "SIGTERM" in errors[0] and "--resume" in errors[0]
    # the older search of this name was replaced, and the new one is marked
    assert not (folder / "stale.txt").exists()
    assert json.loads((folder / MARKER).read_text())["search"]["epochs"] == 3
    assert glob.glob(str(folder / "experiment_state-*.json"))
    out = stopped["tmp"] / "m"
    assert not out.exists() or not list(out.iterdir())  # no model, no temporary
    assert stopped["children"]  # Ray's processes, shut down with the driver
    deadline = time.time() + 60
    while any(map(_alive, stopped["children"])) and time.time() < deadline:
        time.sleep(0.5)
    assert not [p for p in stopped["children"] if _alive(p)]


def _copy(stopped, tmp_path):
    """A copy of the stopped search, to resume (or refuse to) without changing it."""
    shutil.copytree(stopped["tmp"] / "ray", tmp_path / "ray")
    args = list(stopped["args"])
    args[args.index("--path") + 1] = str(tmp_path / "ray")
    return tmp_path / "ray" / "ghost_search", args


def test_resume_refuses_other_options(stopped, tmp_path):
    _, args = _copy(stopped, tmp_path)
    args[args.index("--epochs") + 1] = "5"
    proc = run_script("training.py", *args, "--max-macs", "500", "--resume")
    assert_clean_error(proc, "--max-macs 500 here, 20000 in the stored search",
                       "--epochs 5 here, 3 in the stored search", "without --resume")


def test_resume_refuses_another_dataset(stopped, tmp_path, raw_dataset):
    _, args = _copy(stopped, tmp_path)
    prefix = str(tmp_path / "other")
    for name in ("_valid_data.npy", "_valid_labels.npy", "_test_data.npy", "_test_labels.npy"):
        os.symlink(raw_dataset + name, prefix + name)
    for name in ("_train_data.npy", "_train_labels.npy"):
        np.save(prefix + name, np.load(raw_dataset + name)[:-1000])
    _consistent_json(raw_dataset, prefix)
    args[args.index("-f") + 1] = prefix
    proc = run_script("training.py", *args, "--resume")
    assert_clean_error(proc, "-f ", "in the stored search", "without --resume")


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("case,needles", [
    ("no_search", ["there is no search"]),
    ("no_marker", ["not a search folder of this toolkit"]),
    ("bad_marker", [MARKER, "cannot read"]),
    ("truncated_checkpoint", ["trial train_trial_", "checkpoint.pt cannot be read"]),
    ("flipped_checkpoint", ["trial train_trial_", "checkpoint.pt cannot be read"]),
])
def test_resume_refuses_what_it_cannot_continue(stopped, tmp_path, case, needles):
    folder, args = _copy(stopped, tmp_path)
    checkpoint = sorted(glob.glob(str(folder / "*" / "checkpoint_*" / "checkpoint.pt")))[-1]
    if case == "no_search":
        args += ["--name", "another_search"]
    elif case == "no_marker":
        os.remove(folder / MARKER)
    elif case == "bad_marker":
        (folder / MARKER).write_text('{"search": [')
    elif case == "truncated_checkpoint":
        _truncate(checkpoint)
    else:
        _flip(checkpoint)
    proc = run_script("training.py", *args, "--resume")
    assert_clean_error(proc, *needles, "--resume")
    assert "trials x" not in proc.stdout  # refused before Ray


# ---------------------------------------------------------------------------
# names and folders that are not the search's own: refused, before anything runs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", "", ".", "a/b", "ABSOLUTE", "mine"])
def test_name_never_reaches_outside_the_search(raw_dataset, tmp_path, name):
    sandbox = tmp_path / "sb"
    (sandbox / "ray" / "other_search").mkdir(parents=True)
    (sandbox / "canary.txt").write_text("x")
    (sandbox / "ray" / "other_search" / "keep.txt").write_text("x")
    (sandbox / "ray" / "mine").mkdir()  # a folder that is no search of this toolkit
    (sandbox / "ray" / "mine" / "keep.txt").write_text("x")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("x")
    name = str(victim) if name == "ABSOLUTE" else name
    proc = run_script("training.py", "-f", raw_dataset, "-n", "1", "--epochs", "1",
                      "--cpu", "1", "--path", sandbox / "ray", "--name", name)
    assert_clean_error(proc, "--name")
    for path in (sandbox / "canary.txt", sandbox / "ray" / "other_search" / "keep.txt",
                 sandbox / "ray" / "mine" / "keep.txt", victim / "keep.txt"):
        assert path.is_file(), path
    assert "trials x" not in proc.stdout


def test_empty_path_is_refused(raw_dataset, tmp_path):
    proc = run_script("training.py", "-f", raw_dataset, "--path", "", cwd=tmp_path)
    assert_clean_error(proc, "--path")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# what cannot be learned: refused before Ray starts, no folder made
# ---------------------------------------------------------------------------

def _consistent_json(raw_dataset, prefix):
    """raw_dataset's features JSON with the counts (and class weights) of the arrays
    under `prefix`: a dataset whose files agree, so that only what is being tested
    is wrong with it."""
    with open(raw_dataset + "_features.json") as f:
        meta = json.load(f)
    for split in ("train", "valid", "test"):
        labels = np.load(f"{prefix}_{split}_labels.npy").ravel()
        ghosts = int(labels.sum())
        meta["counts"][split] = {"ghost": ghosts, "real": len(labels) - ghosts}
        if split == "train" and meta.get("class_weights") and 0 < ghosts < len(labels):
            meta["class_weights"] = {"ghost": len(labels) / (2 * ghosts),
                                     "real": len(labels) / (2 * (len(labels) - ghosts))}
    with open(prefix + "_features.json", "w") as f:
        json.dump(meta, f)


def _variant(raw_dataset, prefix, **arrays):
    """raw_dataset with some arrays replaced ({split}_{data|labels}: array), its
    JSON's counts matching them."""
    for split in ("train", "valid", "test"):
        for kind in ("data", "labels"):
            path = f"{prefix}_{split}_{kind}.npy"
            if f"{split}_{kind}" in arrays:
                np.save(path, arrays[f"{split}_{kind}"])
            else:
                os.symlink(f"{raw_dataset}_{split}_{kind}.npy", path)
    _consistent_json(raw_dataset, prefix)
    return prefix


@pytest.mark.parametrize("case,needles", [
    ("one_class", ["valid split", "only real tracks"]),
    ("empty_test", ["test split", "no tracks"]),
    ("constant", ["every feature of the training split", "constant"]),
    ("budget", ["--max-macs 10", "no architecture fits"]),
])
def test_what_cannot_be_learned_is_refused_before_ray(raw_dataset, tmp_path, case, needles):
    valid_y = np.load(raw_dataset + "_valid_labels.npy")
    train_x = np.load(raw_dataset + "_train_data.npy")
    arrays, extra = {}, []
    if case == "one_class":
        arrays["valid_labels"] = np.zeros_like(valid_y)
    elif case == "empty_test":
        arrays["test_data"] = np.zeros((0, train_x.shape[1]), np.float32)
        arrays["test_labels"] = np.zeros((0, 1), np.float32)
    elif case == "constant":
        arrays["train_data"] = np.ones_like(train_x)
    else:
        extra = ["--max-macs", "10"]
    prefix = _variant(raw_dataset, str(tmp_path / "ds"), **arrays)
    proc = run_script("training.py", "-f", prefix, "-n", "1", "--epochs", "1", "--cpu", "1",
                      "--path", tmp_path / "ray", "--save", "--output-dir", tmp_path / "m",
                      *extra)
    assert_clean_error(proc, *needles)
    assert "trials x" not in proc.stdout
    assert not (tmp_path / "ray").exists() and not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------
# failing trials and a full disk: one line each, no traceback
# ---------------------------------------------------------------------------

FAILING = """
import errno, sys
import cli, search, training
def failing_trial(params, setup, data):
    raise {error}
search.train_trial = failing_trial  # pickled by value: the trials run it
cli.run_cli(training.main, sys.argv[1:])
"""


def _run_with_failing_trials(error, *args):
    env = {**os.environ, "PYTHONPATH": ROOT_DIR}
    return subprocess.run([sys.executable, "-c", FAILING.format(error=error), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT_DIR, timeout=600)


def _trial_lines(proc, n):
    lines = [ln for ln in proc.stdout.splitlines() if " failed: " in ln]
    assert len(lines) == n, proc.stdout
    return lines


def test_a_failing_trial_is_one_line_and_its_log_stays(raw_dataset, tmp_path):
    proc = _run_with_failing_trials('ValueError("the trial broke")', "-f", raw_dataset,
                                    "-n", "1", "--epochs", "1", "--cpu", "1",
                                    "--path", tmp_path / "ray")
    assert_clean_error(proc, "all 1 trials failed", "the trial broke")
    assert "Traceback" not in proc.stdout + proc.stderr
    [line] = _trial_lines(proc, 1)
    assert "[1/1] trial" in line and "ValueError: the trial broke" in line
    log = line.rsplit("(its log: ", 1)[1].rstrip(")")
    assert log.startswith(str(tmp_path / "ray" / "ghost_search"))
    assert "the trial broke" in open(os.path.join(log, "error.txt")).read()


def test_a_full_disk_under_path_is_one_line(raw_dataset, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs",
                                  str(disk)], capture_output=True).returncode == 0
    except OSError:  # no mount command
        mounted = False
    args = ["-f", raw_dataset, "-n", "1", "--epochs", "1", "--cpu", "1",
            "--path", disk / "ray"]
    try:
        if mounted:
            proc = run_script("training.py", *args)
        else:  # no mount here: the trial's write fails as on a full disk
            proc = _run_with_failing_trials(
                'OSError(errno.ENOSPC, "No space left on device")', *args)
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)
    assert_clean_error(proc, "space")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "No space left on device" in _trial_lines(proc, 1)[0]
