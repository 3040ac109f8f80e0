"""features.py: the feature lists and the input transforms (min-max and
standardization with a log for heavy tails): through ONNX, what they let a network
learn, and what float32 cannot hold."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

import make_sample
from architecture import ModelConfig
from artifacts import SavedConfig, onnx_bytes
from features import MinMax, Standardize, features_for
from metrics import roc_auc
from models import build_model
from trainer import Trainer, TrainSettings, evaluate, make_optimizer, to_tensors


def test_features_lists_and_unknown_track():
    assert len(features_for("forward")) == 8 and len(features_for("matching")) == 13
    assert features_for("matching")[0] == "best_pt" and features_for("matching")[-1] == "qop"
    with pytest.raises(ValueError, match="forward, matching"):
        features_for("downstream")


def test_standardized_inputs_round_trip_through_onnx():
    cols = make_sample.generate(20_000, "matching", seed=6, nonfinite=0)
    names = features_for("matching")
    x = np.stack([cols[n] for n in names], axis=1)
    std = Standardize.fit(x, names)
    assert std.transforms[names.index("chi2")] == "log"
    assert std.transforms[names.index("qop")] == "identity"
    config = ModelConfig(network=1, n_features=13, hidden=(32, 16), inputs="standard",
                         standardization=std)
    torch.manual_seed(0)
    model = build_model(config).eval()
    blob = onnx_bytes(model, SavedConfig(model=config, features=names))
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(model.norm(torch.from_numpy(x)).numpy(), std.apply(x),
                                   atol=1e-5)
    got = ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(
        None, {"features": x})[0]
    import onnx
    from onnx2torch import convert
    with torch.inference_mode():
        converted = convert(onnx.load_from_string(blob))(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 1e-5 and np.abs(converted - want).max() < 1e-5


def _heavy_tailed_problem(n=40_000, seed=0):
    """The signal lives in a heavy-tailed feature (a chi2-like, log-normal with a few
    huge values); the other feature is noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.float32)
    seed_chi2 = rng.lognormal(np.where(y == 1, 0.8, 0.0), 1.0)
    seed_chi2[rng.random(n) < 0.001] *= 1e5  # the tail that min-max scales to
    x = np.stack([seed_chi2, rng.normal(size=n)], axis=1).astype(np.float32)
    return x, y.reshape(-1, 1)


def _train_auc(config, x, y, epochs=6):
    torch.manual_seed(1)
    model = build_model(config)
    settings = TrainSettings(optimizer="adamw", lr=3e-3, batch=512, epochs=epochs, seed=1,
                             weight_decay=1e-4, schedule="onecycle")
    tx, ty = to_tensors(model, (x[:30_000], y[:30_000]), torch.device("cpu"))
    loop = Trainer(model, make_optimizer(settings, model, torch.device("cpu")), tx, ty,
                   512, 1, settings=settings)
    for _ in range(epochs):
        loop.epoch()
    vx, vy = to_tensors(model, (x[30_000:], y[30_000:]), torch.device("cpu"))
    return evaluate(model, vx, vy, 0.5)["auc"]


def test_a_heavy_tailed_signal_is_learned_with_the_log_transform():
    x, y = _heavy_tailed_problem()
    names = ["pr_seed_chi2", "noise"]
    intrinsic = roc_auc(x[30_000:, 0], y[30_000:])
    standard = _train_auc(ModelConfig(network=1, n_features=2, hidden=(16,),
                                      inputs="standard",
                                      standardization=Standardize.fit(x[:30_000], names)), x, y)
    minmax = _train_auc(ModelConfig(network=1, n_features=2, hidden=(16,), inputs="minmax",
                                    normalization=MinMax.fit(x[:30_000], names)), x, y)
    assert standard > intrinsic - 0.01  # all the feature has
    assert standard > minmax + 0.05, (standard, minmax)


def test_scalings_refuse_what_float32_cannot_hold():
    x = np.random.default_rng(0).normal(size=(1000, 2)).astype(np.float32)
    x[:, 1] *= 1e-4  # qop's scale, 1/MeV
    x[:10, 1], x[10:20, 1] = 3e38, -3e38
    with pytest.raises(ValueError, match="feature qop spans"):
        MinMax.fit(x, ["a", "qop"])
    standardize = Standardize.fit(x, ["a", "qop"])  # float64 statistics: finite
    assert np.isfinite(standardize.apply(x)).all()
    with pytest.raises(ValueError, match="feature qop reaches 3e\\+38"):
        Standardize.fit(x[20:], ["a", "qop"]).check_range(x.min(0), x.max(0), ["a", "qop"],
                                                          "the test split")
    for offsets, scales in (((0.0,), (1e-45,)), ((1e39,), (1.0,)), ((0.0,), (1e39,))):
        with pytest.raises(ValueError, match="float32"):
            MinMax(offsets, scales)


def test_the_fits_take_the_split_or_its_columns_to_the_same_numbers():
    """MinMax.fit and Standardize.fit over a [tracks, features] split or over a list
    of its columns: the same scalings; Standardize's transform, computed in place on
    its own float64 copy, gives the bits of sign(x) * log1p(|x|) written out."""
    from features import signed_log1p
    rng = np.random.default_rng(4)
    names = ["best_pt", "chi2", "qop", "ndof"]
    x = np.column_stack([rng.lognormal(6, 2, 50_001), rng.lognormal(2, 1, 50_001),
                         rng.normal(0, 1e-4, 50_001), rng.integers(5, 40, 50_001)]
                        ).astype(np.float32)
    x[:3, 0] = [0.0, -0.0, 1e30]
    columns = [x[:, j] for j in range(len(names))]
    assert MinMax.fit(columns, names) == MinMax.fit(x, names)
    assert Standardize.fit(columns, names) == Standardize.fit(x, names)
    for values in (x, x.astype(np.float64)):
        written_out = np.sign(values) * np.log1p(np.abs(values))
        assert signed_log1p(values).tobytes() == written_out.tobytes()
        own = values.copy()
        assert signed_log1p(own, out=own) is own and own.tobytes() == written_out.tobytes()
