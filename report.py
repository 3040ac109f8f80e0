"""How an analysis is reported: the console summary, thresholds.csv and the
metrics.json record.  Formatting only; metrics.py computes the numbers."""
import numpy as np

from metrics import row
from utils import log, plain

COLUMNS = [("threshold", "thresh"), ("accuracy", "acc"), ("tp", "TP"), ("tn", "TN"),
           ("fp", "FP"), ("fn", "FN"), ("sensitivity", "sens"), ("specificity", "spec"),
           ("fpr", "FPR"), ("fnr", "FNR"), ("precision", "prec"), ("f1", "F1"),
           ("youden_j", "J"), ("pred_ghost", "pred_g"), ("pred_real", "pred_r")]
CSV_COLUMNS = [k for k, _ in COLUMNS] + ["true_ghost", "true_real",
                                         "n_tp", "n_tn", "n_fp", "n_fn"]


def _fmt(v, width=7):
    if isinstance(v, (int, np.integer)):
        return f"{v:>{width}d}"
    return f"{'nan':>{width}}" if not np.isfinite(v) else f"{v:>{width}.4f}"


def format_table(table):
    lines = [" ".join(f"{h:>7}" for _, h in COLUMNS)]
    for i in range(len(table["threshold"])):
        lines.append(" ".join(_fmt(table[k][i]) for k, _ in COLUMNS))
    return "\n".join(lines)


def table_csv(table):
    lines = [",".join(CSV_COLUMNS)]
    for i in range(len(table["threshold"])):
        cells = []
        for k in CSV_COLUMNS:
            v = table[k][i]
            cells.append(str(int(v)) if isinstance(v, (int, np.integer))
                         else "nan" if not np.isfinite(v) else f"{float(v):.6g}")
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def print_summary(a, over):
    """The analysis `a` (metrics.Analysis) and the overtraining check on the console."""
    log(f"{a.n:,} labelled tracks: {a.n_ghost:,} ghosts ({a.true_ghost:.2%}), "
        f"{a.n_real:,} real ({a.true_real:.2%}); ROC AUC {a.auc:.4f}")
    log(format_table(a.table))
    for b, key, name in ((a.best_youden_j, "youden_j", "Youden's J"),
                         (a.best_f1, "f1", "F1")):
        if b:
            log(f"best threshold by {name}: {b['threshold']:.2f} ({name} {b[key]:.4f}, "
                f"sensitivity {b['sensitivity']:.4f}, specificity {b['specificity']:.4f})")
    if a.model_threshold is not None:
        b = a.model_threshold
        log(f"at the model's own threshold {b['threshold']:.3f}: accuracy "
            f"{b['accuracy']:.4f}, sensitivity {b['sensitivity']:.4f}, "
            f"specificity {b['specificity']:.4f}")
    for r in a.rejection:
        log(f"ghost rejection at {r['target_efficiency']:.1%} real-track efficiency: "
            f"{r['ghost_rejection']:.4f} (threshold {r['threshold']:.4f}, "
            f"efficiency {r['real_efficiency']:.4f})")
    if over:
        log("overtraining check (train vs test scores, KS test): " + ", ".join(
            f"{k} p = {v['p_value']:.3g}" for k, v in over.items()))


def metrics_record(a, extra, context):
    """The metrics.json record: `context` (what was scored, with which model and
    how fast), every number of the analysis, then `extra` (overtraining, comparison,
    limit); plain JSON (NaN -> null)."""
    return plain({
        **context,
        "tracks_labelled": a.n, "ghosts": a.n_ghost, "reals": a.n_real,
        "true_ghost_fraction": a.true_ghost, "true_real_fraction": a.true_real,
        "roc_auc": a.auc, "classification": "ghost when probability > threshold",
        "thresholds": [row(a.table, i) for i in range(len(a.table["threshold"]))],
        "best_youden_j": a.best_youden_j, "best_f1": a.best_f1,
        "best_youden_j_any_cut": a.best_youden_j_any_cut,
        "model_threshold": a.model_threshold, "ghost_rejection": a.rejection,
        **extra,
    })


def trials_csv(trials):
    """The search's trials, one line each: hyperparameters, cost, best validation
    metrics (search.trial_table)."""
    metrics = sorted({k for t in trials for k in t if k.startswith("rejection@")})
    keys = sorted({k for t in trials for k in t["params"]})
    lines = [",".join(keys + ["epochs", "macs", "params", "loss", "auc"] + metrics)]
    for t in trials:
        cells = ["x".join(map(str, v)) if isinstance(v, list) else f"{v:.6g}"
                 if isinstance(v, float) else str(v) for v in (t["params"].get(k) for k in keys)]
        cells += [str(t["epochs"]), str(t["macs"]), str(t["params_count"]),
                  f"{t['loss']:.6g}", f"{t['auc']:.6g}"] + [f"{t.get(m, float('nan')):.6g}"
                                                          for m in metrics]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"
