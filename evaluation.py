"""One scored sample -> its analysis record, the same for inference.py and for the
report training.py --save writes: the metrics (metrics.Analysis), the overtraining
check, the classifiers compared and the limit with the gap to it, the performance
vs kinematics, the feature ranking and the run's context.

The record (Evaluation) is the one home of every metrics.json entry
(Evaluation.metrics) and of what the figures draw (its plots.PlotInput); report.py
writes it out, and says it on the console.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from compare import Curve, gap_to_limit
from diagnostic_plots import ranking as ranking_figure
from diagnostics import permutation_ranking, ranking_csv
from features import LIMIT
from inputs import finite_part
from kinematics import performance
from metrics import DEFAULT_THRESHOLDS, WORKING_POINTS, analyse, overtraining, row
from plots import PlotInput
from scoring import model_macs
from utils import log, plain

LIMIT_CURVE = f"limit ({LIMIT})"  # the known optimum's curve, where the input has it
RANKING_STEM = "ranking"  # ranking.png and ranking.csv
RANKING_CAPTION = ("Features ranked by the drop in AUC and in ghost rejection at 99 % when "
                   "each is shuffled.")


@dataclass
class Sample:
    """One classifier's scores on one input, every track of it, and what the input
    holds beside them.  The tracks analysed are the `finite` ones (every feature
    finite; None: all)."""
    name: str                  # the classifier's curve name
    saved: object              # its artifacts.SavedConfig: own threshold, working point
    macs: int                  # multiply-adds per track, or None
    scores: np.ndarray         # probabilities (NaN where not computed)
    labels: np.ndarray         # bool, True = ghost
    finite: np.ndarray = None
    train: tuple = None        # (scores, labels) of the train split: the overtraining check
    limit: np.ndarray = None   # the known optimum's statistic (features.LIMIT) per track
    columns: dict = None       # kinematics.columns_of per track

    def part(self, values):
        """`values` of the tracks analysed (None stays None)."""
        return values if self.finite is None else finite_part(values, self.finite)


@dataclass
class Ranking:
    """The permutation ranking of the features (diagnostics.permutation_ranking)."""
    reference: dict            # the unshuffled figures of merit
    rows: list                 # [{feature, auc_drop, rejection_drop}], largest drop first

    def line(self, head, top=None):
        """The console line: `head`, then each (or the `top`) feature's AUC drop."""
        shown = self.rows if top is None else self.rows[:top]
        return (f"{head} (drop in AUC when shuffled): "
                + ", ".join(f"{r['feature']} {r['auc_drop']:.4f}" for r in shown)
                + ("" if top is None else ", ..."))

    def csv(self):
        return ranking_csv(self.rows)

    def figure(self, plt, title):
        """(stem, Figure, caption) for report.write_analysis's extra figures."""
        return (RANKING_STEM, ranking_figure(plt, self.reference, self.rows, title),
                RANKING_CAPTION)


def rank_features(score, data, labels, names, seed):
    """The Ranking of the features of `data` (`score(x) -> probabilities`)."""
    return Ranking(*permutation_ranking(score, data, labels, names, seed))


@dataclass
class Evaluation:
    """The analysis record of one scored sample: what metrics.json, the tables, the
    figures and index.html are made of."""
    plot: PlotInput            # the Analysis, title, scores, overtraining, curves, kinematics
    context: dict              # what was scored, with which model and how fast
    limit: Curve = None        # the known optimum's curve, where the input has it
    gap: dict = None           # compare.gap_to_limit of the classifier
    ranking: Ranking = None

    @property
    def analysis(self):
        return self.plot.analysis

    @property
    def title(self):
        return self.plot.title

    def metrics(self):
        """The metrics.json record: the context, every number of the analysis, then
        the overtraining check, the comparison, the limit, the kinematics and the
        ranking where there are; plain JSON (NaN -> null)."""
        a, p = self.analysis, self.plot
        return plain({
            **self.context,
            "tracks_labelled": a.n, "ghosts": a.n_ghost, "reals": a.n_real,
            "true_ghost_fraction": a.true_ghost, "true_real_fraction": a.true_real,
            "roc_auc": a.auc, "classification": "ghost when probability > threshold",
            "thresholds": [row(a.table, i) for i in range(len(a.table["threshold"]))],
            "best_youden_j": a.best_youden_j, "best_f1": a.best_f1,
            "best_youden_j_any_cut": a.best_youden_j_any_cut,
            "model_threshold": a.model_threshold, "ghost_rejection": a.rejection,
            "working_points": [w.to_dict() for w in a.working_points],
            "overtraining": p.overtraining,
            **({"comparison": [c.record() for c in p.curves]} if p.curves else {}),
            **({"limit": self.limit.record(), "gap_to_limit": self.gap}
               if self.limit is not None else {}),
            "kinematics": p.kinematics,
            **({"ranking": self.ranking.rows} if self.ranking is not None else {}),
        })

    def splits(self):
        """{split: (scores, labels)} for results.root: a .root input's tracks, or a
        dataset's test split (and train split)."""
        if self.context.get("input_kind") == "root":
            return {"input": self.plot.test}
        return {"test": self.plot.test, **({"train": self.plot.train} if self.plot.train
                                          else {})}


def own_threshold(saved):
    """The threshold a model records, where it is a number in [0, 1]; else None."""
    try:
        own = float(saved.threshold)
    except (TypeError, ValueError):
        return None
    return own if 0.0 <= own <= 1.0 else None


def evaluate(sample, title, context, others=(), cuts=(DEFAULT_THRESHOLDS, WORKING_POINTS),
             always_compare=False):
    """The Evaluation of a labelled Sample (some of its tracks finite).  `others`:
    [(curve name, scores of the tracks analysed, MACs)] of the classifiers compared
    on the same tracks (their non-finite scores left out); `cuts`: (thresholds,
    working points' real-track efficiencies).  The curves are compared (figure,
    table, metrics.json) where there are several, or with `always_compare`."""
    scores, labels = sample.part(sample.scores), sample.part(sample.labels)
    n_ghost = int(labels.sum())
    if n_ghost in (0, len(labels)):
        log(f"note: only {'real tracks' if n_ghost == 0 else 'ghosts'} among the scored "
            "tracks: the rates of the missing class, ROC AUC and ghost rejection are "
            "undefined (nan)")
    with ThreadPoolExecutor(1) as pool:  # numpy sorts without the GIL: the limit's
        limit = None                     # curve on the other core meanwhile
        if sample.limit is not None:
            limit = pool.submit(Curve.of, LIMIT_CURVE, sample.part(sample.limit), labels)
        a = analyse(scores, labels, cuts[0], own_threshold(sample.saved),
                    efficiencies=cuts[1], model_point=sample.saved.working_point)
        limit = limit.result() if limit is not None else None
    over = None
    if sample.train is not None:
        over = overtraining(*sample.train, sample.scores, sample.labels, a.working_points)
    curves = [Curve.from_analysis(sample.name, a, sample.macs)]
    for name, theirs, macs in others:
        ok = np.isfinite(theirs)
        curves.append(Curve.of(name, theirs[ok], labels[ok], macs))
    curves += [limit] if limit is not None else []
    columns = {k: sample.part(v) for k, v in (sample.columns or {}).items()}
    plot = PlotInput(a, title, test=(sample.scores, sample.labels), overtraining=over,
                     train=sample.train,
                     curves=curves if len(curves) > 1 or always_compare else None,
                     kinematics=performance(columns, scores, labels, a.working_points))
    return Evaluation(plot, context, limit,
                      gap_to_limit(curves[0], limit) if limit is not None else None)


def run_context(source, model, settings, finite, scored):
    """What metrics.json records about an inference.py run before its numbers: the
    input (inputs.Source), the model (scoring.LoadedModel), the settings it was read
    with, which tracks had every feature finite and the scoring pass (`scored`: its
    scores, description, seconds and cross-check)."""
    n, seconds = len(scored.scores), scored.seconds
    dataset = (model.saved.provenance or {}).get("dataset")  # the data set it was trained on
    trained_on = dataset.get("prefix") if isinstance(dataset, dict) else None
    context = {
        "input": os.path.abspath(source.path), "input_kind": source.kind,
        "model": os.path.abspath(model.path), "model_kind": model.kind,
        "model_dataset": trained_on if isinstance(trained_on, str) else None,
        "int8": model.int8, "scoring": scored.desc, "track": settings.track,
        "features": settings.features, "network": settings.network,
        "macs_per_track": model_macs(model),
        "normalized_by_inference": settings.normalization is not None,
        "normalization_origin": settings.normalization_origin,
        "tracks": n, "tracks_nonfinite": int((~finite).sum()),
        "scoring_seconds": seconds,
        "tracks_per_second": n / seconds if seconds > 0 else None,
    }
    if scored.check is not None:
        context["cross_check"] = scored.check
    return context


def report_context(names, macs, tracks):
    """What metrics.json records about the training report's analysis: the chosen
    network on the dataset's test split."""
    return {"input": "the dataset's test split", "input_kind": "dataset",
            "model": "the chosen network", "features": names, "macs_per_track": macs,
            "tracks": tracks}
