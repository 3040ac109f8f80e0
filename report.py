"""How an analysis is reported and every page written: the console summary and the
headline block every script ends with, the tables (thresholds.csv, comparison.csv,
search_trials.csv), metrics.json (its record from evaluation.Evaluation.metrics),
results.root (its content from results_file.py), and each plots folder with its
figures and index.html (the analysis's, the training report's, the features', written
by pages.py), and the registry of an analysis folder's files (what write_analysis
writes, what the scripts' --help lists).  The numbers come from metrics.py and
evaluation.py, the figures from plots.py and diagnostic_plots.py."""
import os
from dataclasses import replace

import numpy as np

from cli import FORMATS
from compare import comparison_csv, format_comparison
from derived import extend, input_labels
from diagnostic_plots import feature_figure
from drawing import draw_figures, save_figure, style
from evaluation import RANKING_STEM
from features import DEFAULT_TREE, LIMIT
from kinematics import VARIABLES
from metrics import EFFICIENCIES, SortedScores, working_points
from outputs import Pattern
from pages import PAGE, Parts, csv_table, facts, table
from pages import write as write_page
from plots import FIGURES, KINEMATICS_STEM, figure_jobs
from results_file import results_objects
from rootio import import_root
from rootwrite import write_results
from utils import GhostError, heartbeat, log

COLUMNS = [("threshold", "thresh"), ("accuracy", "acc"), ("tp", "TP"), ("tn", "TN"),
           ("fp", "FP"), ("fn", "FN"), ("sensitivity", "sens"), ("specificity", "spec"),
           ("fpr", "FPR"), ("fnr", "FNR"), ("precision", "prec"), ("f1", "F1"),
           ("youden_j", "J"), ("pred_ghost", "pred_g"), ("pred_real", "pred_r")]
CSV_COLUMNS = [k for k, _ in COLUMNS] + ["true_ghost", "true_real",
                                         "n_tp", "n_tn", "n_fp", "n_fn"]
# An analysis folder's files beside the figures and the ranking: name -> what it holds
# (the names write_analysis writes, analysis_files guards and --help lists)
TABLES = {
    "metrics.json": "every number of the analysis: AUC, working points, the threshold scan, "
                    "the comparison, the limit and the gap to it, the kinematics",
    "thresholds.csv": "the threshold scan, then one row per working point",
    "comparison.csv": "with classifiers compared or the limit: AUC and ghost rejection of each",
    "results.root": "the same for ROOT users, as TMVA writes it (where ROOT is installed): "
                    "TrainTree/TestTree per track, score histograms, ROC and rejection "
                    "graphs and correlations of every classifier, TEfficiency per kinematic "
                    "variable and working point, the threshold table, the configuration",
    PAGE: "the page to open: the headline, the input, the working points, every figure "
          "and data file, the run's other pages",
}
RANKING_CSV = f"{RANKING_STEM}.csv"
RANKING_WHAT = ("the features ranked by the drop in AUC and in ghost rejection at 99 % when "
                "each is shuffled")


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


def print_summary(e, verbose=False):
    """An evaluation.Evaluation on the console: the overtraining check and the
    comparison; with `verbose` first the threshold table (in ML words), the best
    thresholds, every ghost rejection and working point (the headline block,
    analysis_headline, says the answer)."""
    a, over = e.analysis, e.plot.overtraining
    log(f"{a.n:,} labelled tracks: {a.n_ghost:,} ghosts ({a.true_ghost:.2%}), "
        f"{a.n_real:,} real ({a.true_real:.2%}); ROC AUC {a.auc:.4f}")
    if verbose:
        print_details(e)
    if over:
        log("overtraining check (train vs test scores, KS test): " + ", ".join(
            f"{k} p = {over[k]['p_value']:.3g}" for k in ("ghost", "real")))
        for r in over.get("working_points", ()):
            log(f"  at {r['label']} (score > {r['threshold']:.4f}): real-track efficiency "
                f"{r['real_efficiency_train']:.4f} train / {r['real_efficiency_test']:.4f} "
                f"test, ghost rejection {r['ghost_rejection_train']:.4f} / "
                f"{r['ghost_rejection_test']:.4f}")
    if e.plot.curves:
        log(format_comparison(e.plot.curves, a.n))


def print_details(e):
    """--verbose: the threshold table, the best thresholds by J and F1, the model's own
    threshold, ghost rejection at each efficiency, the working points."""
    a = e.analysis
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


def gap_line(gap):
    return (f"gap to the limit: AUC {gap['auc_gap']:.4f} lower; "
            f"{gap['rejection_fraction@0.99']:.1%} of the limit's ghost rejection at "
            "99 % real-track efficiency")


def print_headline(title, lines):
    """The answer first: the short block every script ends with, its `title` then
    its `lines` (numbers computed by the caller, in physicists' words)."""
    log(f"=== {title}")
    for line in lines:
        log(f"    {line}")


def point_line(wp):
    """One working point (metrics.WorkingPoint) for a headline."""
    source = "fixed on the validation split" if wp.fixed else wp.origin
    return (f"{wp.label}: score > {wp.threshold:.4f} ({source}): real-track efficiency "
            f"{wp.real_efficiency:.2%}, ghost rejection {wp.ghost_rejection:.2%}")


def analysis_headline(e, page=None, output=None):
    """inference.py's headline of the evaluation.Evaluation `e`: AUC (and the limit's),
    ghost rejection at each working point with its threshold, the gap to the limit,
    the page to open and the per-track output (where written): (title, lines)."""
    a = e.analysis
    lines = [f"ROC AUC {a.auc:.4f}" + (f" (the limit, {LIMIT}: {e.limit.auc:.4f})"
                                       if e.limit is not None else "")]
    lines += [point_line(wp) for wp in a.working_points]
    lines += [gap_line(e.gap)] if e.gap is not None else []
    lines += [f"open {page}"] if page else []
    lines += [f"per-track ghost probabilities: {output}"] if output else []
    return f"{e.title}: {a.true_ghost:.2%} ghosts", lines


def sample_headline(s, track, fmt):
    """make_sample.py's headline of make_sample.make_sample's summary `s`."""
    fraction = s["ghosts"] / s["tracks"]
    return (f"synthetic Allen sample: {s['path']} ({fmt}, {DEFAULT_TREE})",
            [f"{s['tracks']:,} {track} tracks: {s['ghosts']:,} ghosts ({fraction:.2%}), "
             f"{s['nonfinite']:,} with a non-finite value; written in {s['seconds']:.1f} s"])


def dataset_headline(meta, paths, plots):
    """make_dataset.py's headline of its dataset.DatasetMeta: tracks read and kept per
    class, the split sizes, the files written (`paths`, in words) and the features'
    page (`plots`, None without --plot)."""
    kept = {c: sum(n[c] for n in meta.counts.values()) for c in ("ghost", "real")}
    lines = [f"read {meta.tracks_read:,} {meta.track} tracks, {meta.tracks_dropped_nonfinite:,}"
             f" with a non-finite value dropped; kept {kept['ghost']:,} ghosts and "
             f"{kept['real']:,} real tracks: {meta.mix()}",
             "splits: " + ", ".join(f"{s} {n['ghost'] + n['real']:,} ({n['ghost']:,} ghosts)"
                                    for s, n in meta.counts.items()),
             paths] + ([f"open {plots}"] if plots else [])
    return f"dataset {meta.track}: {len(meta.features)} features", lines


def training_headline(config, labels, mix, models, references, files, page):
    """training.py's headline: the chosen network (architecture.ModelConfig); on the
    test split (`labels`, its class `mix` in words) each of `models` [(name, AUC,
    probabilities, its working point {"efficiency", "threshold"})] with its ghost
    rejection at its own cut, the `references` [(name, AUC, ghost rejection at 99 %
    real-track efficiency)] (baseline, limit); the model `files` in words and the
    report's `page` (None without --save): (title, lines)."""
    lines = []
    for name, auc, scores, point in models:
        wp = working_points(SortedScores.of(scores, labels), [], point)[0]
        lines.append(f"{name}: ROC AUC {auc:.4f}; score > {wp.threshold:.4f} (its "
                     f"{wp.target_efficiency:.1%} point, from the validation split): real-track "
                     f"efficiency {wp.real_efficiency:.2%}, ghost rejection "
                     f"{wp.ghost_rejection:.2%}")
    lines += [f"{name}: ROC AUC {auc:.4f}; ghost rejection {rejection:.2%} at 99.0% "
              "real-track efficiency" for name, auc, rejection in references]
    lines += [files] + ([f"open {page}"] if page else [])
    return (f"the chosen network: {'x'.join(map(str, config.hidden))} hidden, "
            f"{config.activation}, {config.cost()[0]:,} multiply-adds per track; on the "
            f"test split ({len(labels):,} tracks, {mix})"), lines


QUALITY = [("loss", "loss"), ("accuracy", "acc"), ("auc", "AUC")] + [
    (f"rejection@{e:g}", f"rej@{e:.1%}") for e in EFFICIENCIES]  # training.py's table


def quality_table(rows):
    """training.py's table of the classifiers ({name: {metric: value}}): the heads and
    one row of cells per classifier, for the console and the training report's page."""
    return ([""] + [h for _, h in QUALITY],
            [[name] + [f"{m.get(k, float('nan')):.4f}" for k, _ in QUALITY]
             for name, m in rows.items()])


def print_quality(rows, mix, cut):
    """training.py's table on the console, with the class `mix` of its loss and accuracy
    and the `cut` (in words) its accuracy is taken at."""
    heads, cells = quality_table(rows)
    for line in [heads] + cells:
        log(f"{line[0]:<18}" + "".join(f"{c:>10}" for c in line[1:]))
    log(f"(loss and accuracy on {mix}, accuracy at {cut}; AUC and ghost rejection at a "
        "real-track efficiency do not depend on the mix)")


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


def write_analysis(out, folder, e, formats=("png",), show=False, extra_figures=(), label="",
                   parts=None):
    """A plots folder for the evaluation.Evaluation `e`: metrics.json, thresholds.csv
    (the scan and the working points), comparison.csv (with curves compared), every
    figure plus `extra_figures` ([(stem, figure, caption)]), results.root for ROOT
    users (where ROOT is installed), and index.html (analysis_page, with the caller's
    pages.Parts).  Returns (files written, figures kept for --show); with formats=()
    no figure is drawn."""
    files = ["metrics.json", "thresholds.csv"]
    pending = None
    if formats:  # drawn meanwhile, in worker processes where there are several cores
        pending = draw_figures(figure_jobs(e.plot), folder, out, show, formats, label=label)
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
                                        formats=formats, label=label), caption))
    analysis_page(out, folder, e, figures, files, parts or Parts())
    files.append(PAGE)
    return [n for names, _ in figures for n in names] + files, kept


def analysis_page(out, folder, e, figures, written, parts):
    """An analysis folder's index.html: the headline (analysis_headline, unless `parts`
    brings one: then it and the gap to the limit), the caller's sections, the working
    points, the classifiers compared and the caller's tables, every data file
    `written` (and ranking.csv) and the caller's, the `figures` [(file names, caption)]."""
    points = [("Working points", table(
        ["point", "threshold from", "cut", "real-track efficiency", "ghost rejection"],
        [(w.label, w.origin, f"score > {w.threshold:.4f}", f"{w.real_efficiency:.2%}",
          f"{w.ghost_rejection:.2%}") for w in e.analysis.working_points]))]
    if e.plot.curves:
        points.append(("Classifiers compared on the same tracks",
                       csv_table(comparison_csv(e.plot.curves))))
    names = written + ([RANKING_CSV] if e.ranking is not None else [])
    files = [(os.path.join(folder, n), TABLES.get(n, RANKING_WHAT)) for n in names]
    head, lines = parts.headline or analysis_headline(e)
    if parts.headline and e.gap is not None:  # the caller's headline, and the gap
        lines = [*lines, gap_line(e.gap)]
    write_page(out, folder, e.title, replace(
        parts, headline=(head, lines),
        tables=(points if e.analysis.working_points else points[1:]) + parts.tables,
        files=files + parts.files), figures)


def write_ranking(out, folder, ranking):
    """ranking.csv of an evaluation.Ranking."""
    out.save_bytes(_table(folder, RANKING_CSV), ranking.csv().encode())


def analysis_files(folder):
    """Every file write_analysis and inference.py's --ranking may write in `folder`,
    the figures as outputs.Pattern: checked before any work (none is an input)."""
    return ([os.path.join(folder, name) for name in (*TABLES, RANKING_CSV)]
            + [Pattern(os.path.join(folder, f"*.{fmt}")) for fmt in FORMATS])


def analysis_outputs(ranking="with --ranking"):
    """An analysis folder's files for --help, [(names, what)]: plots.FIGURES, the
    kinematics' figures, the ranking (written `ranking`) and TABLES."""
    always = ", ".join(f"{stem}.png" for stem, f in FIGURES.items() if not f[3])
    rows = [(always, "the analysis's figures (each one's caption in index.html)")]
    rows += [(f"{stem}.png", f[3]) for stem, f in FIGURES.items() if f[3]]
    variables = "{" + ",".join(v.name for v in VARIABLES) + "}"
    rows += [(f"{KINEMATICS_STEM.format(variables)}.png",
              "real-track efficiency and ghost rejection at each working point vs p, pT, eta "
              "and the hit counts (where the input has their branches)"),
             (f"{RANKING_STEM}.png, {RANKING_CSV}",
              f"{ranking}: {RANKING_WHAT}")]
    return rows + list(TABLES.items())


def _table(folder, name):
    """The path of one of the analysis folder's registered files."""
    if name not in TABLES and name != RANKING_CSV:
        raise ValueError(f"{name} is not in report.TABLES")
    return os.path.join(folder, name)


def write_tables(out, folder, e):
    """metrics.json, thresholds.csv, comparison.csv (with curves compared) and
    results.root (where ROOT is installed): the names written after the first two."""
    a = e.analysis
    files = []
    out.save_json(_table(folder, "metrics.json"), e.metrics())
    out.save_bytes(_table(folder, "thresholds.csv"),
                   table_csv(a.table, a.working_points).encode())
    if e.plot.curves:
        out.save_bytes(_table(folder, "comparison.csv"),
                       comparison_csv(e.plot.curves).encode())
        files.append("comparison.csv")
    try:
        import_root()
    except GhostError as err:  # no ROOT here: a note; a failed write is an error
        log(f"note: no results.root ({err})")
        return files
    path = _table(folder, "results.root")
    write_results(out.tmp(path), results_objects(e, CSV_COLUMNS), shown=path)
    files.append("results.root")
    return files


def write_feature_figures(features, ghost, names, heavy_tailed, plots_dir, out,
                          standardize=None, formats=("png",), label="", parts=None,
                          derived=()):
    """make_dataset.py --plot's folder: one figure per feature and per derived input
    (derived.Derived, fitted; named 'name := expression', drawn into name.png): the
    tracks of `features` [tracks, names], ghosts vs real tracks; with `standardize`
    (features.Standardize), as network 1 sees them; and the folder's index.html
    (with the caller's pages.Parts)."""
    figures = []
    data = extend(features, derived, names)
    if standardize is not None:
        data = standardize.apply(data)
    stems = list(names) + [d.name for d in derived]
    with style() as plt:
        for j, (stem, shown) in enumerate(zip(stems, input_labels(names, derived))):
            fig = feature_figure(plt, shown, data[:, j], ghost, stem in heavy_tailed,
                                 transformed=standardize is not None)
            what = (" A derived input, computed from the features as network 1's first "
                    "layer computes it." if j >= len(names) else "")
            figures.append((save_figure(out, os.path.join(plots_dir, f"{stem}.png"), fig,
                                        formats=formats, label=label),
                            f"{shown}: ghosts and real tracks, each normalized to unit "
                            f"area.{what}"))
    parts = parts or Parts()
    drawn = facts({"tracks": f"{len(ghost):,}", "ghosts": f"{int(ghost.sum()):,}",
                   "real tracks": f"{int((~ghost).sum()):,}",
                   "derived inputs": ", ".join(d.text() for d in derived) or "none",
                   "values": "standardized, as network 1 sees them" if standardize is not None
                   else "as read (raw)"})
    write_page(out, plots_dir, "The features and derived inputs, ghosts vs real tracks",
               replace(parts, sections=parts.sections + [("Drawn", drawn)]), figures)
