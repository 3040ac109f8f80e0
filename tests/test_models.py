import pickle

import numpy as np
import pytest
import torch

from architecture import ModelConfig
from artifacts import load_config
from features import MinMax
from models import build_model, load_model, n_inputs
from utils import GhostError, plain

OFFSETS = [0.0, -1.0, 10.0]
SCALES = [2.0, 4.0, 5.0]


def config(network=1, **kw):
    """A saved config record (plain data)."""
    cfg = {"network": network, "n_features": 3, "l0": 8, "activation": "relu",
           "normalization": {"offsets": OFFSETS, "scales": SCALES}}
    return {**cfg, **kw}


def build(record):
    return build_model(ModelConfig.from_dict(record))


@pytest.mark.parametrize("network", [0, 1])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu", "tanh", "sigmoid"])
def test_shapes_and_probabilities(network, activation):
    model = build(config(network, activation=activation))
    out = model(torch.randn(17, 3) * 10)
    assert out.shape == (17, 1) and n_inputs(model) == 3
    assert ((out > 0) & (out < 1)).all()


def test_network1_normalizes_inside_like_make_dataset():
    raw = (torch.rand(100, 3) * 30 - 10).numpy()
    net1 = build(config(1))
    net0 = build(config(0))
    net0.load_state_dict({k: v for k, v in net1.state_dict().items()
                          if not k.startswith("norm.")})
    expected = net0(torch.from_numpy(MinMax(tuple(OFFSETS), tuple(SCALES)).apply(raw)))
    torch.testing.assert_close(net1(torch.from_numpy(raw)), expected)
    # values outside the recorded bounds are clipped, like make_dataset.py does
    assert net1.norm(torch.tensor([[-100.0, 100.0, 12.5]])).tolist() == [[0.0, 1.0, 0.5]]


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown network"):
        build(config(2))
    with pytest.raises(ValueError, match="unknown activation"):
        build(config(activation="swish"))
    with pytest.raises(ValueError, match="offsets and scales"):
        build({"network": 1, "n_features": 3, "l0": 4})
    with pytest.raises(ValueError, match="do not match"):
        build(config(n_features=4))


def test_int8_fake_quantization_rounds_to_256_levels():
    model = build(config(1)).set_int8(True, observing=True).train()
    x = torch.tensor(OFFSETS) + torch.rand(512, 3) * torch.tensor(SCALES)  # inside bounds
    model(x)
    model.set_int8(True, observing=False).eval()
    levels = model.quant(model.norm(x)).unique()
    assert 2 < len(levels) <= 256
    w = model.fc0.quantized_weight()
    assert len(w.unique()) <= 127  # 7-bit weights: [-63, 63]
    # off again: the float model
    model.set_int8(False)
    assert len(model.quant(model.norm(x)).unique()) > 256


def test_config_round_trip_plain_pickle_and_json(tmp_path):
    cfg = plain({**config(1), "lr": np.float64(1e-3), "features": ["a", "b", "c"]})
    (tmp_path / "c.pkl").write_bytes(pickle.dumps(cfg))
    assert load_config(str(tmp_path / "c.pkl")) == cfg
    import json
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert load_config(str(tmp_path / "c.json")) == cfg
    model = build(cfg)
    again = load_model(ModelConfig.from_dict(cfg), model.state_dict())
    x = torch.randn(4, 3)
    torch.testing.assert_close(model.eval()(x), again(x))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_config_that_is_not_plain_data_is_refused(tmp_path):
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"network": 1, "x": Evil()}))
    with pytest.raises(GhostError, match="refusing to unpickle"):
        load_config(str(tmp_path / "evil.pkl"))
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(GhostError, match="not a dict"):
        load_config(str(tmp_path / "list.pkl"))
    with pytest.raises(GhostError, match="not plain data"):
        plain({"a": object()})


def test_from_inputs_scores_the_raw_and_derived_columns_given():
    """What the permutation ranking scores: the columns [raw | derived] through the
    scaling and the core, the derived inputs taken as given (not recomputed)."""
    from derived import Derived, extend
    from trainer import predict
    names = ("a", "b", "c")
    derived = (Derived.parse("r := a / b", names),)
    model = build_model(ModelConfig(
        network=1, n_features=3, hidden=(8,), derived=derived, branches=names,
        normalization=MinMax(tuple(OFFSETS + [0.0]), tuple(SCALES + [4.0]))))
    raw = (np.random.default_rng(0).random((50, 3)) * 4 + 1).astype(np.float32)
    columns = extend(raw, derived, names)
    assert columns.shape == (50, 4)
    np.testing.assert_array_equal(predict(model, columns, inputs=True), predict(model, raw))
    shuffled = columns.copy()
    shuffled[:, 0] = columns[::-1, 0]  # a shuffled alone: r keeps its values
    direct = predict(model, shuffled, inputs=True)
    assert not np.array_equal(direct, predict(model, shuffled[:, :3]))
    columns[3, 3] = np.nan  # NaN guard as forward's
    assert np.isnan(predict(model, columns, inputs=True)[3])
