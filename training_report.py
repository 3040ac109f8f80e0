"""What training.py --save writes into OUTPUT_DIR/training_report/, the diagnostics a
TMVA user gets after training: inference.py's analysis of the test split (with the
INT8 model, the baseline and the limit compared, the overtraining check and the
performance vs kinematics), the search's quality-vs-cost front and training history,
the variable ranking and the features' correlations."""
import os
from dataclasses import dataclass

import numpy as np

import kinematics
from compare import Curve, gap_to_limit
from diagnostic_plots import correlation_figure, history, ranking, search_front
from diagnostics import correlations, permutation_ranking, ranking_csv
from features import LIMIT
from metrics import DEFAULT_THRESHOLDS, WORKING_POINTS, analyse, overtraining
from plots import PlotInput, style
from report import trials_csv, write_analysis
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
    net = r.scores["network"]
    a = analyse(net["test"], labels, DEFAULT_THRESHOLDS, r.saved.threshold,
                efficiencies=WORKING_POINTS, model_point=r.saved.working_point)
    over = overtraining(net["train"], train_labels, net["test"], labels)
    curves = [Curve.from_analysis("network", a, r.saved.model.cost()[0])]
    curves += [Curve.of(name, s["test"], labels, r.saved.model.cost()[0] if name == "INT8"
                        else None) for name, s in r.scores.items() if name != "network"]
    extra = {"overtraining": over}
    if LIMIT in r.spectators:
        curves.append(Curve.of(f"limit ({LIMIT})", r.spectators[LIMIT], labels))
        extra["limit"] = curves[-1].record()
        extra["gap_to_limit"] = gap_to_limit(curves[0], curves[-1])
    extra["comparison"] = [c.record() for c in curves]
    names = r.meta.features
    columns = {} if r.meta.normalized else {
        b: test_x[:, names.index(b)] for b in kinematics.BRANCHES if b in names}
    columns.update({b: v for b, v in r.spectators.items() if b in kinematics.BRANCHES})
    perf = kinematics.performance(columns, net["test"], labels, a.working_points)
    extra["kinematics"] = perf
    rows = np.random.default_rng(seed).permutation(len(test_x))[:RANKING_TRACKS]
    reference, ranked = permutation_ranking(r.score_fn, test_x[rows], labels[rows], names, seed)
    extra["ranking"] = ranked
    title = f"the chosen network on the test split ({a.n:,} tracks, {r.meta.mix()})"
    plot_input = PlotInput(a, title, test=(net["test"], labels), overtraining=over,
                           train=(net["train"], train_labels), curves=curves, kinematics=perf)
    with style() as plt:
        figures = [
            ("search_front", search_front(plt, trials, best), "The search's quality-vs-cost "
             "front: validation AUC and rejection at 99 % against multiply-adds per track."),
            ("history", history(plt, trials, best), "Validation loss and AUC per epoch of "
             "every trial, the chosen one bold."),
            ("ranking", ranking(plt, reference, ranked, "test split"), "Features ranked by "
             "the drop in AUC and rejection at 99 % when each is shuffled."),
            ("correlations", correlation_figure(plt, correlations(test_x, labels), names),
             "Rank correlations of the features, ghosts and real tracks."),
        ] if formats else []
    out.save_bytes(os.path.join(folder, "search_trials.csv"), trials_csv(trials).encode())
    out.save_bytes(os.path.join(folder, "ranking.csv"), ranking_csv(ranked).encode())
    context = {"input": "the dataset's test split", "input_kind": "dataset",
               "model": "the chosen network", "features": names,
               "macs_per_track": r.saved.model.cost()[0], "tracks": len(test_x)}
    files, _ = write_analysis(out, folder, a, extra, plot_input, context, formats,
                              extra_figures=figures,
                              scores_by_split={"test": (net["test"], labels),
                                               "train": (net["train"], train_labels)})
    log("ranking of the features on the test split (drop in AUC when shuffled): " + ", ".join(
        f"{row['feature']} {row['auc_drop']:.4f}" for row in ranked[:5]) + ", ...")
    return files + ["search_trials.csv", "ranking.csv"]
