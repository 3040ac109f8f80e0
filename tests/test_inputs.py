"""inputs.py: the dataset's file names come from dataset.py; normalized inputs for
network 1 and a normalization of the wrong width are refused by the one refusal and
the one width check (architecture.refuse_normalized, features.width_problem)."""
import pytest

from architecture import ModelConfig
from artifacts import SavedConfig
from dataset import DatasetMeta, meta_path, split_paths
from features import MinMax
from inputs import Source, choose_normalization, describe_source
from scoring import LoadedModel
from utils import GhostError

NORM = MinMax((0.0, 0.0), (1.0, 2.0))


def _model(network, normalization=None):
    config = ModelConfig(network=network, n_features=2, hidden=(4,),
                         normalization=normalization or (NORM if network == 1 else None))
    return LoadedModel("onnx", "m.onnx", SavedConfig(model=config), True, 2, False)


def test_a_missing_prefix_names_its_test_arrays(tmp_path):
    prefix = str(tmp_path / "ds")
    with pytest.raises(GhostError, match=f"{split_paths(prefix, 'test')[0]} is missing"):
        describe_source(prefix)


def test_network_1_refuses_normalized_inputs(tmp_path):
    normalized = Source("dataset", "ds", DatasetMeta(normalized=True))
    with pytest.raises(GhostError, match="network 1 normalizes inside the model, but ds "
                                         "holds normalized features") as e:
        choose_normalization(False, 1, _model(1), normalized, ["a", "b"])
    assert meta_path("ds") in str(e.value)
    raw = Source("root", "f.root", DatasetMeta())
    with pytest.raises(GhostError, match="--normalize would normalize twice"):
        choose_normalization(True, 1, _model(1), raw, ["a", "b"])
    assert choose_normalization(False, 1, _model(1), raw, ["a", "b"]) == (None, None)
    assert choose_normalization(False, 0, _model(0, NORM), raw, ["a", "b"])[0] is NORM


def test_a_normalization_of_another_width_is_refused():
    raw = Source("root", "f.root", DatasetMeta())
    with pytest.raises(GhostError, match=r"the normalization's offsets do not match the "
                                         r"selected features \(2 offsets for 3 selected"):
        choose_normalization(True, 0, _model(0, NORM), raw, ["a", "b", "c"])
