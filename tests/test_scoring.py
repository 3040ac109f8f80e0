"""scoring.py: a model's multiply-adds per track have one home (model_macs, the
architecture's cost); a model without a record is estimated from its weights."""
import onnx

from architecture import ModelConfig
from artifacts import SavedConfig, onnx_bytes
from models import build_model
from scoring import LoadedModel, cpu_batch, model_macs, weight_macs


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
