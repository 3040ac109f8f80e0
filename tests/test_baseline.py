"""baseline.py: the gradient-boosted trees see the network's own inputs, the raw
branches and the derived inputs computed from them (a fair comparison)."""
import numpy as np

from baseline import baseline_scores, fit_baseline
from derived import Derived
from metrics import quality


def test_the_baseline_sees_the_derived_inputs():
    """A class decided by a ratio of two branches: trees cut one input at a time, so
    the ratio as a derived input separates the classes where the raw pair does not
    quite; the scores are of raw branch values either way."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.1, 1.0, (6000, 2)).astype(np.float32)
    y = (x[:, :1] / x[:, 1:] > 1.0).astype(np.float32)
    train, valid, test = (x[:3000], y[:3000]), (x[3000:4500], y[3000:4500]), x[4500:]
    ratio = Derived.parse("r := a / b", ["a", "b"])
    with_ratio = fit_baseline(train, valid, derived=[ratio], branches=("a", "b"))
    raw = fit_baseline(train, valid)
    assert with_ratio.inputs(test).shape == (1500, 3) and raw.inputs(test).shape == (1500, 2)
    np.testing.assert_allclose(with_ratio.inputs(test)[:, 2], test[:, 0] / test[:, 1], rtol=1e-6)
    auc = {name: quality(baseline_scores(m, test), y[4500:].ravel())["auc"]
           for name, m in (("ratio", with_ratio), ("raw", raw))}
    assert auc["ratio"] > 0.9999 and auc["raw"] < auc["ratio"]
