"""Figures, one function each, drawn headless (Agg) unless asked to show them, in
LHCb's style (mplhep) where it is installed, as PNG and optionally PDF.

The analysis figures take a PlotInput and return a Figure; FIGURES is their
registry (file stem -> figure, whether the input has what it needs, a one-line
caption for index.html), the performance vs kinematics one figure per variable
beside it.  Every file is written through write_figure; draw_figures draws them in
worker processes.  The features' and the search's figures are in diagnostic_plots.py,
the pages (index.html) in report.py.
"""
import contextlib
import logging
import multiprocessing
import os
import signal
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np

from metrics import downsample_roc

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


@contextlib.contextmanager
def style():
    """LHCb's plot style (mplhep's LHCb2), a little smaller for panels with titles and
    legends; matplotlib's own where mplhep is not installed."""
    plt = pyplot()
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # style's fallbacks
    try:
        import mplhep
        sheet = [mplhep.style.LHCb2, {"font.size": 12, "axes.titlesize": 11,
                                      "axes.labelsize": 12, "legend.fontsize": 9,
                                      "xtick.labelsize": 10, "ytick.labelsize": 10}]
    except ImportError:
        sheet = ["default"]
    with plt.style.context(sheet), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a log axis over an empty class
        yield plt


def save_figure(out, path, fig, keep=False, formats=("png",)):
    """Write `fig` as path's stem in each format through `out`
    (outputs.AtomicOutputs); close it unless it is kept to be shown.  Returns the
    file names written."""
    stem = os.path.splitext(path)[0]
    write_figure(fig, [out.tmp(f"{stem}.{fmt}") for fmt in formats], keep)
    return [os.path.basename(f"{stem}.{fmt}") for fmt in formats]


def write_figure(fig, files, keep=False):
    """Lay `fig` out, write it to each of `files` (a format each, by extension) and
    close it unless it is kept to be shown."""
    with warnings.catch_warnings():  # axes tight_layout cannot place (a colorbar)
        warnings.simplefilter("ignore")
        fig.tight_layout()
    for path in files:
        fig.savefig(path, dpi=100)
    if not keep:
        pyplot().close(fig)


def decorate(ax, what, title, xlabel, ylabel, logy=False, loc="best"):
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{what}\n{title}" if title else what)
    ax.grid(alpha=0.3)
    ax.legend(loc=loc)


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
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
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
        decorate(ax, what, None, THRESHOLD_AXIS, ylabel)
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
        ax.set_title(f"{label}\np > {cut:.3f}, fractions of all tracks")
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
                    label=f"{wp.label} (p > {wp.threshold:.3f})")
        if log:
            ax.set_xscale("log")
            ax.set_xlim(max(1.0 / max(a.n_real, 1), 1e-5), 1)
        else:
            ax.plot([0, 1], [0, 1], ":", color="gray", label="random guess")
            ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.005)
        decorate(ax, "ROC curve" + (", log scale" if log else ""), p.title,
                 "real tracks called ghost (1 - efficiency)", "ghosts called ghost",
                 loc="lower right")
    return fig


def scores(plt, p):
    a = p.analysis
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for arr, label, color in ((a.reals, "real tracks", "tab:blue"),
                              (a.ghosts, "ghosts", "tab:red")):
        counts, _ = np.histogram(arr, bins=SCORE_BINS)
        ax.stairs(counts / max(len(arr), 1), SCORE_BINS, color=color, lw=1.5,
                  label=f"{label} ({len(arr):,})")
    for wp in a.working_points:
        ax.axvline(wp.threshold, ls=":", color="gray")
        ax.text(wp.threshold, 0.5, f" {wp.label}", rotation=90, va="center",
                fontsize=8, transform=ax.get_xaxis_transform())
    decorate(ax, "Score distributions", p.title, SCORE_AXIS, PER_BIN_AXIS, logy=True,
             loc="upper center")
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
                      f"(p > {wp.threshold:.3f})")
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
             PER_BIN_AXIS, logy=True, loc="upper center")
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
    ax.set_xlim(1e-4, 1)
    decorate(ax, "ROC curves", p.title, "real tracks called ghost (1 - efficiency, log)",
             "ghosts called ghost", loc="upper left")
    ax2.set_xlim(0.9, 1.0), ax2.set_ylim(0, 1.005)
    ax2.axvline(0.99, color="gray", ls=":")
    decorate(ax2, "Ghost rejection vs real-track efficiency", p.title,
             "real-track efficiency (fraction of real tracks kept)",
             "ghost rejection (fraction of ghosts removed)", loc="lower left")
    return fig


def kinematics_caption(v):
    return (f"Real-track efficiency and ghost rejection at the working points vs "
            f"{v['label']}, binomial uncertainties.")


def kinematics_figure(plt, name, v, title):
    """Real-track efficiency and ghost rejection against one variable of
    kinematics.performance (`v`), one curve per working point."""
    edges = np.asarray(v["edges"])
    width = np.diff(edges).mean()
    lo = edges[0] / (edges[1] / edges[0]) if v["log"] else edges[0] - width
    hi = edges[-1] * (edges[-1] / edges[-2]) if v["log"] else edges[-1] + width
    bounds = np.r_[lo, edges, hi]  # under- and overflow drawn as one more bin each
    centers = np.sqrt(bounds[1:] * bounds[:-1]) if v["log"] else 0.5 * (bounds[1:] +
                                                                         bounds[:-1])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12.5, 4.8))
    for wp in v["points"]:
        label = f"{wp['label']} (p > {wp['threshold']:.3f})"
        ax.errorbar(centers, wp["efficiency"], yerr=wp["efficiency_error"], fmt="o-",
                    ms=3, label=label)
        ax2.errorbar(centers, wp["rejection"], yerr=wp["rejection_error"], fmt="o-",
                     ms=3, label=label)
    for a, what in ((ax, "Real-track efficiency"), (ax2, "Ghost rejection")):
        if v["log"]:
            a.set_xscale("log")
        a.axvspan(bounds[0], edges[0], color="gray", alpha=0.1)
        a.axvspan(edges[-1], bounds[-1], color="gray", alpha=0.1)
        decorate(a, f"{what} vs {name} (shaded: under/overflow)", title, v["label"],
                 "fraction of real tracks kept" if a is ax else "fraction of ghosts removed",
                 loc="best")
    return fig


def always(p):
    return True


# file stem -> (figure, whether a PlotInput has what it needs, caption for index.html)
FIGURES = {
    "rejection": (rejection, always, "Ghost rejection against real-track efficiency, "
                  "the working points marked: HLT1's figure of merit."),
    "roc": (roc, always, "ROC curve, linear and with the real-track inefficiency on a log "
            "scale, where HLT1 cuts."),
    "scores": (scores, always, "Score distributions of ghosts and real tracks, the working "
               "points' thresholds marked."),
    "thresholds": (thresholds, always, "The original study's threshold scan: accuracy, "
                   "predicted fractions, confusion fractions and rates."),
    "confusion": (confusion, always, "Confusion matrices at the best-J threshold and at the "
                  "working points."),
    "overtraining": (overtraining, lambda p: bool(p.overtraining) and p.train is not None,
                     "Train vs test score distributions per class, with KS p-values."),
    "compare": (comparison, lambda p: bool(p.curves), "Every compared classifier and the "
                "known optimum on the same tracks."),
}


def figure_jobs(p):
    """[(stem, draw(plt) -> Figure, caption)]: every figure of FIGURES and of the
    kinematics that `p` has data for."""
    jobs = [(stem, partial(draw, p=p), caption)
            for stem, (draw, applies, caption) in FIGURES.items() if applies(p)]
    jobs += [(f"kinematics_{name}", partial(kinematics_figure, name=name, v=v, title=p.title),
              kinematics_caption(v)) for name, v in (p.kinematics or {}).items()]
    return jobs


def _draw_job(job, targets, keep=False):
    """Draw one job and write it to its temporary files; the Figure if kept."""
    stem, draw, _ = job
    with style() as plt:
        fig = draw(plt)
        write_figure(fig, targets, keep)
    return fig if keep else None


_JOBS = []  # what forked workers draw: (job, temporary files), set before the fork


def _quiet_worker():
    """A figure worker leaves SIGINT and SIGTERM to the run: Ctrl-C reaches the whole
    process group, and the run, stopping, ends its workers (PendingFigures.cancel)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _draw_in_worker(index):
    job, targets = _JOBS[index]
    _draw_job(job, targets)
    return index


class PendingFigures:
    """Figures being drawn, in forked worker processes or already here; wait()
    returns ([(file names, caption)], figures kept open)."""

    def __init__(self, written, kept, pool=None, result=None):
        self.written, self.kept, self.pool, self.result = written, kept, pool, result

    def wait(self):
        if self.pool is not None:
            try:
                self.result.get()
            finally:
                self.cancel()
        return self.written, self.kept

    def cancel(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def draw_figures(jobs, plots_dir, out, show=False, formats=("png",), workers=None):
    """Start drawing `jobs` (figure_jobs) into plots_dir through `out`
    (outputs.AtomicOutputs): with several cores, in forked worker processes (one
    per core, at most one per figure), so the caller can write its other outputs
    meanwhile; here, one by one, when there is one core or the figures are to be
    shown.  Returns a PendingFigures."""
    written, targets = [], []
    for stem, _, caption in jobs:
        files = [out.tmp(os.path.join(plots_dir, f"{stem}.{fmt}")) for fmt in formats]
        targets.append(files)
        written.append(([f"{stem}.{fmt}" for fmt in formats], caption))
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), len(jobs))
    if show or workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        kept = [_draw_job(job, files, keep=show) for job, files in zip(jobs, targets)]
        return PendingFigures(written, [f for f in kept if f is not None])
    with style():  # matplotlib, mplhep and the fonts loaded once, before the fork
        pass
    _JOBS[:] = list(zip(jobs, targets))
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_quiet_worker)
    return PendingFigures(written, [], pool, pool.map_async(_draw_in_worker, range(len(jobs)),
                                                            chunksize=1))
