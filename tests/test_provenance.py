"""provenance.py: where an artifact comes from, recorded in every file of the
session's trained model."""
import json

import onnx

from artifacts import METADATA_KEY, load_config

PROVENANCE = ("toolkit", "commit", "created", "python", "torch", "onnx", "dataset",
              "search", "hyperparameters", "test_metrics")


def test_provenance_in_every_artifact(trained_model, raw_dataset):
    trained = trained_model.models
    config = load_config(str(trained / "ghost_model_config.json"))
    prov = config["provenance"]
    assert set(PROVENANCE) <= set(prov)
    assert prov["toolkit"].startswith("ghost-tracks ") and prov["commit"]
    assert prov["dataset"]["input_files"] and prov["dataset"]["seed"] == 42
    assert prov["dataset"]["counts"]["test"]["ghost"] > 0
    assert prov["hyperparameters"]["hidden"] == config["hidden"]
    assert prov["test_metrics"]["auc"] == config["metrics"]["test"]["auc"]
    int8 = load_config(str(trained / "ghost_model_int8_config.json"))
    assert int8["provenance"]["test_metrics"]["auc"] == int8["metrics"]["test"]["auc"]
    proto = onnx.load(str(trained / "ghost_model.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["provenance"]) == prov
    assert json.loads(props[METADATA_KEY])["provenance"] == prov
    assert proto.producer_name == "ghost-tracks" and prov["commit"] in proto.producer_version
    header = (trained / "ghost_model.hpp").read_text()
    for key in PROVENANCE:
        assert f"// {key}: " in header, key
