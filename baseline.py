"""The reference classifier a network is measured against: scikit-learn's
histogram gradient-boosted trees, fitted on the same train split with early
stopping on the validation split.  Not deployable in HLT1; a yardstick.
"""
import numpy as np

from trainer import loss_weights
from utils import GhostError


def fit_baseline(train, valid, weights=None, seed=42):
    """A HistGradientBoostingClassifier on raw branch values (trees need no
    scaling); `weights` = (real, ghost) weights the classes as in training."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError as e:
        raise GhostError(f"--baseline needs scikit-learn (pip install scikit-learn): {e}")
    (x, y), (vx, vy) = train, valid
    model = HistGradientBoostingClassifier(max_iter=500, early_stopping=True,
                                           n_iter_no_change=20, random_state=seed)
    model.fit(x, y.ravel(), sample_weight=loss_weights(y.ravel(), weights), X_val=vx,
              y_val=vy.ravel(), sample_weight_val=loss_weights(vy.ravel(), weights))
    return model


def baseline_scores(model, x):
    """Ghost probability of each track."""
    return model.predict_proba(x)[:, 1].astype(np.float32)
