"""make_dataset.py: ROOT file(s) -> the six split arrays and the features JSON: shapes,
splits, class mix, normalization, the limit kept beside the features, several files,
threads, plots, and bad input refused with one line before anything is written."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import make_dataset
from dataset import SPLITS, load_dataset, load_meta, load_spectators, split_paths
from features import DERIVED, FIXED_BOUNDS, LIMIT, TRACK_FEATURES, TRUTH, features_for
from helpers import assert_clean_error, help_outputs, listed, run_script
from metrics import roc_auc
from rootio import read_root

SIX = [f"_{s}_{k}.npy" for s in SPLITS for k in ("data", "labels")]


def outputs(prefix):
    return [prefix + suffix for suffix in SIX] + [prefix + "_features.json"]


def make(tmp_path, *args, name="ds"):
    prefix = str(tmp_path / name)
    make_dataset.main([*map(str, args), "--output", prefix])
    return prefix


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
    # the scalings cover the 13 features, then the default derived inputs
    assert [d["name"] for d in meta["derived"]] == [
        d.split(" := ")[0] for d in DERIVED["matching"]]
    assert len(meta["normalization"]["offsets"]) == 13 + len(DERIVED["matching"])


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


def test_balance_weights_keeps_every_track_and_subsample_balances(tmp_path, matching_file):
    import make_dataset
    sizes, clean = {}, None
    for balance in ("weights", "subsample"):
        prefix = str(tmp_path / balance)
        make_dataset.main(["-f", matching_file, "--output", prefix, "--track", "matching",
                           "--balance", balance])
        meta, splits = load_meta(prefix), load_dataset(prefix)
        sizes[balance] = sum(len(y) for _, y in splits.values())
        clean = meta.tracks_read - meta.tracks_dropped_nonfinite
        train = splits["train"][1].ravel()
        if balance == "weights":
            w = meta.class_weights
            assert meta.balance == "weights" and abs(meta.ghost_fraction - 0.15) < 0.01
            for _, y in splits.values():  # each split at the file's natural mix
                assert abs(y.mean() - meta.ghost_fraction) < 0.01
            # both classes weigh the same in the loss
            assert w["ghost"] * train.sum() == pytest.approx(w["real"] * (1 - train).sum())
            assert w["ghost"] * train.sum() == pytest.approx(len(train) / 2)
            assert "natural mix" in meta.mix()
        else:
            assert meta.class_weights is None and train.mean() == 0.5
            assert "balanced" in meta.mix()
    # every clean track of the file, none dropped by balancing
    assert sizes["weights"] == clean and sizes["subsample"] < 0.35 * clean


def test_the_limit_is_never_a_feature(tmp_path, matching_file):
    assert LIMIT in TRUTH and all(LIMIT not in names for names in TRACK_FEATURES.values())
    import make_dataset
    prefix = str(tmp_path / "ds")
    make_dataset.main(["-f", matching_file, "--output", prefix, "--track", "matching"])
    meta = load_meta(prefix)
    assert meta.features == features_for("matching")
    assert meta.spectators == [LIMIT, "tx", "ty"]  # beside the features, never among them
    test = load_dataset(prefix)["test"]
    llr = load_spectators(prefix, "test", meta)[LIMIT]
    assert test[0].shape[1] == 13 and llr.shape == (len(test[0]),)
    assert roc_auc(llr, test[1].ravel()) > 0.9  # aligned with the test split's rows


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


def test_threads_must_be_positive(matching_file):
    r = run_script("make_dataset.py", "-f", matching_file, "--threads", "0")
    assert r.returncode == 2 and "--threads: must be a whole number" in r.stderr


def test_plot_writes_one_png_per_feature_and_derived_input(tmp_path, matching_file):
    """--plot, as read (--plot-transformed, and PDF: test_diagnostic_plots.py)."""
    plots = tmp_path / "plots"
    make(tmp_path, "-f", matching_file, "--track", "matching", "--plot", "--plots-dir", plots)
    pngs = sorted(p.name for p in plots.iterdir() if p.suffix == ".png")
    derived = [d.split(":=")[0].strip() for d in DERIVED["matching"]]
    assert pngs == sorted(f"{n}.png" for n in TRACK_FEATURES["matching"] + derived)
    page = (plots / "index.html").read_text()
    assert all((plots / p).stat().st_size > 5000 for p in pngs)
    assert "<figcaption>kick := residual(pr_match_dtx, qop): ghosts and real" in page
    assert "as read" in page and "standardized, as network 1 sees them" not in page


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


TREE = "kalman_validator/kalman_ip_tree"


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


def test_the_files_written_are_those_its_help_names(matching_file, tmp_path):
    """Every file --help lists for a matching input with --plot is written (the
    spectators: the sample has them), nothing else; the headline says what was kept."""
    proc = run_script("make_dataset.py", "-f", matching_file, "--output", tmp_path / "d",
                      "--track", "matching", "--plot", "--plots-dir", tmp_path / "plots")
    assert proc.returncode == 0, proc.stderr
    files, plots = help_outputs("make_dataset.py").values()
    assert set(os.listdir(tmp_path)) == listed(files, PREFIX="d") | {"plots"}
    assert set(os.listdir(tmp_path / "plots")) == listed(plots, skip=["with --track forward"])
    meta = load_meta(str(tmp_path / "d"))
    block = proc.stdout.splitlines()[-5:]
    assert block[0] == "=== dataset matching: 13 features"
    ghosts = sum(c["ghost"] for c in meta.counts.values())
    assert f"kept {ghosts:,} ghosts" in block[1] and f"read {meta.tracks_read:,} " in block[1]
    assert block[-1] == f"    open {tmp_path / 'plots' / 'index.html'}"


# ---------------------------------------------------------------------------
# derived inputs
# ---------------------------------------------------------------------------

def _derived_case(tmp_path):
    """A 6,000-track matching file whose features are all finite, but 7 tracks have
    ndof 0 (chi2_ndof infinite) and 3 first_qop 0 (dqop infinite)."""
    from helpers import write_tracks
    from make_sample import generate
    cols = generate(6000, "matching", seed=21, nonfinite=0)
    cols["ndof"][:7], cols["first_qop"][7:10] = 0.0, 0.0
    return write_tracks(tmp_path / "derived.root", cols)


def _files(prefix):
    return {s: open(p, "rb").read() for s, p in zip(SIX + ["_features.json"], outputs(prefix))}


def test_derived_inputs_recorded_dropped_and_reproducible(tmp_path, capsys):
    from derived import Derived, compute_all
    from features import DERIVED
    path = _derived_case(tmp_path)
    names = features_for("matching")
    a = make(tmp_path, "-f", path, "--track", "matching", name="a")
    out = capsys.readouterr().out
    b = make(tmp_path, "-f", path, "--track", "matching", name="b")
    assert _files(a) == _files(b)  # the same seed: the same bytes, the fit included
    meta = json.load(open(a + "_features.json"))
    defaults = [Derived.parse(t, names) for t in DERIVED["matching"]]  # matching's defaults
    assert [d["name"] for d in meta["derived"]] == [d.name for d in defaults]
    assert [f"{d['name']} := {d['expression']}" for d in meta["derived"]] == [
        d.text() for d in defaults]
    # fitted: those with residual() (kick), and only those
    assert [d["fit"] is None for d in meta["derived"]] == [
        "residual(" not in d.expression for d in defaults]
    kick = next(d for d in meta["derived"] if d["name"] == "kick")
    assert kick["fit"].startswith("pr_match_dtx - (")
    # the 10 tracks with a non-finite derived input are dropped and counted by name
    assert meta["tracks_dropped_nonfinite"] == 10
    assert meta["dropped_per_feature"] == {"chi2_ndof": 7, "dqop": 3}
    assert "dropped 10 with a non-finite value (chi2_ndof: 7, dqop: 3)" in out
    # the arrays hold the raw features; the scalings cover features and derived inputs
    loaded = load_meta(a)
    splits = load_dataset(a)
    for data, _ in splits.values():
        assert data.shape[1] == 13 and np.isfinite(data).all()
        assert np.isfinite(compute_all(loaded.derived, data, names)).all()
    assert (len(meta["normalization"]["offsets"]) == len(meta["standardization"]["means"])
            == 13 + len(DERIVED["matching"]))
    train = np.hstack([splits["train"][0], compute_all(loaded.derived, splits["train"][0],
                                                       names)])
    assert meta["normalization"]["offsets"][13] == float(train[:, 13].min())  # chi2_ndof
    assert sum(splits[s][0].shape[0] for s in SPLITS) == 5990


def test_no_derived_gives_the_features_alone(tmp_path):
    path = _derived_case(tmp_path)
    with_ = make(tmp_path, "-f", path, "--track", "matching", name="with")
    without = make(tmp_path, "-f", path, "--track", "matching", "--no-derived", name="without")
    meta, old = (json.load(open(p + "_features.json")) for p in (with_, without))
    assert old["derived"] == [] and old["tracks_dropped_nonfinite"] == 0
    assert "dropped_per_feature" not in old or not old["dropped_per_feature"]
    assert len(old["normalization"]["offsets"]) == len(old["standardization"]["means"]) == 13
    assert load_meta(without).inputs() == features_for("matching")
    # the features' own scalings are those fitted beside the derived inputs, where the
    # same tracks are kept (a file without the 10 dropped tracks)
    from helpers import write_tracks
    from rootio import read_root
    cols = read_root([path], "kalman_validator/kalman_ip_tree", features_for("matching")
                     + ["ghost"], optional=("truth_llr", "tx", "ty"))
    clean = write_tracks(tmp_path / "clean.root", {k: v[10:] for k, v in cols.items()})
    d = make(tmp_path, "-f", clean, "--track", "matching", name="d")
    n = make(tmp_path, "-f", clean, "--track", "matching", "--no-derived", name="n")
    for s in SPLITS:  # the same tracks in the same splits
        assert np.array_equal(load_dataset(d)[s][0], load_dataset(n)[s][0])
    md, mn = (json.load(open(p + "_features.json")) for p in (d, n))
    for key in ("normalization", "standardization"):
        for part, values in mn[key].items():
            assert md[key][part][:13] == values, (key, part)


def test_a_users_derived_input_replaces_a_default_of_its_name(tmp_path):
    from derived import Derived
    path = _derived_case(tmp_path)
    prefix = make(tmp_path, "-f", path, "--track", "matching", "--derived",
                  "chi2_ndof := chi2 / (ndof + 1)", "--derived", "pt2 := best_pt*best_pt",
                  name="u")
    meta = json.load(open(prefix + "_features.json"))
    # the other defaults in their order, then the user's, chi2_ndof's expression theirs
    defaults = [Derived.parse(t, features_for("matching")) for t in DERIVED["matching"]]
    assert "chi2_ndof" in [d.name for d in defaults]
    assert [(d["name"], d["expression"]) for d in meta["derived"]] == [
        (d.name, d.expression) for d in defaults if d.name != "chi2_ndof"] + [
        ("chi2_ndof", "chi2 / (ndof + 1.0)"), ("pt2", "best_pt * best_pt")]
    assert meta["dropped_per_feature"] == {"dqop": 3}  # ndof + 1 is never 0
    only = make(tmp_path, "-f", path, "--track", "matching", "--no-derived", "--derived",
                "pt2 := best_pt*best_pt", name="o")
    assert [d["name"] for d in json.load(open(only + "_features.json"))["derived"]] == ["pt2"]


# ---------------------------------------------------------------------------
# two reads in bounded memory: the arrays and JSON of every track read at once
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nan_file(tmp_path_factory):
    """6,000 matching tracks, one in 20 with a NaN or inf in some branch."""
    from make_sample import make_sample
    path = str(tmp_path_factory.mktemp("nan") / "nan.root")
    make_sample(path, tracks=6000, track="matching", seed=12, nonfinite=0.05)
    return path


def _in_memory(files, fraction=1.0, balance="weights", seed=42):
    """What make_dataset.py writes, computed the straightforward way, every track of
    `files` in memory at once: {split: (data, labels, spectators)}, the tracks read,
    dropped per feature or derived input, and the kept tracks' ghost fraction."""
    from derived import parse_all
    names = features_for("matching")
    cols = read_root(files, TREE, names + ["ghost"], threads=1,
                     optional=make_dataset.SPECTATORS)
    finite = {n: np.isfinite(cols[n]) for n in names + ["ghost"]}
    with np.errstate(all="ignore"):
        finite.update({d.name: np.isfinite(d.unfitted_values(cols, names))
                       for d in parse_all(DERIVED["matching"], names)})
    clean = np.flatnonzero(np.logical_and.reduce(list(finite.values())))
    labels = cols["ghost"][clean]
    index = make_dataset.balance_and_split(labels, fraction, balance,
                                           np.random.default_rng(seed), "x")
    splits = {}
    for s, i in index.items():
        rows = clean[i]
        splits[s] = (np.column_stack([cols[n][rows] for n in names]), labels[i].reshape(-1, 1),
                     np.column_stack([cols[c][rows] for c in make_dataset.SPECTATORS]))
    dropped = {k: int((~v).sum()) for k, v in finite.items() if (~v).any()}
    return splits, len(cols["ghost"]), dropped, float(labels.mean())


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("case", ["defaults", "subsample", "fraction", "several_files",
                                  "threads"])
def test_two_reads_in_chunks_give_the_one_read_arrays_bit_for_bit(
        tmp_path, monkeypatch, nan_file, matching_file, rntuple_file, clustered_file, case):
    """The first read runs in chunks of 997 entries (CHUNK_ENTRIES shrunk: every file
    spans several, none ends on a chunk's edge); the second stores each kept track
    straight into its split's row.  The arrays, the spectators and the JSON's counts
    equal those of every track read at once, bit for bit: with NaN/inf tracks, with
    --balance subsample, --fraction, a TTree and an RNTuple in one set, 2 threads."""
    from derived import extend, fit_all, parse_all
    from features import MinMax, Standardize
    monkeypatch.setattr(make_dataset, "CHUNK_ENTRIES", 997)
    files, options = {
        "defaults": ([nan_file], []),
        "subsample": ([matching_file], ["--balance", "subsample"]),
        "fraction": ([nan_file], ["--fraction", "0.5", "--seed", "3"]),
        "several_files": ([nan_file, rntuple_file, matching_file], []),
        "threads": ([clustered_file, nan_file], ["--threads", "2"]),
    }[case]
    prefix = make(tmp_path, "-f", *files, "--track", "matching", *options)
    fraction = 0.5 if case == "fraction" else 1.0
    balance = "subsample" if case == "subsample" else "weights"
    ref, n_read, dropped, ghost_fraction = _in_memory(files, fraction, balance,
                                                      3 if case == "fraction" else 42)
    meta = load_meta(prefix)
    for s in SPLITS:
        data, labels = (np.load(p) for p in split_paths(prefix, s))
        spectators = np.load(f"{prefix}_{s}_spectators.npy")
        assert _same_bits(data, ref[s][0]) and _same_bits(labels, ref[s][1]), s
        assert _same_bits(spectators, ref[s][2]), s
    assert meta.tracks_read == n_read and meta.ghost_fraction == ghost_fraction
    assert list(meta.dropped_per_feature.items()) == list(dropped.items())
    if case in ("defaults", "several_files"):
        assert dropped  # non-finite tracks were there to drop
    # the scalings: those of the train split extended at once (the fits take a column
    # at a time)
    names = features_for("matching")
    train, train_labels = ref["train"][0], ref["train"][1][:, 0]
    derived = fit_all(parse_all(DERIVED["matching"], names),
                      {n: train[:, j] for j, n in enumerate(names)}, train_labels == 0.0, names)
    inputs = names + [d.name for d in derived]
    whole = extend(train, derived, names)
    assert meta.normalization == MinMax.fit(whole, inputs)
    assert meta.standardization == Standardize.fit(whole, inputs)
    assert [d.fit for d in meta.derived] == [d.fit for d in derived]


def test_chunk_size_changes_no_byte(tmp_path, monkeypatch, nan_file):
    """Every file make_dataset.py writes, the JSON included, is the same whether the
    first read takes the file in one chunk or in chunks of 1,000, 997 or 250 entries."""
    written = []
    for chunk in (10**9, 1000, 997, 250):
        monkeypatch.setattr(make_dataset, "CHUNK_ENTRIES", chunk)
        prefix = make(tmp_path, "-f", nan_file, "--track", "matching", "--normalize",
                      name=f"c{chunk}")
        written.append(_files(prefix) | {
            s: open(f"{prefix}_{s}_spectators.npy", "rb").read() for s in SPLITS})
    assert all(w == written[0] for w in written[1:])


def test_plot_draws_every_clean_track_in_file_order(tmp_path, monkeypatch, nan_file):
    """--plot draws every clean track (not only those kept: --fraction 0.5), features
    as read in the file's order, ghosts flagged: what every track read at once gives."""
    drawn = {}

    def capture(features, ghost, *args, **kwargs):
        drawn.update(features=features.copy(), ghost=ghost.copy())
    monkeypatch.setattr(make_dataset, "CHUNK_ENTRIES", 997)
    monkeypatch.setattr(make_dataset, "write_feature_figures", capture)
    make(tmp_path, "-f", nan_file, "--track", "matching", "--fraction", "0.5", "--plot",
         "--plots-dir", tmp_path / "plots", "--threads", "2")
    names = features_for("matching")
    cols = read_root([nan_file], TREE, names + ["ghost"], threads=1)
    from derived import parse_all
    finite = np.logical_and.reduce([np.isfinite(cols[n]) for n in names + ["ghost"]])
    with np.errstate(all="ignore"):
        for d in parse_all(DERIVED["matching"], names):
            finite &= np.isfinite(d.unfitted_values(cols, names))
    expected = np.column_stack([cols[n][finite] for n in names])
    assert _same_bits(drawn["features"], expected)
    assert np.array_equal(drawn["ghost"], cols["ghost"][finite] == 1.0)
