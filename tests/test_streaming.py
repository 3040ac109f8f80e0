"""streaming.py and rootstream.py: inference.py on a .root file read, scored and
summed up in several chunks writes every output bit for bit as with one chunk
covering the whole file (metrics.json but its timings, the tables, the per-track
output, results.root's objects); rootstream keeps the entry order across files."""
import json
import os

import numpy as np
import pytest

import rootio
import streaming
from features import DEFAULT_TREE, features_for
from helpers import run_inference
from rootstream import stream_root
from utils import GhostError

MATCHING = features_for("matching")
TIMINGS = {"scoring_seconds", "tracks_per_second", "created"}


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _root_objects(path):
    """{name: comparable contents} of every object of a ROOT file, folders included."""
    ROOT = rootio.import_root()
    f = ROOT.TFile.Open(str(path))
    out = {}

    def walk(directory, prefix):
        for key in directory.GetListOfKeys():
            name, cls = prefix + key.GetName(), key.GetClassName()
            if cls.startswith("TDirectory"):
                walk(directory.GetDirectory(key.GetName()), name + "/")
            elif cls == "TTree":
                cols = ROOT.RDataFrame(key.GetName(), directory).AsNumpy()
                out[name] = {c: [str(x) for x in v] if v.dtype == object else v.tobytes()
                             for c, v in cols.items()}
            elif cls == "TNamed":
                out[name] = _without_timings(json.loads(key.ReadObj().GetTitle()))
            elif cls == "TGraph":
                g = key.ReadObj()
                n = g.GetN()
                out[name] = [np.frombuffer(g.GetX(), np.float64, n).tobytes(),
                             np.frombuffer(g.GetY(), np.float64, n).tobytes()]
            elif cls == "TEfficiency":
                e = key.ReadObj()
                out[name] = [[h.GetBinContent(i) for i in range(h.GetNcells())]
                             for h in (e.GetPassedHistogram(), e.GetTotalHistogram())]
            else:  # TH1D, TH2D
                h = key.ReadObj()
                out[name] = [h.GetBinContent(i) for i in range(h.GetNcells())]
    walk(f, "")
    f.Close()
    return out


def _outputs(folder):
    """Everything a run wrote, comparable bit for bit (timings and dates aside)."""
    plots = folder / "plots"
    got = {name: (plots / name).read_bytes() for name in sorted(os.listdir(plots))
           if name.endswith(".csv")}
    got["metrics.json"] = _without_timings(json.loads((plots / "metrics.json").read_text()))
    got["results.root"] = _root_objects(plots / "results.root")
    return got


def _run(monkeypatch, folder, chunk, path, model, *extra, output="p.npy"):
    monkeypatch.setattr(streaming, "CHUNK_TRACKS", chunk)
    folder.mkdir()
    assert run_inference("-f", path, "--model", model, "--output", folder / output,
                         "--plots-dir", folder / "plots", "--no-plots", *extra) == 0
    return folder


@pytest.mark.parametrize("case", ["compare", "root_output", "threads"])
def test_chunks_give_the_whole_file_bit_for_bit(quick_models, matching_file, tmp_path,
                                                monkeypatch, capsys, case):
    """20,000 tracks (16 with a non-finite feature) in chunks of 3,000 (batches of 1,000)
    against one chunk: the network with derived inputs; --compare with the INT8 and
    the network 0 model (its own scaling), --ranking and --cross-check; the .root
    output; --threads 2."""
    extra = {"compare": ["--compare", quick_models["int8"], quick_models["net0"],
                         "--ranking", "--cross-check"],
             "root_output": [], "threads": ["--threads", "2"]}[case]
    output = "p.root" if case == "root_output" else "p.npy"
    args = (matching_file, quick_models["net1"], "--batch", "1000", *extra)
    one = _run(monkeypatch, tmp_path / "one", 10**9, *args, output=output)
    many = _run(monkeypatch, tmp_path / "many", 3000, *args, output=output)
    assert "read 20,000 tracks" in capsys.readouterr().out
    if output.endswith(".npy"):
        a, b = np.load(one / output), np.load(many / output)
        assert a.tobytes() == b.tobytes() and np.isnan(a).sum() >= 10
    else:
        assert _root_objects(one / output) == _root_objects(many / output)
    mine, theirs = _outputs(one), _outputs(many)
    assert mine == theirs
    if case == "compare":
        metrics = mine["metrics.json"]
        assert len(metrics["comparison"]) == 4 and metrics["ranking"]
        assert metrics["cross_check"]["tracks"] == 20_000 - metrics["tracks_nonfinite"]
        assert {"compare.csv", "comparison.csv", "ranking.csv"} & set(mine)


def test_an_unlabelled_file_in_chunks(quick_models, root_features, tmp_path, monkeypatch):
    ROOT = rootio.import_root()
    data, _ = root_features
    path = str(tmp_path / "nolabel.root")
    ROOT.RDF.FromNumpy({n: np.ascontiguousarray(data[:5000, j])
                        for j, n in enumerate(MATCHING)}).Snapshot(DEFAULT_TREE, path)
    outs = []
    for name, chunk in (("one", 10**9), ("many", 1000)):
        monkeypatch.setattr(streaming, "CHUNK_TRACKS", chunk)
        out = tmp_path / f"{name}.npy"
        assert run_inference("-f", path, "--model", quick_models["net1"], "--batch", "500",
                             "--output", out, "--plots-dir", tmp_path / "plots") == 0
        outs.append(np.load(out))
    assert outs[0].shape == (5000,) and outs[0].tobytes() == outs[1].tobytes()
    assert not (tmp_path / "plots").exists()


def test_stream_keeps_the_entry_order_across_files(matching_file, rntuple_file, clustered_file):
    """Files of both kinds (read group by group) in chunks that straddle the files:
    the rows of rootio.read_root, in order, and each chunk at its first entry."""
    files = [matching_file, rntuple_file, clustered_file]
    names = MATCHING[:5]
    whole = rootio.read_root(files, DEFAULT_TREE, names, threads=1, optional=("ghost",),
                             matrix=True)
    firsts, parts, labels = [], [], []

    def keep(first, total, columns):
        assert total == len(labels) or total == 75_000
        firsts.append(first)
        parts.append(columns[rootio.MATRIX].copy())
        labels.append(columns["ghost"].copy())
    assert stream_root(files, DEFAULT_TREE, names, 7_777, keep, optional=("ghost",)) == 75_000
    assert firsts == list(range(0, 75_000, 7_777))
    assert np.concatenate(parts).tobytes() == whole[rootio.MATRIX].tobytes()
    assert np.concatenate(labels).tobytes() == whole["ghost"].tobytes()


def test_an_error_in_a_chunk_ends_the_read_with_that_error(matching_file):
    def fail(first, total, columns):
        if first >= 5000:
            raise GhostError(f"bad chunk at {first}")
    with pytest.raises(GhostError, match="bad chunk at 5000"):
        stream_root([matching_file], DEFAULT_TREE, MATCHING, 2500, fail)
    seen = []  # the next read starts afresh
    stream_root([matching_file], DEFAULT_TREE, MATCHING, 8000,
                lambda first, total, columns: seen.append((first, len(columns[rootio.MATRIX]))))
    assert seen == [(0, 8000), (8000, 8000), (16000, 4000)]


def test_free_memory_is_handed_back_where_libc_can_and_nothing_happens_elsewhere(monkeypatch):
    """release_free_memory calls glibc's malloc_trim(0) once; a C library without it
    (or none found) is no error."""
    import ctypes
    calls = []

    class Glibc:
        def malloc_trim(self, pad):
            calls.append(pad)
            return 1
    monkeypatch.setattr(ctypes, "CDLL", lambda name: Glibc())
    assert streaming.release_free_memory() is None and calls == [0]

    class Other:  # no malloc_trim (macOS's libc)
        pass
    monkeypatch.setattr(ctypes, "CDLL", lambda name: Other())
    assert streaming.release_free_memory() is None

    def missing(name):
        raise OSError("no C library")
    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert streaming.release_free_memory() is None
