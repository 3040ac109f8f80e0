"""What training.py --save writes into OUTPUT_DIR/training_report/, the diagnostics a
TMVA user gets after training: inference.py's analysis of the test split (with the
INT8 model, the baseline and the limit compared, the overtraining check and the
performance vs kinematics), the search's quality-vs-cost front and training history,
the variable ranking and the features' correlations."""
import os
from dataclasses import dataclass

import numpy as np

import kinematics
from diagnostic_plots import correlation_figure, history, search_front
from diagnostics import correlations
from evaluation import Sample, evaluate, rank_features, report_context
from features import LIMIT
from plots import style
from report import trials_csv, write_analysis, write_ranking
from utils import log

RANKING_TRACKS = 100_000  # permutation ranking on this many test tracks (one pass each)


@dataclass
class ReportInput:
    """What the report is made of: the splits, what the dataset records beside them,
    and the scores of each classifier on them."""
    splits: dict            # split -> (data, labels)
    meta: object            # dataset.DatasetMeta
    spectators: dict        # the test split's, {name: array}
    saved: object           # the network's artifacts.SavedConfig
    scores: dict            # classifier -> {split: probabilities}; "network" always
    score_fn: object        # raw data -> the network's probabilities (for the ranking)


def write(out, folder, r, trials, best, formats=("png",), seed=42):
    """Every file of the report through `out`; returns the files written."""
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
    rows = np.random.default_rng(seed).permutation(len(test_x))[:RANKING_TRACKS]
    log(f"ranking the features: each one permuted on {len(rows):,} test tracks ...")
    e.ranking = rank_features(r.score_fn, test_x[rows], labels[rows], names, seed)
    with style() as plt:
        figures = [
            ("search_front", search_front(plt, trials, best), "The search's quality-vs-cost "
             "front: validation AUC and rejection at 99 % against multiply-adds per track."),
            ("history", history(plt, trials, best), "Validation loss and AUC per epoch of "
             "every trial, the chosen one bold."),
            e.ranking.figure(plt, "test split"),
            ("correlations", correlation_figure(plt, correlations(test_x, labels), names),
             "Rank correlations of the features, ghosts and real tracks."),
        ] if formats else []
    log("drawing the report's figures and writing its tables ...")
    out.save_bytes(os.path.join(folder, "search_trials.csv"), trials_csv(trials).encode())
    write_ranking(out, folder, e.ranking)
    files, _ = write_analysis(out, folder, e, formats, extra_figures=figures)
    log(e.ranking.line("ranking of the features on the test split", top=5))
    return files + ["search_trials.csv", "ranking.csv"]
