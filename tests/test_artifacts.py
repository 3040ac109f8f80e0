"""artifacts.py: the files training.py --save writes (the session's trained model):
all of them, the config plain and complete, the ONNX model matching torch and
describing itself, the INT8 model's 7-bit weights; the training settings of a record
are a trainer.TrainSettings, stored flat as plain data, and records of older or
hand-written configs still read."""
import json
from dataclasses import fields

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from architecture import ModelConfig, macs_and_params
from artifacts import (
    METADATA_KEY,
    TRAINING_KEYS,
    SavedConfig,
    load_config,
    onnx_metadata,
    onnx_record,
)
from dataset import load_split
from features import DERIVED
from helpers import N_DERIVED
from models import load_model
from search import ARCHITECTURES
from trainer import TrainSettings

ARTIFACTS = ["ghost_model.pth", "ghost_model_config.pkl", "ghost_model_config.json",
             "ghost_model.onnx", "ghost_model.hpp", "ghost_model_int8.pth",
             "ghost_model_int8_config.pkl", "ghost_model_int8_config.json",
             "ghost_model_int8.onnx", "ghost_model_int8.hpp"]


def test_search_writes_all_artifacts(trained_model):
    trained = trained_model.models
    for name in ARTIFACTS:
        assert (trained / name).is_file(), name
    assert not list(trained.glob("*.data")) and not list(trained.glob(".*tmp*"))


def test_config_is_plain_and_complete(trained_model, raw_dataset):
    trained = trained_model.models
    config = load_config(str(trained / "ghost_model_config.pkl"))
    assert config == json.load(open(trained / "ghost_model_config.json"))
    meta = json.load(open(raw_dataset + "_features.json"))
    assert config["features"] == meta["features"] and config["track"] == "matching"
    assert config["normalization"] == meta["normalization"] and config["network"] == 1
    assert config["standardization"] == meta["standardization"]
    assert config["inputs"] == "standard"  # network 1's default first layer
    assert tuple(config["hidden"]) in ARCHITECTURES and config["l0"] == config["hidden"][0]
    assert config["derived"] == meta["derived"] and len(meta["derived"]) == len(DERIVED["matching"])
    n_inputs = len(config["features"]) + len(config["derived"])  # the MACs count the derived inputs
    assert (config["macs"], config["params"]) == macs_and_params(n_inputs, config["hidden"])
    assert config["macs"] <= 20000  # the default --max-macs
    assert config["optimizer"] == "adamw" and config["schedule"] == "onecycle"
    assert config["batch"] == 512 and config["weight_decay"] > 0
    assert config["int8"] is False and config["threshold"] == config["working_point"]["threshold"]
    assert 0.5 < config["metrics"]["test"]["auc"] <= 1.0
    assert load_config(str(trained / "ghost_model_int8_config.pkl"))["int8"] is True


def test_onnx_matches_torch_and_describes_itself(trained_model, raw_dataset):
    trained = trained_model.models
    config = load_config(str(trained / "ghost_model_config.pkl"))
    state = torch.load(trained / "ghost_model.pth", weights_only=True)
    model = load_model(ModelConfig.from_dict(config), state)
    x, _ = load_split(raw_dataset, "test")  # raw branch values: network 1
    proto = onnx.load(str(trained / "ghost_model.onnx"))
    assert [i.name for i in proto.graph.input] == ["features"]
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 13
    # the README's opset and IR; a graph of arithmetic only, no shape computation
    assert ([(o.domain, o.version) for o in proto.opset_import], proto.ir_version) == (
        [("", 20)], 9)
    assert not {n.op_type for n in proto.graph.node} & {"Shape", "Expand", "Reshape"}
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["track"] == "matching" and props["network"] == "1"
    assert props["features"].split(",") == config["features"]
    assert json.loads(props["normalization"]) == config["normalization"]
    assert float(props["threshold"]) == config["threshold"] and METADATA_KEY in props
    assert onnx_record(proto)["l0"] == config["l0"]
    session = ort.InferenceSession(str(trained / "ghost_model.onnx"))
    got = session.run(None, {"features": x})[0]
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    assert got.shape == (len(x), 1)
    assert np.abs(got - want).max() < 1e-5
    from onnx2torch import convert
    with torch.inference_mode():
        converted = convert(proto)(torch.from_numpy(x)).numpy()
    assert np.abs(converted - want).max() < 1e-5


def test_int8_artifacts_load_and_run(trained_model, raw_dataset):
    trained = trained_model.models
    x, y = load_split(raw_dataset, "test")
    proto = onnx.load(str(trained / "ghost_model_int8.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not ops & {"Shape", "Expand", "Reshape"}
    assert ([(o.domain, o.version) for o in proto.opset_import], proto.ir_version) == (
        [("", 17)], 8)  # the README's
    got = ort.InferenceSession(str(trained / "ghost_model_int8.onnx")).run(
        None, {"features": x})[0]
    config = load_config(str(trained / "ghost_model_int8_config.pkl"))
    model = load_model(ModelConfig.from_dict(config),
                       torch.load(trained / "ghost_model_int8.pth", weights_only=True))
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    # one INT8 rounding step of the logit can differ between runtimes
    assert np.mean(np.abs(got - want) < 1e-3) > 0.99
    accuracy = np.mean((got > 0.5) == (y > 0.5))
    assert accuracy > 0.6


def _int8_session(path, optimized):
    opts = ort.SessionOptions()
    if not optimized:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_int8_onnx_weights_are_7_bit(trained_model):
    """Every quantized weight is an integer in [-63, 63]: pairs of u8 x s8 products then
    fit the 16-bit sums of onnxruntime's AVX2 kernels (no VNNI), so no CPU saturates."""
    from onnx import numpy_helper
    trained = trained_model.models
    proto = onnx.load(str(trained / "ghost_model_int8.onnx"))
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:  # constants may also come as Constant nodes
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    weights = [n for n in proto.graph.node
               if n.op_type == "QuantizeLinear" and n.input[0] in consts]
    config = load_config(str(trained / "ghost_model_int8_config.pkl"))
    assert len(weights) == len(config["hidden"]) + 1  # one per linear layer
    for node in weights:
        w, scale = consts[node.input[0]], consts[node.input[1]]
        q = np.round(w / scale)
        assert consts[node.input[2]].dtype == np.int8 and not consts[node.input[2]].any()
        assert q.min() >= -63 and q.max() <= 63, (q.min(), q.max())
        assert q.max() == 63 or q.min() == -63  # the range is used, not wasted


def test_int8_onnxruntime_same_with_and_without_graph_optimizations(trained_model, raw_dataset):
    """The fused integer kernels (optimizations on) compute what the plain Q/DQ graph
    computes, as tightly as torch and onnxruntime must agree: the same on every CPU."""
    x, _ = load_split(raw_dataset, "test")
    path = trained_model.models / "ghost_model_int8.onnx"
    fused = _int8_session(path, optimized=True).run(None, {"features": x})[0]
    plain_graph = _int8_session(path, optimized=False).run(None, {"features": x})[0]
    assert np.mean(np.abs(fused - plain_graph) < 1e-3) > 0.99


CONFIG = ModelConfig(network=0, n_features=3, hidden=(8,))
SETTINGS = TrainSettings(optimizer="adamw", lr=3e-3, batch=512, epochs=4, seed=7,
                         weight_decay=1e-4, schedule="onecycle")


def test_training_keys_are_the_settings_fields():
    assert TRAINING_KEYS == tuple(f.name for f in fields(TrainSettings))
    assert TRAINING_KEYS == ("optimizer", "lr", "batch", "epochs", "seed", "weight_decay",
                             "schedule")


def test_train_settings_round_trip_through_the_saved_record():
    saved = SavedConfig(model=CONFIG, features=["a", "b", "c"], threshold=0.5,
                        training=SETTINGS)
    record = saved.to_dict()
    assert {k: record[k] for k in TRAINING_KEYS} == SETTINGS.to_dict()  # flat, plain data
    assert "training" not in record
    back = SavedConfig.from_dict(json.loads(json.dumps(record)))
    assert isinstance(back.training, TrainSettings) and back.training == SETTINGS
    assert back.to_dict() == record
    # the ONNX metadata holds the same record
    assert json.loads(onnx_metadata(saved)["ghost_tracks_config"]) == record


def test_a_record_without_training_settings_has_none():
    record = SavedConfig(model=CONFIG).to_dict()
    assert not set(TRAINING_KEYS) & set(record)
    back = SavedConfig.from_dict(record)
    assert back.training is None and back.to_dict() == record


def test_an_older_config_missing_training_keys_still_reads():
    """The one-hidden-layer toolkit wrote no weight_decay and no schedule; a config
    written by hand may hold only some settings."""
    old = {"network": 0, "n_features": 3, "l0": 8, "optimizer": "adam", "lr": 1e-3,
           "batch": 2048, "epochs": 20, "seed": 42}
    saved = SavedConfig.from_dict(old)
    assert saved.training == TrainSettings(optimizer="adam", lr=1e-3, batch=2048, epochs=20,
                                           seed=42, weight_decay=0.0, schedule="constant")
    partial = SavedConfig.from_dict({"n_features": 3, "hidden": [8], "epochs": 1, "seed": 0})
    assert partial.training.epochs == 1 and partial.training.optimizer is None
    record = partial.to_dict()
    assert "optimizer" not in record and "lr" not in record  # not recorded: left out
    assert (record["epochs"], record["seed"]) == (1, 0)


@pytest.mark.parametrize("key,value", [("lr", -1.0), ("batch", 0), ("schedule", 3),
                                       ("seed", "x"), ("weight_decay", float("inf"))])
def test_a_malformed_training_setting_is_named(key, value):
    with pytest.raises(ValueError, match=f"'{key}'"):
        SavedConfig.from_dict({"n_features": 3, "l0": 8, key: value})
    with pytest.raises(ValueError, match=f"'{key}'"):
        TrainSettings.from_dict({key: value})


def _validation_quantile(trained, stem, prefix, efficiency=0.99):
    """The model's threshold recomputed: its scores (torch, from the .pth) on the
    validation split, and the real tracks' quantile at `efficiency`."""
    from metrics import threshold_at
    from trainer import predict
    config = load_config(str(trained / f"{stem}_config.json"))
    model = load_model(ModelConfig.from_dict(config),
                       torch.load(trained / f"{stem}.pth", weights_only=True))
    x, y = load_split(prefix, "valid")
    return threshold_at(predict(model, x), y.ravel() > 0.5, efficiency)


def test_one_threshold_in_every_artifact(trained_model, raw_dataset):
    """The working point's threshold (99 % of the validation split's real tracks) is
    the threshold of the configs, the ONNX metadata, the headers, the console and the
    report's metrics.json, float and INT8; 0.5 is in none of them."""
    import re
    trained = trained_model.models
    for stem in ("ghost_model", "ghost_model_int8"):
        want = _validation_quantile(trained, stem, raw_dataset)
        assert want != 0.5
        json_config = load_config(str(trained / f"{stem}_config.json"))
        for config in (json_config, load_config(str(trained / f"{stem}_config.pkl"))):
            assert config["threshold"] == want
            assert config["working_point"] == {"efficiency": 0.99, "threshold": want}
        props = {p.key: p.value for p in onnx.load(str(trained / f"{stem}.onnx")).metadata_props}
        assert float(props["threshold"]) == want
        assert float(props["working_point_efficiency"]) == 0.99
        assert json.loads(props[METADATA_KEY])["threshold"] == want
        header = (trained / f"{stem}.hpp").read_text()
        found = re.findall(r"constexpr float (\w*threshold\w*) = ([-0-9.e]+)f;", header)
        assert found == [("threshold", repr(float(np.float32(want))))], found
        assert "constexpr float working_point_efficiency = 0.99f;" in header
        console = [ln for ln in trained_model.stdout.splitlines()
                   if ln.startswith(f"threshold of {stem}: ")]
        assert len(console) == 1 and float(console[0].split()[3]) == want, console
    report = json.load(open(trained / "training_report" / "metrics.json"))
    want = _validation_quantile(trained, "ghost_model", raw_dataset)
    assert report["model_threshold"]["threshold"] == want
    own = [w for w in report["working_points"] if w["origin"].startswith("the model")]
    assert [(w["target_efficiency"], w["threshold"]) for w in own] == [(0.99, want)]


def test_the_threshold_cut_prefers_the_working_point():
    """SavedConfig.cut: an older config's threshold 0.5 beside a working point loads, and
    the working point's threshold is the model's; a config without one keeps its own."""
    old = SavedConfig.from_dict({"n_features": 3, "l0": 8, "threshold": 0.5,
                                 "working_point": {"efficiency": 0.99, "threshold": 0.83}})
    assert old.threshold == 0.5 and old.cut() == (0.83, 0.99)
    assert onnx_metadata(old)["threshold"] == "0.83"
    assert SavedConfig.from_dict({"n_features": 3, "l0": 8, "threshold": 0.5}).cut() == (0.5, None)
    assert SavedConfig.from_dict({"n_features": 3, "l0": 8}).cut() == (None, None)


def test_onnx_with_derived_inputs_records_them_and_round_trips(derived_models):
    """An .onnx model with derived inputs takes the 13 raw features, lists its derived
    inputs (fitted) in the metadata key `derived`, and reads back (model_from_onnx)
    into the .pth's weights and scores, float and INT8; written again from what it
    read, it scores as before."""
    from artifacts import model_from_onnx, onnx_bytes
    x = load_split(derived_models["prefix"], "test")[0]
    for name in ("float", "int8"):
        base = derived_models[name]
        config = load_config(f"{base}_config.json")
        pth = load_model(ModelConfig.from_dict(config),
                         torch.load(f"{base}.pth", weights_only=True))
        proto = onnx.load(f"{base}.onnx")
        assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 13
        props = {p.key: p.value for p in proto.metadata_props}
        saved = SavedConfig.from_dict(onnx_record(proto))
        assert props["derived"].splitlines() == [
            f"{d.name} := {d.fit or d.expression}" for d in saved.model.derived]
        assert len(saved.model.derived) == N_DERIVED and "residual" not in props["derived"]
        assert saved.model == ModelConfig.from_dict(config)
        read = model_from_onnx(proto, saved)
        want = pth.state_dict()
        if pth.int8:  # the ONNX file holds each bias on its integer grid, as frozen
            want.update({f"fc{k}.bias": fc.frozen[1] for k, fc in enumerate(pth.linears)})
            assert [q.frozen for q in read.quants] == [q.frozen for q in pth.quants]
        assert read.state_dict().keys() == want.keys()
        for key, value in read.state_dict().items():  # the weights and the scaling
            if key.startswith(("fc", "norm.")):
                assert torch.equal(value, want[key]), (name, key)
        with torch.inference_mode():
            a = pth(torch.from_numpy(x)).numpy()
            b = read(torch.from_numpy(x)).numpy()
        assert np.array_equal(a, b), name
        got = ort.InferenceSession(f"{base}.onnx").run(None, {"features": x})[0]
        again = ort.InferenceSession(onnx_bytes(read, saved)).run(None, {"features": x})[0]
        assert np.array_equal(got, again), name
        if name == "float":
            assert np.abs(got - a).max() < 1e-5
        else:  # one INT8 rounding step of the logit can differ between runtimes
            assert np.mean(np.abs(got - a) < 1e-3) > 0.99


def test_scoring_models_with_derived_inputs_gives_the_same_scores(derived_models):
    """scoring.load_model_file and score_model on the .onnx (onnxruntime, and
    onnx2torch for the float model) and the .pth (torch): the same scores; tracks with
    finite features whose derived input or scaled input is not finite are the ones the
    model gives NaN (overflow), with no error."""
    from features import features_for
    from scoring import load_model_file, score_model
    col = {n: j for j, n in enumerate(features_for("matching"))}
    x = load_split(derived_models["prefix"], "test")[0][:500].copy()
    x[0, col["ndof"]] = 0.0  # chi2 / ndof = inf
    x[1, col["n_velo"]] = -4.0  # sqrt of a negative
    x[2, col["pr_match_dx"]], x[2, col["pr_match_dy"]] = 3e38, -3e38  # spread = inf
    x[3, col["qop"]] = 3e38  # the fitted kick = -inf, qop beyond float32 once scaled
    x[4, col["chi2"]] = np.nan
    finite = np.isfinite(x).all(axis=1)
    for name in ("float", "int8"):
        base = derived_models[name]
        runs = [(load_model_file(f"{base}.onnx"), "onnxruntime"),
                (load_model_file(f"{base}.pth", f"{base}_config.pkl"), "torch")]
        if name == "float":
            runs.append((load_model_file(f"{base}.onnx"), "torch"))
        scores = []
        for model, backend in runs:
            p, _, _, _, overflow = score_model(model, x, finite, backend=backend)
            assert np.isnan(p[:5]).all() and np.isfinite(p[5:]).all(), (name, backend)
            assert overflow[:4].all() and not overflow[4:].any(), (name, backend)
            scores.append(p[5:])
        bound = 1e-5 if name == "float" else 1e-3
        for other in scores[1:]:
            assert np.mean(np.abs(other - scores[0]) < bound) > 0.99, name
