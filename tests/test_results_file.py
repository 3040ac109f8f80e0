"""results_file.py and rootwrite.write_results: results.root as a TMVA user expects it,
opened with ROOT and with uproot, every object checked against the numbers of
metrics.json, thresholds.csv and comparison.csv written beside it: the training
report's (TrainTree and TestTree, network, INT8, baseline and limit) and an
inference run's (the input's tracks, a compared model, the limit)."""
import csv
import json
import math

import numpy as np
import pytest

import rootwrite
from dataset import load_meta, load_split
from diagnostics import correlations
from helpers import run_inference
from rootio import import_root
from utils import GhostError

CLASSES = {"ghost": 1, "real": 0}


def read(path):
    """Every object of a ROOT file by name ("folder/name" in a folder), with its
    class, read with ROOT."""
    ROOT = import_root()
    f = ROOT.TFile.Open(str(path))
    objects = {}
    for key in f.GetListOfKeys():
        if key.GetClassName() == "TDirectoryFile":
            objects |= {f"{key.GetName()}/{k.GetName()}": (str(k.GetClassName()), k.ReadObj())
                        for k in key.ReadObj().GetListOfKeys()}
        else:
            objects[str(key.GetName())] = (str(key.GetClassName()), key.ReadObj())
    return f, objects


def tree_columns(path, tree):
    frame = import_root().RDataFrame(tree, str(path))
    return {k: np.asarray(v) for k, v in frame.AsNumpy().items()}


def flow_contents(h):
    return np.array([h.GetBinContent(i) for i in range(h.GetNbinsX() + 2)])


def distance_to_line(x, y, point):
    """The distance of `point` from the polyline through (x, y)."""
    a, b = np.column_stack([x, y])[:-1], np.column_stack([x, y])[1:]
    d = b - a
    t = np.clip(((point - a) * d).sum(axis=1) / np.maximum((d * d).sum(axis=1), 1e-300), 0, 1)
    return float(np.hypot(*(a + t[:, None] * d - point).T).min())


def keys_of(metrics):
    """Each classifier compared (or the analysed model alone): (metrics.json's name, key)."""
    names = [c["name"] for c in metrics.get("comparison", [{"name": "network"}])]
    return [(n, "network" if i == 0 else "limit" if n.startswith("limit") else
             n.replace(".", "_").replace("/", "_")) for i, n in enumerate(names)]


def check_results(folder, splits, points):
    """results.root of an analysis folder against its metrics.json, thresholds.csv and
    comparison.csv: `splits` the trees expected, `points` the working points' names;
    returns the TestTree's columns (ROOT's reading)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    path = folder / "results.root"
    f, objects = read(path)
    classes = {n: c for n, (c, _) in objects.items()}
    keys = keys_of(metrics)
    trees = {"train": "TrainTree", "test": "TestTree"}
    want = {trees[s]: "TTree" for s in splits} | {"thresholds": "TTree",
                                                    "configuration": "TNamed",
                                                    "provenance": "TNamed"}
    want |= {f"{kind}_{key}": "TGraph" for _, key in keys for kind in ("roc", "rejection")}
    want |= {f"correlation_{c}": "TH2D" for c in CLASSES}
    efficiencies = {f"{kind}_{var}_{p}" for var in metrics["kinematics"]
                    for p in points for kind in ("eff", "rej")}
    want |= {n: "TEfficiency" for n in efficiencies}
    want |= {f"counts/{n}_{part}": "TH1D" for n in efficiencies for part in ("passed", "total")}
    assert want.items() <= classes.items()
    histograms = {n for n, c in classes.items() if c == "TH1D" and n.startswith("scores_")}
    assert set(classes) == set(want) | histograms

    # the trees: one entry per track, TMVA's branches, the class counts of metrics.json
    test = tree_columns(path, "TestTree")
    assert len(test["classID"]) == metrics["tracks"]
    assert set(metrics["features"]) <= set(test)
    ok = np.isfinite(test["network"])
    assert int((test["classID"][ok] == 1).sum()) == metrics["ghosts"]
    assert int((test["classID"][ok] == 0).sum()) == metrics["reals"]
    assert (test["className"] == np.where(test["classID"] == 1, "ghost", "real")).all()
    assert objects["TestTree"][1].GetTitle().endswith("classID 0 real (signal), 1 ghost "
                                                      "(background)")

    # score histograms: the tree's scores in ROOT's bins, Sumw2, axis titles
    for name in histograms:
        key, split, cls = name[len("scores_"):].rsplit("_", 2)
        h = objects[name][1]
        values = (test if split == "test" else tree_columns(path, "TrainTree"))[key]
        labels = (test if split == "test" else tree_columns(path, "TrainTree"))["classID"]
        x = values[np.isfinite(values) & (labels == CLASSES[cls])]
        edges = np.array([h.GetXaxis().GetBinLowEdge(i) for i in range(1, h.GetNbinsX() + 2)])
        counts = np.bincount(np.searchsorted(edges, x.astype(np.float64), side="right"),
                             minlength=len(edges) + 1)
        assert np.array_equal(flow_contents(h), counts), name
        assert h.GetEntries() == len(x) and h.GetSumw2N() == h.GetNbinsX() + 2
        assert h.GetBinError(50) == pytest.approx(math.sqrt(h.GetBinContent(50)))
        assert h.GetXaxis().GetTitle() and h.GetYaxis().GetTitle() == "tracks"
    for name, key in keys:  # every split's histograms of every classifier in the tree
        for cls in CLASSES:
            assert f"scores_{key}_test_{cls}" in histograms, (name, cls)

    # ROC and rejection graphs: the AUC and the ghost rejection of comparison.csv (to
    # 1e-5 with every point; a ROC of over 4,000 points is kept at a few thousand)
    compared = {r["model"]: r for r in csv.DictReader(open(folder / "comparison.csv"))}
    for name, key in keys:
        g = objects[f"roc_{key}"][1]
        x, y = np.array(g.GetX()), np.array(g.GetY())
        every = len(x) < 4000 and metrics["tracks"] < 4000
        assert np.trapezoid(y, x) == pytest.approx(float(compared[name]["auc"]),
                                                   abs=1e-5 if every else 1e-4)
        assert y[1 - x >= 0.99 - 1e-12].max() == pytest.approx(
            float(compared[name]["rejection@0.99"]), abs=1e-5 if every else 2e-3)
        r = objects[f"rejection_{key}"][1]
        assert np.allclose(np.array(r.GetX()), 1 - x) and np.allclose(np.array(r.GetY()), y)
        assert g.GetXaxis().GetTitle() == "real tracks called ghost"
        assert r.GetXaxis().GetTitle() == "real-track efficiency"
        assert r.GetYaxis().GetTitle() == "ghost rejection"
    g = objects["roc_network"][1]  # every row of the threshold scan is on it (a point)
    x, y = np.array(g.GetX()), np.array(g.GetY())
    for row in metrics["thresholds"]:
        at = [row["n_fp"] / metrics["reals"], row["n_tp"] / metrics["ghosts"]]
        if metrics["tracks"] < 4000:
            assert np.abs(np.column_stack([x, y]) - at).sum(axis=1).min() < 1e-9
        assert distance_to_line(x, y, at) < 1e-3, row["threshold"]

    # the threshold table: thresholds.csv row for row, the working points by name
    table = tree_columns(path, "thresholds")
    rows = list(csv.DictReader(open(folder / "thresholds.csv")))
    assert len(table["threshold"]) == len(rows)
    for key in ("threshold", "n_tp", "n_fp", "n_tn", "n_fn", "accuracy"):
        assert np.allclose(table[key], [float(r[key]) for r in rows], rtol=1e-5), key
    n_scan = len(metrics["thresholds"])
    assert list(table["label"]) == [""] * n_scan + points
    wps = metrics["working_points"]
    assert list(table["working_point"][n_scan:]) == [w["target_efficiency"] for w in wps]

    # TEfficiency: the kinematics' counts, efficiencies and Clopper-Pearson intervals
    for var, k in metrics["kinematics"].items():
        for p, point in zip(points, k["points"]):
            for kind, value, passed, total in (
                    ("eff", "efficiency", "real_kept", "n_real"),
                    ("rej", "rejection", "ghosts_removed", "n_ghost")):
                e = objects[f"{kind}_{var}_{p}"][1]
                assert e.GetStatisticOption() == 0 and e.GetConfidenceLevel() == \
                    pytest.approx(0.6826894921)
                assert flow_contents(e.GetTotalHistogram()).tolist() == k[total]
                assert flow_contents(e.GetPassedHistogram()).tolist() == point[passed]
                for part, counts in (("passed", point[passed]), ("total", k[total])):
                    h = objects[f"counts/{kind}_{var}_{p}_{part}"][1]
                    assert flow_contents(h).tolist() == counts
                assert e.GetTotalHistogram().GetXaxis().GetTitle() == k["label"]
                for i, n in enumerate(k[total]):
                    if n == 0:
                        assert point[value][i] is None
                        continue
                    assert e.GetEfficiency(i) == pytest.approx(point[value][i], abs=1e-12)
                    low = e.GetEfficiency(i) - e.GetEfficiencyErrorLow(i)
                    high = e.GetEfficiency(i) + e.GetEfficiencyErrorUp(i)
                    assert low == pytest.approx(point[f"{value}_low"][i], abs=1e-9)
                    assert high == pytest.approx(point[f"{value}_high"][i], abs=1e-9)

    # the features' rank correlations, per class, on the TestTree's tracks
    data = np.column_stack([test[n] for n in metrics["features"]])
    fine = np.isfinite(data).all(axis=1)
    matrices = correlations(data[fine], test["classID"][fine] == 1)
    for cls in CLASSES:
        h = objects[f"correlation_{cls}"][1]
        n = len(metrics["features"])
        assert [h.GetXaxis().GetBinLabel(i + 1) for i in range(n)] == metrics["features"]
        got = np.array([[h.GetBinContent(i + 1, j + 1) for j in range(n)] for i in range(n)])
        assert np.allclose(got, matrices[cls], atol=1e-6)

    # the configuration and provenance: JSON
    config = json.loads(objects["configuration"][1].GetTitle())
    assert config["run"]["features"] == metrics["features"]
    provenance = json.loads(objects["provenance"][1].GetTitle())
    assert provenance["results"]["commit"] and "created" in provenance["results"]
    f.Close()
    check_with_uproot(path, classes, objects_of=read)
    tracks = sum(len(tree_columns(path, trees[s])["classID"]) for s in splits)
    assert path.stat().st_size < 100 * tracks  # README: under 100 bytes a track
    return test


def check_with_uproot(path, classes, objects_of):
    """The same file through uproot: the same objects, trees and numbers."""
    uproot = pytest.importorskip("uproot")
    u = uproot.open(path)
    assert {k.split(";")[0]: v for k, v in u.classnames().items()
            if v != "TDirectory"} == classes
    f, objects = objects_of(path)
    for name, cls in classes.items():
        if cls == "TTree":
            mine = u[name].arrays(library="np")
            for column, values in tree_columns(path, name).items():
                assert np.array_equal(mine[column], values, equal_nan=values.dtype.kind == "f")
        elif cls == "TH1D":
            assert np.array_equal(u[name].values(flow=True), flow_contents(objects[name][1]))
            assert np.array_equal(u[name].variances(flow=True), u[name].values(flow=True))
        elif cls == "TGraph":
            assert np.array_equal(u[name].values()[1], np.array(objects[name][1].GetY()))
        elif cls == "TEfficiency":  # uproot 5.7 reads no TEfficiency: its counts instead
            for part in ("Passed", "Total"):
                counts = u[f"counts/{name}_{part.lower()}"].values(flow=True)
                assert np.array_equal(counts, flow_contents(getattr(objects[name][1],
                                                                    f"Get{part}Histogram")()))
        elif cls == "TNamed":
            json.loads(u[name].member("fTitle"))
        elif cls == "TH2D":
            assert list(u[name].axis(0).labels()) == [
                objects[name][1].GetXaxis().GetBinLabel(i + 1)
                for i in range(objects[name][1].GetNbinsX())]
    f.Close()


def test_training_report_results_root(trained_model, raw_dataset):
    """TrainTree and TestTree with network, INT8, baseline (and the limit on the test
    split), every object against the report's metrics.json and CSVs."""
    folder = trained_model.models / "training_report"
    test = check_results(folder, ("train", "test"), ["eff99", "eff95", "model99"])
    assert {"network", "INT8", "baseline", "limit"} <= set(test)
    train = tree_columns(folder / "results.root", "TrainTree")
    assert {"network", "INT8", "baseline"} <= set(train) and "limit" not in train
    weights = load_meta(raw_dataset).class_weights  # every track kept, class weights
    for tree in (train, test):
        assert np.allclose(tree["weight"], np.where(tree["classID"] == 1, weights["ghost"],
                                                    weights["real"]))
    f, objects = read(folder / "results.root")
    assert "scores_limit_test_ghost" in objects and "scores_limit_train_ghost" not in objects
    assert "scores_baseline_train_real" in objects
    f.Close()


def test_inference_results_root(trained_model, matching_file, tmp_path):
    """An input file's tracks as the TestTree (in entry order: its network branch is
    --output's probabilities, NaN where a feature is not finite), a compared model
    and the limit, every object against metrics.json and the CSVs."""
    models, plots = trained_model.models, tmp_path / "plots"
    assert run_inference("-f", matching_file, "--model", models / "ghost_model.onnx",
                         "--compare", models / "ghost_model_int8.onnx", "--no-plots",
                         "--output", tmp_path / "p.npy", "--plots-dir", plots) == 0
    test = check_results(plots, ("test",), ["eff99", "eff95", "model99"])
    probabilities = np.load(tmp_path / "p.npy")
    assert np.array_equal(test["network"], probabilities, equal_nan=True)
    assert np.isnan(probabilities).any() and "ghost_model_int8_onnx" in test
    assert set(np.unique(test["weight"])) == {1.0} and "limit" in test


def test_write_results_refuses_and_leaves_nothing(tmp_path):
    """A failure inside (inconsistent efficiency counts, a column ROOT has no type
    for) is one line naming the output, and no file is left."""
    path = tmp_path / "r.root"
    for bad in ({"e": ("efficiency", "e;x;y", [0, 1], [3, 0, 0], [2, 0, 0])},
                {"t": ("tree", "t", {"c": np.zeros(3, complex)})}):
        with pytest.raises(GhostError, match=r"could not write .*r\.root \("):
            rootwrite.write_results(str(path), bad)
        assert not path.exists()


def test_one_class_still_writes_results_root(quick_models, raw_dataset, tmp_path):
    """Only real tracks: the trees and the real tracks' histograms hold them, the
    ghosts' histograms are empty; no correlations (they need both classes)."""
    data, labels = load_split(raw_dataset, "test")
    real = labels[:, 0] == 0
    for split in ("train", "valid", "test"):
        np.save(tmp_path / f"reals_{split}_data.npy", data[real])
        np.save(tmp_path / f"reals_{split}_labels.npy", labels[real])
    assert run_inference("-f", tmp_path / "reals", "--model", quick_models["net1"],
                         "--no-plots", "--plots-dir", tmp_path / "p") == 0
    f, objects = read(tmp_path / "p" / "results.root")
    assert objects["TestTree"][1].GetEntries() == int(real.sum())
    assert objects["scores_network_test_real"][1].GetEntries() == int(real.sum())
    assert objects["scores_network_test_ghost"][1].GetEntries() == 0
    assert {"TrainTree", "roc_network", "thresholds"} <= set(objects)
    assert "correlation_real" not in objects
    f.Close()
