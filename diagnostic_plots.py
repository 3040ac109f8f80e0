"""The figures beside the analysis: the features (make_dataset.py --plot) and what
a search and a trained model tell (the search's front and history, the variable
ranking, the correlations).  Each function draws one Figure with a pyplot given
(drawing.style()); report.py writes them and their pages."""
import numpy as np

from drawing import decorate
from features import axis_label, display_values

# --- features -----------------------------------------------------------------


def _bins(x, heavy):
    """Per integer for counters; log-spaced for positive heavy tails; else linear,
    over the central 99.8 % (the rest is under- or overflow)."""
    if np.all(x == np.round(x)) and np.ptp(x) <= 60:
        return np.arange(x.min() - 0.5, x.max() + 1.0), False
    lo, hi = np.percentile(x, [0.1, 99.9])
    if heavy and lo > 0:
        return np.geomspace(lo, hi, 81), True
    return np.linspace(lo, hi if hi > lo else lo + 1, 81), False


def feature_figure(plt, name, x, ghost, heavy, transformed=False):
    """One feature's distribution for ghosts and real tracks (each normalized to unit
    area), with the tracks outside the range counted in the legend."""
    from matplotlib.ticker import MaxNLocator
    if not transformed:
        x = display_values(name, x)
    bins, logx = _bins(x, heavy and not transformed)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for sel, label, color in ((~ghost, "real", "tab:blue"), (ghost, "ghost", "tab:red")):
        values = x[sel]
        under, over = int((values < bins[0]).sum()), int((values > bins[-1]).sum())
        ax.hist(np.clip(values, bins[0], bins[-1]), bins=bins, density=True, histtype="step",
                lw=1.5, color=color,
                label=f"{label}, {len(values):,} tracks\n(underflow {under:,}, overflow "
                      f"{over:,}, in the edge bins)")
    if heavy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    finite = x[np.isfinite(x)]
    if finite.size and np.array_equal(finite, np.round(finite)):  # counters: whole ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"{name} after the model's input transform (standardized)" if transformed
                  else axis_label(name))
    ax.set_ylabel("density (unit area)")
    ax.set_title(f"{name}: ghost vs real tracks")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the data
    return fig


# --- the search and the trained model ------------------------------------------

def search_front(plt, trials, best):
    """Validation AUC and ghost rejection at 99 % efficiency against the multiply-adds
    per track of every trial of a search: the quality-vs-cost front, the chosen trial
    ringed."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    longest = max(t["epochs"] for t in trials)
    for ax, key, label in ((axes[0], "auc", "validation ROC AUC"),
                           (axes[1], "rejection@0.99", "validation ghost rejection at 99 %")):
        for done, marker, what in ((True, "o", "trials (best epoch)"),
                                   (False, "x", "stopped early by ASHA")):
            sel = [t for t in trials if (t["epochs"] == longest) == done]
            if sel:
                ax.scatter([t["macs"] for t in sel], [t.get(key, np.nan) for t in sel],
                           c="tab:blue", marker=marker, s=25, label=what)
        chosen = [t for t in trials if t["params"] == best]
        if chosen:
            ax.scatter([chosen[0]["macs"]], [chosen[0].get(key, np.nan)], s=140,
                       facecolors="none", edgecolors="tab:red", lw=2, label="chosen")
        ax.set_xscale("log")
        ax.margins(x=0.1, y=0.15)  # the chosen trial's ring inside the frame
        decorate(ax, f"{label} vs cost", f"{len(trials)} trials of the search",
                 "multiply-adds per track (log scale)", label, loc="best")
    return fig


METRIC_NAMES = {"auc": "ROC AUC", "loss": "loss"}


def history(plt, trials, best):
    """Per epoch of every trial, the chosen one bold: the training (dashed) and
    validation (solid) loss, and the selection metric (the validation AUC when the
    loss selects); the chosen trial's best epoch by the selection metric marked."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    from matplotlib.ticker import MaxNLocator
    select = trials[0].get("select", "loss") if trials else "loss"
    right = "auc" if select == "loss" else select
    for ax, keys, label in ((axes[0], ("train_loss", "loss"), "loss"),
                            (axes[1], (right,), "validation " + METRIC_NAMES.get(right, right))):
        for t in trials:
            chosen = t["params"] == best
            h = t["history"]
            for key in keys:
                if key not in h:  # a search stored before the training loss was kept
                    continue
                ax.plot(h["epoch"], h[key], "--" if key == "train_loss" else "-",
                        color="tab:red" if chosen else "tab:blue", lw=2.5 if chosen else 1,
                        alpha=1 if chosen else 0.5, zorder=3 if chosen else 2,
                        label=f"chosen trial, {'training' if key == 'train_loss' else 'validation'}"
                              if chosen else None)
            if chosen and "best_epoch" in t:
                at = h["epoch"].index(t["best_epoch"])
                ax.plot(t["best_epoch"], h[keys[-1]][at], "*", ms=14, color="black", zorder=4,
                        label=f"best epoch by {select} ({t['best_epoch']})")
        ax.plot([], [], color="tab:blue", alpha=0.5, label="other trials")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        last = max((max(t["history"]["epoch"]) for t in trials), default=1)
        ax.set_xlim(0.7, last + 0.3)  # the first and the last epoch's markers inside
        low, high = ax.dataLim.y0, ax.dataLim.y1
        pad = 0.08 * max(high - low, 1e-3)
        ax.set_ylim(low - pad, high + pad)
        decorate(ax, f"{label} per epoch", f"{len(trials)} trials", "epoch", label,
                 loc="best")
    return fig


def ranking(plt, reference, rows, title):
    """Drop in AUC and in ghost rejection at 99 % when each feature is shuffled."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 0.4 * len(rows) + 2.5))
    names = [r["feature"] for r in rows][::-1]
    for a, key, what in ((ax, "auc_drop", f"drop in ROC AUC (of {reference['auc']:.4f})"),
                         (ax2, "rejection_drop", "drop in ghost rejection at 99 % (of "
                          f"{reference['rejection@0.99']:.3f})")):
        a.barh(names, [r[key] for r in rows][::-1], color="tab:blue")
        a.set_xlabel(what)
        a.grid(alpha=0.3, axis="x")
    fig.suptitle(f"Variable ranking by permutation: {title}", fontsize=12)
    return fig


def correlation_figure(plt, matrices, names):
    """The features' rank correlations for ghosts and for real tracks."""
    size = 0.6 * len(names) + 2.5
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.5, size), layout="constrained")
    for ax, (cls, m) in zip(axes, matrices.items()):
        image = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=9)
        ax.set_yticks(range(len(names)), names, fontsize=9)
        ax.tick_params(which="both", top=False, right=False, length=0)  # cells, not a scale
        ax.minorticks_off()
        for (i, k), v in np.ndenumerate(m):
            if i != k and abs(v) >= 0.2:  # white on the dark cells
                ax.text(k, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(v) > 0.6 else "black")
        ax.set_title(f"{cls} tracks: Spearman rank correlation")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="rank correlation")
    return fig
