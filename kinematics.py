"""Performance against the track's kinematics and hits: real-track efficiency and
ghost rejection at each working point, in bins of p, pT, eta, n_velo and n_scifi,
with binomial uncertainties.  The variables are computed from branches read beside
the features (qop, best_pt, tx, ty, n_velo, n_scifi), never fed to the model.

Every binning has an underflow and an overflow bin, so the bins' counts add up to
the whole sample and the efficiencies weighted by the bins' counts give back the
global ones.
"""
from dataclasses import dataclass

import numpy as np

from features import axis_label
from metrics import BLOCK, clopper_pearson, ratio

BRANCHES = ("qop", "best_pt", "tx", "ty", "n_velo", "n_scifi")


@dataclass(frozen=True)
class Variable:
    name: str
    label: str        # axis label, with units (features.UNITS for the features)
    edges: tuple      # inner bin edges; under- and overflow bins are added
    needs: tuple      # branches it is computed from
    log: bool = False


def _p(c):
    return 1.0 / np.maximum(np.abs(c["qop"]), 1e-12)


def _eta(c):
    theta = np.arctan(np.hypot(c["tx"], c["ty"]))
    return -np.log(np.tan(np.maximum(theta, 1e-9) / 2))


VARIABLES = (
    Variable("p", "p [MeV] (1 / |qop|)", tuple(np.geomspace(2e3, 2e5, 11)), ("qop",), log=True),
    Variable("pt", "p_T [MeV] (best_pt)", tuple(np.geomspace(100, 1e4, 11)), ("best_pt",),
             log=True),
    Variable("eta", "pseudorapidity eta (from tx, ty)", tuple(np.linspace(2.0, 5.0, 13)),
             ("tx", "ty")),
    Variable("n_velo", axis_label("n_velo"), tuple(np.arange(2.5, 24.0)), ("n_velo",)),
    Variable("n_scifi", axis_label("n_scifi"), tuple(np.arange(9.5, 13.0)), ("n_scifi",)),
)
COMPUTE = {"p": _p, "pt": lambda c: c["best_pt"], "eta": _eta,
           "n_velo": lambda c: c["n_velo"], "n_scifi": lambda c: c["n_scifi"]}


def columns_of(data, names, others, normalized=False):
    """The BRANCHES for performance: the features' own columns of `data` (`names`:
    its columns; none when normalized: those are no kinematics), and the rest from
    `others` ({branch: array}, e.g. a dataset's spectators)."""
    columns = {} if normalized else {
        b: data[:, names.index(b)] for b in BRANCHES if b in names}
    columns.update({b: v for b, v in others.items() if b in BRANCHES})
    return columns


def available(columns):
    """The VARIABLES whose branches are all in `columns`."""
    return [v for v in VARIABLES if all(b in columns for b in v.needs)]


def _efficiency(k, n):
    """k / n and its Clopper-Pearson interval (TEfficiency's, 68.3 %); NaN for
    empty bins."""
    return (ratio(k, n), *clopper_pearson(k, n))


def edges_at_or_below(x, edges):
    """For each value of x, how many of the ascending `edges` are <= it (NaN: all),
    as np.searchsorted(edges, x, side="right") gives it, compared in float64 but
    without converting x: one comparison per edge."""
    if len(edges) >= 255:
        return np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="right")
    count = np.zeros(len(x), dtype=np.uint8)
    for e in edges:
        count += x >= np.float64(e)
    nan = np.isnan(x)
    if nan.any():
        count[nan] = len(edges)
    return count.astype(np.intp)


def bins_of(columns):
    """{variable: uint8 [tracks], each track's bin: 0 underflow, len(edges)
    overflow} for the VARIABLES whose branches `columns` has: all that performance
    needs of a track's kinematics (5 bytes a track, where the branches take 24)."""
    return {var.name: edges_at_or_below(COMPUTE[var.name](columns), var.edges).astype(np.uint8)
            for var in available(columns)}


def performance(columns, scores, labels, working_points, bins=None):
    """{variable: {"edges", "n_real", "n_ghost", "points": [{efficiency target,
    threshold, efficiency (and its interval: efficiency_low, efficiency_high),
    rejection (rejection_low, rejection_high)}]}} for the
    tracks given (finite and labelled); `working_points`: metrics.WorkingPoint;
    `bins`: bins_of(columns) where the caller kept them instead of the columns.

    One pass per variable, a BLOCK of tracks at a time: each track's bin, class and
    "level" (how many of the working points' cuts its score is above) are counted by
    one bincount, and every working point's counts are sums over levels."""
    cuts = np.array([wp.threshold for wp in working_points], dtype=np.float64)
    ranks = np.argsort(np.argsort(cuts, kind="stable"), kind="stable")
    levels = len(cuts) + 1
    labels = np.asarray(labels, dtype=bool)
    bins = bins_of(columns) if bins is None else bins
    chosen = [v for v in VARIABLES if v.name in bins]
    counts_of = {v.name: np.zeros((len(v.edges) + 1) * 2 * levels, dtype=np.intp) for v in chosen}
    for start in range(0, len(scores), BLOCK):
        rows = slice(start, start + BLOCK)
        level = np.zeros(len(scores[rows]), dtype=np.intp)  # how many cuts it is above
        for cut in cuts:
            level += scores[rows] > np.float64(cut)
        for var in chosen:
            code = (bins[var.name][rows].astype(np.intp) * 2 + labels[rows]) * levels + level
            counts_of[var.name] += np.bincount(code, minlength=len(counts_of[var.name]))
    out = {}
    for var in chosen:
        size = len(var.edges) + 1
        counts = counts_of[var.name].reshape(size, 2, levels)
        n_real, n_ghost = counts[:, 0].sum(axis=1), counts[:, 1].sum(axis=1)
        points = []
        for wp, r in zip(working_points, ranks):
            # score > cut exactly when more than r of the sorted cuts are below it
            kept = counts[:, 0, :r + 1].sum(axis=1)
            removed = counts[:, 1, r + 1:].sum(axis=1)
            eff, eff_lo, eff_hi = _efficiency(kept, n_real)
            rej, rej_lo, rej_hi = _efficiency(removed, n_ghost)
            points.append({"label": wp.label, "target_efficiency": wp.target_efficiency,
                           "threshold": wp.threshold,
                           "real_kept": kept, "ghosts_removed": removed,
                           "efficiency": eff, "efficiency_low": eff_lo,
                           "efficiency_high": eff_hi, "rejection": rej,
                           "rejection_low": rej_lo, "rejection_high": rej_hi})
        out[var.name] = {"label": var.label, "edges": list(var.edges), "log": var.log,
                         "n_real": n_real, "n_ghost": n_ghost, "points": points}
    return out
