"""Path arguments against canaries: no run ever deletes or overwrites what it does
not own.  Each path option of make_dataset.py, inference.py and make_sample.py is
tried with outputs that are inputs (directly, as ./x, through a symlink, a hard
link, dir/../x), empty names, folders where files are meant and files where
folders are meant: each ends with exit 2 and one `error:` line, before any work,
and every canary file survives byte for byte (content and mtime), with no file
or folder added.  A failed run removes the empty folders it made, and only those.
"""
import os
import shutil

import pytest

from helpers import assert_clean_error, run_script

TRACKS = 3000


@pytest.fixture(scope="module")
def master(tmp_path_factory, quick_models):
    """The canary folder, made once: a sample, a dataset prefix and a model (the
    session's briefly trained net1), plus files and folders named like the outputs the
    runs would write."""
    import make_dataset
    from make_sample import make_sample
    d = tmp_path_factory.mktemp("canaries")
    make_sample(str(d / "s.root"), tracks=TRACKS, track="matching", seed=5)
    make_dataset.main(["-f", str(d / "s.root"), "--output", str(d / "ds"),
                       "--track", "matching"])
    shutil.copy2(quick_models["net1"], d / "m.onnx")
    for folder in ("sub", "plots", "figs", "dir.npy", "dir.root", "hdr.hpp",
                   "z_test_labels.npy"):
        (d / folder).mkdir()
    for copy in ("plots/results.root", "figs/index.html", "figs/qop.png", "x_features.json"):
        shutil.copy2(d / "s.root", d / copy)
    (d / "plots" / "metrics.json").write_text('{"l0": 4}\n')
    (d / "afile.txt").write_text("canary\n")
    return d


@pytest.fixture
def canaries(master, tmp_path):
    """A fresh copy of the canaries (links recreated), so that a case that destroys
    one cannot spoil the next."""
    d = tmp_path / "c"
    shutil.copytree(master, d, symlinks=True)
    os.symlink("s.root", d / "link.root")
    os.symlink("s.root", d / "y_train_data.npy")
    os.link(d / "s.root", d / "hard.root")
    return d


def snapshot(folder):
    """Every entry under `folder`: its kind, and for files the bytes and mtime."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            key = os.path.relpath(path, folder)
            if os.path.islink(path):
                state[key] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[key] = ("dir",)
            else:
                with open(path, "rb") as f:
                    state[key] = ("file", f.read(), os.stat(path).st_mtime_ns)
    return state


def assert_refused_and_intact(canaries, script, args, needles):
    before = snapshot(canaries)
    proc = run_script(script, *args, cwd=canaries)
    assert_clean_error(proc, *needles)
    after = snapshot(canaries)
    assert after.keys() == before.keys(), sorted(set(after) ^ set(before))
    for key in before:
        assert after[key] == before[key], key
    return proc


# ---------------------------------------------------------------------------
# inference.py: --output, --plots-dir, --export-cpp
# ---------------------------------------------------------------------------


MODEL = ["--model", "m.onnx"]


INFERENCE = {
    # an output that is an input
    "output_is_input": (["-f", "s.root", "--output", "s.root"], ["--output", "-f", "s.root"]),
    "output_dot_slash": (["-f", "s.root", "--output", "./s.root"], ["./s.root", "-f"]),
    "output_symlink_to_input": (["-f", "s.root", "--output", "link.root"],
                                ["link.root", "-f s.root"]),
    "input_symlink_to_output": (["-f", "link.root", "--output", "s.root"],
                                ["--output", "-f link.root"]),
    "output_hard_link": (["-f", "hard.root", "--output", "s.root"], ["-f hard.root"]),
    "output_dotdot": (["-f", "s.root", "--output", "sub/../s.root"], ["sub/../s.root", "-f"]),
    "output_absolute": (["-f", "s.root", "--output", "ABS/s.root"], ["--output", "-f s.root"]),
    "output_dataset_array": (["-f", "ds", "--output", "ds_test_data.npy"],
                             ["--output", "ds_test_data.npy"]),
    "output_dataset_train": (["-f", "ds", "--output", "./ds_train_labels.npy"],
                             ["ds_train_labels.npy", "-f"]),
    # the plots folder's own files
    "plots_results_is_input": (["-f", "plots/results.root", "--plots-dir", "plots"],
                               ["--plots-dir", "plots/results.root", "-f"]),
    "plots_dotdot_spelling": (["-f", "plots/results.root", "--plots-dir", "sub/../plots/"],
                              ["--plots-dir", "results.root", "-f plots/results.root"]),
    "plots_metrics_is_config": (["-f", "s.root", "--config", "plots/metrics.json",
                                 "--plots-dir", "plots"], ["--plots-dir", "--config"]),
    "output_is_plots_file": (["-f", "s.root", "--output", "plots/results.root",
                              "--plots-dir", "plots"], ["--output", "--plots-dir", "same file"]),
    # empty names, folders as files, files as folders
    "output_empty": (["-f", "s.root", "--output", ""], ["--output", "empty"]),
    "plots_dir_empty": (["-f", "s.root", "--plots-dir", ""], ["--plots-dir", "empty"]),
    "export_cpp_empty": (["-f", "s.root", "--export-cpp", ""], ["--export-cpp", "empty"]),
    "output_folder": (["-f", "s.root", "--output", "dir.npy"], ["dir.npy", "folder"]),
    "output_trailing_slash": (["-f", "s.root", "--output", "sub/"], ["--output", "sub/"]),
    "output_under_a_file": (["-f", "s.root", "--output", "afile.txt/p.npy"],
                            ["afile.txt", "it is a file"]),
    "plots_dir_file": (["-f", "s.root", "--plots-dir", "afile.txt"], ["afile.txt", "a file"]),
    "plots_dir_under_a_file": (["-f", "s.root", "--plots-dir", "afile.txt/p"],
                               ["afile.txt", "a file"]),
    "export_cpp_folder": (["-f", "s.root", "--export-cpp", "hdr.hpp"], ["hdr.hpp", "folder"]),
    "export_cpp_under_a_file": (["-f", "s.root", "--export-cpp", "afile.txt/m.hpp"],
                                ["afile.txt", "it is a file"]),
    "export_cpp_is_model": (["--export-cpp", "m.onnx"], ["--export-cpp", ".hpp"]),
}


@pytest.mark.parametrize("case", INFERENCE)
def test_inference_path_refused_canaries_intact(canaries, case):
    args, needles = INFERENCE[case]
    args = [a.replace("ABS", str(canaries)) for a in args]
    proc = assert_refused_and_intact(canaries, "inference.py", MODEL + args, needles)
    assert "read " not in proc.stdout and "scored" not in proc.stdout  # before any work


def test_inference_output_equal_to_input_keeps_the_input(canaries):
    """The defect: `--output` equal to the -f file replaced the tracks with the
    probability tree, exit 0.  (A copy of the input here, and a real model, so that
    the run would get to the end.)"""
    original = (canaries / "s.root").read_bytes()
    proc = run_script("inference.py", "-f", "s.root", "--model", "m.onnx", "--output",
                      "./s.root", "--no-plots", "--plots-dir", "p", cwd=canaries)
    assert_clean_error(proc, "--output", "./s.root", "-f s.root")
    assert (canaries / "s.root").read_bytes() == original
    assert not (canaries / "p").exists()


# ---------------------------------------------------------------------------
# make_dataset.py: --output PREFIX, --plots-dir
# ---------------------------------------------------------------------------


DATASET = {
    "prefix_file_is_input": (["-f", "x_features.json", "--output", "x"],
                             ["--output", "x_features.json", "-f"]),
    "prefix_file_is_globbed_input": (["-f", "x_*", "--output", "./x"],
                                     ["x_features.json", "-f"]),
    "prefix_file_symlink_to_input": (["-f", "s.root", "--output", "y"],
                                     ["y_train_data.npy", "-f s.root"]),
    "prefix_file_is_a_folder": (["-f", "s.root", "--output", "z"],
                                ["z_test_labels.npy", "folder"]),
    "prefix_empty": (["-f", "s.root", "--output", ""], ["--output", "empty"]),
    "prefix_folder": (["-f", "s.root", "--output", "sub/"], ["--output", "sub/", "folder"]),
    "prefix_dot": (["-f", "s.root", "--output", "."], ["--output", "folder"]),
    "prefix_under_a_file": (["-f", "s.root", "--output", "afile.txt/q"],
                            ["afile.txt", "it is a file"]),
    "plots_dir_empty": (["-f", "s.root", "--output", "q", "--plot", "--plots-dir", ""],
                        ["--plots-dir", "empty"]),
    "plots_dir_file": (["-f", "s.root", "--output", "q", "--plot", "--plots-dir", "afile.txt"],
                       ["--plots-dir", "a file"]),
    "plots_index_is_input": (["-f", "figs/index.html", "--output", "q", "--plot",
                              "--plots-dir", "figs"], ["--plots-dir", "figs/index.html", "-f"]),
    "plots_figure_is_input": (["-f", "figs/qop.png", "--output", "q", "--plot",
                               "--plots-dir", "./figs"], ["--plots-dir", "qop.png", "-f"]),
}


@pytest.mark.parametrize("case", DATASET)
def test_make_dataset_path_refused_canaries_intact(canaries, case):
    args, needles = DATASET[case]
    proc = assert_refused_and_intact(canaries, "make_dataset.py",
                                     ["--track", "matching", *args], needles)
    assert "read " not in proc.stdout  # before the long read


# ---------------------------------------------------------------------------
# make_sample.py: -o
# ---------------------------------------------------------------------------


SAMPLE = {
    "empty": (["-o", ""], ["-o", "empty"]),
    "folder": (["-o", "dir.root"], ["dir.root", "folder"]),
    "trailing_slash": (["-o", "sub/"], ["-o", "sub/"]),
    "dot": (["-o", "."], ["-o"]),
    "under_a_file": (["-o", "afile.txt/x.root"], ["afile.txt", "it is a file"]),
    "missing_folder": (["-o", "nowhere/x.root"], ["nowhere", "does not exist"]),
    "not_root": (["-o", "x.npy"], ["-o", ".root"]),
}


@pytest.mark.parametrize("case", SAMPLE)
def test_make_sample_path_refused_canaries_intact(canaries, case):
    args, needles = SAMPLE[case]
    assert_refused_and_intact(canaries, "make_sample.py", ["--tracks", "10", *args], needles)


# ---------------------------------------------------------------------------
# no empty folders left by a failed run
# ---------------------------------------------------------------------------


def test_failed_make_dataset_leaves_no_new_plots_folders(canaries):
    """--plot creates the nested --plots-dir before the read; the read fails."""
    assert_refused_and_intact(canaries, "make_dataset.py",
                              ["-f", "s.root", "--output", "q", "--track", "matching",
                               "--tree", "nope/tree", "--plot", "--plots-dir", "new/a/b"],
                              ["nope/tree"])


def test_refused_inference_leaves_no_new_folders(canaries):
    assert_refused_and_intact(canaries, "inference.py",
                              ["-f", "s.root", *MODEL, "--output", "s.root",
                               "--plots-dir", "new/a/b"], ["--output"])


def test_failed_inference_removes_the_plots_folders_it_made(canaries, monkeypatch):
    """The plots folder is made once the metrics are there; a failure after that
    (here while writing the analysis) takes away every level it created."""
    import inference
    import outputs
    from cli import run_cli
    from utils import GhostError

    def fail(*args, **kwargs):
        raise GhostError("disk full (simulated)")
    monkeypatch.setattr(inference, "write_analysis", fail)
    monkeypatch.setattr(outputs, "_created", [])  # this run's folders only
    monkeypatch.chdir(canaries)
    before = snapshot(canaries)
    with pytest.raises(SystemExit) as ended:
        run_cli(inference.main, ["-f", "s.root", *MODEL, "--no-plots",
                                 "--plots-dir", "new/a/b"])
    assert ended.value.code == 2
    assert snapshot(canaries) == before
