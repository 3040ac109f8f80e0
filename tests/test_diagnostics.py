"""Physics performance and diagnostics: working points, calibration, performance vs
kinematics, guard rails, the training report, index.html, results.root, plots."""
import json
import math
import os

import numpy as np
import pytest

import inference
import training
from architecture import ModelConfig
from artifacts import SavedConfig, load_config, onnx_bytes
from conftest import assert_clean_error, run_script
from dataset import load_dataset, load_meta
from diagnostic_plots import _bins
from diagnostics import permutation_ranking
from features import DEFAULT_TREE, Standardize, features_for
from metrics import SortedScores, WorkingPoint, analyse, working_points
from models import build_model

# ---------------------------------------------------------------------------
# working points and calibration
# ---------------------------------------------------------------------------


def test_working_points_are_the_empirical_quantiles():
    rng = np.random.default_rng(4)
    labels = rng.random(50_000) < 0.2
    scores = rng.random(50_000) * 0.6 + 0.4 * labels
    reals = np.sort(scores[~labels])
    for eff in (0.5, 0.9, 0.95, 0.99, 0.995):
        (wp,) = working_points(SortedScores.of(scores, labels), [eff])
        kept = int((reals <= wp.threshold).sum())
        assert abs(kept - eff * len(reals)) <= 1, (eff, kept)  # within one track
        assert wp.real_efficiency == kept / len(reals)
        assert wp.ghost_rejection == (scores[labels] > wp.threshold).mean()
    # the model's own point: its fixed threshold, measured on these tracks
    a = analyse(scores, labels, [0.5], efficiencies=(0.99,),
                model_point={"efficiency": 0.99, "threshold": 0.7})
    own = a.working_points[-1]
    assert own.threshold == 0.7 and own.origin.startswith("the model")
    assert own.real_efficiency == (reals <= 0.7).mean()


@pytest.fixture(scope="module")
def report_run(raw_dataset, tmp_path_factory):
    """A small search with --save: the model files and the training report."""
    tmp = tmp_path_factory.mktemp("report")
    out = tmp / "models"
    training.main(["-f", raw_dataset, "-n", "2", "--epochs", "2", "--cpu", "1", "--seed", "4",
                   "--baseline", "--int8", "--path", str(tmp / "ray"), "--save",
                   "--output-dir", str(out), "--format", "png,pdf"])
    return out


def test_the_model_records_its_working_point_prior_and_ranges(report_run, raw_dataset):
    import torch

    from models import load_model
    from trainer import predict
    config = load_config(str(report_run / "ghost_model_config.json"))
    model = load_model(ModelConfig.from_dict(config),
                       torch.load(report_run / "ghost_model.pth", weights_only=True))
    valid_x, valid_y = load_dataset(raw_dataset)["valid"]
    p = predict(model, valid_x)
    reals = np.sort(p[valid_y.ravel() == 0])
    t = config["working_point"]["threshold"]
    assert config["working_point"]["efficiency"] == 0.99
    assert abs((reals <= t).sum() - 0.99 * len(reals)) <= 1
    meta = load_meta(raw_dataset)
    assert config["training_prior"] == 0.5
    assert config["ghost_fraction"] == pytest.approx(meta.ghost_fraction)
    train_x = load_dataset(raw_dataset)["train"][0]
    assert config["training_ranges"]["chi2"] == [float(train_x[:, 1].min()),
                                                 float(train_x[:, 1].max())]


def test_inference_working_points_everywhere(report_run, matching_file, tmp_path, capsys):
    plots = tmp_path / "p"
    assert inference.main(["-f", matching_file, "--model", str(report_run / "ghost_model.onnx"),
                           "--working-point", "0.99,0.9", "--plots-dir", str(plots)]) == 0
    text = capsys.readouterr().out
    assert "working point 99.0% efficiency (this input)" in text
    assert "working point model's 99.0% point (the model (its validation split))" in text
    metrics = json.loads((plots / "metrics.json").read_text())
    wps = metrics["working_points"]
    assert [w["label"] for w in wps] == ["99.0% efficiency", "90.0% efficiency",
                                         "model's 99.0% point"]
    assert abs(wps[0]["real_efficiency"] - 0.99) < 1e-3 and 0 < wps[0]["ghost_rejection"] < 1
    rows = (plots / "thresholds.csv").read_text().splitlines()
    assert rows[-1].endswith(",model's 99.0% point")
    assert (plots / "rejection.png").is_file() and (plots / "kinematics_pt.png").is_file()


def test_calibrated_probabilities_shift_the_logit(report_run, matching_file, tmp_path):
    raw, cal = tmp_path / "raw.npy", tmp_path / "cal.npy"
    model = str(report_run / "ghost_model.onnx")
    for out, extra in ((raw, []), (cal, ["--calibrate", "0.15"])):
        assert inference.main(["-f", matching_file, "--model", model, "--output", str(out),
                               "--plots-dir", str(tmp_path / "p"), "--no-plots",
                               *extra]) == 0
    p, q = np.load(raw).astype(np.float64), np.load(cal).astype(np.float64)
    ok = np.isfinite(p) & (p > 1e-6) & (p < 1 - 1e-6)
    shift = math.log(0.15 / 0.85)  # from the balanced training mix (0.5) to 15 %
    np.testing.assert_allclose(np.log(q[ok] / (1 - q[ok])), np.log(p[ok] / (1 - p[ok])) + shift,
                               atol=2e-3)
    assert np.array_equal(np.isnan(p), np.isnan(q))
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert metrics["output_calibrated_to_ghost_fraction"] == 0.15


# ---------------------------------------------------------------------------
# performance vs kinematics
# ---------------------------------------------------------------------------

def test_kinematic_counts_equal_brute_force_masks():
    """performance's one-bincount-per-variable counts against a mask per bin and
    working point (ties at the cuts, NaN-free finite tracks, repeated cuts)."""
    import kinematics
    rng = np.random.default_rng(1)
    n = 50_000
    cols = {"qop": (rng.normal(size=n) * 1e-4).astype(np.float32),
            "best_pt": rng.exponential(1000, n).astype(np.float32),
            "tx": (rng.normal(size=n) * 0.1).astype(np.float32),
            "ty": (rng.normal(size=n) * 0.1).astype(np.float32),
            "n_velo": rng.integers(2, 26, n).astype(np.float32),
            "n_scifi": rng.integers(9, 13, n).astype(np.float32)}
    scores = np.round(rng.random(n), 2).astype(np.float32)
    labels = rng.random(n) < 0.2
    wps = [WorkingPoint(k, "", 0.9, t, {})
           for k, t in (("a", 0.9), ("b", 0.5), ("c", 0.9), ("d", 0.0), ("e", 0.29))]
    out = kinematics.performance(cols, scores, labels, wps)
    for var in kinematics.available(cols):
        x = kinematics.COMPUTE[var.name](cols)
        bins = np.searchsorted(np.asarray(var.edges), x, side="right")
        size = len(var.edges) + 1
        assert np.array_equal(out[var.name]["n_real"], np.bincount(bins[~labels], minlength=size))
        for wp, point in zip(wps, out[var.name]["points"]):
            kept = np.bincount(bins[~labels & (scores <= wp.threshold)], minlength=size)
            removed = np.bincount(bins[labels & (scores > wp.threshold)], minlength=size)
            assert np.array_equal(point["real_kept"], kept), (var.name, wp)
            assert np.array_equal(point["ghosts_removed"], removed), (var.name, wp)


def test_kinematic_efficiencies_add_up_to_the_global_ones(report_run, matching_file, tmp_path):
    plots = tmp_path / "p"
    assert inference.main(["-f", matching_file, "--model", str(report_run / "ghost_model.onnx"),
                           "--plots-dir", str(plots)]) == 0
    metrics = json.loads((plots / "metrics.json").read_text())
    kin = metrics["kinematics"]
    assert set(kin) == {"p", "pt", "eta", "n_velo", "n_scifi"}
    for var in kin.values():
        n_real, n_ghost = np.array(var["n_real"]), np.array(var["n_ghost"])
        assert n_real.sum() == metrics["reals"] and n_ghost.sum() == metrics["ghosts"]
        for point, wp in zip(var["points"], metrics["working_points"]):
            assert sum(point["real_kept"]) / n_real.sum() == pytest.approx(wp["real_efficiency"])
            assert sum(point["ghosts_removed"]) / n_ghost.sum() == pytest.approx(
                wp["ghost_rejection"])
            eff = np.array(point["efficiency"], dtype=float)
            err = np.array(point["efficiency_error"], dtype=float)
            full = n_real > 0
            assert np.allclose(err[full], np.sqrt(eff[full] * (1 - eff[full]) / n_real[full]))
    for name in ("p", "pt", "eta", "n_velo", "n_scifi"):
        assert (plots / f"kinematics_{name}.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------
# guard rails
# ---------------------------------------------------------------------------

def _forward_model(path, forward_file):
    """A forward model with the training ranges of a forward file (weights random:
    the guard rails look at the inputs only)."""
    from rootio import MATRIX, read_root
    names = features_for("forward")
    x = read_root([forward_file], DEFAULT_TREE, names, matrix=True)[MATRIX]
    x = x[np.isfinite(x).all(axis=1)]
    config = ModelConfig(network=1, n_features=8, hidden=(8,), inputs="standard",
                         standardization=Standardize.fit(x, names))
    ranges = {n: [float(x[:, j].min()), float(x[:, j].max())] for j, n in enumerate(names)}
    saved = SavedConfig(model=config, track="forward", features=names, threshold=0.5,
                        training_ranges=ranges)
    path.write_bytes(onnx_bytes(build_model(config).eval(), saved))
    return path


def test_guard_rails_fire_on_a_forward_model_with_a_matching_file(tmp_path, forward_file,
                                                                  matching_file):
    model = _forward_model(tmp_path / "forward.onnx", forward_file)
    proc = run_script("inference.py", "-f", matching_file, "--model", model,
                      "--plots-dir", tmp_path / "p", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, proc.stderr
    for needle in ("pr_forward_quality", "0 for every track", "looks like matching",
                   "not meaningful"):
        assert needle in warnings[0], needle
    quiet = run_script("inference.py", "-f", forward_file, "--model", model,
                       "--plots-dir", tmp_path / "q", "--no-plots")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr


def test_guard_rails_name_features_outside_the_training_range(tmp_path, forward_file):
    from make_sample import generate
    from rootwrite import write_root
    model = _forward_model(tmp_path / "forward.onnx", forward_file)
    cols = generate(5000, "forward", seed=9, nonfinite=0)
    cols["chi2"] = cols["chi2"] * 1000.0  # far beyond anything in training
    path = str(tmp_path / "shifted.root")
    write_root(path, DEFAULT_TREE, cols)
    proc = run_script("inference.py", "-f", path, "--model", model, "--plots-dir",
                      tmp_path / "p", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    warning = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "outside the model's training range: chi2 for" in warning[0]
    fraction = float(warning[0].split("chi2 for ")[1].split("%")[0])
    assert 50 < fraction <= 100
    # half of the features or more carry nothing: an error, nothing written
    for name in features_for("forward")[:4]:
        cols[name] = np.full_like(cols[name], 3.0)
    write_root(path, DEFAULT_TREE, cols)
    proc = run_script("inference.py", "-f", path, "--model", model, "--plots-dir",
                      tmp_path / "q", "--output", tmp_path / "s.npy")
    assert_clean_error(proc, "constant here but were not in training", "4 of the model's 8")
    assert not (tmp_path / "s.npy").exists() and not (tmp_path / "q").exists()


# ---------------------------------------------------------------------------
# the training report
# ---------------------------------------------------------------------------

def test_permuting_an_irrelevant_feature_ranks_it_last():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 3)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 0.5, 20_000) > 0)

    def score(data):
        return 1 / (1 + np.exp(-(2 * data[:, 0] + data[:, 1])))
    reference, ranked = permutation_ranking(score, x, y, ["strong", "weak", "noise"])
    assert [r["feature"] for r in ranked] == ["strong", "weak", "noise"]
    assert ranked[-1]["auc_drop"] == 0.0 and ranked[0]["auc_drop"] > 0.2
    assert reference["auc"] > 0.9


def test_training_report_folder(report_run):
    report = report_run / "training_report"
    for stem in ("search_front", "history", "ranking", "correlations", "overtraining",
                 "rejection", "roc", "scores", "thresholds", "confusion", "compare",
                 "kinematics_pt"):
        for fmt in ("png", "pdf"):
            assert (report / f"{stem}.{fmt}").stat().st_size > 5000, (stem, fmt)
    ranking = (report / "ranking.csv").read_text().splitlines()
    assert ranking[0] == "rank,feature,auc_drop,rejection_drop_at_99" and len(ranking) == 14
    metrics = json.loads((report / "metrics.json").read_text())
    assert {"overtraining", "comparison", "limit", "kinematics", "ranking"} <= set(metrics)
    assert [c["name"] for c in metrics["comparison"]] == ["network", "INT8", "baseline",
                                                          "limit (truth_llr)"]
    for cls in ("ghost", "real"):
        assert 0.0 <= metrics["overtraining"][cls]["p_value"] <= 1.0


def test_index_html_shows_every_figure_with_its_caption(report_run):
    report = report_run / "training_report"
    page = (report / "index.html").read_text()
    images = [p for p in os.listdir(report) if p.endswith(".png")]
    for image in images:
        assert f'<img src="{image}"' in page, image
    assert page.count("<figcaption>") == len(images)
    assert "Working points" in page and "model&#x27;s 99.0% point" in page
    assert "ROC AUC" in page and "gap to the limit" in page


def test_results_root_file_for_root_users(report_run):
    from rootio import import_root
    ROOT = import_root()
    f = ROOT.TFile.Open(str(report_run / "training_report" / "results.root"))
    names = {k.GetName() for k in f.GetListOfKeys()}
    assert {"scores_test_ghost", "scores_test_real", "scores_train_ghost", "scores_train_real",
            "roc", "rejection", "thresholds"} <= names
    h = f.Get("scores_test_ghost")
    metrics = json.loads((report_run / "training_report" / "metrics.json").read_text())
    assert h.GetNbinsX() == 100 and h.GetEntries() == metrics["ghosts"]  # every test ghost
    contents = [h.GetBinContent(i) for i in range(h.GetNbinsX() + 2)]
    assert contents[0] == contents[-1] == 0 and sum(contents) == metrics["ghosts"]
    assert f.Get("roc").GetN() > 10
    f.Close()
    table = ROOT.RDataFrame("thresholds", str(report_run / "training_report" /
                                              "results.root")).AsNumpy()
    assert len(table["threshold"]) == 26 + 3 and set(np.unique(table["working_point"])) == {
        0.0, 0.95, 0.99}
    for key in ("threshold", "accuracy", "n_tp", "n_fp"):  # the scan, row for row
        assert np.allclose(table[key][:26], [r[key] for r in metrics["thresholds"]])


# ---------------------------------------------------------------------------
# plots people read
# ---------------------------------------------------------------------------

def test_integer_branches_are_binned_per_integer():
    edges, logx = _bins(np.array([3.0, 4.0, 4.0, 12.0, 23.0]), heavy=False)
    assert np.array_equal(edges, np.arange(2.5, 23.6, 1.0)) and not logx
    edges, logx = _bins(np.geomspace(1, 1e6, 1000), heavy=True)
    assert logx and len(edges) == 81


def test_feature_plots_transformed_and_pdf(tmp_path, matching_file):
    import make_dataset
    plots = tmp_path / "plots"
    make_dataset.main(["-f", matching_file, "--output", str(tmp_path / "ds"), "--track",
                       "matching", "--plot", "--plot-transformed", "--plots-dir", str(plots),
                       "--format", "png,pdf"])
    names = features_for("matching")
    assert sorted(os.listdir(plots)) == sorted([f"{n}.png" for n in names] +
                                               [f"{n}.pdf" for n in names] + ["index.html"])
    page = (plots / "index.html").read_text()
    assert all(f'<img src="{n}.png"' in page for n in names)


def test_bad_format_and_working_point_are_one_line(matching_file, tmp_path):
    proc = run_script("inference.py", "-f", matching_file, "--format", "svg")
    assert_clean_error(proc, "--format must be png, pdf or both")
    proc = run_script("inference.py", "-f", matching_file, "--working-point", "1.2")
    assert_clean_error(proc, "--working-point must be numbers in (0, 1)")
