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


def _cell(v):
    return (str(int(v)) if isinstance(v, (int, np.integer))
            else "nan" if not np.isfinite(v) else f"{float(v):.6g}")


def table_csv(table, working_points=()):
    """The threshold scan, then one row per working point (named in the last
    column, empty for the scan)."""
    lines = [",".join(CSV_COLUMNS + ["working_point"])]
    for i in range(len(table["threshold"])):
        lines.append(",".join([_cell(table[k][i]) for k in CSV_COLUMNS] + [""]))
    for wp in working_points:
        lines.append(",".join([_cell(wp[k]) for k in CSV_COLUMNS] + [wp["label"]]))
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
    for wp in a.working_points:
        log(f"working point {wp['label']} ({wp['origin']}): threshold {wp['threshold']:.4f}, "
            f"real-track efficiency {wp['real_efficiency']:.4f}, ghost rejection "
            f"{wp['ghost_rejection']:.4f}")
    if over:
        log("overtraining check (train vs test scores, KS test): " + ", ".join(
            f"{k} p = {v['p_value']:.3g}" for k, v in over.items()))


def run_record(source, model, settings, scores, finite, desc, seconds):
    """What metrics.json records about an inference.py run before its numbers: the
    input (inputs.Source), the model (scoring.LoadedModel), the settings it was read
    with, and the scoring pass (every track's scores, which tracks had every
    feature finite, the scorer's description, the pass's seconds)."""
    import os

    from scoring import model_macs
    return {
        "input": os.path.abspath(source.path), "input_kind": source.kind,
        "model": os.path.abspath(model.path), "model_kind": model.kind,
        "int8": model.int8, "scoring": desc, "track": settings.track,
        "features": settings.features, "network": settings.network,
        "macs_per_track": model_macs(model),
        "normalized_by_inference": settings.normalization is not None,
        "normalization_origin": settings.normalization_origin,
        "tracks": len(scores), "tracks_nonfinite": int((~finite).sum()),
        "scoring_seconds": seconds,
        "tracks_per_second": len(scores) / seconds if seconds > 0 else None,
    }


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
        "working_points": a.working_points,
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


def index_html(title, figures, summary, working_points):
    """One page per plots folder, readable offline: the summary, the working points,
    and every figure with its caption.  `figures`: [(file names, caption)]."""
    from html import escape
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>"
                   for k, v in summary.items())
    wps = "".join(
        f"<tr><td>{escape(w['label'])}</td><td>{escape(w['origin'])}</td>"
        f"<td>{w['threshold']:.4f}</td><td>{w['real_efficiency']:.4f}</td>"
        f"<td>{w['ghost_rejection']:.4f}</td></tr>" for w in working_points)
    points = ("<h2>Working points</h2><table><tr><th>point</th><th>threshold from</th>"
              "<th>threshold</th><th>real-track efficiency</th><th>ghost rejection</th></tr>"
              f"{wps}</table>\n" if working_points else "")
    figs = "".join(
        f"<figure><img src=\"{escape(names[0])}\" alt=\"{escape(names[0])}\">"
        f"<figcaption>{escape(caption)} "
        + " ".join(f"<a href=\"{escape(n)}\">{escape(n)}</a>" for n in names)
        + "</figcaption></figure>" for names, caption in figures if names)  # no files: not drawn
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:auto}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;
text-align:left}}img{{max-width:100%}}figure{{margin:2em 0}}</style></head>
<body><h1>{escape(title)}</h1>
<h2>Summary</h2><table>{rows}</table>
{points}<h2>Figures</h2>{figs}
</body></html>
"""


def summary(a, extra):
    """The headline numbers of an analysis, for index.html."""
    out = {"tracks (finite, labelled)": f"{a.n:,}",
           "ghost fraction": f"{a.true_ghost:.2%}", "ROC AUC": f"{a.auc:.4f}"}
    for r in a.rejection:
        out[f"ghost rejection at {r['target_efficiency']:.1%} efficiency"] = \
            f"{r['ghost_rejection']:.4f}"
    if extra.get("gap_to_limit"):
        gap = extra["gap_to_limit"]
        out["gap to the limit"] = (f"AUC {gap['auc_gap']:.4f}; "
                                   f"{gap['rejection_fraction@0.99']:.1%} of its rejection at 99 %")
    return out


def results_root(a, scores_by_split, table_rows):
    """(histograms, graphs, table) for rootio.write_results: score histograms per class
    and split, ROC and rejection curves, the threshold table (with the working points,
    working_point = their target efficiency, 0 for the scan)."""
    from metrics import downsample_roc
    from plots import SCORE_BINS
    histograms = {}
    for split, (scores, labels) in scores_by_split.items():
        ok = np.isfinite(scores)
        for cls, want in (("ghost", True), ("real", False)):
            counts, _ = np.histogram(scores[ok & (labels == want)], bins=SCORE_BINS)
            histograms[f"scores_{split}_{cls}"] = (counts, SCORE_BINS,
                                                   f"ghost probability, {cls} tracks, {split}")
    fpr, tpr, _ = a.roc
    keep = downsample_roc(fpr, tpr)
    graphs = {"roc": (fpr[keep], tpr[keep], "ROC;real tracks called ghost;ghosts called ghost"),
              "rejection": (1 - fpr[keep], tpr[keep],
                            "ghost rejection;real-track efficiency;ghost rejection")}
    table = {k: np.array([r[k] for r in table_rows], dtype=np.float64) for k in CSV_COLUMNS}
    table["working_point"] = np.array([r.get("target_efficiency_wp", 0.0) for r in table_rows])
    return histograms, graphs, table


def write_analysis(out, folder, a, extra, plot_input, context, formats=("png",), show=False,
                   extra_figures=(), scores_by_split=None):
    """A plots folder: metrics.json, thresholds.csv (the scan and the working points),
    comparison.csv (with several classifiers), every figure plus `extra_figures`
    ([(stem, figure, caption)]), results.root for ROOT users (where ROOT is
    installed), and index.html.  Returns (files written, figures kept for --show);
    with formats=() no figure is drawn."""
    import os

    from plots import draw_figures, figure_jobs, save_figure
    files = ["metrics.json", "thresholds.csv"]
    pending = None
    if formats:  # drawn meanwhile, in worker processes where there are several cores
        pending = draw_figures(figure_jobs(plot_input), folder, out, show, formats)
    try:
        files += write_tables(out, folder, a, extra, plot_input, context, scores_by_split)
    except BaseException:
        if pending:
            pending.cancel()
        raise
    figures, kept = pending.wait() if pending else ([], [])
    for stem, fig, caption in extra_figures:
        figures.append((save_figure(out, os.path.join(folder, f"{stem}.png"), fig,
                                    formats=formats), caption))
    out.save_bytes(os.path.join(folder, "index.html"),
                   index_html(plot_input.title, figures, summary(a, extra),
                              a.working_points).encode())
    files.append("index.html")
    return [n for names, _ in figures for n in names] + files, kept


def analysis_files(folder):
    """Every file write_analysis and inference.py's --ranking may write in `folder`,
    the figures as outputs.Pattern: checked before any work (none is an input)."""
    import os

    from outputs import Pattern
    from plots import FORMATS
    names = ("metrics.json", "thresholds.csv", "comparison.csv", "ranking.csv",
             "results.root", "index.html")
    return ([os.path.join(folder, name) for name in names]
            + [Pattern(os.path.join(folder, f"*.{fmt}")) for fmt in FORMATS])


def write_tables(out, folder, a, extra, plot_input, context, scores_by_split):
    """metrics.json, thresholds.csv, comparison.csv (with several classifiers) and
    results.root (where ROOT is installed): the names written after the first two."""
    import os

    from utils import GhostError
    files = []
    out.save_json(os.path.join(folder, "metrics.json"), metrics_record(a, extra, context))
    out.save_bytes(os.path.join(folder, "thresholds.csv"),
                   table_csv(a.table, a.working_points).encode())
    if plot_input.curves:
        from compare import comparison_csv
        out.save_bytes(os.path.join(folder, "comparison.csv"),
                       comparison_csv(plot_input.curves).encode())
        files.append("comparison.csv")
    if scores_by_split:
        from rootio import import_root
        from rootwrite import write_results
        try:
            import_root()
        except GhostError as e:  # no ROOT here: a note; a failed write is an error
            log(f"note: no results.root ({e})")
            return files
        rows = [row(a.table, i) for i in range(len(a.table["threshold"]))]
        rows += [{**w, "target_efficiency_wp": w["target_efficiency"]}
                 for w in a.working_points]
        write_results(out.tmp(os.path.join(folder, "results.root")),
                      *results_root(a, scores_by_split, rows),
                      shown=os.path.join(folder, "results.root"))
        files.append("results.root")
    return files
