"""What a trained classifier has learned, model-agnostic (any score function: a
torch model, an ONNX session): permutation ranking of the features, and the
features' correlations per class, as TMVA shows them after training."""
import numpy as np

from metrics import quality


def permutation_ranking(score, data, labels, names, seed=42):
    """For each feature, the drop in ROC AUC and in ghost rejection at 99 % real-track
    efficiency when its column is shuffled across tracks (its information destroyed,
    its distribution kept): [{feature, auc_drop, rejection_drop}], largest AUC drop
    first.  `score(x) -> probabilities`; one scoring pass per feature."""
    rng = np.random.default_rng(seed)
    reference = quality(score(data), labels, (0.99,))
    rows = []
    for j, name in enumerate(names):
        shuffled = data.copy()
        shuffled[:, j] = data[rng.permutation(len(data)), j]
        q = quality(score(shuffled), labels, (0.99,))
        rows.append({"feature": name, "auc_drop": reference["auc"] - q["auc"],
                     "rejection_drop": reference["rejection@0.99"] - q["rejection@0.99"]})
    rows.sort(key=lambda r: -r["auc_drop"])
    return reference, rows


def average_ranks(x):
    """Ranks 1..n of a 1-d array, equal values given their average rank: what
    scipy.stats.rankdata gives, bit for bit, without its import (0.9 s a run); all
    NaN where a value is NaN, as rankdata propagates it."""
    if np.isnan(x).any():
        return np.full(len(x), np.nan)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])  # each run, then n
    counts = np.diff(starts)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(starts[:-1] + (counts + 1) / 2, counts)
    return ranks


def correlations(data, labels):
    """Spearman (rank) correlation matrices of the features, for ghosts and for real
    tracks: robust to the heavy tails, the same before and after any monotonic
    transform.  {"ghost": [f, f], "real": [f, f]}."""
    out = {}
    for name, want in (("ghost", True), ("real", False)):
        x = data[labels == want]
        ranks = np.column_stack([average_ranks(x[:, j]) for j in range(x.shape[1])])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.nan_to_num(np.corrcoef(ranks, rowvar=False))
    return out


def csv_field(text):
    """A CSV field: quoted where it holds a comma or a quote (a derived input's
    expression, 'kick := residual(pr_match_dtx, qop)')."""
    return f'"{text.replace(chr(34), 2 * chr(34))}"' if any(c in text for c in ',"') else text


def ranking_csv(rows):
    lines = ["rank,feature,auc_drop,rejection_drop_at_99"]
    lines += [f"{i},{csv_field(r['feature'])},{r['auc_drop']:.6g},{r['rejection_drop']:.6g}"
              for i, r in enumerate(rows, 1)]
    return "\n".join(lines) + "\n"
