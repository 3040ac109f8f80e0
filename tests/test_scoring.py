"""scoring.py: the backends (torch, onnx2torch, onnxruntime) agree, with each other
and with the .pth weights; a model without metadata; INT8; the device-resident
scorer; a model's multiply-adds per track (model_macs, the architecture's cost, or
estimated from the weights of a model without a record)."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from architecture import ModelConfig
from artifacts import SavedConfig, onnx_bytes
from features import features_for
from helpers import ROOT_DIR, run_inference, torch_scores
from metrics import roc_auc
from models import build_model
from scoring import LoadedModel, cpu_batch, model_macs, weight_macs
from utils import GhostError

MATCHING = features_for("matching")


def test_keras_like_model_without_metadata(quick_models, matching_file, reference, tmp_path,
                                           capsys):
    out = tmp_path / "s.npy"
    assert run_inference("-f", matching_file, "--model", quick_models["foreign"], "--features",
                         ",".join(MATCHING), "--output", out, "--no-plots", "--backend", "torch",
                         "--plots-dir", tmp_path / "p") == 0
    text = capsys.readouterr().out
    assert "no metadata" in text and "onnx2torch" in text
    np.testing.assert_allclose(np.load(out), reference, atol=1e-6, equal_nan=True)
    with pytest.raises(GhostError, match="--features"):
        run_inference("-f", matching_file, "--model", quick_models["foreign"])


def test_auto_backend_cross_check_and_no_torch_import(quick_models, matching_file, reference,
                                                      tmp_path):
    """auto: an .onnx on the CPU runs with onnxruntime and never imports torch;
    --cross-check scores tracks again with torch (onnx2torch) and reports the gap."""
    out, plots = tmp_path / "auto.npy", tmp_path / "p"
    code = ("import sys, inference; rc = inference.main(sys.argv[1:]); "
            "print('torch imported:', 'torch' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "-f", matching_file, "--model",
                           quick_models["net1"], "--output", str(out), "--no-plots",
                           "--plots-dir", str(plots), "--nocuda"], cwd=ROOT_DIR,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "(onnxruntime, cpu, batch" in proc.stdout and "torch imported: False" in proc.stdout
    assert np.nanmax(np.abs(np.load(out) - reference)) < 1e-5
    assert run_inference("-f", matching_file, "--model", quick_models["net1"], "--cross-check",
                         "--no-plots", "--plots-dir", plots) == 0
    check = json.loads((plots / "metrics.json").read_text())["cross_check"]
    assert check["engine"].startswith("torch (onnx2torch)") and check["tracks"] > 1000
    assert check["max_abs_diff"] < 1e-5
    assert run_inference("-f", matching_file, "--model", quick_models["net1_pth"], "--config",
                         quick_models["net1_pkl"], "--cross-check", "--no-plots",
                         "--plots-dir", plots) == 0
    check = json.loads((plots / "metrics.json").read_text())
    assert check["scoring"].startswith("torch (load_model)")
    assert check["cross_check"]["engine"].startswith("onnxruntime")
    assert check["cross_check"]["max_abs_diff"] < 1e-5


def test_device_resident_scorer_equals_batched(quick_models, root_features):
    """The GPU path (one transfer in, batches on the device, one transfer out),
    run on the CPU device: the same probabilities as the CPU batches, and a wrong
    output shape is a clear error."""
    import torch

    import scoring
    data, _ = root_features
    x = np.nan_to_num(data[:5000])
    model = scoring.load_model_file(quick_models["net1_pth"], quick_models["net1_pkl"])
    cpu, _ = scoring.make_scorer(model, "torch", nocuda=True, batch=777)
    on_device = scoring.resident(model.module.eval(), torch.device("cpu"), 777)
    np.testing.assert_array_equal(on_device(x), cpu(x))
    wrong = scoring.resident(torch.nn.Linear(x.shape[1], 2), torch.device("cpu"), 777)
    with pytest.raises(GhostError, match="expected one probability per track"):
        wrong(x)


def test_backends_agree_and_pth_equals_onnx(quick_models, matching_file, reference, tmp_path,
                                            capsys):
    a, b = tmp_path / "ort.npy", tmp_path / "pth.npy"
    assert run_inference("-f", matching_file, "--model", quick_models["net1"],
                         "--backend", "onnxruntime", "--output", a, "--no-plots",
                         "--plots-dir", tmp_path / "p") == 0
    assert "onnxruntime" in capsys.readouterr().out
    assert run_inference("-f", matching_file, "--model", quick_models["net1_pth"], "--config",
                         quick_models["net1_pkl"], "--output", b, "--thresholds", "0.3,0.5",
                         "--plots-dir", tmp_path / "p2", "--no-plots") == 0
    ort, pth = np.load(a), np.load(b)
    assert np.array_equal(np.isnan(ort), np.isnan(reference))
    assert np.nanmax(np.abs(ort - reference)) < 1e-5  # reference is the torch forward
    np.testing.assert_allclose(pth, reference, atol=1e-6, equal_nan=True)
    scan = [r for r in (tmp_path / "p2" / "thresholds.csv").read_text().splitlines()[1:]
            if r.endswith(",")]  # the rows of working points name them in the last column
    assert [float(r.split(",")[0]) for r in scan] == [0.3, 0.5]


def test_int8_onnx_runs_with_onnxruntime(quick_models, matching_file, root_features, tmp_path,
                                         capsys):
    out = tmp_path / "s.npy"
    assert run_inference("-f", matching_file, "--model", quick_models["int8"], "--output", out,
                         "--backend", "torch", "--no-plots", "--plots-dir", tmp_path / "p") == 0
    text = capsys.readouterr().out  # torch asked: said why onnxruntime runs it instead
    assert "INT8 ONNX model" in text and "onnxruntime" in text and "error" not in text
    data, labels = root_features
    finite = np.isfinite(data).all(axis=1)
    scores = np.load(out)
    assert roc_auc(scores[finite], labels[finite]) > 0.8
    # the same weights in torch (fake quantization through load_model) agree closely
    torch_int8 = torch_scores(quick_models, "int8", data[finite])
    assert np.abs(scores[finite] - torch_int8).max() < 0.02


def _loaded(saved, proto=None, module=None):
    return LoadedModel("onnx" if proto is not None else "pth", "m", saved, True, 13,
                       False, proto=proto, module=module)


def test_recorded_macs_are_the_architecture_cost():
    config = ModelConfig(network=0, n_features=13, hidden=(32, 16))
    model = _loaded(SavedConfig(model=config), module=build_model(config))
    assert model_macs(model) == config.cost()[0] == 13 * 32 + 32 * 16 + 16
    assert weight_macs(model) == config.cost()[0]  # every 2-D weight, as a dense layer


def test_a_model_without_a_record():
    config = ModelConfig(network=0, n_features=13, hidden=(64,))
    proto = onnx.load_from_string(onnx_bytes(build_model(config).eval(),
                                             SavedConfig(model=config)))
    bare = _loaded(SavedConfig(), proto=proto)
    assert model_macs(bare) is None  # --compare shows no MACs for it
    assert weight_macs(bare) == config.cost()[0]  # the CPU batch is sized by the estimate
    recorded = _loaded(SavedConfig(model=config), proto=proto)
    assert cpu_batch(bare) == cpu_batch(recorded)
