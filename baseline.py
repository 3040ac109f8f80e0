"""The reference classifier a network is measured against: scikit-learn's
histogram gradient-boosted trees, fitted on the same train split with early
stopping on the validation split.  Not deployable in HLT1; a yardstick.  It sees
the network's own inputs: the raw branches and the derived inputs network 1
computes from them (a fair comparison).
"""
from dataclasses import dataclass

import numpy as np

from derived import extend
from metrics import quality, threshold_at
from trainer import log_loss, loss_weights
from utils import GhostError, Stopwatch, heartbeat, log


@dataclass
class Baseline:
    """The fitted trees and the derived inputs (derived.Derived, fitted) they see
    beside the raw branches `branches`."""
    trees: object
    derived: tuple = ()
    branches: tuple = None

    def inputs(self, x):
        return extend(x, self.derived, self.branches)


def fit_baseline(train, valid, weights=None, seed=42, derived=(), branches=None):
    """A HistGradientBoostingClassifier on raw branch values and `derived` inputs
    (trees need no scaling); `weights` = (real, ghost) weights the classes as in
    training."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError as e:
        raise GhostError(f"--baseline needs scikit-learn (pip install scikit-learn): {e}")
    (x, y), (vx, vy) = train, valid
    model = Baseline(HistGradientBoostingClassifier(
        max_iter=500, early_stopping=True, n_iter_no_change=20, random_state=seed),
        tuple(derived), branches)
    model.trees.fit(model.inputs(x), y.ravel(), sample_weight=loss_weights(y.ravel(), weights),
                    X_val=model.inputs(vx), y_val=vy.ravel(),
                    sample_weight_val=loss_weights(vy.ravel(), weights))
    return model


def baseline_scores(model, x):
    """Ghost probability of each track (raw branch values `x`)."""
    return model.trees.predict_proba(model.inputs(x))[:, 1].astype(np.float32)


def baseline_row(splits, weights, seed, derived, branches, cut, working_point):
    """The baseline fitted on the train split (early stopping on the validation one)
    and measured on the test split: its row of the quality table (the accuracy at
    `cut`, else at its own working point, the validation split's cut keeping
    `working_point` of the real tracks, as the network's) and its probabilities on
    the train and test splits."""
    log(f"fitting the gradient-boosted baseline on {len(splits['train'][1]):,} tracks "
        "(scikit-learn) ...")
    clock = Stopwatch()
    with heartbeat("fitting the baseline"):
        model = fit_baseline(splits["train"], splits["valid"], weights, seed, derived, branches)
    scores = {s: baseline_scores(model, splits[s][0]) for s in ("train", "test")}
    p, y = scores["test"].astype(np.float64), splits["test"][1].ravel()
    if cut is None:
        cut = threshold_at(baseline_scores(model, splits["valid"][0]),
                           splits["valid"][1].ravel() > 0.5, working_point)
    row = {"loss": log_loss(p, y, weights), "accuracy": float(np.mean((p > cut) == (y > 0.5))),
           **quality(p, y)}
    log(f"baseline: gradient-boosted trees, {model.trees.n_iter_} iterations, "
        f"{clock():.1f} s" + (" (with the derived inputs)" if derived else ""))
    return row, scores
