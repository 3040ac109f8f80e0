"""evaluation.py: one scored sample -> the analysis record, the same for inference.py
and the training report; metrics.WorkingPoint's rows; the analysis rooms' imports."""
import ast
import json
import os
from argparse import Namespace
from types import SimpleNamespace

import numpy as np
import pytest

import inference
import kinematics
import training_report
from architecture import ModelConfig
from artifacts import SavedConfig
from dataset import DatasetMeta
from evaluation import LIMIT_CURVE, Sample, evaluate, own_threshold, rank_features
from features import LIMIT
from helpers import ROOT_DIR
from inputs import Input
from metrics import SortedScores, working_points
from outputs import AtomicOutputs

NAMES = ["qop", "best_pt", "tx", "ty", "n_velo", "n_scifi", "chi2"]


def _tracks(rng, n):
    """[n, NAMES] raw-looking features, labels, and scores that depend on them."""
    labels = rng.random(n) < 0.3
    x = np.column_stack([
        rng.normal(0, 2e-4, n), rng.exponential(1500, n) + 100, rng.normal(0, 0.1, n),
        rng.normal(0, 0.1, n), rng.integers(3, 24, n), rng.integers(10, 13, n),
        rng.exponential(1.0, n) + 2.0 * labels]).astype(np.float32)
    return x, labels


def _score(x):
    return (1 / (1 + np.exp(-(x[:, 6] - 2.0)))).astype(np.float32)


@pytest.fixture(scope="module")
def case():
    """A dataset's test and train splits, the network's scores on them and its
    record, as both analyses get them."""
    rng = np.random.default_rng(7)
    test_x, test_y = _tracks(rng, 6000)
    train_x, train_y = _tracks(rng, 9000)
    saved = SavedConfig(model=ModelConfig(0, len(NAMES), (8, 4)), features=NAMES,
                        threshold=0.6, working_point={"efficiency": 0.99, "threshold": 0.7})
    limit = (test_x[:, 6] + rng.normal(0, 0.5, len(test_x))).astype(np.float32)
    return SimpleNamespace(test=(test_x, test_y), train=(train_x, train_y), saved=saved,
                           limit=limit, scores=_score(test_x), train_scores=_score(train_x))


def _inference_record(c, seed=42):
    """inference.py's analysis stages on the case, read as a dataset prefix."""
    (x, y), (tx, ty) = c.test, c.train
    args = Namespace(filename="ds/raw", model="net.onnx", compare=None, output=None,
                     backend="auto", nocuda=True, batch=None, seed=seed, verbose=False)
    model = SimpleNamespace(saved=c.saved, path="net.onnx", kind="onnx", int8=False)
    settings = SimpleNamespace(track="matching", features=NAMES, network=0,
                               normalization=None, normalization_origin=None)
    scorer = inference.Scorer(model, settings, args)
    inp = Input(x, y, train=(tx, ty), limit=c.limit,
                columns=kinematics.columns_of(x, NAMES, {LIMIT: c.limit}))
    scored = inference.Scored(SimpleNamespace(path="ds/raw", kind="dataset"), inp,
                              np.ones(len(x), bool), c.scores, c.train_scores,
                              "stand-in", 1.0)
    record = inference.analyse_input(args, scorer, [], scored,
                                     (inference.DEFAULT_THRESHOLDS, (0.99, 0.95)))
    return record, scorer, scored


def _report_metrics(c, folder):
    """training_report.write on the same case: its metrics.json."""
    (x, y), (tx, ty) = c.test, c.train
    r = training_report.ReportInput(
        {"test": (x, y.astype(np.float32)), "train": (tx, ty.astype(np.float32))},
        DatasetMeta(features=NAMES), {LIMIT: c.limit}, c.saved,
        {"network": {"test": c.scores, "train": c.train_scores}}, _score)
    trial = {"params": {"lr": 0.01}, "epochs": 2, "macs": 100, "params_count": 50,
             "loss": 0.5, "auc": 0.9, "history": {"epoch": [1, 2], "loss": [1, 0.5],
                                                  "auc": [0.8, 0.9]}}
    with AtomicOutputs() as out:
        files = training_report.write(out, str(folder), r, [trial], {"lr": 0.01}, formats=())
    return json.loads((folder / "metrics.json").read_text()), files


def test_inference_and_the_report_record_the_same_analysis(case, tmp_path):
    record, _, _ = _inference_record(case)
    mine = json.loads(json.dumps(record.metrics()))
    theirs, files = _report_metrics(case, tmp_path)
    assert "ranking.csv" in files and "search_trials.csv" in files
    # the run's context differs, and which classifiers are compared; every number
    # of the analysis is the same
    context = {"input", "input_kind", "model", "model_kind", "int8",
               "scoring", "track", "features", "network", "macs_per_track",
               "normalized_by_inference", "normalization_origin", "tracks",
               "tracks_nonfinite", "scoring_seconds", "tracks_per_second", "derived",
               "tracks_nonfinite_derived_only"}
    shared = set(mine) - context - {"comparison"}
    assert shared == set(theirs) - context - {"comparison", "ranking"}
    for key in sorted(shared):
        assert mine[key] == theirs[key], key
    assert mine["working_points"][-1]["label"] == "model's 99.0% point"
    assert set(mine["kinematics"]) == {"p", "pt", "eta", "n_velo", "n_scifi"}
    assert mine["comparison"][-1]["name"] == theirs["comparison"][-1]["name"] == LIMIT_CURVE
    assert mine["comparison"][0]["auc"] == theirs["comparison"][0]["auc"] == mine["roc_auc"]
    assert mine["gap_to_limit"]["auc_gap"] == pytest.approx(
        mine["limit"]["auc"] - mine["roc_auc"])


def test_the_ranking_is_the_same_in_both(case, tmp_path):
    record, scorer, scored = _inference_record(case, seed=3)
    theirs, _ = _report_metrics(case, tmp_path)
    # the report ranks a shuffled 100,000 of the test split with its seed (42): on
    # 6,000 tracks, every one of them; inference ranks the first 200,000
    x, y = case.test
    rows = np.random.default_rng(42).permutation(len(x))
    ranking = rank_features(_score, x[rows], y[rows], NAMES, 42)
    assert json.loads(json.dumps(ranking.rows)) == theirs["ranking"]
    assert ranking.line("head", top=2).endswith(", ...")
    assert ranking.line("head").count(",") == len(NAMES) - 1
    assert ranking.csv().splitlines()[0] == "rank,feature,auc_drop,rejection_drop_at_99"
    stand_in = SimpleNamespace(scores=lambda data, finite=None: _score(data),
                               settings=scorer.settings, model=scorer.model)
    assert not scorer.model.saved.model.derived  # the features alone, scored by _score
    mine = inference.feature_ranking(Namespace(seed=42), stand_in, scored)
    assert mine.rows[0]["feature"] == ranking.rows[0]["feature"] == "chi2"
    assert "ranking" not in record.metrics()  # only where asked
    record.ranking = mine
    assert record.metrics()["ranking"] == json.loads(json.dumps(mine.rows))


def test_non_finite_tracks_are_left_out_as_if_absent(case):
    x, y = case.test
    scores = case.scores.copy()
    finite = np.ones(len(x), bool)
    finite[::7] = False
    scores[~finite] = np.nan
    saved = case.saved
    columns = kinematics.columns_of(x, NAMES, {})
    full = evaluate(Sample("m", saved, 10, scores, y, finite, limit=case.limit,
                           columns=columns), "t", {})
    part = evaluate(Sample("m", saved, 10, case.scores[finite], y[finite], None,
                           limit=case.limit[finite],
                           columns={k: v[finite] for k, v in columns.items()}), "t", {})
    assert json.dumps(full.metrics()) == json.dumps(part.metrics())
    assert [c.name for c in full.plot.curves] == ["m", LIMIT_CURVE]
    assert full.metrics()["gap_to_limit"] == part.gap
    assert full.analysis.n == int(finite.sum())


def test_comparison_only_with_several_curves_or_always(case):
    x, y = case.test
    alone = evaluate(Sample("m", case.saved, None, case.scores, y), "t", {})
    assert alone.plot.curves is None and alone.limit is None
    assert {"comparison", "limit", "gap_to_limit"}.isdisjoint(alone.metrics())
    always = evaluate(Sample("m", case.saved, None, case.scores, y), "t", {},
                      always_compare=True)
    assert [c["name"] for c in always.metrics()["comparison"]] == ["m"]
    other = case.scores.copy()
    other[:10] = np.nan  # left out of its curve only
    two = evaluate(Sample("m", case.saved, None, case.scores, y), "t", {},
                   others=[("o", other, 5)])
    assert [c.name for c in two.plot.curves] == ["m", "o"]
    assert two.analysis.n == len(y) and two.tracks is None  # no features kept


def test_own_threshold_only_a_number_in_range():
    assert own_threshold(SavedConfig(threshold=0.25)) == 0.25
    for bad in (None, "x", 1.5, -0.1, float("nan")):
        assert own_threshold(SavedConfig(threshold=bad)) is None


def test_working_point_rows_keep_their_order():
    """to_dict: the keys metrics.json, thresholds.csv and results.root have always
    had, in the same order, for an asked point and for the model's own, then the
    Clopper-Pearson intervals of the efficiency and the rejection."""
    rng = np.random.default_rng(1)
    labels = rng.random(2000) < 0.4
    scores = rng.random(2000) * 0.5 + 0.5 * labels
    asked, own = working_points(SortedScores.of(scores, labels), [0.9],
                                {"efficiency": 0.99, "threshold": 0.8})
    rates = ["n_tp", "n_tn", "n_fp", "n_fn", "accuracy", "tp", "tn", "fp", "fn",
             "sensitivity", "specificity", "fpr", "fnr", "precision", "f1", "pred_ghost",
             "pred_real", "true_ghost", "true_real", "youden_j"]
    intervals = ["real_efficiency_low", "real_efficiency_high", "ghost_rejection_low",
                 "ghost_rejection_high"]
    assert list(asked.to_dict()) == ["target_efficiency", "threshold", "real_efficiency",
                                     "ghost_rejection", "label", "origin", *rates, *intervals]
    assert list(own.to_dict()) == ["label", "target_efficiency", "threshold", "origin",
                                   *rates, "real_efficiency", "ghost_rejection", *intervals]
    assert not asked.fixed and own.fixed and own.threshold == 0.8
    assert asked.to_dict()["real_efficiency"] == asked.real_efficiency == \
        asked.rates["specificity"]


def test_kinematic_columns_of_features_and_spectators():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    spectators = {"tx": np.ones(4), LIMIT: np.zeros(4)}
    cols = kinematics.columns_of(x, ["qop", "chi2", "n_velo"], spectators)
    assert sorted(cols) == ["n_velo", "qop", "tx"]
    assert np.array_equal(cols["n_velo"], x[:, 2])
    assert sorted(kinematics.columns_of(x, ["qop", "chi2", "n_velo"], spectators,
                                        normalized=True)) == ["tx"]


# the analysis rooms, lowest first: each imports only rooms below it, never a
# script; no import inside a function but of a heavy library
LAYERS = [{"utils"}, {"metrics"}, {"kinematics"}, {"compare", "diagnostics"}, {"plots"},
          {"diagnostic_plots"}, {"evaluation"}, {"report"}, {"training_report"}]
HEAVY = {"matplotlib", "mplhep", "scipy", "ROOT", "torch", "sklearn", "ray", "onnx2torch"}
SCRIPTS = {"inference", "training", "make_dataset", "make_sample"}


def _imports(module):
    tree = ast.parse(open(os.path.join(ROOT_DIR, f"{module}.py")).read())
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module.split(".")[0]]
        else:
            continue
        for name in names:
            yield name, id(node) in top


def test_the_analysis_rooms_import_downward_only():
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    for module, i in level.items():
        for name, at_top in _imports(module):
            assert at_top or name in HEAVY, (module, name)
            assert level.get(name, -1) < i and name not in SCRIPTS, (module, name)


def test_sample_tracks_put_every_classifier_in_each_tracks_row(case):
    """results.root's trees: a compared model's scores (of the finite tracks) back in
    their rows, NaN elsewhere; keys from the curve names; the train split's labels and
    the network's train scores; the limit on the test split."""
    x, y = case.test
    finite = np.ones(len(y), bool)
    finite[:5] = False
    other = case.scores[finite] * 0.5
    e = evaluate(Sample("net.onnx", case.saved, None, case.scores, y, finite,
                        (case.train_scores, case.train[1]), case.limit,
                        features=(NAMES, {"test": x, "train": case.train[0]})),
                 "t", {}, others=[("a/b.onnx", other, None)])
    t = e.tracks
    assert list(t.scores) == ["network", "a_b_onnx", "limit"] and t.names == NAMES
    assert t.scores["network"][0] == "net.onnx" and t.scores["limit"][0] == LIMIT_CURVE
    assert t.scores["network"][1]["train"] is case.train_scores
    assert t.labels["train"] is case.train[1] and t.features["test"] is x
    every = t.scores["a_b_onnx"][1]["test"]
    assert np.isnan(every[:5]).all() and np.array_equal(every[finite], other)
    assert set(t.scores["limit"][1]) == {"test"} and t.saved is case.saved
