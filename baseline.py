"""The reference classifier a network is measured against: scikit-learn's
histogram gradient-boosted trees, fitted on the same train split with early
stopping on the validation split.  Not deployable in HLT1; a yardstick.  It sees
the network's own inputs: the raw branches and the derived inputs network 1
computes from them (a fair comparison).
"""
from dataclasses import dataclass

import numpy as np

from derived import extend
from trainer import loss_weights
from utils import GhostError


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
