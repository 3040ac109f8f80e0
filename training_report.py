"""What training.py --save writes into OUTPUT_DIR/training_report/, the diagnostics a
TMVA user gets after training: inference.py's analysis of the test split (with the
INT8 model, the baseline and the limit compared, the overtraining check and the
performance vs kinematics), the search's quality-vs-cost front and training history,
the variable ranking and the features' correlations."""
import os
from dataclasses import dataclass

import numpy as np

import kinematics
from architecture import normalizes_inside
from artifacts import ARTIFACT, MODEL_FILES
from derived import extend, input_labels
from diagnostic_plots import correlation_figure, history, search_front
from diagnostics import correlations
from drawing import style
from evaluation import (
    LIMIT_CURVE,
    RANKING_DERIVED,
    Sample,
    Tracks,
    evaluate,
    rank_features,
    report_context,
)
from features import LIMIT
from pages import REPORT, Html, Parts, csv_table, dataset_parts, facts, features_page, link, table
from report import analysis_outputs, quality_table, trials_csv, write_analysis, write_ranking
from utils import log

RANKING_TRACKS = 100_000  # permutation ranking on this many test tracks (one pass each)
# The report's own files beside the analysis's (report.analysis_outputs): figure stem
# -> caption, then the trials' table; what write writes and training.py's --help lists
FIGURES = {
    "search_front": "The search's quality-vs-cost front: validation AUC and rejection at 99 % "
                    "against multiply-adds per track.",
    "history": "Training (dashed) and validation loss, and the selection metric, per epoch "
               "of every trial; the chosen one bold, its best epoch starred.",
    "correlations": "Rank correlations of the features and the derived inputs (name := "
                    "expression), ghosts and real tracks.",
}
TRIALS_CSV = "search_trials.csv"


def outputs():
    """Every file training.py --save writes, for its --help: [(heading, [(names, what)])]:
    the model files (artifacts.MODEL_FILES), then the report's."""
    suffixes = "{" + ",".join(MODEL_FILES) + "}"
    return [
        ("files in --output-dir with --save:",
         [(f"{ARTIFACT}{suffix}", what) for suffix, what in MODEL_FILES.items()]
         + [(f"{ARTIFACT}_int8{suffixes}", "with --int8: the INT8 model's files")]),
        (f"files in --output-dir/{REPORT} with --save (figures as .png; .pdf as well with "
         "--format png,pdf):",
         analysis_outputs(f"on up to {RANKING_TRACKS:,} test tracks")
         + [(f"{stem}.png", caption) for stem, caption in FIGURES.items()]
         + [(TRIALS_CSV, "every trial: hyperparameters, cost, best validation metrics")])]


@dataclass
class ReportInput:
    """What the report is made of: the splits, what the dataset records beside them,
    and the scores of each classifier on them."""
    splits: dict            # split -> (data, labels)
    meta: object            # dataset.DatasetMeta
    spectators: dict        # the test split's, {name: array}
    saved: object           # the network's artifacts.SavedConfig
    scores: dict            # classifier -> {split: probabilities}; "network" always
    score_fn: object        # [raw | derived] columns -> the network's probabilities
    prefix: str = None      # the dataset's
    stems: list = None      # the model files' stems, in the report folder's parent
    table: dict = None      # training.py's table {classifier: metrics} (report.quality_table)
    headline: tuple = None  # training.py's headline (report.training_headline)
    cut: str = None         # the cut of the table's accuracy column, in words


def _text(v):
    return ("x".join(map(str, v)) if isinstance(v, (list, tuple)) else f"{v:.4g}"
            if isinstance(v, float) else str(v))


def page_parts(folder, r, trials_table):
    """The report page beside the analysis (pages.Parts): training.py's headline, the
    run, the model and its files, the hyperparameters and the search, the data set,
    training.py's table, the search's trials; the model and data set files, the
    features' page."""
    saved, prov = r.saved, r.saved.provenance or {}
    config, point = saved.model, saved.working_point
    macs, params = config.cost()
    home = os.path.dirname(os.path.abspath(folder))
    models = [(os.path.join(home, f"{stem}{suffix}"),
               what + (" (INT8)" if stem != ARTIFACT else ""))
              for stem in r.stems or () for suffix, what in MODEL_FILES.items()]
    model = facts({
        "network": f"{config.network}" + (f" (normalization inside, {config.inputs} inputs)"
                                          if normalizes_inside(config.network) else ""),
        "hidden layers": _text(config.hidden), "activation": config.activation,
        "multiply-adds per track": f"{macs:,}", "parameters": f"{params:,}",
        "working point": f"score > {point['threshold']:.4f} (keeps {point['efficiency']:.1%} "
                         "of the validation split's real tracks)" if point else None,
        "files": Html(" ".join(link(p, folder) for p, _ in models))})
    run = facts({"date": prov.get("created"), "git commit": prov.get("commit"),
                 **{k: prov.get(k) for k in ("toolkit", "python", "torch", "onnx")}})
    settings = vars(saved.training) if saved.training else {}
    chosen = facts({k: _text(v) for k, v in {**prov.get("hyperparameters", {}),
                                              **settings}.items() if v is not None})
    search = facts({k: _text(v) for k, v in prov.get("search", {}).items()})
    dataset, data_files = dataset_parts(r.meta, r.prefix, folder)
    tables = [("Classifiers on the test split, as training.py printed them (loss and "
               f"accuracy on {r.meta.mix()}" + (f", accuracy at {r.cut})" if r.cut else ")"),
               table(*quality_table(r.table or {}))),
              ("The search's trials", csv_table(trials_table))]
    features = features_page(r.prefix)
    return Parts(r.headline, [("Run", run), ("Model", model), ("Hyperparameters", chosen),
                              ("Search", search), ("Data set", dataset)], tables,
                 [(os.path.join(folder, TRIALS_CSV), "every trial: hyperparameters, cost, "
                   "best validation metrics")] + models + data_files,
                 [(features, "the data set's features")] if features else [],
                 "Training report: the chosen network, its search and its data")


def write(out, folder, r, trials, best, formats=("png",), seed=42, label=""):
    """Every file of the report through `out`, the figures under `label`
    (drawing.write_figure); returns the files written."""
    test_x, test_y = r.splits["test"]
    labels = test_y.ravel() > 0.5
    train_labels = r.splits["train"][1].ravel() > 0.5
    net, names = r.scores["network"], r.meta.features
    macs = r.saved.model.cost()[0]
    sample = Sample("network", r.saved, macs, net["test"], labels,
                    train=(net["train"], train_labels), limit=r.spectators.get(LIMIT),
                    columns=kinematics.columns_of(test_x, names, r.spectators,
                                                  r.meta.normalized))
    others = [(name, s["test"], macs if name == "INT8" else None)
              for name, s in r.scores.items() if name != "network"]
    title = f"the chosen network on the test split ({len(labels):,} tracks, {r.meta.mix()})"
    e = evaluate(sample, title, report_context(names, macs, len(test_x)), others,
                 always_compare=True)
    limit = {"limit": (LIMIT_CURVE, {"test": r.spectators[LIMIT]})} if sample.limit is not None \
        else {}
    e.tracks = Tracks(names, {s: r.splits[s][0] for s in ("train", "test")},
                      {"train": train_labels, "test": labels},
                      {**{k: (k, v) for k, v in r.scores.items()}, **limit},
                      r.meta.class_weights, r.saved)
    derived = r.saved.model.derived  # ranked and correlated as columns of their own
    test_in, inputs = extend(test_x, derived, names), input_labels(names, derived)
    rows = np.random.default_rng(seed).permutation(len(test_x))[:RANKING_TRACKS]
    log(f"ranking the features: each one permuted on {len(rows):,} test tracks ...")
    e.ranking = rank_features(r.score_fn, test_in[rows], labels[rows], inputs, seed)
    if derived:
        e.ranking.caption += RANKING_DERIVED
    with style() as plt:
        figures = [
            ("search_front", search_front(plt, trials, best), FIGURES["search_front"]),
            ("history", history(plt, trials, best), FIGURES["history"]),
            e.ranking.figure(plt, "test split"),
            ("correlations", correlation_figure(plt, correlations(test_in, labels), inputs),
             FIGURES["correlations"]),
        ] if formats else []
    log("drawing the report's figures and writing its tables ...")
    trials_table = trials_csv(trials)
    out.save_bytes(os.path.join(folder, TRIALS_CSV), trials_table.encode())
    write_ranking(out, folder, e.ranking)
    files, _ = write_analysis(out, folder, e, formats, extra_figures=figures, label=label,
                              parts=page_parts(folder, r, trials_table))
    log(e.ranking.line("ranking of the features on the test split", top=5))
    return files + [TRIALS_CSV, "ranking.csv"]
