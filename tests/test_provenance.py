"""provenance.py: where an artifact comes from, recorded in every file of the
session's trained model."""
import hashlib
import json
import os

import onnx

from artifacts import METADATA_KEY, load_config
from dataset import dataset_files
from helpers import ROOT_DIR
from provenance import file_record

PROVENANCE = ("toolkit", "commit", "created", "python", "torch", "onnx", "dataset",
              "search", "hyperparameters", "test_metrics")


def test_provenance_in_every_artifact(trained_model, raw_dataset):
    trained = trained_model.models
    config = load_config(str(trained / "ghost_model_config.json"))
    prov = config["provenance"]
    assert set(PROVENANCE) <= set(prov)
    assert prov["toolkit"].startswith("ghost-tracks ") and prov["commit"]
    assert prov["dataset"]["input_files"] and prov["dataset"]["seed"] == 42
    assert prov["dataset"]["name"] == os.path.basename(raw_dataset)
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


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_files_recorded_by_name_size_and_hash(trained_model, raw_dataset, matching_file):
    prov = load_config(str(trained_model.models / "ghost_model_config.json"))["provenance"]
    assert prov["dataset"]["input_files"] == [
        {"name": "matching.root", "bytes": os.path.getsize(matching_file),
         "sha256": _sha256(matching_file)}]
    files = {f["name"]: f for f in prov["dataset"]["files"]}
    assert set(files) == {os.path.basename(f) for f in dataset_files(raw_dataset)
                          if os.path.isfile(f)}
    for path in dataset_files(raw_dataset):
        if os.path.isfile(path):
            assert files[os.path.basename(path)] == file_record(path)
            assert files[os.path.basename(path)]["sha256"] == _sha256(path)


def test_no_artifact_holds_a_machine_path(trained_model, raw_dataset, tmp_path):
    """Neither the test's temporary folders nor the repository's path is in any file of
    the trained model (configs, ONNX, headers, the report), in the dataset's JSON, nor
    in inference's metrics.json."""
    from helpers import run_inference
    trained = trained_model.models
    plots = tmp_path / "plots"
    assert run_inference("-f", raw_dataset, "--model", trained / "ghost_model.onnx",
                         "--plots-dir", plots, "--no-plots") == 0
    context = json.load(open(plots / "metrics.json"))
    assert context["model"] == file_record(str(trained / "ghost_model.onnx"))
    assert context["input"]["name"] == os.path.basename(raw_dataset)
    roots = {str(trained.parent.parent), str(tmp_path.parent), ROOT_DIR,
             os.path.realpath(ROOT_DIR)}
    files = [os.path.join(d, f) for folder in (trained, plots)
             for d, _, names in os.walk(folder) for f in names]
    files.append(raw_dataset + "_features.json")
    assert len(files) > 20
    for path in files:
        data = open(path, "rb").read()
        for root in roots:
            assert root.encode() not in data, (path, root)
