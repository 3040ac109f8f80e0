"""Classifier metrics, all from one sort of the scores: the threshold table, the
ROC curve and its area, ghost rejection at fixed real-track efficiencies, the best
thresholds, and the overtraining check (train vs test, Kolmogorov-Smirnov).

Conventions: a ghost is the positive class and a track is called a ghost when its
score is above the threshold; "real-track efficiency" is the fraction of real
tracks kept (score <= threshold), "ghost rejection" the fraction of ghosts removed.
"""
import math
from dataclasses import dataclass

import numpy as np

# Real-track efficiencies at which the ghost rejection is quoted.
EFFICIENCIES = (0.90, 0.95, 0.99, 0.995)
# The original study's 26 thresholds: 0.10-0.80 by 0.05, 0.81-0.89 by 0.01, 0.90, 0.95.
DEFAULT_THRESHOLDS = tuple(round(t, 2) for t in (
    [0.10 + 0.05 * i for i in range(15)] + [0.81 + 0.01 * i for i in range(9)] + [0.90, 0.95]))
# The working points analysed by default (real-track efficiency kept) and the one
# whose threshold training stores in the model.
WORKING_POINTS = (0.99, 0.95)
MODEL_WORKING_POINT = 0.99


# The confidence level of every interval: one Gaussian sigma, as ROOT's TEfficiency.
CONFIDENCE = math.erf(1 / math.sqrt(2))  # 0.6827


def clopper_pearson(k, n, level=CONFIDENCE):
    """The Clopper-Pearson interval (TEfficiency's default) of k passing out of n:
    (low, high) as float64 arrays, the central `level` of the exact binomial
    interval (low 0 when k is 0, high 1 when k is n); NaN where n is 0."""
    from scipy.special import betaincinv  # beta.ppf's own function, without scipy.stats
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    tail = (1 - level) / 2
    low = np.where(k > 0, betaincinv(np.maximum(k, 1), n - k + 1, tail), 0.0)
    high = np.where(k < n, betaincinv(k + 1, np.maximum(n - k, 1), 1 - tail), 1.0)
    return np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)


def ratio(a, b):
    """a / b elementwise as float64, NaN where b is 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


@dataclass
class SortedScores:
    """Scores sorted once: all of them ascending with their labels, and each class
    ascending (subsequences of the one sorted array, so no second sort)."""
    scores: np.ndarray   # ascending: float32 (the scores' own values) or float64
    labels: np.ndarray   # bool, True = ghost, aligned with scores
    ghosts: np.ndarray
    reals: np.ndarray

    @classmethod
    def of(cls, scores, labels):
        scores = np.asarray(scores).ravel()
        labels = np.asarray(labels).ravel().astype(bool)
        s32 = scores.astype(np.float32, copy=False)
        if scores.dtype != np.float32 and not np.array_equal(s32, scores, equal_nan=True):
            order = np.argsort(scores, kind="stable")  # not float32: the general sort
            s, y = scores[order].astype(np.float64), labels[order]
        else:
            s, y = sort_with_labels(s32, labels)
        # each class in float64: thresholds (float64) are searched in them
        return cls(s, y, s[y].astype(np.float64), s[~y].astype(np.float64))


def sort_with_labels(scores, labels):
    """float32 scores ascending and their labels, by one integer sort
    instead of an argsort: each score's bits made order-preserving as an unsigned
    integer, the label appended as the lowest bit.  Probabilities (sign bit clear)
    fit in 32 bits, any other float32 in 64; NaN sorts last, as in np.sort."""
    bits = scores.view(np.uint32)  # each step in place: the key and the labels only
    y = np.empty(len(bits), dtype=bool)
    if len(bits) and int(bits.max()) < 0x80000000:  # no negative number, no -0.0
        key = bits << np.uint32(1)
        np.bitwise_or(key, labels, out=key)
        key.sort()
        np.bitwise_and(key, np.uint32(1), out=y, casting="unsafe")
        key >>= np.uint32(1)
        return key.view(np.float32), y
    flip = bits | np.uint32(0x80000000)  # negative: every bit flipped
    np.invert(bits, out=flip, where=np.signbit(scores))
    key = flip.astype(np.uint64)
    del flip
    key <<= np.uint64(1)
    np.bitwise_or(key, labels, out=key)
    key.sort()
    np.bitwise_and(key, np.uint64(1), out=y, casting="unsafe")
    key >>= np.uint64(1)
    bits = key.astype(np.uint32)
    del key
    positive = np.signbit(bits.view(np.float32))
    np.bitwise_and(bits, np.uint32(0x7FFFFFFF), out=bits, where=positive)
    np.invert(bits, out=bits, where=~positive)
    return bits.view(np.float32), y


def threshold_table(ss, thresholds):
    """Per threshold: counts, their fractions of all tracks and the rates derived
    from them; a dict of arrays."""
    t = np.asarray(thresholds, dtype=np.float64)
    n_g, n_r = len(ss.ghosts), len(ss.reals)
    n = n_g + n_r
    tp = n_g - np.searchsorted(ss.ghosts, t, side="right")
    fp = n_r - np.searchsorted(ss.reals, t, side="right")
    fn, tn = n_g - tp, n_r - fp
    m = {"threshold": t, "n_tp": tp, "n_tn": tn, "n_fp": fp, "n_fn": fn,
         "accuracy": ratio(tp + tn, n),
         "tp": ratio(tp, n), "tn": ratio(tn, n), "fp": ratio(fp, n), "fn": ratio(fn, n),
         "sensitivity": ratio(tp, n_g), "specificity": ratio(tn, n_r),
         "fpr": ratio(fp, n_r), "fnr": ratio(fn, n_g),
         "precision": ratio(tp, tp + fp), "f1": ratio(2 * tp, 2 * tp + fp + fn),
         "pred_ghost": ratio(tp + fp, n), "pred_real": ratio(tn + fn, n),
         "true_ghost": np.full(len(t), ratio(n_g, n)[()]),
         "true_real": np.full(len(t), ratio(n_r, n)[()])}
    m["youden_j"] = m["sensitivity"] + m["specificity"] - 1.0
    return m


def row(table, i):
    """Row i of a threshold table as plain numbers."""
    return {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in table.items()}


BLOCK = 1 << 20  # sorted tracks per block: the ROC is made a block at a time


class Roc:
    """The ROC at every distinct score, from the highest down (ghost when score > t),
    then everything a ghost (t = -inf), made from the sorted scores (SortedScores) a
    BLOCK at a time, no array of its points held: one pass finds its area (the
    Mann-Whitney U, exact in integers), the best tpr - fpr and how many points lie
    below each downsample_roc grid value, a second the points kept.  The same
    numbers as from whole arrays of counts (tests/test_blocks.py)."""

    def __init__(self, ss):
        self.s, self.y, self.n_g, self.n_r = ss.scores, ss.labels, len(ss.ghosts), len(ss.reals)
        self.grids = roc_grids(ROC_POINTS // 20)  # downsample_roc's, as Roc.kept keeps it
        self.found, self.small, self.d = np.zeros(3 * ROC_POINTS // 20, dtype=np.intp), [], 0
        final = self.rates(np.array([self.n_r]), np.array([self.n_g]))  # t = -inf
        self._search(*final)
        j = final[1] - final[0]
        self.best = (j[0], final[0][0], final[1][0], -np.inf)  # (j, fpr, tpr, t)
        twice, prev = 0, (self.n_r, self.n_g)  # the point before, toward t = -inf
        for _, v, fp, tp in self._blocks():
            fpr, tpr = self.rates(fp, tp)
            self._search(fpr[::-1], tpr[::-1])
            j = tpr - fpr  # the highest d wins a tie: it comes first in the ROC
            i = len(j) - 1 - int(np.argmax(j[::-1]))
            if j[i] >= self.best[0]:
                self.best = (j[i], fpr[i], tpr[i], float(v[i]))
            twice += (prev[0] - int(fp[0])) * (prev[1] + int(tp[0]))
            twice += int(np.dot(fp[:-1] - fp[1:], tp[:-1] + tp[1:]))
            prev = (int(fp[-1]), int(tp[-1]))
            if self.d + len(v) + 1 <= ROC_POINTS:
                self.small.append((v, fpr, tpr))
            self.d += len(v)
        twice += prev[0] * prev[1]  # the highest score's point, from (0, 0)
        self.twice_area = twice

    def rates(self, fp, tp):
        return fp / max(self.n_r, 1), tp / max(self.n_g, 1)

    def _blocks(self):
        """(first distinct index, distinct scores, fp, tp (int64)) of each block of the
        sorted scores, ascending: the points of scores ending in it, highest last."""
        s, y, ghosts, d = self.s, self.y, 0, 0
        for a in range(0, len(s), BLOCK):
            b = min(a + BLOCK, len(s))
            last = np.ones(b - a, dtype=bool)  # the last of each run of equal scores
            after = s[a + 1:b + 1]  # each score's next (none after the very last)
            np.not_equal(after, s[a:a + len(after)], out=last[:len(after)])
            ghosts_le = np.cumsum(y[a:b], dtype=np.int64)
            ghosts_le += ghosts
            ghosts = int(ghosts_le[-1])
            ghosts_le, rows = ghosts_le[last], np.flatnonzero(last)
            if len(rows):
                yield (d, s[a:b][last], self.n_r - (rows + a + 1 - ghosts_le),
                       self.n_g - ghosts_le)
            d += len(rows)

    def _search(self, fpr, tpr):
        """Add the points below each grid value (ascending rates: searchsorted)."""
        grid, logs = self.grids
        self.found += np.concatenate([np.searchsorted(fpr, grid), np.searchsorted(tpr, grid),
                                      np.searchsorted(fpr, logs)])

    def auc(self):
        if self.n_g == 0 or self.n_r == 0:
            return float("nan")
        return self.twice_area / (2.0 * self.n_g * self.n_r)

    def kept(self, thresholds=False):
        """The ROC as analyses keep it: (fpr, tpr[, thresholds]) at every point up to
        ROC_POINTS, else at downsample_roc's (plots and results.root draw no more)."""
        n, d = self.d + 1, self.d
        if n <= ROC_POINTS:  # every point: the blocks' own, highest score first
            got = [(np.asarray(v, dtype=np.float64)[::-1], f[::-1], t[::-1])
                   for v, f, t in reversed(self.small)]
        else:
            rows = np.unique(np.clip(np.concatenate([self.found, [0, n - 1]]), 0, n - 1))
            want = np.sort(d - 1 - rows[rows < d])  # their distinct indices, ascending
            got = []
            for d0, v, fp, tp in (self._blocks() if len(want) else ()):
                at = want[(want >= d0) & (want < d0 + len(v))] - d0
                if len(at):  # the block's kept points, highest score first
                    at = at[::-1]
                    got.append((np.asarray(v[at], dtype=np.float64), *self.rates(fp[at], tp[at])))
            got = got[::-1]
        final = self.rates(np.array([self.n_r]), np.array([self.n_g]))
        t, fpr, tpr = (np.concatenate([g[i] for g in got] + [x]) for i, x in
                       enumerate((np.array([-np.inf]), *final)))
        return (fpr, tpr, t) if thresholds else (fpr, tpr)


ROC_POINTS = 100_000  # a longer ROC is kept downsampled (downsample_roc)


def roc_grids(points):
    """downsample_roc's and Roc's rates: `points` in [0, 1] (fpr, tpr), on a log scale (fpr)."""
    return np.linspace(0.0, 1.0, points), np.geomspace(1e-6, 1, points)


def downsample_roc(fpr, tpr, points=2000):
    """Indices of a few thousand ROC points, dense where either rate changes, and at
    the low-fpr end on a log scale."""
    if len(fpr) <= 2 * points:
        return np.arange(len(fpr))
    grid, logs = roc_grids(points)
    idx = np.concatenate([np.searchsorted(fpr, grid), np.searchsorted(tpr, grid),
                          np.searchsorted(fpr, logs), [0, len(fpr) - 1]])
    return np.unique(np.clip(idx, 0, len(fpr) - 1))


def roc_auc(scores, labels):
    """Area under the ROC curve of scores against labels (ghost = 1)."""
    return Roc(SortedScores.of(scores, labels)).auc()


def quality(scores, labels, efficiencies=EFFICIENCIES):
    """{"auc": ..., "rejection@0.99": ...}: the figures of merit, from one sort."""
    ss = SortedScores.of(scores, labels)
    out = {"auc": Roc(ss).auc()}
    for r in rejection_at(ss, efficiencies):
        out[f"rejection@{r['target_efficiency']:g}"] = r["ghost_rejection"]
    return out


def rejection_at(ss, efficiencies=EFFICIENCIES):
    """Ghost rejection at each real-track efficiency: the lowest threshold keeping at
    least that fraction of real tracks, and what it rejects."""
    ghosts, reals = ss.ghosts, ss.reals
    n_g, n_r = len(ghosts), len(reals)
    out = []
    for eff in efficiencies:
        if n_r == 0 or n_g == 0:
            out.append({"target_efficiency": eff, "threshold": math.nan,
                        "real_efficiency": math.nan, "ghost_rejection": math.nan})
            continue
        k = min(max(int(math.ceil(eff * n_r - 1e-9)), 1), n_r)
        t = float(reals[k - 1])
        kept = int(np.searchsorted(reals, t, side="right"))
        rejected = n_g - int(np.searchsorted(ghosts, t, side="right"))
        out.append({"target_efficiency": eff, "threshold": t,
                    "real_efficiency": kept / n_r, "ghost_rejection": rejected / n_g})
    return out


def threshold_at(scores, labels, efficiency):
    """The threshold keeping `efficiency` of the real tracks (labels False) of these
    scores: rejection_at's, the empirical quantile of the real tracks' scores.  The
    model's threshold is this on the validation split at its working point."""
    return rejection_at(SortedScores.of(scores, labels), [efficiency])[0]["threshold"]


@dataclass
class Analysis:
    """Everything computed from the finite, labelled scores of one input."""
    n: int
    n_ghost: int
    n_real: int
    true_ghost: float
    true_real: float
    table: dict              # threshold -> metrics (threshold_table)
    roc: tuple               # fpr, tpr, thresholds (Roc.kept: downsampled when long)
    auc: float
    rejection: list          # rejection_at EFFICIENCIES
    ghosts: np.ndarray       # sorted scores of each class
    reals: np.ndarray
    best_youden_j: dict      # rows of the table, or None
    best_f1: dict
    best_youden_j_any_cut: dict
    model_threshold: dict = None
    working_points: list = None  # [WorkingPoint]: the asked ones, then the model's


@dataclass
class WorkingPoint:
    """A cut on the score and what it does on the analysed tracks: the threshold that
    keeps `target_efficiency` of the real tracks here, or the model's own threshold,
    fixed at training time (`fixed`); `rates`: every metric of the threshold table
    at it (threshold_table's row, less the threshold)."""
    label: str
    origin: str               # where the threshold comes from
    target_efficiency: float
    threshold: float
    rates: dict
    fixed: bool = False       # the model's own point

    @property
    def real_efficiency(self):
        return self.rates["specificity"]

    @property
    def ghost_rejection(self):
        return self.rates["sensitivity"]

    def intervals(self):
        """Clopper-Pearson intervals of the real-track efficiency (real tracks kept,
        n_tn of n_tn + n_fp) and of the ghost rejection (n_tp of n_tp + n_fn)."""
        r = self.rates
        (e_lo, r_lo), (e_hi, r_hi) = clopper_pearson(
            [r["n_tn"], r["n_tp"]], [r["n_tn"] + r["n_fp"], r["n_tp"] + r["n_fn"]])
        return {"real_efficiency_low": float(e_lo), "real_efficiency_high": float(e_hi),
                "ghost_rejection_low": float(r_lo), "ghost_rejection_high": float(r_hi)}

    def to_dict(self):
        """The row metrics.json, thresholds.csv and results.root write (keys in the
        order they have always had, the intervals last)."""
        cut = {"target_efficiency": self.target_efficiency, "threshold": self.threshold}
        if self.fixed:
            return {"label": self.label, **cut, "origin": self.origin, **self.rates,
                    "real_efficiency": self.real_efficiency,
                    "ghost_rejection": self.ghost_rejection, **self.intervals()}
        return {**cut, "real_efficiency": self.real_efficiency,
                "ghost_rejection": self.ghost_rejection, "label": self.label,
                "origin": self.origin, **self.rates, **self.intervals()}


def working_points(ss, efficiencies, model_point=None):
    """[WorkingPoint]: for each asked efficiency the threshold that keeps it on these
    tracks (the empirical quantile of the real tracks' scores); then the model's own
    working point, its threshold fixed at training time ({"efficiency", "threshold"})."""
    cuts = [(f"{r['target_efficiency']:.1%} efficiency", "this input", r["target_efficiency"],
             r["threshold"], False) for r in rejection_at(ss, efficiencies)]
    if model_point:
        cuts.append((f"model's {model_point['efficiency']:.1%} point",
                     "the model (its validation split)", model_point["efficiency"],
                     float(model_point["threshold"]), True))
    table = threshold_table(ss, [c[3] for c in cuts])
    return [WorkingPoint(label, origin, eff, t,  # every metric of the table at each point
                         {k: v for k, v in row(table, i).items() if k != "threshold"}, fixed)
            for i, (label, origin, eff, t, fixed) in enumerate(cuts)]


def analyse(scores, labels, thresholds, model_threshold=None, efficiencies=(0.99,),
            model_point=None):
    """The Analysis of scores against labels at the given thresholds, at the
    model's own threshold, and at the working points (efficiencies of real tracks
    kept, and the model's own point)."""
    ss = SortedScores.of(scores, labels)
    table = threshold_table(ss, thresholds)
    roc = Roc(ss)
    ss.scores = ss.labels = None  # the classes' sorted scores are all that is used now
    n_g, n_r = len(ss.ghosts), len(ss.reals)
    best = {}
    for key in ("youden_j", "f1"):
        v = table[key]
        best[key] = row(table, int(np.nanargmax(v))) if np.isfinite(v).any() else None
    j, fpr, tpr, t = roc.best  # the first point of the largest tpr - fpr
    best_any = {"threshold": t, "youden_j": float(j),
                "sensitivity": float(tpr), "specificity": float(1 - fpr)}
    return Analysis(
        n=n_g + n_r, n_ghost=n_g, n_real=n_r,
        true_ghost=float(ratio(n_g, n_g + n_r)), true_real=float(ratio(n_r, n_g + n_r)),
        table=table, roc=roc.kept(thresholds=True), auc=roc.auc(),
        rejection=rejection_at(ss), ghosts=ss.ghosts, reals=ss.reals,
        best_youden_j=best["youden_j"], best_f1=best["f1"],
        best_youden_j_any_cut=best_any,
        model_threshold=(row(threshold_table(ss, [float(model_threshold)]), 0)
                         if model_threshold is not None else None),
        working_points=working_points(ss, efficiencies, model_point) if n_g and n_r else [])


def overtraining(train_scores, train_labels, test_scores, test_labels, points=()):
    """Train vs test score distributions per class: two-sample KS test; and, as TMVA
    prints them, the real-track efficiency and ghost rejection on each split at the
    thresholds of `points` (WorkingPoint), under "working_points"."""
    from scipy.stats import ks_2samp
    out = {}
    rows = []
    for wp in points:
        row_ = {"label": wp.label, "threshold": wp.threshold}
        for split, (s, y) in (("train", (train_scores, train_labels)),
                              ("test", (test_scores, test_labels))):
            ok = np.isfinite(s)
            s, y = s[ok], np.asarray(y[ok], dtype=bool)
            row_[f"real_efficiency_{split}"] = float(ratio((s[~y] <= wp.threshold).sum(),
                                                           (~y).sum()))
            row_[f"ghost_rejection_{split}"] = float(ratio((s[y] > wp.threshold).sum(),
                                                           y.sum()))
        rows.append(row_)
    for name, want in (("ghost", True), ("real", False)):
        a = train_scores[train_labels == want]
        b = test_scores[test_labels == want]
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if len(a) and len(b):
            ks = ks_2samp(a, b)
            out[name] = {"ks_statistic": float(ks.statistic), "p_value": float(ks.pvalue),
                         "n_train": len(a), "n_test": len(b)}
        else:
            out[name] = {"ks_statistic": math.nan, "p_value": math.nan,
                         "n_train": len(a), "n_test": len(b)}
    if rows:
        out["working_points"] = rows
    return out
