"""trainer.py: the training loop, evaluation, learning-rate schedules and class
weights; the one class weighting of the loss, in torch (training) and numpy (the
baseline and the reference rows)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import trainer
from architecture import ModelConfig
from models import build_model
from trainer import Trainer, TrainSettings, evaluate, log_loss, loss_weights, lr_at


def test_trainer_learns_and_evaluate_is_consistent():
    torch.manual_seed(0)
    x = torch.rand(4096, 3)
    y = (x[:, :1] + x[:, 1:2] > 1.0).float()
    model = build_model(ModelConfig(network=0, n_features=3, hidden=(16,), activation="relu"))
    settings = trainer.TrainSettings(optimizer="adam", lr=1e-2, batch=256, epochs=16, seed=1)
    opt = trainer.make_optimizer(settings, model, torch.device("cpu"))
    loop = trainer.Trainer(model, opt, x, y, 256, seed=1)
    first = loop.epoch()
    for _ in range(15):
        last = loop.epoch()
    assert last < first * 0.5
    m = trainer.evaluate(model, x, y, 0.5)
    with torch.no_grad():
        p = model(x)
    assert m["accuracy"] == pytest.approx(float(((p > 0.5).float() == y).float().mean()))
    assert m["accuracy"] > 0.9 and m["auc"] > 0.95


def test_raw_batches_train_the_same_model_as_inputs_scaled_once(raw_dataset):
    """A CPU trial trains on the shared raw arrays, scaling each batch with the
    model's own layer: the same weights and the same validation metrics, bit for
    bit, as scaling the whole split once (which each trial would have to copy)."""
    from dataset import load_meta, load_split
    x, y = load_split(raw_dataset, "train")
    vx, vy = load_split(raw_dataset, "valid")
    meta = load_meta(raw_dataset)
    config = ModelConfig(network=1, n_features=x.shape[1], hidden=(16, 8), activation="elu",
                         inputs="standard", standardization=meta.standardization,
                         derived=tuple(meta.derived), branches=tuple(meta.features))
    assert config.derived  # the default derived inputs, computed batch by batch too
    runs = []
    for raw in (False, True):
        torch.manual_seed(3)
        model = build_model(config)
        settings = trainer.TrainSettings(optimizer="adam", lr=3e-3, batch=512, epochs=2,
                                         seed=5, schedule="onecycle")
        opt = trainer.make_optimizer(settings, model, torch.device("cpu"))
        tensors = (trainer.shared_tensors if raw else
                   lambda d, m=model: trainer.to_tensors(m, d, torch.device("cpu")))
        loop = trainer.Trainer(model, opt, *tensors((x, y)), 512, seed=5, settings=settings,
                               raw=raw, weights=(0.6, 2.5))
        losses = [loop.epoch() for _ in range(2)]
        metrics = trainer.evaluate(model, *tensors((vx, vy)), 0.5, raw=raw)
        runs.append((losses, metrics, model.state_dict()))
    (l0, m0, s0), (l1, m1, s1) = runs
    assert l0 == l1 and m0 == m1
    assert all(torch.equal(s0[k], s1[k]) for k in s0)


def test_learning_rate_schedules():
    s = TrainSettings(optimizer="adamw", lr=1e-2, batch=1, epochs=1, seed=0,
                      schedule="onecycle")
    assert lr_at(s, 0, 100) == pytest.approx(1e-2 / 25)
    assert lr_at(s, 30, 100) == pytest.approx(1e-2)
    assert lr_at(s, 100, 100) == pytest.approx(1e-2 / 1e4)
    lrs = [lr_at(s, i, 100) for i in range(101)]
    assert max(lrs) == pytest.approx(1e-2) and lrs.index(max(lrs)) == 30
    c = TrainSettings(optimizer="adamw", lr=1e-2, batch=1, epochs=1, seed=0, schedule="cosine")
    assert lr_at(c, 5, 100) == pytest.approx(1e-2) and lr_at(c, 100, 100) == pytest.approx(0)
    k = TrainSettings(optimizer="adam", lr=1e-2, batch=1, epochs=1, seed=0)
    assert {lr_at(k, i, 100) for i in range(100)} == {1e-2}


def test_class_weights_weigh_the_training_loss():
    torch.manual_seed(0)
    x = torch.randn(1000, 3)
    y = (torch.rand(1000, 1) < 0.2).float()
    model = build_model(ModelConfig(network=0, n_features=3, hidden=(8,)))
    loop = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), x, y, 1000, 0,
                   weights=(0.5, 2.5))
    with torch.no_grad():
        manual = torch.nn.functional.binary_cross_entropy_with_logits(
            model.core(x), y, reduction="none") * (0.5 + 2.0 * y)
        assert float(loop._loss(x, y)) == pytest.approx(float(manual.mean()), rel=1e-6)
    assert evaluate(model, x, y, 0.5, (0.5, 2.5))["loss"] == pytest.approx(
        float(manual.mean()), rel=1e-5)


WEIGHTS = (0.6, 3.0)  # (real, ghost)


def test_loss_weights_by_label():
    y = np.array([0.0, 1.0, 1.0, 0.0], dtype=np.float32)
    assert loss_weights(y, None) is None and loss_weights(torch.from_numpy(y), None) is None
    w = loss_weights(y, WEIGHTS)
    assert w.dtype == np.float64 and w.tolist() == [0.6, 3.0, 3.0, 0.6]  # exactly
    t = loss_weights(torch.from_numpy(y), WEIGHTS)
    assert t.dtype == torch.float32  # on the labels' device, as the training loss
    torch.testing.assert_close(t, torch.tensor(w, dtype=torch.float32))
    assert torch.equal(t, 0.6 + (3.0 - 0.6) * torch.from_numpy(y))


def test_the_numpy_loss_is_the_training_loss():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=1000).astype(np.float32)
    y = (rng.random(1000) < 0.3).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    for weights in (None, WEIGHTS):
        lt, yt = torch.from_numpy(logits), torch.from_numpy(y)
        expected = float(F.binary_cross_entropy_with_logits(
            lt, yt, weight=loss_weights(yt, weights)))
        assert abs(log_loss(p, y, weights) - expected) < 1e-5


def test_evaluate_weights_the_loss_as_training():
    class Logits(torch.nn.Module):
        def core(self, x):
            return x[:, :1]

    x = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    y = torch.tensor([[1.0], [0.0], [0.0], [1.0]])
    for weights in (None, WEIGHTS):
        got = evaluate(Logits(), x, y, 0.5, weights)["loss"]
        want = float(F.binary_cross_entropy_with_logits(x, y, weight=loss_weights(y, weights)))
        assert got == want
