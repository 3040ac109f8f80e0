"""training_report.py: what training.py --save writes into training_report/ (the
figures in PNG and PDF, the ranking, metrics.json, index.html), read from the
session's trained model (its results.root: tests/test_results_file.py)."""
import csv
import json
import os

from derived import Derived
from features import DERIVED, TRACK_FEATURES


def test_training_report_folder(trained_model):
    report = trained_model.models / "training_report"
    for stem in ("search_front", "history", "ranking", "correlations", "overtraining",
                 "rejection", "roc", "scores", "thresholds", "confusion", "compare",
                 "kinematics_pt"):
        for fmt in ("png", "pdf"):
            assert (report / f"{stem}.{fmt}").stat().st_size > 5000, (stem, fmt)
    ranking = list(csv.reader((report / "ranking.csv").read_text().splitlines()))
    assert ranking[0] == ["rank", "feature", "auc_drop", "rejection_drop_at_99"]
    # the 13 features and matching's default derived inputs, each named by its
    # expression as declared (e.g. "dqop := qop / first_qop - 1.0")
    features = TRACK_FEATURES["matching"]
    ranked = {row[1] for row in ranking[1:]}
    assert ranked == set(features) | {Derived.parse(t, features).text()
                                      for t in DERIVED["matching"]}
    assert "kick := residual(pr_match_dtx, qop)" in ranked  # declared, not fitted
    metrics = json.loads((report / "metrics.json").read_text())
    assert {"overtraining", "comparison", "limit", "kinematics", "ranking"} <= set(metrics)
    assert [c["name"] for c in metrics["comparison"]] == ["network", "INT8", "baseline",
                                                          "limit (truth_llr)"]
    for cls in ("ghost", "real"):
        assert 0.0 <= metrics["overtraining"][cls]["p_value"] <= 1.0


def test_index_html_shows_every_figure_with_its_caption(trained_model):
    report = trained_model.models / "training_report"
    page = (report / "index.html").read_text()
    images = [p for p in os.listdir(report) if p.endswith(".png")]
    for image in images:
        assert f'<img src="{image}"' in page, image
    assert page.count("<figcaption>") == len(images)
    assert "Working points" in page and "model&#x27;s 99.0% point" in page
    assert "ROC AUC" in page and "gap to the limit" in page
    assert "the derived inputs computed from it keeping their original values" in page
