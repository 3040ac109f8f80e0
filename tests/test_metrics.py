"""metrics.py: the threshold table, ROC and AUC, working points, against values
computed by hand and by brute force."""
import numpy as np
import pytest

import report
from metrics import (
    SortedScores,
    analyse,
    clopper_pearson,
    rejection_at,
    roc_auc,
    threshold_table,
    working_points,
)
from utils import plain


def test_threshold_metrics_by_hand():
    scores = [0.05, 0.15, 0.30, 0.45, 0.55, 0.62, 0.70, 0.80, 0.90, 0.97]
    labels = [0, 0, 1, 0, 1, 0, 1, 1, 0, 1]  # ghosts: .30 .55 .70 .80 .97
    m = threshold_table(SortedScores.of(scores, labels), [0.3, 0.5, 0.97])
    # t = 0.5: TP .55 .70 .80 .97, FN .30, FP .62 .90, TN .05 .15 .45
    assert [int(m[k][1]) for k in ("n_tp", "n_fn", "n_fp", "n_tn")] == [4, 1, 2, 3]
    assert m["accuracy"][1] == pytest.approx(0.7)
    assert (m["tp"][1], m["tn"][1], m["fp"][1], m["fn"][1]) == pytest.approx((0.4, 0.3, 0.2, 0.1))
    assert m["sensitivity"][1] == pytest.approx(0.8) and m["specificity"][1] == pytest.approx(0.6)
    assert m["fpr"][1] == pytest.approx(0.4) and m["fnr"][1] == pytest.approx(0.2)
    assert m["precision"][1] == pytest.approx(4 / 6) and m["f1"][1] == pytest.approx(8 / 11)
    assert m["pred_ghost"][1] == pytest.approx(0.6) and m["pred_real"][1] == pytest.approx(0.4)
    assert m["true_ghost"][1] == pytest.approx(0.5) and m["youden_j"][1] == pytest.approx(0.4)
    # t = 0.3: a score equal to the threshold is not a ghost (probability > threshold)
    assert [int(m[k][0]) for k in ("n_tp", "n_fn", "n_fp", "n_tn")] == [4, 1, 3, 2]
    # t = 0.97: no track passes; precision undefined, no ZeroDivisionError
    assert int(m["n_tp"][2]) == 0 and int(m["n_fp"][2]) == 0
    assert np.isnan(m["precision"][2]) and m["f1"][2] == 0.0
    assert m["accuracy"][2] == pytest.approx(0.5) and m["pred_ghost"][2] == 0.0

    res = analyse(np.array(scores), np.array(labels, bool), [0.3, 0.5, 0.97])
    assert res.best_youden_j["threshold"] == 0.5 and res.best_f1["threshold"] == 0.5
    # ghosts .30 .55 .70 .80 .97, real tracks .05 .15 .45 .62 .90
    (r90, r60) = rejection_at(SortedScores.of(scores, labels), (0.9, 0.6))
    # 90 % of 5 real tracks -> keep all 5: cut at 0.90, only the 0.97 ghost removed
    assert r90["threshold"] == 0.90 and r90["real_efficiency"] == 1.0
    assert r90["ghost_rejection"] == pytest.approx(0.2)
    # 60 % -> keep 3: cut at 0.45, ghosts above it: .55 .70 .80 .97
    assert r60["threshold"] == 0.45 and r60["real_efficiency"] == pytest.approx(0.6)
    assert r60["ghost_rejection"] == pytest.approx(0.8)
    assert "nan" in report.format_table(m).splitlines()[3]
    assert plain({"p": float("nan")}) == {"p": None}


def test_roc_and_auc_against_brute_force():
    rng = np.random.default_rng(3)
    labels = rng.random(400) < 0.3
    scores = np.round(np.clip(rng.normal(0.4 + 0.25 * labels, 0.2), 0, 1), 2)  # many ties
    g, r = scores[labels], scores[~labels]
    pairs = (g[:, None] > r[None, :]).mean() + 0.5 * (g[:, None] == r[None, :]).mean()
    assert roc_auc(scores, labels) == pytest.approx(pairs, abs=1e-12)
    fpr, tpr, thr = analyse(scores, labels, []).roc
    assert np.trapezoid(tpr, fpr) == pytest.approx(pairs, abs=1e-12)
    assert len(thr) == len(np.unique(scores)) + 1  # every distinct score, plus "all ghost"
    for t, x, y in zip(thr, fpr, tpr):
        assert x == pytest.approx((r > t).mean()) and y == pytest.approx((g > t).mean())
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_working_points_are_the_empirical_quantiles():
    rng = np.random.default_rng(4)
    labels = rng.random(50_000) < 0.2
    scores = rng.random(50_000) * 0.6 + 0.4 * labels
    reals = np.sort(scores[~labels])
    for eff in (0.5, 0.9, 0.95, 0.99, 0.995):
        (wp,) = working_points(SortedScores.of(scores, labels), [eff])
        kept = int((reals <= wp.threshold).sum())
        assert abs(kept - eff * len(reals)) <= 1, (eff, kept)  # within one track
        assert wp.real_efficiency == kept / len(reals)
        assert wp.ghost_rejection == (scores[labels] > wp.threshold).mean()
    # the model's own point: its fixed threshold, measured on these tracks
    a = analyse(scores, labels, [0.5], efficiencies=(0.99,),
                model_point={"efficiency": 0.99, "threshold": 0.7})
    own = a.working_points[-1]
    assert own.threshold == 0.7 and own.origin.startswith("the model")
    assert own.real_efficiency == (reals <= 0.7).mean()


def test_clopper_pearson_is_tefficiency():
    """The intervals of every efficiency and rejection: ROOT's TEfficiency default
    (Clopper-Pearson, 68.3 %), on the same counts, edges included (0 of n, n of n,
    1 of 1, large n); NaN for an empty bin."""
    from rootio import import_root
    ROOT = import_root()
    rng = np.random.default_rng(0)
    n = np.r_[rng.integers(1, 60, 200), rng.integers(1, 10**6, 200), [1, 1, 7, 7, 10**6]]
    k = np.r_[(rng.random(400) * n[:400]).astype(np.int64), [0, 1, 0, 7, 10**6]]
    low, high = clopper_pearson(k, n)
    level = 0.682689492137086  # TEfficiency's default: one sigma
    for kk, nn, lo, hi in zip(k, n, low, high):
        assert lo == pytest.approx(ROOT.TEfficiency.ClopperPearson(int(nn), int(kk), level,
                                                                   False), rel=1e-9)
        assert hi == pytest.approx(ROOT.TEfficiency.ClopperPearson(int(nn), int(kk), level,
                                                                   True), rel=1e-9)
    assert (low[k == 0] == 0).all() and (high[k == n] == 1).all()
    assert np.isnan(clopper_pearson([0], [0])).all()
    # bit for bit scipy.stats.beta.ppf, what it computed before (betaincinv is the
    # same function without scipy.stats' import, a second in every fresh process)
    from scipy.stats import beta

    from metrics import CONFIDENCE
    inside = (k > 0) & (k < n)
    tail = (1 - CONFIDENCE) / 2
    assert low[inside].tobytes() == beta.ppf(tail, k[inside], n[inside] - k[inside] + 1).tobytes()
    assert high[inside].tobytes() == beta.ppf(1 - tail, k[inside] + 1,
                                              n[inside] - k[inside]).tobytes()


def test_working_points_carry_their_intervals():
    rng = np.random.default_rng(3)
    labels = rng.random(20_000) < 0.2
    scores = np.where(labels, rng.beta(5, 2, labels.size), rng.beta(2, 5, labels.size))
    for wp in working_points(SortedScores.of(scores, labels), [0.9, 0.99]):
        d, r = wp.to_dict(), wp.rates
        lo, hi = clopper_pearson([r["n_tn"], r["n_tp"]],
                                 [r["n_tn"] + r["n_fp"], r["n_tp"] + r["n_fn"]])
        assert (d["real_efficiency_low"], d["real_efficiency_high"]) == (lo[0], hi[0])
        assert (d["ghost_rejection_low"], d["ghost_rejection_high"]) == (lo[1], hi[1])
        assert lo[0] < d["real_efficiency"] < hi[0] and lo[1] < d["ghost_rejection"] < hi[1]
