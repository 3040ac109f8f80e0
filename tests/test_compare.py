"""compare.py: several models and the known optimum on the same tracks
(inference.py --compare), and the models it refuses before the long work."""
import csv
import json
import os

import pytest

import inference
from architecture import ModelConfig
from artifacts import SavedConfig, onnx_bytes
from features import LIMIT, Standardize, features_for
from helpers import assert_clean_error, run_script
from models import build_model


def test_compare_models_and_the_gap_to_the_limit(trained_model, tmp_path, matching_file):
    trained = trained_model.models
    plots = tmp_path / "p"
    other = tmp_path / "other.onnx"
    other.write_bytes((trained / "ghost_model.onnx").read_bytes())
    assert inference.main(["-f", matching_file, "--model",
                           str(trained / "ghost_model.onnx"), "--compare", str(other),
                           "--plots-dir", str(plots), "--no-plots"]) == 0
    with open(plots / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["ghost_model.onnx", "other.onnx", f"limit ({LIMIT})"]
    assert rows[0]["auc"] == rows[1]["auc"]  # the same model scores the same
    metrics = json.loads((plots / "metrics.json").read_text())
    gap = metrics["gap_to_limit"]
    assert gap["auc_gap"] == pytest.approx(metrics["limit"]["auc"] - metrics["roc_auc"])
    assert 0 < gap["rejection_fraction@0.99"] <= 1.0
    assert inference.main(["-f", matching_file, "--model",
                           str(trained / "ghost_model.onnx"), "--compare", str(other),
                           "--plots-dir", str(tmp_path / "q")]) == 0
    assert (tmp_path / "q" / "compare.png").stat().st_size > 10_000


def test_compare_refuses_a_model_of_other_features(trained_model, tmp_path, matching_file):
    forward = tmp_path / "forward.onnx"
    names = features_for("forward")
    config = ModelConfig(network=1, n_features=8, hidden=(8,), inputs="standard",
                         standardization=Standardize(("identity",) * 8, (0.0,) * 8,
                                                     (1.0,) * 8))
    forward.write_bytes(onnx_bytes(build_model(config).eval(),
                                   SavedConfig(model=config, track="forward", features=names)))
    proc = run_script("inference.py", "-f", matching_file, "--model",
                      trained_model.models / "ghost_model.onnx", "--compare", forward,
                      "--plots-dir", tmp_path / "p")
    assert_clean_error(proc, "--compare", "forward.onnx", "pr_forward_quality")


@pytest.mark.parametrize("kind", ["width", "junk", "missing"])
def test_compare_with_an_unsuitable_model_is_refused_before_reading(quick_models, small_file,
                                                                    tmp_path, kind):
    other = {"width": quick_models["forward"], "junk": str(tmp_path / "junk.onnx"),
             "missing": str(tmp_path / "missing.onnx")}[kind]
    (tmp_path / "junk.onnx").write_bytes(b"not a model\n" * 10)
    proc = run_script("inference.py", "-f", small_file, "--model", quick_models["net1"],
                      "--compare", other, "--output", tmp_path / "p.npy",
                      "--plots-dir", tmp_path / "plots")
    assert_clean_error(proc, other)
    assert "read " not in proc.stdout and "scored" not in proc.stdout, proc.stdout
    assert sorted(os.listdir(tmp_path)) == ["junk.onnx"]
