"""One scored sample -> its analysis record, the same for inference.py and for the
report training.py --save writes: the metrics (metrics.Analysis), the overtraining
check, the classifiers compared and the limit with the gap to it, the performance
vs kinematics, the feature ranking and the run's context.

The record (Evaluation) is the one home of every metrics.json entry
(Evaluation.metrics) and of what the figures draw (its plots.PlotInput); report.py
writes it out, and says it on the console.
"""
import os
import re
from dataclasses import dataclass

import numpy as np

from artifacts import ghost_net
from compare import Curve, gap_to_limit
from dataset import dataset_files
from derived import input_labels
from diagnostic_plots import ranking as ranking_figure
from diagnostics import permutation_ranking, ranking_csv
from features import LIMIT
from inputs import finite_part
from kinematics import performance
from metrics import DEFAULT_THRESHOLDS, WORKING_POINTS, analyse, overtraining, row
from plots import PlotInput
from provenance import file_record
from scoring import model_macs
from streaming import release_free_memory
from trainer import predict
from utils import log, plain

LIMIT_CURVE = f"limit ({LIMIT})"  # the known optimum's curve, where the input has it
RANKING_STEM = "ranking"  # ranking.png and ranking.csv
RANKING_CAPTION = ("Features ranked by the drop in AUC and in ghost rejection at 99 % when "
                   "each is shuffled.")
RANKING_DERIVED = (" Each derived input (name := expression) is shuffled as a column of its "
                   "own; a shuffled feature is shuffled alone, the derived inputs computed "
                   "from it keeping their original values.")


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
    features: tuple = None     # (names, {split: [tracks, features]}): results.root's trees
    bins: dict = None          # kinematics.bins_of per track, kept instead of `columns`

    def part(self, values):
        """`values` of the tracks analysed (None stays None)."""
        return values if self.finite is None else finite_part(values, self.finite)


@dataclass
class Tracks:
    """The tracks of results.root's trees: per split (train, test) each track's
    features (the first rows at least), label, and every classifier's score."""
    names: list                # the features
    features: dict             # {split: [tracks, features]}
    labels: dict               # {split: bool [tracks], True = ghost}
    scores: dict               # {key: (curve name, {split: [tracks]})}: "network" first;
                               # "limit" the known optimum; NaN where not computed
    class_weights: dict = None  # {"ghost": w, "real": w}: each track's weight (else 1)
    saved: object = None       # the analysed model's artifacts.SavedConfig


@dataclass
class Ranking:
    """The permutation ranking of the features (diagnostics.permutation_ranking)."""
    reference: dict            # the unshuffled figures of merit
    rows: list                 # [{feature, auc_drop, rejection_drop}], largest drop first
    caption: str = RANKING_CAPTION

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
                self.caption)


def rank_features(score, data, labels, names, seed):
    """The Ranking of the features of `data` (`score(x) -> probabilities`)."""
    return Ranking(*permutation_ranking(score, data, labels, names, seed))


def rank_model_inputs(model, score, data, labels, names, seed):
    """inference.py --ranking: the Ranking of a loaded model's (scoring.LoadedModel)
    inputs on raw branch values `data` (`score(x)`): the features, and where the
    model computes derived inputs, each column of [raw | derived] shuffled alone
    through the model's torch form, as the training report ranks them."""
    config = model.saved.model
    if config is None or not config.derived:
        return rank_features(score, data, labels, names, seed)
    net = ghost_net(model, "--ranking")
    ranking = rank_features(lambda x: predict(net, x, inputs=True), config.extend(data),
                            labels, input_labels(names, config.derived), seed)
    ranking.caption += RANKING_DERIVED
    return ranking


@dataclass
class Evaluation:
    """The analysis record of one scored sample: what metrics.json, the tables, the
    figures and index.html are made of."""
    plot: PlotInput            # the Analysis, title, scores, overtraining, curves, kinematics
    context: dict              # what was scored, with which model and how fast
    limit: Curve = None        # the known optimum's curve, where the input has it
    gap: dict = None           # compare.gap_to_limit of the classifier
    ranking: Ranking = None
    tracks: Tracks = None      # results.root's trees, where the caller kept the features

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


def own_threshold(saved):
    """The model's threshold (SavedConfig.cut: its working point's, else the one it
    records), where it is a number in [0, 1]; else None."""
    try:
        own = float(saved.cut()[0])
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
    a = analyse(scores, labels, cuts[0], own_threshold(sample.saved), efficiencies=cuts[1],
                model_point=sample.saved.working_point)
    # the limit's curve after the model's, not beside it: one sort's memory at a time
    limit = None if sample.limit is None else Curve.of(LIMIT_CURVE, sample.part(sample.limit),
                                                       labels)
    over = None
    if sample.train is not None:
        over = overtraining(*sample.train, sample.scores, sample.labels, a.working_points)
    curves = [Curve.from_analysis(sample.name, a, sample.macs)]
    for name, theirs, macs in others:
        ok = np.isfinite(theirs)
        curves.append(Curve.of(name, theirs[ok], labels[ok], macs))
    curves += [limit] if limit is not None else []
    columns = {k: sample.part(v) for k, v in (sample.columns or {}).items()}
    bins = None if sample.bins is None else {k: sample.part(v) for k, v in sample.bins.items()}
    plot = PlotInput(a, title, test=(sample.scores, sample.labels), overtraining=over,
                     train=sample.train,
                     curves=curves if len(curves) > 1 or always_compare else None,
                     kinematics=performance(columns, scores, labels, a.working_points, bins))
    release_free_memory()  # the sorts' freed pages, before the figures' workers fork
    return Evaluation(plot, context, limit,
                      gap_to_limit(curves[0], limit) if limit is not None else None,
                      tracks=sample_tracks(sample, others))


def sample_tracks(sample, others):
    """The Tracks of a Sample that carries its features (else None): the analysed
    model ("network"), the `others` (their scores back in every track's row, keys from
    their curve names) and the limit, on the test split, and the train split's."""
    if sample.features is None:
        return None
    names, features = sample.features
    scores = {"network": (sample.name, {"test": sample.scores})}
    labels = {"test": sample.labels}
    if sample.train is not None:
        scores["network"][1]["train"], labels["train"] = sample.train
    for name, theirs, _ in others:
        every = theirs
        if sample.finite is not None:
            every = np.full(len(sample.scores), np.nan, dtype=np.float32)
            every[sample.finite] = theirs
        key = re.sub(r"\W", "_", name)
        while key in scores or key == "limit":
            key += "_"
        scores[key] = (name, {"test": every})
    if sample.limit is not None:
        scores["limit"] = (LIMIT_CURVE, {"test": sample.limit})
    return Tracks(names, features, labels, scores, saved=sample.saved)


def input_record(source):
    """An inference input as provenance records files (never a path): a .root file's
    file_record; several files' count and the file_record of each, in order; a
    dataset's name and the file_record of each of its files."""
    if source.kind == "root":
        if len(source.files) == 1:
            return file_record(source.files[0])
        return {"name": f"{len(source.files)} files",
                "files": [file_record(f) for f in source.files]}
    return {"name": os.path.basename(os.path.normpath(source.path)),
            "files": [file_record(f) for f in dataset_files(source.path) if os.path.isfile(f)]}


def run_context(source, model, settings, finite, scored):
    """What metrics.json records about an inference.py run before its numbers: the
    input (inputs.Source), the model (scoring.LoadedModel), the settings it was read
    with, which tracks had every feature and derived input finite and the scoring
    pass (`scored`: its scores, description, seconds and cross-check)."""
    n, seconds = len(scored.scores), scored.seconds
    config = model.saved.model  # the derived inputs it computes in its first layer
    context = {
        "input": input_record(source), "input_kind": source.kind,
        "model": file_record(model.path), "model_kind": model.kind,
        "int8": model.int8, "scoring": scored.desc, "track": settings.track,
        "features": settings.features, "network": settings.network,
        "derived": [d.to_dict() for d in config.derived] if config is not None else [],
        "macs_per_track": model_macs(model),
        "normalized_by_inference": settings.normalization is not None,
        "normalization_origin": settings.normalization_origin,
        "tracks": n, "tracks_nonfinite": int((~finite).sum()),
        "tracks_nonfinite_derived_only": scored.inp.nonfinite_derived,
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
