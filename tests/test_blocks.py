"""The analysis a block at a time (metrics.BLOCK: the ROC's rates, its AUC, the
kinematics' counts): the same numbers, bit for bit, whatever the block, as the
whole arrays give them (issue #21: memory that does not grow with the file)."""
import pickle

import numpy as np
import pytest

import compare
import kinematics
import metrics


def _sample(n, seed, ties=False):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.15
    scores = rng.random(n).astype(np.float32)
    if ties:
        scores = (np.round(scores * 500) / 500).astype(np.float32)
    scores[labels] = np.sqrt(scores[labels])  # ghosts score higher
    return scores, labels


def _whole(scores, labels):
    """The ROC from whole arrays, as metrics did it before the blocks."""
    ss = metrics.SortedScores.of(scores, labels)
    s, y = ss.scores, ss.labels
    n_g, n_r = len(ss.ghosts), len(ss.reals)
    last = np.append(s[1:] != s[:-1], True)
    idx = np.flatnonzero(last)
    ghosts_le = np.cumsum(y)[idx]
    tp = np.append(n_g - ghosts_le[::-1], n_g)
    fp = np.append(n_r - (idx + 1 - ghosts_le)[::-1], n_r)
    heights = tp.astype(np.int64)
    heights[1:] += tp[:-1]
    auc = int((np.diff(fp, prepend=0) * heights).sum()) / (2.0 * n_g * n_r)
    fpr, tpr = fp / n_r, tp / n_g
    j = tpr - fpr
    i = int(np.argmax(j))
    thresholds = np.append(s[last][::-1].astype(np.float64), -np.inf)
    return fpr, tpr, thresholds, auc, (float(thresholds[i]), float(j[i]))


def _analysis(scores, labels):
    a = metrics.analyse(scores, labels, metrics.DEFAULT_THRESHOLDS, 0.5, (0.99, 0.95),
                        {"efficiency": 0.99, "threshold": 0.7})
    bins = {v.name: (np.arange(len(scores)) * 7 % (len(v.edges) + 1)).astype(np.uint8)
            for v in kinematics.VARIABLES}
    kin = kinematics.performance(None, scores, labels, a.working_points, bins)
    curve = compare.Curve.of("c", scores, labels)
    return pickle.dumps((a.roc, a.auc, a.best_youden_j_any_cut, a.rejection, a.table,
                         [w.to_dict() for w in a.working_points], kin,
                         curve.fpr, curve.tpr, curve.auc))


@pytest.mark.parametrize("n,ties,roc_points,blocks", [
    (1000, False, None, (1, 7, 4096, 65_537)),  # every ROC point kept
    (1000, False, 200, (1, 7, 4096, 65_537)),   # downsampled (Roc.kept), a block a track
    (1000, True, 200, (1, 7, 4096, 65_537)),    # the same with runs of equal scores
    (150_000, False, None, (7, 4096, 65_537)),  # downsampled at the real ROC_POINTS
    (150_000, True, None, (7, 4096, 65_537)),
])
def test_any_block_gives_the_whole_arrays_numbers(monkeypatch, n, ties, roc_points, blocks):
    """Blocks of one track are checked on 1000 tracks, with the ROC downsampled by a
    small ROC_POINTS: at 150,000 they would be 150,000 Python-level steps a pass
    (a minute of the suite) for what blocks of 7 already cross."""
    if roc_points:
        monkeypatch.setattr(metrics, "ROC_POINTS", roc_points)
    scores, labels = _sample(n, n, ties)
    whole = _analysis(scores, labels)
    for block in blocks:
        monkeypatch.setattr(metrics, "BLOCK", block)
        monkeypatch.setattr(kinematics, "BLOCK", block)
        assert _analysis(scores, labels) == whole, block


@pytest.mark.parametrize("n", [2, 1000, 150_000])
def test_the_roc_is_the_whole_arrays_roc(monkeypatch, n):
    monkeypatch.setattr(metrics, "BLOCK", 1000)
    scores, labels = _sample(n, 3, ties=True)
    fpr, tpr, thresholds, auc, (best_t, best_j) = _whole(scores, labels)
    a = metrics.analyse(scores, labels, metrics.DEFAULT_THRESHOLDS)
    assert a.auc == auc
    assert (a.best_youden_j_any_cut["threshold"], a.best_youden_j_any_cut["youden_j"]) == (
        best_t, best_j)
    if len(fpr) <= metrics.ROC_POINTS:
        kept = np.arange(len(fpr))
    else:
        kept = metrics.downsample_roc(fpr, tpr, points=metrics.ROC_POINTS // 20)
    for got, want in zip(a.roc, (fpr[kept], tpr[kept], thresholds[kept])):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_sort_with_labels_in_place_keeps_every_bit():
    rng = np.random.default_rng(5)
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3e38,
                        -3e38, 1.0, -1.0], dtype=np.float32)
    scores = np.concatenate([rng.normal(size=5000).astype(np.float32), special])
    labels = rng.random(len(scores)) < 0.3
    kept = scores.copy()
    s, y = metrics.sort_with_labels(scores, labels)
    assert scores.tobytes() == kept.tobytes()  # the caller's scores untouched
    assert y.dtype == bool
    assert sorted(zip(s.view(np.uint32).tolist(), y.tolist())) == sorted(
        zip(scores.view(np.uint32).tolist(), labels.tolist()))  # each score with its label
    assert (s[~np.isnan(s)][1:] >= s[~np.isnan(s)][:-1]).all()
    bits = s.view(np.int32)
    order = np.where(bits < 0, ~bits & 0x7FFFFFFF, bits | np.int32(-2**31)).view(np.uint32)
    # in the order of the bits made order-preserving (-NaN first, NaN last, -0.0 before
    # 0.0), and among equal scores the real tracks first
    assert (np.diff(order.astype(np.int64) * 2 + y) > 0).all()
