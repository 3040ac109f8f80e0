"""trainer.py: the one class weighting of the loss, as training computes it (torch)
and as the baseline and the reference rows use it (numpy)."""
import numpy as np
import torch
import torch.nn.functional as F

from trainer import evaluate, log_loss, loss_weights

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
