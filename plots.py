"""Figures, one function each, drawn headless (Agg) unless asked to show them.

Analysis figures (inference.py) take a PlotInput and return a Figure; FIGURES is
the registry of them by file name.  Feature figures (make_dataset.py --plot) come
from feature_figure.  Every file is written through save_figure.
"""
import os
import warnings
from dataclasses import dataclass

import numpy as np

THRESHOLD_AXIS = "threshold (ghost when probability > threshold)"
SCORE_AXIS = "ghost probability (model output)"
PER_BIN_AXIS = "fraction of the class per bin (0.01 wide)"
SCORE_BINS = np.linspace(0.0, 1.0, 101)


def pyplot(show=False):
    import matplotlib
    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(out, path, fig, keep=False):
    """Write `fig` to `path` through `out` (outputs.AtomicOutputs); close it unless
    it is kept to be shown."""
    fig.tight_layout()
    fig.savefig(out.tmp(path), dpi=100)
    if not keep:
        pyplot().close(fig)


def decorate(ax, what, title, xlabel, ylabel, logy=False, loc="best"):
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{what}\n{title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc=loc, fontsize=8)


@dataclass
class PlotInput:
    """What the analysis figures draw: a metrics.Analysis, a title line, and for the
    overtraining figure the test and train scores with their labels."""
    analysis: object
    title: str
    test: tuple = None        # (scores, labels) of every scored track
    train: tuple = None       # (scores, labels) of the train split, on a dataset
    overtraining: dict = None
    curves: list = None       # compare.Curve of every classifier compared, or None


def _vs_threshold(plt, p, curves, what, ylabel, extra=None):
    a = p.analysis
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, style in curves:
        ax.plot(a.table["threshold"], a.table[key], style, label=label, ms=4)
    if extra:
        extra(ax)
    decorate(ax, f"{what} vs threshold", p.title, THRESHOLD_AXIS, ylabel)
    return fig


def accuracy(plt, p):
    a = p.analysis

    def mark_best(ax):
        for best, label, color in ((a.best_youden_j, "best Youden's J", "tab:green"),
                                   (a.best_f1, "best F1", "tab:purple")):
            if best:
                ax.axvline(best["threshold"], color=color, ls=":",
                           label=f"{label} ({best['threshold']:.2f})")
    return _vs_threshold(plt, p, [("accuracy", "accuracy", "o-")], "Accuracy",
                         "accuracy (fraction of tracks classified right)", mark_best)


def ghost_real(plt, p):
    a = p.analysis

    def true_lines(ax):
        ax.axhline(a.true_ghost, color="tab:red", ls="--",
                   label=f"true ghost fraction ({a.true_ghost:.3f})")
        ax.axhline(a.true_real, color="tab:blue", ls="--",
                   label=f"true real fraction ({a.true_real:.3f})")
    return _vs_threshold(plt, p, [("pred_ghost", "predicted ghost fraction", "o-r"),
                                  ("pred_real", "predicted real fraction", "s-b")],
                         "Predicted vs true ghost and real fractions",
                         "fraction of all tracks", true_lines)


def confusion(plt, p):
    """Confusion fractions vs threshold, and the matrix at the best-J threshold."""
    a = p.analysis
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5),
                                  gridspec_kw={"width_ratios": [1.6, 1]})
    for key, label, style in (("tp", "TP: ghost called ghost", "o-r"),
                              ("tn", "TN: real called real", "s-b"),
                              ("fp", "FP: real called ghost", "^-"),
                              ("fn", "FN: ghost called real", "v-")):
        ax.plot(a.table["threshold"], a.table[key], style, label=label, ms=4)
    ax.set_xlabel(THRESHOLD_AXIS)
    ax.set_ylabel("fraction of all tracks")
    ax.set_title("Confusion fractions vs threshold", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    best = a.best_youden_j
    if best:
        cells = np.array([[best["tp"], best["fn"]], [best["fp"], best["tn"]]])
        ax2.imshow(cells, cmap="Blues", vmin=0, vmax=1)
        for (i, k), v in np.ndenumerate(cells):
            ax2.text(k, i, f"{['TP', 'FN', 'FP', 'TN'][2 * i + k]}\n{v:.4f}", ha="center",
                     va="center", color="white" if v > 0.5 else "black")
        ax2.set_xticks([0, 1], ["called ghost", "called real"])
        ax2.set_yticks([0, 1], ["true ghost", "true real"])
        ax2.set_title(f"Confusion matrix at threshold {best['threshold']:.2f} "
                      "(best J)\nfractions of all tracks", fontsize=10)
    else:
        ax2.axis("off")
    fig.suptitle(p.title, fontsize=10)
    return fig


def ssfnfp(plt, p):
    return _vs_threshold(
        plt, p, [("sensitivity", "sensitivity (TPR: ghosts called ghost)", "o-r"),
                 ("specificity", "specificity (TNR: real tracks kept)", "s-b"),
                 ("fnr", "false negative rate (ghosts kept)", "v--"),
                 ("fpr", "false positive rate (real tracks lost)", "^--")],
        "Sensitivity, specificity, FNR and FPR", "rate")


def downsample_roc(fpr, tpr, points=2000):
    """Indices of a few thousand ROC points, dense where either rate changes."""
    if len(fpr) <= 2 * points:
        return np.arange(len(fpr))
    grid = np.linspace(0.0, 1.0, points)
    idx = np.concatenate([np.searchsorted(fpr, grid), np.searchsorted(tpr, grid),
                          [0, len(fpr) - 1]])
    return np.unique(np.clip(idx, 0, len(fpr) - 1))


def roc(plt, p):
    a = p.analysis
    fpr, tpr, _ = a.roc
    keep = downsample_roc(fpr, tpr)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot(fpr[keep], tpr[keep], "-", color="tab:blue",
            label=f"ROC, all {a.n:,} tracks (AUC = {a.auc:.4f})")
    ax.plot(a.table["fpr"], a.table["sensitivity"], "o", color="tab:orange", ms=4,
            label=f"the {len(a.table['threshold'])} thresholds")
    ax.plot([0, 1], [0, 1], ":", color="gray", label="random guess")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.005)
    decorate(ax, "ROC curve", p.title, "false positive rate (real tracks called ghost)",
             "true positive rate (ghosts called ghost)", loc="lower right")
    return fig


def scores(plt, p):
    a = p.analysis
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arr, label, color in ((a.reals, "real tracks", "tab:blue"),
                              (a.ghosts, "ghosts", "tab:red")):
        counts, _ = np.histogram(arr, bins=SCORE_BINS)
        ax.stairs(counts / max(len(arr), 1), SCORE_BINS, color=color, lw=1.5,
                  label=f"{label} ({len(arr):,})")
    decorate(ax, "Score distributions", p.title, SCORE_AXIS, PER_BIN_AXIS, logy=True)
    return fig


def rejection(plt, p):
    a = p.analysis
    fpr, tpr, _ = a.roc
    keep = downsample_roc(fpr, tpr)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot((1 - fpr)[keep], tpr[keep], "-", color="tab:blue", label="all cuts")
    for r in a.rejection:
        if np.isfinite(r["ghost_rejection"]):
            ax.plot(r["real_efficiency"], r["ghost_rejection"], "o", ms=6,
                    label=f"{r['target_efficiency']:.1%} efficiency: rejection "
                          f"{r['ghost_rejection']:.3f} (p > {r['threshold']:.3f})")
    ax.set_xlim(0.5, 1.002), ax.set_ylim(0, 1.005)
    decorate(ax, "Ghost rejection vs real-track efficiency", p.title,
             "real-track efficiency (fraction of real tracks kept)",
             "ghost rejection (fraction of ghosts removed)", loc="lower left")
    return fig


def overtraining(plt, p):
    """Train (filled) vs test (points) score distributions per class, KS p-values."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
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
             PER_BIN_AXIS, logy=True)
    return fig


def comparison(plt, p):
    """Every compared classifier (compare.Curve): the ROC with the real-track
    inefficiency on a log axis, the region near 100 % efficiency where HLT1 cuts,
    and ghost rejection vs real-track efficiency from 90 %."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    for c in p.curves:
        keep = downsample_roc(c.fpr, c.tpr)
        style = "--" if c.name.startswith("limit") else "-"
        cost = "" if c.macs is None else f", {c.macs:,} MACs"
        ax.plot(c.fpr[keep], c.tpr[keep], style, label=f"{c.name} (AUC {c.auc:.4f}{cost})")
        ax2.plot((1 - c.fpr)[keep], c.tpr[keep], style,
                 label=f"{c.name}: {c.rejection_at(0.99):.3f} at 99 %")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    decorate(ax, "ROC curves", p.title, "real tracks called ghost (1 - efficiency, log)",
             "ghosts called ghost", loc="upper left")
    ax2.set_xlim(0.9, 1.0), ax2.set_ylim(0, 1.005)
    ax2.axvline(0.99, color="gray", ls=":")
    decorate(ax2, "Ghost rejection vs real-track efficiency", p.title,
             "real-track efficiency (fraction of real tracks kept)",
             "ghost rejection (fraction of ghosts removed)", loc="lower left")
    return fig


# file name -> (figure, whether a PlotInput has what it needs)
FIGURES = {
    "accuracy.png": (accuracy, lambda p: True),
    "ghost_real.png": (ghost_real, lambda p: True),
    "confusion.png": (confusion, lambda p: True),
    "ssfnfp.png": (ssfnfp, lambda p: True),
    "roc.png": (roc, lambda p: True),
    "scores.png": (scores, lambda p: True),
    "rejection.png": (rejection, lambda p: True),
    "overtraining.png": (overtraining, lambda p: bool(p.overtraining) and p.train is not None),
    "compare.png": (comparison, lambda p: bool(p.curves)),
}


def write_analysis_figures(p, plots_dir, out, show=False):
    """Every figure of FIGURES that `p` has data for; returns (file names, figures
    kept open to be shown)."""
    plt = pyplot(show)
    names, kept = [], []
    with warnings.catch_warnings():  # e.g. a log axis over an empty class
        warnings.simplefilter("ignore")
        for name, (draw, applies) in FIGURES.items():
            if applies(p):
                fig = draw(plt, p)
                save_figure(out, os.path.join(plots_dir, name), fig, keep=show)
                names.append(name)
                kept += [fig] if show else []
    return names, kept


def feature_figure(plt, name, x, ghost, heavy):
    """One feature's distribution for ghosts and real tracks (density), log scales
    for a heavy-tailed feature."""
    lo, hi = np.percentile(x, [0.0, 100.0 if not heavy else 99.9])
    if heavy and lo > 0:
        bins = np.geomspace(lo, hi, 81)
    else:
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 81)
    fig, ax = plt.subplots(figsize=(6, 4))
    for sel, label, color in ((~ghost, "real", "tab:blue"), (ghost, "ghost", "tab:red")):
        ax.hist(x[sel], bins=bins, density=True, histtype="step", lw=1.5,
                color=color, label=f"{label} ({int(sel.sum()):,} tracks)")
    if heavy:
        ax.set_yscale("log")
        if lo > 0:
            ax.set_xscale("log")
    ax.set_xlabel(name)
    ax.set_ylabel("density (normalized to unit area)")
    ax.set_title(f"{name}: ghost vs real tracks")
    ax.legend()
    return fig


def write_feature_figures(columns, rows, ghost, names, heavy_tailed, plots_dir, out):
    """One PNG per feature: the given rows of its column, ghosts vs real tracks."""
    plt = pyplot()
    for name in names:
        fig = feature_figure(plt, name, columns[name][rows], ghost, name in heavy_tailed)
        save_figure(out, os.path.join(plots_dir, f"{name}.png"), fig)


def search_front(plt, trials, best):
    """Validation AUC and ghost rejection at 99 % efficiency against the multiply-adds
    per track of every trial of a search: the quality-vs-cost front, the chosen trial
    ringed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "auc", "validation ROC AUC"),
                           (axes[1], "rejection@0.99", "validation ghost rejection at 99 %")):
        longest = max(t["epochs"] for t in trials)
        for done, marker, label in ((True, "o", "trials (best epoch)"),
                                    (False, "x", "stopped early by ASHA")):
            sel = [t for t in trials if (t["epochs"] == longest) == done]
            if sel:
                ax.scatter([t["macs"] for t in sel], [t.get(key, np.nan) for t in sel],
                           c="tab:blue", marker=marker, s=25, label=label)
        chosen = [t for t in trials if t["params"] == best]
        if chosen:
            ax.scatter([chosen[0]["macs"]], [chosen[0].get(key, np.nan)], s=140,
                       facecolors="none", edgecolors="tab:red", lw=2, label="chosen")
        ax.set_xscale("log")
        decorate(ax, f"{label} vs cost", f"{len(trials)} trials of the search",
                 "multiply-adds per track (log scale)", label, loc="lower right")
    return fig
