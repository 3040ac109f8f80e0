"""The analysis figures, one function each: they take a PlotInput and return a
Figure; FIGURES is their registry (file stem -> figure, whether the input has what
it needs, a one-line caption for index.html), the performance vs kinematics one
figure per variable beside it.  drawing.py styles, lays out, draws and writes them;
the features' and the search's figures are in diagnostic_plots.py, the pages
(index.html) in report.py.
"""
from dataclasses import dataclass
from functools import partial

import numpy as np

from drawing import decorate, legend_below
from metrics import downsample_roc

THRESHOLD_AXIS = "threshold (ghost when probability > threshold)"
SCORE_AXIS = "ghost probability (model output)"
PER_BIN_AXIS = "fraction of the class per bin (0.01 wide)"
SCORE_BINS = np.linspace(0.0, 1.0, 101)


@dataclass
class PlotInput:
    """What the analysis figures draw: a metrics.Analysis, a title line, and where
    available the scores with labels (test and train, for the overtraining check),
    the compared classifiers and the performance vs kinematics."""
    analysis: object
    title: str
    test: tuple = None        # (scores, labels) of every scored track
    train: tuple = None       # (scores, labels) of the train split, on a dataset
    overtraining: dict = None
    curves: list = None       # compare.Curve of every classifier compared, or None
    kinematics: dict = None   # kinematics.performance


def thresholds(plt, p):
    """The original study's threshold scan in four panels."""
    a, t = p.analysis, p.analysis.table["threshold"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 11))
    panels = (
        ("Accuracy", "fraction classified right", [("accuracy", "accuracy", "o-")]),
        ("Predicted and true fractions", "fraction of all tracks",
         [("pred_ghost", "predicted ghosts", "o-r"), ("pred_real", "predicted real", "s-b")]),
        ("Confusion fractions", "fraction of all tracks",
         [("tp", "TP: ghost called ghost", "o-r"), ("tn", "TN: real called real", "s-b"),
          ("fp", "FP: real called ghost", "^-"), ("fn", "FN: ghost called real", "v-")]),
        ("Rates", "rate", [("sensitivity", "sensitivity (ghosts removed)", "o-r"),
                           ("specificity", "specificity (real tracks kept)", "s-b"),
                           ("fnr", "FNR (ghosts kept)", "v--"),
                           ("fpr", "FPR (real tracks lost)", "^--")]))
    for ax, (what, ylabel, curves) in zip(axes.ravel(), panels):
        for key, label, fmt in curves:
            ax.plot(t, a.table[key], fmt, label=label, ms=3)
        if what == "Accuracy":
            for best, label, color in ((a.best_youden_j, "best Youden's J", "tab:green"),
                                       (a.best_f1, "best F1", "tab:purple")):
                if best:
                    ax.axvline(best["threshold"], color=color, ls=":",
                               label=f"{label} ({best['threshold']:.2f})")
        if what.startswith("Predicted"):
            ax.axhline(a.true_ghost, color="tab:red", ls="--", label="true ghost fraction")
            ax.axhline(a.true_real, color="tab:blue", ls="--", label="true real fraction")
        decorate(ax, what, None, THRESHOLD_AXIS, ylabel, loc="below", ncol=2)
    fig.suptitle(f"Threshold scan: {p.title}", fontsize=12)
    return fig


def confusion(plt, p):
    """Confusion matrices at the best-J threshold and at each working point."""
    a = p.analysis
    points = ([("best Youden's J", a.best_youden_j["threshold"])] if a.best_youden_j else [])
    points += [(wp.label, wp.threshold) for wp in a.working_points]
    fig, axes = plt.subplots(1, max(len(points), 1), figsize=(4.2 * max(len(points), 1), 4.3),
                             squeeze=False)
    for ax, (label, cut) in zip(axes[0], points):
        n_g, n_r = a.n_ghost, a.n_real
        tp = n_g - np.searchsorted(a.ghosts, cut, side="right")
        fp = n_r - np.searchsorted(a.reals, cut, side="right")
        cells = np.array([[tp, n_g - tp], [fp, n_r - fp]]) / max(a.n, 1)
        ax.imshow(cells, cmap="Blues", vmin=0, vmax=1)
        for (i, k), v in np.ndenumerate(cells):
            ax.text(k, i, f"{['TP', 'FN', 'FP', 'TN'][2 * i + k]}\n{v:.4f}", ha="center",
                    va="center", color="white" if v > 0.5 else "black")
        ax.set_xticks([0, 1], ["called ghost", "called real"])
        ax.set_yticks([0, 1], ["true ghost", "true real"])
        ax.set_title(f"{label}\nscore > {cut:.3f}, fractions of all tracks")
    fig.suptitle(p.title, fontsize=12)
    return fig


def roc(plt, p):
    """The ROC, linear, and with the real-track inefficiency on a log axis: the region
    near 100 % efficiency where HLT1 cuts."""
    a = p.analysis
    fpr, tpr, _ = a.roc
    keep = downsample_roc(fpr, tpr)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for ax, log in zip(axes, (False, True)):
        ax.plot(fpr[keep], tpr[keep], "-", color="tab:blue",
                label=f"ROC, {a.n:,} tracks (AUC = {a.auc:.4f})")
        ax.plot(a.table["fpr"], a.table["sensitivity"], "o", color="tab:orange", ms=3,
                label=f"the {len(a.table['threshold'])} thresholds")
        for wp in a.working_points:
            ax.plot(1 - wp.real_efficiency, wp.ghost_rejection, "*", ms=11,
                    label=f"{wp.label} (score > {wp.threshold:.3f})")
        if log:  # from one real track called ghost, every point inside the frame
            ax.set_xscale("log")
            ax.set_xlim(max(1.0 / max(a.n_real, 1), 1e-5) / 1.5, 1.5)
        else:
            ax.plot([0, 1], [0, 1], ":", color="gray", label="random guess")
        decorate(ax, "ROC curve" + (", log scale" if log else ""), p.title,
                 "real tracks called ghost (1 - efficiency)", "ghosts called ghost")
    legend_below(fig)
    return fig


def scores(plt, p):
    a = p.analysis
    fig, ax = plt.subplots(figsize=(7, 5.6))
    for arr, label, color in ((a.reals, "real tracks", "tab:blue"),
                              (a.ghosts, "ghosts", "tab:red")):
        counts, _ = np.histogram(arr, bins=SCORE_BINS)
        ax.stairs(counts / max(len(arr), 1), SCORE_BINS, color=color, lw=1.5,
                  label=f"{label} ({len(arr):,})")
    for wp, ls, color in zip(a.working_points, (":", "--", "-.", (0, (1, 3))),
                             ("0.2", "tab:green", "tab:purple", "tab:brown")):
        ax.axvline(wp.threshold, ls=ls, color=color, lw=1.5,  # in the legend, not on
                   label=f"{wp.label}: score > {wp.threshold:.3f}")  # each other
    decorate(ax, "Score distributions", p.title, SCORE_AXIS, PER_BIN_AXIS, logy=True,
             loc="below", ncol=2)
    return fig


def rejection(plt, p):
    a = p.analysis
    fpr, tpr, _ = a.roc
    keep = downsample_roc(fpr, tpr)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.plot((1 - fpr)[keep], tpr[keep], "-", color="tab:blue", label="all cuts")
    for wp in a.working_points:
        ax.plot(wp.real_efficiency, wp.ghost_rejection, "*", ms=11,
                label=f"{wp.label}: rejection {wp.ghost_rejection:.3f} "
                      f"(score > {wp.threshold:.3f})")
    ax.set_xlim(0.8, 1.002), ax.set_ylim(0, 1.005)
    decorate(ax, "Ghost rejection vs real-track efficiency", p.title,
             "real-track efficiency (fraction of real tracks kept)",
             "ghost rejection (fraction of ghosts removed)", loc="lower left")
    return fig


def overtraining(plt, p):
    """Train (filled) vs test (points) score distributions per class, KS p-values."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    centers = 0.5 * (SCORE_BINS[1:] + SCORE_BINS[:-1])
    (train_scores, train_labels), (test_scores, test_labels) = p.train, p.test
    for name, want, color in (("real", False, "tab:blue"), ("ghost", True, "tab:red")):
        a = train_scores[(train_labels == want) & np.isfinite(train_scores)]
        b = test_scores[(test_labels == want) & np.isfinite(test_scores)]
        ca, _ = np.histogram(a, bins=SCORE_BINS)
        cb, _ = np.histogram(b, bins=SCORE_BINS)
        ax.stairs(ca / max(len(a), 1), SCORE_BINS, color=color, fill=True, alpha=0.25,
                  label=f"{name}, train ({len(a):,})")
        ax.errorbar(centers, cb / max(len(b), 1), yerr=np.sqrt(cb) / max(len(b), 1),
                    fmt="o", ms=3, color=color,
                    label=f"{name}, test ({len(b):,}); KS p = "
                          f"{p.overtraining[name]['p_value']:.3g}")
    decorate(ax, "Overtraining check: train vs test scores", p.title, SCORE_AXIS,
             PER_BIN_AXIS, logy=True, loc="below", ncol=2)
    return fig


def comparison(plt, p):
    """Every compared classifier (compare.Curve): the ROC with the real-track
    inefficiency on a log axis, and ghost rejection vs real-track efficiency."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12.5, 5.2))
    for c in p.curves:
        keep = downsample_roc(c.fpr, c.tpr)
        fmt = "--" if c.name.startswith("limit") else "-"
        cost = "" if c.macs is None else f", {c.macs:,} MACs"
        ax.plot(c.fpr[keep], c.tpr[keep], fmt, label=f"{c.name} (AUC {c.auc:.4f}{cost})")
        ax2.plot((1 - c.fpr)[keep], c.tpr[keep], fmt,
                 label=f"{c.name}: {c.rejection_at(0.99):.3f} at 99 %")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.5)  # the curves' ends at (1, 1) inside the frame
    decorate(ax, "ROC curves", p.title, "real tracks called ghost (1 - efficiency, log)",
             "ghosts called ghost", loc="upper left")
    ax2.set_xlim(0.9, 1.003), ax2.set_ylim(0, 1.005)  # 100 % efficiency inside the frame
    ax2.axvline(0.99, color="gray", ls=":")
    decorate(ax2, "Ghost rejection vs real-track efficiency", p.title,
             "real-track efficiency (fraction of real tracks kept)",
             "ghost rejection (fraction of ghosts removed)", loc="lower left")
    return fig


def kinematics_caption(v):
    return (f"Real-track efficiency and ghost rejection at the working points vs "
            f"{v['label']}; error bars: Clopper-Pearson 68.3 % intervals (as ROOT's "
            f"TEfficiency), empty bins left out.")


def kinematics_figure(plt, name, v, title):
    """Real-track efficiency and ghost rejection against one variable of
    kinematics.performance (`v`), one curve per working point."""
    edges = np.asarray(v["edges"])
    width = np.diff(edges).mean()
    lo = edges[0] / (edges[1] / edges[0]) if v["log"] else edges[0] - width
    hi = edges[-1] * (edges[-1] / edges[-2]) if v["log"] else edges[-1] + width
    bounds = np.r_[lo, edges, hi]  # under- and overflow drawn as one more bin each
    scale = (np.log, np.exp) if v["log"] else (lambda x: x, lambda x: x)
    left, right = scale[0](bounds[:-1]), scale[0](bounds[1:])
    from matplotlib.ticker import MaxNLocator
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12.5, 5.6))
    points = v["points"]
    for i, wp in enumerate(points):
        # each working point's markers a little apart inside the bin, none hiding another
        at = scale[1](left + (right - left) * (0.5 + 0.5 * (i - (len(points) - 1) / 2) /
                                               max(len(points), 2)))
        label = f"{wp['label']} (score > {wp['threshold']:.3f})"
        for a, key in ((ax, "efficiency"), (ax2, "rejection")):
            f = np.asarray(wp[key], dtype=float)
            lo, hi = (np.asarray(wp[f"{key}_{s}"], dtype=float) for s in ("low", "high"))
            full = np.isfinite(f)  # empty bins left out
            a.errorbar(at[full], f[full], yerr=[f[full] - lo[full], hi[full] - f[full]],
                       fmt="o", ms=4, capsize=2, label=label)
    for a, key, what in ((ax, "efficiency", "Real-track efficiency"),
                         (ax2, "rejection", "Ghost rejection")):
        if v["log"]:
            a.set_xscale("log")
        a.set_xlim(bounds[0], bounds[-1])
        a.axvspan(bounds[0], edges[0], color="gray", alpha=0.1)
        a.axvspan(edges[-1], bounds[-1], color="gray", alpha=0.1)
        a.set_ylim(*_headroom([wp[f"{key}_low"] for wp in points],
                              [wp[f"{key}_high"] for wp in points]))
        if not v["log"] and np.allclose(edges % 1, 0.5):  # a counter's bins: whole ticks
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
        decorate(a, f"{what} vs {name} (shaded: under/overflow)", title, v["label"],
                 "fraction of real tracks kept" if a is ax else "fraction of ghosts removed")
    legend_below(fig)
    return fig


def _headroom(lows, highs):
    """y limits that hold every error bar with a margin, within [-0.03, 1.03]."""
    lo = np.nanmin(np.asarray(lows, dtype=float), initial=1.0)
    hi = np.nanmax(np.asarray(highs, dtype=float), initial=0.0)
    margin = 0.06 * max(hi - lo, 0.05)
    return max(lo - margin, -0.03), min(hi + margin, 1.03)


def always(p):
    return True


# file stem -> (figure, whether a PlotInput has what it needs, caption for index.html,
# when it is drawn in words for --help: "" always)
FIGURES = {
    "rejection": (rejection, always, "Ghost rejection against real-track efficiency, "
                  "the working points marked: HLT1's figure of merit.", ""),
    "roc": (roc, always, "ROC curve, linear and with the real-track inefficiency on a log "
            "scale, where HLT1 cuts.", ""),
    "scores": (scores, always, "Score distributions of ghosts and real tracks, the working "
               "points' thresholds marked.", ""),
    "thresholds": (thresholds, always, "The original study's threshold scan: accuracy, "
                   "predicted fractions, confusion fractions and rates.", ""),
    "confusion": (confusion, always, "Confusion matrices at the best-J threshold and at the "
                  "working points.", ""),
    "overtraining": (overtraining, lambda p: bool(p.overtraining) and p.train is not None,
                     "Train vs test score distributions per class, with KS p-values.",
                     "with a train split (a dataset prefix): train vs test scores, KS test"),
    "compare": (comparison, lambda p: bool(p.curves), "Every compared classifier and the "
                "known optimum on the same tracks.",
                "with classifiers compared (--compare, the baseline, INT8) or the limit: "
                "ROC and rejection of each"),
}
KINEMATICS_STEM = "kinematics_{}"  # + a kinematics.VARIABLES name


def figure_jobs(p):
    """[(stem, draw(plt) -> Figure, caption)]: every figure of FIGURES and of the
    kinematics that `p` has data for."""
    jobs = [(stem, partial(draw, p=p), caption)
            for stem, (draw, applies, caption, _) in FIGURES.items() if applies(p)]
    jobs += [(KINEMATICS_STEM.format(name),
              partial(kinematics_figure, name=name, v=v, title=p.title),
              kinematics_caption(v)) for name, v in (p.kinematics or {}).items()]
    return jobs
