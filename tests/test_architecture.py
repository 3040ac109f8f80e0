"""architecture.py: the one table of activations (what models.py builds, what
cpp_export.py writes, what the search spaces try), the hidden widths of a record, the
refusal of normalized inputs for network 1 and the width check of a scaling."""
import pytest
import torch
from torch import nn

from architecture import (
    ACTIVATIONS,
    ModelConfig,
    hidden_widths,
    normalizes_inside,
    refuse_normalized,
)
from artifacts import SavedConfig
from cpp_export import export_header
from features import MinMax, width_problem
from models import activation_layer, build_model, quant_name
from utils import GhostError


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_the_table_drives_the_torch_modules(name):
    act = ACTIVATIONS[name]
    layer = activation_layer(name)
    assert type(layer) is getattr(nn, act.torch)
    assert getattr(layer, "inplace", False) is act.inplace
    model = build_model(ModelConfig(network=0, n_features=3, hidden=(4,), activation=name))
    assert model.act_name == name and type(model.act) is type(layer)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_the_table_drives_the_cpp_header(name):
    config = ModelConfig(network=0, n_features=3, hidden=(4, 4), activation=name)
    header = export_header(build_model(config).eval(), SavedConfig(model=config))
    assert f"    return {ACTIVATIONS[name].cpp};" in header


def test_the_table_drives_the_search_spaces():
    from search import SPACES, search_space
    tried = {space: search_space(space, 13, 20000)["activation"].categories
             for space in SPACES}
    assert tried == {"default": ["relu", "elu"],
                     "original": ["relu", "leaky_relu", "elu", "tanh"]}
    for space, names in tried.items():
        assert names == [n for n, a in ACTIVATIONS.items() if space in a.spaces]


def test_an_unknown_activation_names_the_table():
    with pytest.raises(ValueError, match="relu, leaky_relu, elu, tanh, sigmoid"):
        ModelConfig(network=0, n_features=3, hidden=(4,), activation="swish")


def test_quantizer_names_are_the_module_names():
    model = build_model(ModelConfig(network=0, n_features=3, hidden=(4, 4, 4)))
    assert [quant_name(i) for i in range(4)] == ["quant", "act_quant", "act_quant1",
                                                 "act_quant2"]
    assert model.quants == [getattr(model, quant_name(i)) for i in range(4)]


def test_hidden_widths_of_records_and_trials():
    assert hidden_widths({"hidden": [32, 16]}) == [32, 16]
    assert hidden_widths({"l0": 8}) == [8]  # the one-hidden-layer toolkit
    assert hidden_widths({"hidden": [64], "l0": 64}) == [64]
    assert hidden_widths({"l0": None}) is None and hidden_widths({}) is None
    from search import TrialSetup
    from search_log import describe_params
    setup = TrialSetup(network=0, n_features=13, inputs="minmax", normalization=None,
                       standardization=None, epochs=1, seed=0, threshold=0.5, use_gpu=False)
    original = {"l0": 16, "lr": 1e-3, "optimizer": "adam", "activation": "relu"}
    assert setup.model_config(original).hidden == (16,)
    assert describe_params(original, 13).startswith("hidden 16 ")
    assert setup.model_config({**original, "hidden": [8, 8]}).hidden == (8, 8)


def test_normalized_inputs_are_refused_for_network_1_only():
    for network in (0, 1):
        refuse_normalized(network, False, "x", "y")  # raw inputs: fine for both
    refuse_normalized(0, True, "x", "y")
    with pytest.raises(GhostError, match="network 1 normalizes inside the model, but the "
                                         "inputs are normalized: do this"):
        refuse_normalized(1, True, "the inputs are normalized", "do this")
    assert normalizes_inside(1) and not normalizes_inside(0)


def test_one_width_check_for_every_scaling():
    record = MinMax((0.0, 0.0), (1.0, 1.0)).to_dict()
    assert width_problem(record, 2, "features", "normalization") is None
    assert width_problem(record, 3, "columns", "normalization") == (
        "the normalization's offsets do not match the columns (2 offsets for 3 columns)")
    with pytest.raises(ValueError, match=r"do not match the inputs \(2 offsets for 3 inputs\)"):
        ModelConfig(network=1, n_features=3, hidden=(4,),
                    normalization=MinMax((0.0, 0.0), (1.0, 1.0)))
    transforms = {"transforms": ["log"], "means": [0.0, 1.0], "stds": [1.0, 1.0]}
    assert "2 means for 1 features" in width_problem(transforms, 1, "features", "x")


def test_quantizer_names_match_an_int8_onnx_graph():
    """The names of the quantizers are those of the QuantizeLinear nodes that
    artifacts.model_from_onnx reads back."""
    import onnx

    from artifacts import model_from_onnx, onnx_bytes
    config = ModelConfig(network=0, n_features=3, hidden=(4, 4), int8=True)
    torch.manual_seed(0)
    model = build_model(config).set_int8(True, observing=True).train()
    model(torch.rand(256, 3))
    model.set_int8(True, observing=False).eval()
    saved = SavedConfig(model=config)
    proto = onnx.load_from_string(onnx_bytes(model, saved))
    nodes = {n.name for n in proto.graph.node}
    assert {f"/{quant_name(k)}/QuantizeLinear" for k in range(3)} <= nodes
    back = model_from_onnx(proto, saved)
    x = torch.rand(64, 3)
    torch.testing.assert_close(back(x), model(x))
