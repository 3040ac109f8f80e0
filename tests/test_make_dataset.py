import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import make_dataset
from conftest import assert_clean_error, run_script
from dataset import SPLITS, load_dataset, split_paths
from features import FIXED_BOUNDS, TRACK_FEATURES, features_for
from rootio import MATRIX, read_root

SIX = [f"_{s}_{k}.npy" for s in SPLITS for k in ("data", "labels")]


def outputs(prefix):
    return [prefix + suffix for suffix in SIX] + [prefix + "_features.json"]


def make(tmp_path, *args, name="ds"):
    prefix = str(tmp_path / name)
    make_dataset.main([*map(str, args), "--output", prefix])
    return prefix


def test_features_lists_and_unknown_track():
    assert len(features_for("forward")) == 8 and len(features_for("matching")) == 13
    assert features_for("matching")[0] == "best_pt" and features_for("matching")[-1] == "qop"
    with pytest.raises(ValueError, match="forward, matching"):
        features_for("downstream")


@pytest.mark.parametrize("balance", ["weights", "subsample"])
def test_six_files_shapes_dtypes_balance(raw_dataset, tmp_path, matching_file, balance):
    if balance == "subsample":  # the default is weights: raw_dataset
        raw_dataset = make(tmp_path, "-f", matching_file, "--track", "matching",
                           "--balance", "subsample")
    for path in outputs(raw_dataset):
        assert os.path.isfile(path), path
    splits = load_dataset(raw_dataset)
    meta = json.load(open(raw_dataset + "_features.json"))
    sizes = {}
    for split, (_, labels) in splits.items():
        raw = np.load(split_paths(raw_dataset, split)[0])
        assert raw.dtype == np.float32 and raw.shape[1] == 13
        lab = np.load(split_paths(raw_dataset, split)[1])
        assert lab.shape == (len(raw), 1)
        if balance == "subsample":
            assert labels.sum() * 2 == len(labels)  # exactly balanced
        else:  # each split at the file's natural mix
            assert abs(labels.mean() - meta["ghost_fraction"]) < 0.01
        sizes[split] = len(labels)
    total = sum(sizes.values())
    assert abs(sizes["train"] / total - 0.6) < 0.01
    assert abs(sizes["valid"] / total - 0.2) < 0.01
    assert meta["track"] == "matching" and meta["features"] == TRACK_FEATURES["matching"]
    assert meta["tree"] == "kalman_validator/kalman_ip_tree" and meta["seed"] == 42
    assert meta["balance"] == balance
    if balance == "subsample":
        assert meta["counts"]["train"]["ghost"] == meta["counts"]["train"]["real"]
    assert meta["normalized"] is False
    assert len(meta["normalization"]["offsets"]) == 13


def test_splits_disjoint_shuffled_and_reproducible(tmp_path, matching_file):
    a = make(tmp_path, "-f", matching_file, "--track", "matching", "--seed", 5, name="a")
    b = make(tmp_path, "-f", matching_file, "--track", "matching", "--seed", 5, name="b")
    c = make(tmp_path, "-f", matching_file, "--track", "matching", "--seed", 6, name="c")
    da, db, dc = load_dataset(a), load_dataset(b), load_dataset(c)
    for s in SPLITS:
        assert np.array_equal(da[s][0], db[s][0]) and np.array_equal(da[s][1], db[s][1])
    assert not np.array_equal(da["train"][0], dc["train"][0])
    rows = [set(map(bytes, da[s][0])) for s in SPLITS]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    labels = da["train"][1].ravel()
    assert 0 < labels[: len(labels) // 2].mean() < 1  # classes interleaved, not blocks


def test_nan_tracks_dropped_and_reported(tmp_path, matching_file, capsys):
    cols = read_root([matching_file], "kalman_validator/kalman_ip_tree",
                     TRACK_FEATURES["matching"] + ["ghost"])
    n_bad = int((~np.isfinite(np.column_stack(list(cols.values())))).any(axis=1).sum())
    assert n_bad > 0
    prefix = make(tmp_path, "-f", matching_file, "--track", "matching")
    meta = json.load(open(prefix + "_features.json"))
    assert meta["tracks_dropped_nonfinite"] == n_bad
    assert sum(meta["dropped_per_feature"].values()) >= n_bad
    assert f"dropped {n_bad:,}" in capsys.readouterr().out
    for data, _ in load_dataset(prefix).values():
        assert np.isfinite(data).all()


def test_normalize_bounds_recorded_and_train_only(norm_dataset, raw_dataset):
    meta = json.load(open(norm_dataset + "_features.json"))
    names = meta["features"]
    offsets = np.array(meta["normalization"]["offsets"])
    scales = np.array(meta["normalization"]["scales"])
    assert meta["normalized"] is True
    for name, (lo, hi) in FIXED_BOUNDS.items():
        j = names.index(name)
        assert offsets[j] == lo and scales[j] == hi - lo
    raw, norm = load_dataset(raw_dataset), load_dataset(norm_dataset)
    for split in SPLITS:
        assert norm[split][0].min() >= 0.0 and norm[split][0].max() <= 1.0
        expected = np.clip((raw[split][0] - offsets) / scales, 0, 1)
        np.testing.assert_allclose(norm[split][0], expected, atol=1e-6)
    # non-fixed features: the training split's own min and max
    j = names.index("pr_match_dx")
    train = raw["train"][0][:, j]
    assert offsets[j] == pytest.approx(train.min()) and scales[j] == pytest.approx(np.ptp(train))
    assert norm["train"][0][:, j].min() == 0.0 and norm["train"][0][:, j].max() == 1.0


def test_fraction_keeps_that_share_of_ghosts(tmp_path, matching_file, raw_dataset):
    half = make(tmp_path, "-f", matching_file, "--track", "matching", "--fraction", 0.5)
    full_n = sum(len(y) for _, y in load_dataset(raw_dataset).values())
    half_n = sum(len(y) for _, y in load_dataset(half).values())
    assert abs(half_n / full_n - 0.5) < 0.01


def test_forward_track_and_several_files_and_glob(tmp_path, forward_file, sample_dir):
    one = make(tmp_path, "-f", forward_file, "--track", "forward", name="one")
    two = make(tmp_path, "-f", forward_file, forward_file, "--track", "forward", name="two")
    # the same file twice is read once (de-duplicated); a glob matching two files reads both
    assert load_dataset(one)["train"][0].shape == load_dataset(two)["train"][0].shape
    assert load_dataset(one)["train"][0].shape[1] == 8
    from make_sample import make_sample
    for i in range(2):
        make_sample(str(tmp_path / f"part{i}.root"), tracks=3000, track="forward", seed=10 + i)
    both = make(tmp_path, "-f", str(tmp_path / "part*.root"), "--track", "forward", name="g")
    meta = json.load(open(both + "_features.json"))
    assert meta["tracks_read"] == 6000 and len(meta["input_files"]) == 2


def test_rntuple_input(tmp_path, rntuple_file):
    prefix = make(tmp_path, "-f", rntuple_file, "--track", "matching")
    assert json.load(open(prefix + "_features.json"))["tracks_read"] == 5000


def test_threads_and_custom_tree_name(tmp_path, clustered_file):
    names = TRACK_FEATURES["matching"] + ["ghost"]
    tree = "kalman_validator/kalman_ip_tree"
    serial = read_root([clustered_file], tree, names, threads=1)
    threaded = read_root([clustered_file], tree, names, threads=2)
    for c in names:  # threads: the serial read's rows, entry for entry
        assert np.array_equal(threaded[c], serial[c], equal_nan=True)
    assert np.array_equal(read_root([clustered_file], tree, names)["chi2"], serial["chi2"],
                          equal_nan=True)  # and the next read is in entry order too
    runs = [make(tmp_path, "-f", clustered_file, "--track", "matching", "--threads", n,
                 "--tree", "kalman_validator/kalman_ip_tree", name=f"mt{n}") for n in (1, 2)]
    a, b = load_dataset(runs[0]), load_dataset(runs[1])
    for s in SPLITS:  # the same seed gives the same splits, however many threads read
        assert np.array_equal(a[s][0], b[s][0]) and np.array_equal(a[s][1], b[s][1])


def test_parallel_read_of_several_files_keeps_entry_order(tmp_path, clustered_file,
                                                          matching_file, rntuple_file):
    names = TRACK_FEATURES["matching"] + ["ghost"]
    files = [matching_file, clustered_file, rntuple_file, clustered_file + ".copy.root"]
    shutil.copy(clustered_file, files[-1])
    serial = read_root(files, TREE, names, threads=1)
    threaded = read_root(files, TREE, names, threads=2)
    for c in names:
        assert np.array_equal(threaded[c], serial[c], equal_nan=True)
    for threads in (1, 2):  # the features stored straight into one [n, k] array
        got = read_root(files, TREE, names[:-1], threads=threads, optional=("ghost",),
                        matrix=True)
        assert set(got) == {MATRIX, "ghost"} and got[MATRIX].flags.c_contiguous
        for j, c in enumerate(names[:-1]):
            assert np.array_equal(got[MATRIX][:, j], serial[c], equal_nan=True)
        assert np.array_equal(got["ghost"], serial["ghost"])


def test_threads_must_be_positive(matching_file):
    r = run_script("make_dataset.py", "-f", matching_file, "--threads", "0")
    assert r.returncode == 2 and "--threads: must be a whole number" in r.stderr


def test_plot_writes_one_png_per_feature(tmp_path, matching_file):
    plots = tmp_path / "plots"
    make(tmp_path, "-f", matching_file, "--track", "matching", "--plot",
         "--plots-dir", plots)
    pngs = sorted(p.name for p in plots.iterdir() if p.suffix == ".png")
    assert pngs == sorted(f"{n}.png" for n in TRACK_FEATURES["matching"])
    assert (plots / "index.html").is_file()
    assert all((plots / p).stat().st_size > 5000 for p in pngs)


def _cols(n, ghost):
    names = set(TRACK_FEATURES["matching"])
    rng = np.random.default_rng(0)
    cols = {k: rng.normal(size=n).astype(np.float32) for k in names}
    cols["ghost"] = np.asarray(ghost, dtype=np.float32)
    return cols


def _write(path, cols):
    import ROOT
    ROOT.RDF.FromNumpy(cols).Snapshot("kalman_validator/kalman_ip_tree", str(path))
    return str(path)


@pytest.mark.parametrize("case,needles", [
    ("missing", ["does not exist"]),
    ("not_root", ["not a readable ROOT file"]),
    ("truncated", ["not a readable ROOT file"]),
    ("wrong_tree", ["no tree 'nope/tree'", "kalman_validator/kalman_ip_tree"]),
    ("missing_branches", ["lacks branches", "pr_match_dx", "pr_seed_chi2"]),
    ("no_ghosts", ["no ghost tracks"]),
    ("no_reals", ["no real tracks"]),
    ("too_few", ["too few tracks"]),
    ("bad_label", ["other than 0 and 1"]),
    ("out_dir_missing", ["does not exist"]),
    ("out_dir_readonly", ["not writable"]),
])
def test_bad_input_one_line_error_and_no_outputs(tmp_path, matching_file, case, needles):
    f, tree, out = matching_file, [], tmp_path / "out" / "ds"
    (tmp_path / "out").mkdir()
    if case == "missing":
        f = tmp_path / "nothere.root"
    elif case == "not_root":
        f = tmp_path / "text.root"
        f.write_text("not a ROOT file\n")
    elif case == "truncated":
        f = tmp_path / "cut.root"
        f.write_bytes(open(matching_file, "rb").read()[: os.path.getsize(matching_file) // 2])
    elif case == "wrong_tree":
        tree = ["--tree", "nope/tree"]
    elif case == "missing_branches":
        cols = _cols(100, np.arange(100) % 2)
        del cols["pr_match_dx"], cols["pr_seed_chi2"]
        f = _write(tmp_path / "few.root", cols)
    elif case == "no_ghosts":
        f = _write(tmp_path / "g.root", _cols(100, np.zeros(100)))
    elif case == "no_reals":
        f = _write(tmp_path / "r.root", _cols(100, np.ones(100)))
    elif case == "too_few":
        f = _write(tmp_path / "t.root", _cols(100, np.arange(100) < 5))
    elif case == "bad_label":
        f = _write(tmp_path / "l.root", _cols(100, np.arange(100) % 3))
    elif case == "out_dir_missing":
        out = tmp_path / "nowhere" / "ds"
    elif case == "out_dir_readonly":
        if os.geteuid() == 0:  # root writes anywhere: make the folder a file's child
            out = tmp_path / "text_as_dir" / "ds"
            (tmp_path / "text_as_dir").write_text("")
            needles = ["does not exist"]
        else:
            os.chmod(tmp_path / "out", 0o500)
    proc = run_script("make_dataset.py", "-f", f, "--output", out, "--track", "matching", *tree)
    assert_clean_error(proc, *needles)
    assert not list((tmp_path / "out").iterdir())


def test_bad_fraction_is_usage_error(matching_file, tmp_path):
    for bad in ("0", "1.5", "-0.1"):
        proc = run_script("make_dataset.py", "-f", matching_file, "--output", tmp_path / "x",
                          "--track", "matching", "--fraction", bad)
        assert proc.returncode == 2 and "--fraction must be in (0, 1]" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_interrupted_write_leaves_nothing(tmp_path, matching_file, monkeypatch):
    calls = {"n": 0}
    real_save = np.save

    def failing_save(path, arr):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        real_save(path, arr)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, "-f", matching_file, "--track", "matching")
    assert list(tmp_path.iterdir()) == []


def test_help_is_instant_and_imports_no_root():
    proc = run_script("make_dataset.py", "--help")
    assert proc.returncode == 0 and "--normalize" in proc.stdout
    code = "import sys, make_dataset; print('ROOT' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__))).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------------------
# mixed inputs: every file read with its own kind and types, never a crash
# ---------------------------------------------------------------------------

TREE = "kalman_validator/kalman_ip_tree"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Small files of one generator: a float TTree, the same tracks with chi2 as
    double and n_velo as int, an RNTuple, one without pr_seed_chi2 and empty ones."""
    from make_sample import generate
    from rootwrite import write_root
    d = tmp_path_factory.mktemp("mixed")
    cols = generate(3000, "matching", seed=7)
    files = {}

    def write(name, columns, fmt="ttree"):
        files[name] = str(d / f"{name}.root")
        write_root(files[name], TREE, columns, fmt=fmt)

    write("float", cols)
    write("typed", {**cols, "chi2": cols["chi2"].astype(np.float64),
                    "n_velo": cols["n_velo"].astype(np.int32)})
    write("rntuple", cols, fmt="rntuple")
    write("rntuple_fewer", {k: v for k, v in cols.items() if k != "kalman_ip"}, fmt="rntuple")
    write("rntuple_no_seed", {k: v for k, v in cols.items() if k != "pr_seed_chi2"},
          fmt="rntuple")
    write("rntuple_empty", {k: v[:0] for k, v in cols.items()}, fmt="rntuple")
    write("ttree_empty", {k: v[:0] for k, v in cols.items()})
    files["dir"] = str(d)
    return files, cols


def _all_rows(prefix):
    return np.concatenate([d for d, _ in load_dataset(prefix).values()])


def test_mixed_branch_types_are_read_per_file(tmp_path, mixed):
    files, cols = mixed
    names = TRACK_FEATURES["matching"] + ["ghost"]
    both = read_root([files["float"], files["typed"]], TREE, names)
    for name in names:  # each half equals the generator's values, in entry order
        for half in (both[name][:3000], both[name][3000:]):
            assert np.array_equal(half, cols[name], equal_nan=True), name
    proc = run_script("make_dataset.py", "-f", files["float"], files["typed"], "--output",
                      tmp_path / "ds", "--track", "matching")
    assert proc.returncode == 0, proc.stderr
    assert "chi2 as float32 / float64" in proc.stdout and "n_velo" in proc.stdout
    rows = _all_rows(str(tmp_path / "ds"))
    j = TRACK_FEATURES["matching"].index("chi2")
    assert np.isin(rows[:, j], cols["chi2"]).all()  # no garbage: every value is a real one
    k = TRACK_FEATURES["matching"].index("n_velo")
    assert np.isin(rows[:, k], cols["n_velo"]).all()


@pytest.mark.parametrize("inputs", [
    ["float", "rntuple"],           # TTree + RNTuple: segfaulted
    ["rntuple", "rntuple_fewer"],   # two RNTuples, different branches: ROOT aborted
    ["rntuple_empty", "float"],     # an empty RNTuple: segfaulted in CreateSampleInfo
    ["ttree_empty", "rntuple", "rntuple_empty"],
])
def test_mixed_kinds_and_empty_files_never_crash(tmp_path, mixed, inputs):
    files, cols = mixed
    proc = run_script("make_dataset.py", "-f", *[files[i] for i in inputs], "--output",
                      tmp_path / "ds", "--track", "matching")
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    meta = json.load(open(tmp_path / "ds_features.json"))
    full = [i for i in inputs if "empty" not in i]  # empty files add nothing
    assert meta["tracks_read"] == 3000 * len(full)


def test_glob_over_a_ttree_and_an_rntuple(tmp_path, mixed):
    files, _ = mixed
    # float.root (TTree) and rntuple.root
    proc = run_script("make_dataset.py", "-f", os.path.join(files["dir"], "[fr]*[et].root"),
                      "--output", tmp_path / "ds", "--track", "matching")
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert json.load(open(tmp_path / "ds_features.json"))["tracks_read"] == 6000


def test_rntuple_lacking_a_feature_is_named_not_aborted(tmp_path, mixed):
    files, _ = mixed  # ROOT aborted: "Fatal: fOnDiskId != kInvalidDescriptorId"
    proc = run_script("make_dataset.py", "-f", files["rntuple"], files["rntuple_no_seed"],
                      "--output", tmp_path / "ds", "--track", "matching")
    assert_clean_error(proc, "rntuple_no_seed.root", "lacks branches: pr_seed_chi2")
    assert not list(tmp_path.iterdir())


def test_only_empty_files_is_a_clean_error(tmp_path, mixed):
    files, _ = mixed
    proc = run_script("make_dataset.py", "-f", files["rntuple_empty"], files["ttree_empty"],
                      "--output", tmp_path / "ds", "--track", "matching")
    assert_clean_error(proc, "no tracks", "empty")
    assert not list(tmp_path.iterdir())


def test_a_branch_that_is_no_number_is_named(tmp_path):
    import ROOT
    ROOT.gInterpreter.Declare("std::vector<float> three_hits() { return {1.f, 2.f, 3.f}; }")
    path = str(tmp_path / "vec.root")
    df = ROOT.RDataFrame(50)
    for name in TRACK_FEATURES["matching"] + ["ghost"]:
        df = df.Define(name, "float(rdfentry_ % 2)")
    df = df.Redefine("chi2", "three_hits()")
    df.Snapshot(TREE, path)
    proc = run_script("make_dataset.py", "-f", path, "--output", tmp_path / "ds",
                      "--track", "matching")
    assert_clean_error(proc, "vec.root", "chi2", "not plain numbers")


@pytest.mark.parametrize("track,sample,needles", [
    ("matching", "forward", ["pr_match_chi2", "pr_seed_chi2", "0 for every track",
                             "looks like forward", "--track forward"]),
    ("forward", "matching", ["pr_forward_quality", "0 for every track",
                             "looks like matching", "--track matching"]),
])
def test_wrong_track_type_is_an_error(tmp_path, forward_file, matching_file, track, sample,
                                      needles):
    f = forward_file if sample == "forward" else matching_file
    proc = run_script("make_dataset.py", "-f", f, "--output", tmp_path / "ds", "--track", track)
    assert_clean_error(proc, *needles)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# output locations: checked before the long read, one line each
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("where,needles", [
    (["--output", "/proc/ghost_ds"], ["/proc", "not writable"]),
    (["--plot", "--plots-dir", "/proc/ghost_plots"], ["--plots-dir", "/proc/ghost_plots"]),
    (["--plot", "--plots-dir", "FILE"], ["--plots-dir", "is a file"]),
])
def test_unwritable_outputs_fail_before_reading(tmp_path, matching_file, where, needles):
    where = [str(tmp_path / "afile") if w == "FILE" else w for w in where]
    (tmp_path / "afile").write_text("")
    if "--output" not in where:
        where += ["--output", str(tmp_path / "ds")]
    proc = run_script("make_dataset.py", "-f", matching_file, "--track", "matching", *where)
    assert_clean_error(proc, *needles)
    assert "read " not in proc.stdout  # refused before reading the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path, matching_file):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".ds_train_data.tmp{dead.pid}_0.npy"
    alive = tmp_path / f".other.tmp{os.getppid()}_0.npy"  # a running process's: kept
    stale.write_text("half")
    alive.write_text("busy")
    make(tmp_path, "-f", matching_file, "--track", "matching")
    assert not stale.exists() and alive.exists()
