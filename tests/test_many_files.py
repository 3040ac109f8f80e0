"""many_files.py: inference.py on several .root files (names or a glob) gives the
analysis of their concatenation bit for bit, in one process or as Ray tasks on a
cluster (one file per task, joined in file order); --output-dir writes each input's
friend file, the run's --output split per file; its refusals are one line before
any work, nothing written."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_streaming import _outputs, _root_objects

import inputs
import many_files
import rootio
import streaming
from features import DEFAULT_TREE, features_for
from helpers import (
    ROOT_DIR,
    assert_clean_error,
    run_inference,
    run_script,
    start_ray_cluster,
    stop_ray_cluster,
)

MATCHING = features_for("matching")
SIZES = (6_111, 7_222, 8_333)  # no multiple of the batch: files start inside a batch
DESCRIPTIONS = {"input", "title"}  # what names the input, and may differ


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Three samples of other seeds and sizes, and one file holding them in order."""
    from make_sample import make_sample
    folder = tmp_path_factory.mktemp("parts")
    files = []
    for seed, n in enumerate(SIZES, 1):
        files.append(str(folder / f"part{seed}.root"))
        make_sample(files[-1], tracks=n, seed=seed, track="matching")
    ROOT = rootio.import_root()
    whole = str(folder / "whole" / "all.root")
    os.mkdir(os.path.dirname(whole))
    ROOT.RDataFrame(DEFAULT_TREE, ROOT.std.vector("std::string")(files)).Snapshot(
        DEFAULT_TREE, whole)
    return files, whole


def _comparable(folder):
    """_outputs without what names the input (in metrics.json and results.root's
    configuration)."""
    def without(value):
        if isinstance(value, dict):
            return {k: without(v) for k, v in value.items() if k not in DESCRIPTIONS}
        return value
    return without(_outputs(folder))


def _friend(path):
    ROOT = rootio.import_root()
    return ROOT.RDataFrame("ghost_probability", str(path)).AsNumpy(["ghost_prob"])["ghost_prob"]


def _single(quick_models, whole, folder, *extra):
    folder.mkdir()
    assert run_inference("-f", whole, "--model", quick_models["net1"], "--batch", "1000",
                         "--output", folder / "p.npy", "--plots-dir", folder / "plots",
                         "--no-plots", *extra) == 0
    return folder


def test_several_files_give_their_concatenation(quick_models, parts, tmp_path, capsys):
    """Three names, and a glob: the analysis of one file holding the three; the
    friend files are the single run's probabilities split per file, and friends of
    their inputs (entry i is entry i)."""
    files, whole = parts
    one = _single(quick_models, whole, tmp_path / "one")
    assert capsys.readouterr().out
    for name, given in (("names", files), ("glob", [os.path.join(os.path.dirname(files[0]),
                                                                  "part*.root")])):
        many = tmp_path / name
        many.mkdir()
        assert run_inference("-f", *given, "--model", quick_models["net1"], "--batch", "1000",
                             "--output", many / "p.npy", "--plots-dir", many / "plots",
                             "--no-plots", "--output-dir", many / "friends") == 0
        out = capsys.readouterr().out
        assert f"read {sum(SIZES):,} tracks from {', '.join(files)}" in out
        assert "3 friend files" in out
        assert _comparable(one) == _comparable(many)
        single = np.load(one / "p.npy")
        assert np.load(many / "p.npy").tobytes() == single.tobytes()
        friends = [_friend(many / "friends" / f"part{i}_ghost.root") for i in (1, 2, 3)]
        assert [len(f) for f in friends] == list(SIZES)
        assert np.concatenate(friends).tobytes() == single.tobytes()
        assert np.isnan(single).any()
    metrics = json.loads((tmp_path / "glob" / "plots" / "metrics.json").read_text())
    assert [f["name"] for f in metrics["input"]["files"]] == [os.path.basename(f) for f in files]
    ROOT = rootio.import_root()  # a friend of its input
    f = ROOT.TFile.Open(files[1])
    tree = f.Get(DEFAULT_TREE)
    tree.AddFriend("ghost_probability", str(tmp_path / "glob" / "friends" / "part2_ghost.root"))
    cols = ROOT.RDataFrame(tree).AsNumpy(["ghost_prob"])
    assert cols["ghost_prob"].tobytes() == friends[1].tobytes()
    f.Close()


@pytest.mark.parametrize("total", [False, True], ids=["concatenated", "copied-as-they-come"])
def test_streams_of_each_file_join_into_the_stream_of_all(quick_models, parts, monkeypatch,
                                                          total):
    """The tasks' work without Ray: each file scored by many_files.score_file (with
    the model's bytes shipped), the parts joined in order, equal the stream of all
    files read at once, the first tracks' features cut across the files (40 rows of
    results.root's trees, the first 7,000 finite tracks: more than one file holds);
    joined at the end, or (given the total, as --address does) copied as they come."""
    files, _ = parts
    monkeypatch.setattr(streaming, "TREE_ROWS", 40)
    monkeypatch.setattr(inputs, "TREE_ROWS", 40)
    monkeypatch.setattr(streaming, "CHUNK_TRACKS", 2000)
    from inference import Scorer
    from scoring import load_model_file
    model = load_model_file(quick_models["net1"])
    source = inputs.describe_source(files)
    settings = inputs.resolve_settings(model, source)
    args = type("Args", (), {"backend": "auto", "nocuda": True, "batch": 1000})()
    scorer = Scorer(model, settings, args)
    whole = streaming.Stream(model, settings.features, [scorer.scoring_pass()], 7000)
    inputs.stream_input(files, settings.features, DEFAULT_TREE, 3000, whole.add)
    entries, optional = many_files.file_entries(files, DEFAULT_TREE, settings.features)
    assert entries == list(SIZES) and "ghost" in optional
    job = many_files.Job([(many_files._shipped(quick_models["net1"]), None)], [settings],
                         (None, False), ("auto", True, 1000), DEFAULT_TREE, 7000, optional)
    monkeypatch.setattr(many_files, "TREE_ROWS", 40)
    starts = [0, SIZES[0], SIZES[0] + SIZES[1]]
    joined = streaming.Stream(model, settings.features, [scorer.scoring_pass()], 7000)
    joined.join((many_files.score_file(path, job, start, sum(SIZES))
                 for path, start in zip(files, starts)), sum(SIZES) if total else None)
    mine, theirs = whole.part(), joined.part()
    assert len(theirs["head"]) == 40 and len(theirs["first"]) == 7000
    assert theirs["rows"][-1] > SIZES[0]  # the first file's finite tracks and the second's
    for key, value in mine.items():
        if isinstance(value, np.ndarray):
            assert value.tobytes() == theirs[key].tobytes(), key
    assert mine["bins"].keys() == theirs["bins"].keys()
    assert all(mine["bins"][k].tobytes() == theirs["bins"][k].tobytes() for k in mine["bins"])
    assert [p[1:] for p in mine["passes"]] == [p[1:] for p in theirs["passes"]]
    for key in ("n_bad", "bad_labels", "nonfinite_derived", "kept"):
        assert mine[key] == theirs[key], key
    for key in ("scored", "overflowed"):
        assert vars(mine[key]).keys() == vars(theirs[key]).keys()
        assert all(np.array_equal(a, b) for a, b in
                   zip(vars(mine[key]).values(), vars(theirs[key]).values()))
    assert inputs.guard(source, DEFAULT_TREE, "matching", mine["guard"]) == \
        inputs.guard(source, DEFAULT_TREE, "matching", theirs["guard"])
    assert mine["guard"].unfilled == theirs["guard"].unfilled
    assert vars(mine["guard"].features).keys() == vars(theirs["guard"].features).keys()


def _refused(tmp_path, *args):
    proc = run_script("inference.py", *map(str, args), "--plots-dir", tmp_path / "plots")
    assert not (tmp_path / "plots").exists()
    return proc


def test_refusals_are_one_line_before_any_work(quick_models, parts, tmp_path):
    files, whole = parts
    model = quick_models["net1"]
    other = tmp_path / "other"
    other.mkdir()
    twin = other / "part1.root"
    twin.write_bytes(open(files[0], "rb").read())
    assert_clean_error(_refused(tmp_path, "-f", files[0], twin, "--model", model,
                                "--output-dir", tmp_path / "friends"),
                       "part1.root and", "would both write part1_ghost.root")
    assert not (tmp_path / "friends").exists()
    # a friend file that is an input (part1_ghost.root is given too)
    ghost = other / "part1_ghost.root"
    ghost.write_bytes(open(files[1], "rb").read())
    assert_clean_error(_refused(tmp_path, "-f", twin, ghost, "--model", model,
                                "--output-dir", other), "would replace the input")
    assert ghost.read_bytes() == open(files[1], "rb").read()
    blocker = tmp_path / "afile"
    blocker.write_text("keep")
    assert_clean_error(_refused(tmp_path, "-f", *files, "--model", model,
                                "--output-dir", blocker), "--output-dir", "is a file")
    assert_clean_error(_refused(tmp_path, "-f", *files, "--model", model,
                                "--output-dir", blocker / "sub"), "--output-dir")
    assert blocker.read_text() == "keep"
    assert_clean_error(_refused(tmp_path, "-f", files[0], tmp_path / "missing.root",
                                "--model", model), "missing.root does not exist")
    assert_clean_error(_refused(tmp_path, "-f", str(tmp_path / "none*.root"), "--model", model),
                       "no file matches")
    assert_clean_error(_refused(tmp_path, "-f", files[0], blocker, "--model", model),
                       "afile is not a .root file")
    assert_clean_error(_refused(tmp_path, "-f", *files, "--model", model, "--output",
                                files[2]), "would replace the input")
    assert_clean_error(_refused(tmp_path, "-f", *files, "--model", model,
                                "--address", "127.0.0.1:1"), "cannot reach the Ray cluster")
    assert set(os.listdir(tmp_path)) == {"other", "afile"}


def test_output_dir_and_address_need_root_inputs(quick_models, raw_dataset, tmp_path):
    for option, value in (("--output-dir", tmp_path / "f"), ("--address", "127.0.0.1:1")):
        assert_clean_error(_refused(tmp_path, "-f", raw_dataset, "--model", quick_models["net1"],
                                    option, value), option, "dataset prefix")


def test_several_files_import_no_ray(quick_models, parts, tmp_path):
    files, _ = parts
    argv = ["-f", *files, "--model", quick_models["net1"], "--no-plots", "--plots-dir",
            str(tmp_path / "p"), "--output-dir", str(tmp_path / "f")]
    code = (f"import sys, inference\nrc = inference.main({argv!r})\n"
            "assert rc == 0 and 'ray' not in sys.modules, rc\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT_DIR, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(os.listdir(tmp_path / "f")) == 3


@pytest.mark.ray
def test_files_as_ray_tasks_on_a_cluster(quick_models, parts, tmp_path):
    """A local `ray start --head` cluster: a glob of three files with --compare,
    --ranking and --cross-check (the first finite tracks across files) scored as
    Ray tasks gives what one process gives, friend files included."""
    files, whole = parts
    port, _ = start_ray_cluster(cpus=2)
    glob = os.path.join(os.path.dirname(files[0]), "part*.root")
    common = ["-f", glob, "--model", quick_models["net1"], "--batch", "1000", "--no-plots",
              "--compare", quick_models["int8"], "--ranking", "--cross-check"]
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    for folder in (local, cluster):
        folder.mkdir()
    try:  # the cluster's driver as a script run of its own, the local run in this process
        proc = run_script("inference.py", *common, "--output", cluster / "p.npy",
                          "--plots-dir", cluster / "plots", "--output-dir", cluster / "friends",
                          "--address", f"127.0.0.1:{port}", cwd=ROOT_DIR)
    finally:
        stop_ray_cluster(port)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stdout
    assert run_inference(*common, "--output", local / "p.npy", "--plots-dir", local / "plots",
                         "--output-dir", local / "friends") == 0
    assert "scoring 3 files as Ray tasks on the cluster" in said
    assert f"read {sum(SIZES):,} tracks" in said
    assert _outputs(local) == _outputs(cluster)
    assert np.load(local / "p.npy").tobytes() == np.load(cluster / "p.npy").tobytes()
    for i in (1, 2, 3):
        name = f"part{i}_ghost.root"
        assert _root_objects(local / "friends" / name) == _root_objects(cluster / "friends" / name)
    metrics = json.loads((cluster / "plots" / "metrics.json").read_text())
    assert metrics["ranking"] and len(metrics["comparison"]) >= 2
    assert metrics["cross_check"]["tracks"] == sum(SIZES) - metrics["tracks_nonfinite"]
