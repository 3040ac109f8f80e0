"""rootio.py: ROOT files in.  Several files read in parallel keep entry order; mixed
inputs (TTrees and RNTuples, branches of other types, empty files) are each read with
their own kind and types, never a crash; the same file given twice is read once."""
import json
import os
import shutil

import numpy as np
import pytest

import make_dataset
from dataset import load_dataset, load_split
from features import TRACK_FEATURES
from helpers import assert_clean_error, lines_starting, run_script
from rootio import MATRIX, read_root

TREE = "kalman_validator/kalman_ip_tree"


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


# ---------------------------------------------------------------------------
# mixed inputs: every file read with its own kind and types, never a crash
# ---------------------------------------------------------------------------


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


def test_the_same_file_twice_is_read_once(quick_models, small_file, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(small_file, folder / "a.root")
    os.symlink(folder / "a.root", folder / "link.root")
    once = tmp_path / "once"
    assert make_dataset.main(["-f", str(folder / "a.root"), "--output", str(once),
                              "--track", "matching"]) in (0, None)
    for i, inputs in enumerate((["in/a.root", "./in/a.root"], ["in/a.root", "in/link.root"])):
        prefix = tmp_path / f"twice{i}"
        proc = run_script("make_dataset.py", "-f", *inputs, "--output", prefix, "--track",
                          "matching", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        warning = lines_starting(proc.stderr, "warning:")
        assert len(warning) == 1 and "a.root" in warning[0] and "once" in warning[0], \
            proc.stderr
        train, test = load_split(str(prefix), "train")[0], load_split(str(prefix), "test")[0]
        seen = {row.tobytes() for row in train}
        assert sum(row.tobytes() in seen for row in test) <= 2  # chance coincidences only
        for split in ("train", "test"):
            assert len(load_split(str(prefix), split)[0]) == len(load_split(str(once),
                                                                            split)[0])
    # inference on it: the test split holds each track once, as from the file alone
    proc = run_script("inference.py", "-f", tmp_path / "twice1", "--model", quick_models["net1"],
                      "--plots-dir", tmp_path / "plots", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "plots" / "metrics.json").read_text())
    assert metrics["tracks"] == len(load_split(str(once), "test")[0])


def test_a_signal_ends_a_read_within_its_event_loop():
    """ROOT's event loop runs no Python handler: the read catches SIGTERM in C++, ends
    the loop at the next PROGRESS_STEP entries and raises Stopped; Python's own
    handler is back afterwards."""
    import signal

    from cli import Stopped
    from rootio import PROGRESS_STEP, _count_listening, import_root
    ROOT = import_root()
    ROOT.gInterpreter.Declare("#include <csignal>\nnamespace ghost_test { ULong64_t seen = 0; }")
    n = 100 * PROGRESS_STEP
    df = ROOT.RDataFrame(n).Define(
        "x", "if (rdfentry_ == 10000) std::raise(SIGTERM); return ++ghost_test::seen;")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stopped:
        _count_listening(ROOT, df.Filter("x > 0").Count(), n)
    assert stopped.value.signum == signal.SIGTERM
    assert ROOT.ghost_test.seen <= 2 * PROGRESS_STEP  # not the 2,000,000 entries
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------------------
# the reads make_dataset.py takes twice: chunk by chunk, and into chosen rows
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1000, 2999, 3000, 10**6])
def test_a_read_in_chunks_hands_on_every_entry_once_in_order(mixed, chunk):
    """rootstream.stream_root (make_dataset's first read): the whole read's values,
    chunk after chunk, over a set of files that mixes kinds, branch types and empty
    files (each group its own loop); the chunks never pass chunk entries, and what
    the buffer held is refilled after."""
    from rootio import MATRIX
    from rootstream import stream_root
    files, _ = mixed
    paths = [files[k] for k in ("ttree_empty", "float", "typed", "rntuple", "rntuple_empty")]
    names = TRACK_FEATURES["matching"] + ["ghost"]
    whole = read_root(paths, TREE, names)
    seen, sizes = {c: [] for c in names}, []

    def consume(columns):
        sizes.append(len(columns["ghost"]))
        for c in names:
            seen[c].append(columns[c].copy())
    stream_root(paths, TREE, names, chunk, lambda first, total, arrays: consume(
        {c: arrays[MATRIX][:, j] for j, c in enumerate(names)}))
    assert max(sizes) <= chunk and sum(sizes) == 9000
    for c in names:
        assert np.array_equal(np.concatenate(seen[c]), whole[c], equal_nan=True), c


@pytest.mark.parametrize("threads", [1, 2])
def test_a_read_into_chosen_rows_stores_each_entry_in_its_row(clustered_file, matching_file,
                                                              rntuple_file, threads):
    """read_root(rows=...): entry e lands in row rows[e] (none where -1), in the matrix
    and the other columns alike, serially and with ROOT's threads interleaving
    clusters; a rows array that does not fit the files' entries is an error."""
    from utils import GhostError
    files = [clustered_file, rntuple_file, matching_file]
    names = TRACK_FEATURES["matching"]
    whole = read_root(files, TREE, names + ["ghost"], threads=1)
    n = len(whole["ghost"])
    chosen = np.random.default_rng(1).choice(n, size=n // 3, replace=False)
    rows = np.full(n, -1, dtype=np.int32)
    rows[chosen] = np.arange(len(chosen))
    got = read_root(files, TREE, names, threads=threads, optional=("ghost", "nope"),
                    matrix=True, rows=rows)
    assert set(got) == {MATRIX, "ghost"} and got[MATRIX].shape == (len(chosen), len(names))
    for j, c in enumerate(names):
        assert np.array_equal(got[MATRIX][:, j], whole[c][chosen], equal_nan=True), c
    assert np.array_equal(got["ghost"], whole["ghost"][chosen])
    wide = read_root(files, TREE, ["chi2"], threads=threads, rows=rows.astype(np.int64))
    assert np.array_equal(wide["chi2"], whole["chi2"][chosen], equal_nan=True)
    with pytest.raises(GhostError, match="changed while being read"):
        read_root(files, TREE, names, rows=rows[1:])
