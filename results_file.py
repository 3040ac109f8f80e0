"""results.root: an analysis for ROOT users, laid out as TMVA writes its results
(rootwrite.write_results writes it).  Every object's name says what it holds:

  TrainTree, TestTree        per track (the first inputs.TREE_ROWS of each split, in
                             order): the features, classID (0 real track: TMVA's signal,
                             1 ghost: its background), className, weight (the dataset's
                             class weight, else 1) and each classifier's score
  thresholds                 thresholds.csv's rows: the scan, then the working points
                             (working_point = the target efficiency, label their name)
  scores_<c>_<split>_<class> TH1D of classifier c's scores (Sumw2, under/overflow kept)
  roc_<c>, rejection_<c>     TGraphs: the ROC, and ghost rejection vs real-track efficiency
  correlation_<class>        TH2D, the features' rank correlations (the TestTree's tracks)
  eff_<var>_<point>          TEfficiency of the real tracks kept, per kinematic bin
  rej_<var>_<point>          TEfficiency of the ghosts removed, per kinematic bin
  counts/<eff or rej>_..._passed, _total  their counts as TH1D (uproot reads no TEfficiency)
  configuration, provenance  TNamed, JSON: the run and the model; where they come from

A classifier c is "network" (the analysed model), "INT8", "baseline", "limit" (the
known optimum, features.LIMIT) or a compared model's file name; a working point is
eff99, eff95 (a cut keeping that efficiency here) or model99 (the model's own cut).
"""
import datetime
import json

import numpy as np

from compare import Curve
from diagnostics import correlations
from evaluation import LIMIT_CURVE, Tracks
from features import LIMIT
from inputs import TREE_ROWS
from kinematics import edges_at_or_below
from metrics import downsample_roc, row
from plots import SCORE_BINS
from provenance import toolkit_version
from utils import plain

TREES = {"train": "TrainTree", "test": "TestTree"}
CLASSES = (("ghost", True), ("real", False))  # classID 1 and 0
LIMIT_BINS = 100  # the limit's histograms: its central 99.8 % in this many bins


def point_name(wp):
    """A metrics.WorkingPoint's name in object names: eff99, eff99p5, model99."""
    return ("model" if wp.fixed else "eff") + f"{100 * wp.target_efficiency:.4g}".replace(
        ".", "p")


def results_objects(e, columns):
    """{name: object} for rootwrite.write_results of the evaluation.Evaluation `e`
    (`columns`: the threshold table's, as thresholds.csv writes them)."""
    t = tracks_of(e)
    objects = {**trees(t, e.context.get("input_kind") == "root"),
               "thresholds": threshold_tree(e.analysis, columns),
               **score_histograms(t), **curves(e, t), **correlation_matrices(t),
               **efficiencies(e)}
    saved = t.saved.to_dict() if t.saved is not None else {}
    version, commit = toolkit_version()
    written = {"toolkit": f"ghost-tracks {version}", "commit": commit, "created":
               datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    for name, record in (("configuration", {"run": e.context, "model": {
            k: v for k, v in saved.items() if k != "provenance"}}),
            ("provenance", {"results": written, "model": saved.get("provenance")})):
        objects[name] = ("text", json.dumps(plain(record), sort_keys=True))
    return objects


def tracks_of(e):
    """The evaluation's Tracks; without (no features kept), the analysed model's
    scores and the labels of its splits."""
    if e.tracks is not None:
        return e.tracks
    splits = {"test": e.plot.test, **({"train": e.plot.train} if e.plot.train else {})}
    return Tracks([], {}, {s: labels for s, (_, labels) in splits.items()},
                  {"network": ("network", {s: scores for s, (scores, _) in splits.items()})})


def trees(t, root_input=False):
    """TrainTree and TestTree: one entry per track, TMVA's branches."""
    out = {}
    for split, tree in TREES.items():
        if split not in t.labels:
            continue
        labels = np.asarray(t.labels[split], dtype=bool)
        n = min(len(labels), TREE_ROWS)
        data = t.features.get(split)
        n = n if data is None else min(n, len(data))
        cols = {} if data is None else {
            name: np.asarray(data[:n, j], dtype=np.float32) for j, name in enumerate(t.names)}
        ghost = labels[:n]
        cols["classID"] = ghost.astype(np.int32)
        cols["className"] = np.where(ghost, b"ghost", b"real")
        w = t.class_weights
        cols["weight"] = (np.where(ghost, w["ghost"], w["real"]) if w
                          else np.ones(n)).astype(np.float32)
        for key, (_, by_split) in t.scores.items():
            if split in by_split:
                cols[key] = np.asarray(by_split[split][:n], dtype=np.float32)
        what = "input" if root_input else split
        out[tree] = ("tree", f"the first {n:,} of the {len(labels):,} {what} tracks, in "
                     "order; classID 0 real (signal), 1 ghost (background)", cols)
    return out


def threshold_tree(a, columns):
    """thresholds.csv as a tree: the scan (working_point 0, label ""), then each
    working point (its target efficiency, its name)."""
    rows = [row(a.table, i) for i in range(len(a.table["threshold"]))]
    rows += [w.to_dict() for w in a.working_points]
    table = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in columns}
    scan = [0.0] * len(a.table["threshold"])
    table["working_point"] = np.array(scan + [w.target_efficiency for w in a.working_points])
    table["label"] = np.array([b""] * len(scan) + [point_name(w).encode()
                                                    for w in a.working_points], dtype="S")
    return ("tree", "the threshold scan, then the working points", table)


def score_edges(key, by_split):
    """Probabilities in plots.SCORE_BINS; the limit (a log-likelihood ratio) over the
    central 99.8 % of its values."""
    if key != "limit":
        return SCORE_BINS
    x = np.concatenate([v[np.isfinite(v)] for v in by_split.values()])
    lo, hi = np.quantile(x, [0.001, 0.999]) if len(x) else (0.0, 1.0)
    return np.linspace(lo, hi if hi > lo else lo + 1.0, LIMIT_BINS + 1)


def score_histograms(t):
    """Each classifier's scores per split and class: the counts in ROOT's bins (a
    value on an edge in the bin above it), the underflow and overflow included."""
    out = {}
    for key, (name, by_split) in t.scores.items():
        by_split = {s: np.asarray(v) for s, v in by_split.items() if s in TREES}
        edges = score_edges(key, by_split)
        axis = f"{LIMIT} (log-likelihood ratio)" if key == "limit" else "ghost probability"
        for split, scores in by_split.items():
            ok = np.isfinite(scores)
            for cls, ghost in CLASSES:
                x = scores[ok & (np.asarray(t.labels[split], dtype=bool) == ghost)]
                counts = np.bincount(edges_at_or_below(x, edges), minlength=len(edges) + 1)
                out[f"scores_{key}_{split}_{cls}"] = (
                    "th1", f"{name}, {cls} tracks, {split} split;{axis};tracks", edges, counts)
    return out


def curves(e, t):
    """ROC and rejection graphs of every classifier compared (the analysed model
    alone without a comparison), a few thousand points each (metrics.downsample_roc)."""
    keys = {name: key for key, (name, _) in t.scores.items()}
    shown = e.plot.curves or [Curve.from_analysis("network", e.analysis)]
    out = {}
    for i, c in enumerate(shown):
        key = "network" if i == 0 else "limit" if c.name == LIMIT_CURVE else keys.get(c.name)
        key = key or f"classifier{i}"
        keep = downsample_roc(c.fpr, c.tpr)
        out[f"roc_{key}"] = ("graph", f"ROC of {c.name};real tracks called ghost;ghosts "
                             "called ghost", c.fpr[keep], c.tpr[keep])
        out[f"rejection_{key}"] = ("graph", f"{c.name};real-track efficiency;ghost "
                                   "rejection", 1 - c.fpr[keep], c.tpr[keep])
    return out


def correlation_matrices(t):
    """The features' rank correlations (diagnostics.correlations) per class, on the
    TestTree's tracks with every feature finite (none with fewer than 2 of a class)."""
    data = t.features.get("test")
    if data is None or not t.names:
        return {}
    n = min(len(data), len(t.labels["test"]), TREE_ROWS)
    ok = np.isfinite(data[:n]).all(axis=1)
    ghost = np.asarray(t.labels["test"][:n], dtype=bool)[ok]
    if min(ghost.sum(), (~ghost).sum()) < 2:
        return {}
    matrices = correlations(data[:n][ok], ghost)
    return {f"correlation_{cls}": ("th2", f"rank correlations of the features, {cls} "
                                   "tracks;;", t.names, matrices[cls]) for cls, _ in CLASSES}


def efficiencies(e):
    """Per kinematic variable and working point, the real tracks kept (of the real
    tracks) and the ghosts removed (of the ghosts) in each bin, as TEfficiency, and
    their counts as TH1Ds in the folder counts/."""
    out, counts = {}, {}
    for var, k in (e.plot.kinematics or {}).items():
        for wp, p in zip(e.analysis.working_points, k["points"]):
            cut = f"{wp.label}, ghost if score > {wp.threshold:.4f}"
            for kind, what, passed, total in (
                    ("eff", "real-track efficiency", p["real_kept"], k["n_real"]),
                    ("rej", "ghost rejection", p["ghosts_removed"], k["n_ghost"])):
                name = f"{kind}_{var}_{point_name(wp)}"
                out[name] = ("efficiency", f"{what}, {cut};{k['label']};{what}", k["edges"],
                             passed, total)
                for part, values in (("passed", passed), ("total", total)):
                    counts[f"counts/{name}_{part}"] = (
                        "th1", f"{what}, {cut}: {part};{k['label']};tracks", k["edges"], values)
    return {**out, **counts}
