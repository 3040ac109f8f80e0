"""search_folder.py and the search's signals: training.py never deletes what is not
its own search, continues only the search it was given (--resume), and ends on a
signal with one line, its search kept for --resume."""
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

from helpers import ROOT_DIR, alive, assert_clean_error, descendants, recount, run_script
from search_folder import MARKER

SEARCH = ["-n", "2", "--epochs", "3", "--batch", "512", "--cpu", "1"]


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
            children = descendants(proc.pid)
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
    while any(map(alive, stopped["children"])) and time.time() < deadline:
        time.sleep(0.5)
    assert not [p for p in stopped["children"] if alive(p)]


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
    recount(prefix, raw_dataset)  # a dataset of its own, consistent in itself
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


@pytest.mark.ray
def test_resume_an_interrupted_search(raw_dataset, tmp_path):
    args = [sys.executable, "-u", os.path.join(ROOT_DIR, "training.py"), "-f", raw_dataset,
            "-n", "2", "--epochs", "3", "--batch", "512", "--cpu", "1",
            "--path", str(tmp_path / "ray"), "--save", "--no-report",
            "--output-dir", str(tmp_path / "m")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("[1/2]"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "Traceback" not in err
    assert "--resume" in err
    assert not (tmp_path / "m" / "ghost_model.pth").exists()
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "[1/2]" not in resumed.stdout
    assert "[2/2]" in resumed.stdout
    assert (tmp_path / "m" / "ghost_model.onnx").is_file()


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
