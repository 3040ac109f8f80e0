"""How an analysis is reported and every page written: the console summary, the
tables (thresholds.csv, comparison.csv, search_trials.csv), metrics.json (its record
from evaluation.Evaluation.metrics), results.root's content, and each plots folder
with its figures and index.html (the analysis's, the training report's, the
features').  The numbers come from metrics.py and evaluation.py, the figures from
plots.py and diagnostic_plots.py."""
import os
from html import escape

import numpy as np

from cli import FORMATS
from compare import comparison_csv, format_comparison
from diagnostic_plots import feature_figure
from metrics import downsample_roc, row
from outputs import Pattern
from plots import SCORE_BINS, draw_figures, figure_jobs, save_figure, style
from rootio import import_root
from rootwrite import write_results
from utils import GhostError, heartbeat, log

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
        cells = wp.to_dict()
        lines.append(",".join([_cell(cells[k]) for k in CSV_COLUMNS] + [wp.label]))
    return "\n".join(lines) + "\n"


def print_summary(e):
    """An evaluation.Evaluation on the console: the analysis, the overtraining check,
    the comparison and the gap to the limit."""
    a, over = e.analysis, e.plot.overtraining
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
        log(f"working point {wp.label} ({wp.origin}): threshold {wp.threshold:.4f}, "
            f"real-track efficiency {wp.real_efficiency:.4f}, ghost rejection "
            f"{wp.ghost_rejection:.4f}")
    if over:
        log("overtraining check (train vs test scores, KS test): " + ", ".join(
            f"{k} p = {v['p_value']:.3g}" for k, v in over.items()))
    if e.plot.curves:
        log(format_comparison(e.plot.curves, a.n))
    if e.gap is not None:
        log(f"gap to the limit: AUC {e.gap['auc_gap']:.4f} lower; "
            f"{e.gap['rejection_fraction@0.99']:.1%} of the limit's ghost rejection at "
            "99 % real-track efficiency")


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
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>"
                   for k, v in summary.items())
    wps = "".join(
        f"<tr><td>{escape(w.label)}</td><td>{escape(w.origin)}</td>"
        f"<td>{w.threshold:.4f}</td><td>{w.real_efficiency:.4f}</td>"
        f"<td>{w.ghost_rejection:.4f}</td></tr>" for w in working_points)
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


def summary(e):
    """The headline numbers of an evaluation.Evaluation, for index.html."""
    a = e.analysis
    out = {"tracks (finite, labelled)": f"{a.n:,}",
           "ghost fraction": f"{a.true_ghost:.2%}", "ROC AUC": f"{a.auc:.4f}"}
    for r in a.rejection:
        out[f"ghost rejection at {r['target_efficiency']:.1%} efficiency"] = \
            f"{r['ghost_rejection']:.4f}"
    if e.gap:
        gap = e.gap
        out["gap to the limit"] = (f"AUC {gap['auc_gap']:.4f}; "
                                   f"{gap['rejection_fraction@0.99']:.1%} of its rejection at 99 %")
    return out


def results_root(a, scores_by_split, table_rows):
    """(histograms, graphs, table) for rootwrite.write_results: score histograms per class
    and split, ROC and rejection curves, the threshold table (with the working points,
    working_point = their target efficiency, 0 for the scan)."""
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


def write_analysis(out, folder, e, formats=("png",), show=False, extra_figures=()):
    """A plots folder for the evaluation.Evaluation `e`: metrics.json, thresholds.csv
    (the scan and the working points), comparison.csv (with curves compared), every
    figure plus `extra_figures` ([(stem, figure, caption)]), results.root for ROOT
    users (where ROOT is installed), and index.html.  Returns (files written,
    figures kept for --show); with formats=() no figure is drawn."""
    files = ["metrics.json", "thresholds.csv"]
    pending = None
    if formats:  # drawn meanwhile, in worker processes where there are several cores
        pending = draw_figures(figure_jobs(e.plot), folder, out, show, formats)
    with heartbeat("writing the tables and figures"):  # after the workers' fork
        try:
            files += write_tables(out, folder, e)
        except BaseException:
            if pending:
                pending.cancel()
            raise
        figures, kept = pending.wait() if pending else ([], [])
        for stem, fig, caption in extra_figures:
            figures.append((save_figure(out, os.path.join(folder, f"{stem}.png"), fig,
                                        formats=formats), caption))
    out.save_bytes(os.path.join(folder, "index.html"),
                   index_html(e.title, figures, summary(e),
                              e.analysis.working_points).encode())
    files.append("index.html")
    return [n for names, _ in figures for n in names] + files, kept


def write_ranking(out, folder, ranking):
    """ranking.csv of an evaluation.Ranking."""
    out.save_bytes(os.path.join(folder, "ranking.csv"), ranking.csv().encode())


def analysis_files(folder):
    """Every file write_analysis and inference.py's --ranking may write in `folder`,
    the figures as outputs.Pattern: checked before any work (none is an input)."""
    names = ("metrics.json", "thresholds.csv", "comparison.csv", "ranking.csv",
             "results.root", "index.html")
    return ([os.path.join(folder, name) for name in names]
            + [Pattern(os.path.join(folder, f"*.{fmt}")) for fmt in FORMATS])


def write_tables(out, folder, e):
    """metrics.json, thresholds.csv, comparison.csv (with curves compared) and
    results.root (where ROOT is installed): the names written after the first two."""
    a = e.analysis
    files = []
    out.save_json(os.path.join(folder, "metrics.json"), e.metrics())
    out.save_bytes(os.path.join(folder, "thresholds.csv"),
                   table_csv(a.table, a.working_points).encode())
    if e.plot.curves:
        out.save_bytes(os.path.join(folder, "comparison.csv"),
                       comparison_csv(e.plot.curves).encode())
        files.append("comparison.csv")
    try:
        import_root()
    except GhostError as err:  # no ROOT here: a note; a failed write is an error
        log(f"note: no results.root ({err})")
        return files
    rows = [row(a.table, i) for i in range(len(a.table["threshold"]))]
    rows += [{**w.to_dict(), "target_efficiency_wp": w.target_efficiency}
             for w in a.working_points]
    write_results(out.tmp(os.path.join(folder, "results.root")),
                  *results_root(a, e.splits(), rows),
                  shown=os.path.join(folder, "results.root"))
    files.append("results.root")
    return files


def write_feature_figures(columns, rows, ghost, names, heavy_tailed, plots_dir, out,
                          standardize=None, formats=("png",)):
    """make_dataset.py --plot's folder: one figure per feature (the given rows of its
    column, ghosts vs real tracks; with `standardize` (features.Standardize), as
    network 1 sees them) and the folder's index.html."""
    figures = []
    with style() as plt:
        if standardize is not None:
            data = standardize.apply(np.column_stack([columns[n][rows] for n in names]))
        for j, name in enumerate(names):
            x = data[:, j] if standardize is not None else columns[name][rows]
            fig = feature_figure(plt, name, x, ghost, name in heavy_tailed,
                                 transformed=standardize is not None)
            figures.append((save_figure(out, os.path.join(plots_dir, f"{name}.png"), fig,
                                        formats=formats),
                            f"{name}: ghosts and real tracks, each normalized to unit area."))
    headline = {"tracks": f"{len(ghost):,}", "ghosts": f"{int(ghost.sum()):,}",
                "features": ", ".join(names)}
    out.save_bytes(os.path.join(plots_dir, "index.html"),
                   index_html("The features, ghosts vs real tracks", figures, headline,
                              []).encode())
