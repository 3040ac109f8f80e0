"""artifacts.py: the training settings of a saved record are a trainer.TrainSettings,
stored flat as plain data; records of older or hand-written configs still read."""
import json
from dataclasses import fields

import pytest

from architecture import ModelConfig
from artifacts import TRAINING_KEYS, SavedConfig, onnx_metadata
from trainer import TrainSettings

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
