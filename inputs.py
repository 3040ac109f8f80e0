"""What inference.py feeds a model: the input (a .root file, every entry in entry
order, or a dataset prefix) and the settings to read it with (track type, feature
columns, network, the normalization to apply), from the model's record, the input
and the flags.
"""
import os
from dataclasses import dataclass

import numpy as np

import kinematics
from architecture import refuse_normalized
from dataset import (
    DatasetMeta,
    has_dataset,
    load_meta,
    load_spectators,
    load_split,
    meta_path,
    split_paths,
)
from derived import compute_all
from features import (
    LABEL,
    LIMIT,
    TRACK_TYPES,
    features_for,
    other_track_branches,
    track_mismatch,
    unfilled,
    width_problem,
)
from rootio import MATRIX, read_root
from utils import GhostError, Stopwatch, log, warn


@dataclass
class Source:
    kind: str      # "root" or "dataset"
    path: str
    meta: object   # dataset.DatasetMeta (all defaults for a .root file)


def describe_source(path):
    """What -f names, without reading the data."""
    if path.endswith(".root"):
        if not os.path.isfile(path):
            raise GhostError(f"input file {path} does not exist")
        return Source("root", path, DatasetMeta())
    if has_dataset(path):
        return Source("dataset", path, load_meta(path))
    if os.path.isfile(path):
        raise GhostError(f"{path} is neither a .root file nor a dataset prefix")
    raise GhostError(f"no input {path}: neither a .root file nor a dataset prefix "
                     f"({split_paths(path, 'test')[0]} is missing)")


@dataclass
class Input:
    """What was read: the features of every track, and where present the labels, the
    train split (on a dataset, for the overtraining check) and the known optimum."""
    data: np.ndarray          # float32 [n, features], raw branch values (or normalized)
    labels: np.ndarray = None  # bool [n], True = ghost
    train: tuple = None       # (data, labels) of the train split
    limit: np.ndarray = None  # the generator's log-likelihood ratio (features.LIMIT)
    columns: dict = None      # branches for the performance vs kinematics, where present
    nonfinite_derived: int = 0  # tracks whose features are finite but not a derived input


def read_input(source, names, tree, threads=None):
    """Every entry of a .root file in entry order (read with `threads`, see
    rootio.read_root), or a dataset's test split (and its train split); the label
    and the limit where the input has them."""
    if source.kind == "root":
        extra = [b for b in kinematics.BRANCHES if b not in names]
        columns = read_root([source.path], tree, names, threads,
                            optional=(LABEL, LIMIT, *extra), matrix=True)
        labels = columns.get(LABEL)
        if labels is not None:
            bad = ~np.isin(labels, (0.0, 1.0))
            if bad.any():
                raise GhostError(f"{source.path}: branch {LABEL!r} holds {int(bad.sum())} "
                                 "values other than 0 and 1")
            labels = labels == 1.0
        data = columns.pop(MATRIX)
        return Input(data, labels, limit=columns.get(LIMIT),
                     columns=kinematics.columns_of(data, names, columns))
    splits = {}
    stored = source.meta.features
    for split in ("test", "train"):
        if split == "train" and not os.path.isfile(split_paths(source.path, split)[0]):
            continue
        data, labels = load_split(source.path, split)
        if stored:
            missing = [n for n in names if n not in stored]
            if missing:
                raise GhostError(f"dataset {source.path} lacks features "
                                 f"{', '.join(missing)} (it holds {', '.join(stored)})")
            if list(stored) != names:
                data = np.ascontiguousarray(data[:, [stored.index(n) for n in names]])
        elif data.shape[1] != len(names):
            raise GhostError(f"dataset {source.path} has {data.shape[1]} features, "
                             f"but {len(names)} are selected")
        splits[split] = (data, labels.ravel() == 1.0)
    spectators = load_spectators(source.path, "test", source.meta)
    data = splits["test"][0]
    return Input(*splits["test"], train=splits.get("train"), limit=spectators.get(LIMIT),
                 columns=kinematics.columns_of(data, names, spectators,
                                               source.meta.normalized))


def load_input(source, settings, model, tree, threads=None):
    """What inference.py scores: the Input read from `source` with `settings`
    (read_input), and which tracks have every feature and derived input finite;
    the guard rails checked for `model`."""
    clock = Stopwatch()
    inp = read_input(source, settings.features, tree, threads)
    if len(inp.data) == 0:
        raise GhostError(f"{source.path} holds no tracks")
    derived = derived_inputs(model, inp.data)
    finite = finite_tracks(inp.data, derived[0])
    inp.nonfinite_derived = int((np.isfinite(inp.data).all(axis=1) & ~finite).sum())
    log(f"read {len(inp.data):,} tracks from {source.path} in {clock():.1f} s"
        + ("" if inp.labels is not None else f" (no {LABEL!r} branch: unlabelled)"))
    guard(source, tree, settings.track, model, settings.features, inp.data, finite, derived)
    if settings.normalization is not None:
        log(f"normalized with the transform recorded in {settings.normalization_origin}")
    return inp, finite


def derived_inputs(model, data):
    """(float32 [tracks, derived] of the derived inputs `model` computes in its first
    layer from data's columns (its branches), their names); (None, []) for a model
    without."""
    config = model.saved.model
    if config is None or not config.derived:
        return None, []
    return (compute_all(config.derived, data, list(config.branches)),
            [d.name for d in config.derived])


def finite_tracks(data, derived=None):
    """bool [tracks]: every feature finite, and every derived input (`derived`, as
    derived_inputs gives them), so the model computes a probability."""
    finite = np.isfinite(data).all(axis=1)
    return finite if derived is None else finite & np.isfinite(derived).all(axis=1)


def scorable(model, data):
    """bool [tracks]: those `model` computes a probability for (finite_tracks)."""
    return finite_tracks(data, derived_inputs(model, data)[0])


def nonfinite_line(n_bad, inp):
    """The console's line on the tracks left unscored: a non-finite feature, or
    only a non-finite derived input (load_input counts those)."""
    only = inp.nonfinite_derived
    what = f" or derived input ({only:,} only a derived input)" if only else ""
    return (f"{n_bad:,} tracks have a non-finite feature{what}: their probability is NaN "
            "and they are left out of the metrics")


OUTSIDE_WARNING = 0.01  # a feature outside its training range for more tracks: warned
CONSTANT_MIN_TRACKS = 10  # fewer finite tracks: no feature is called constant
TREE_ROWS = 500_000  # the tracks (first in order) whose features results.root's trees hold


def guard(source, tree, track, model, names, data, finite=None, derived=(None, [])):
    """Guard rails: does the input look like what the model was trained on?

    - a feature or derived input finite on no track (NaN or +-inf everywhere): an
      error, as nothing can be scored;
    - features constant here but not in training (or, for a model that records no
      training ranges, 0 for every track): the input is of another track type or a
      branch is empty (from CONSTANT_MIN_TRACKS finite tracks up);
    - features and derived inputs outside the model's training range for more than
      1 % of the tracks.
    One warning line names them with their fractions; where half the features or more
    are constant the scores mean nothing, and it is an error.  `finite`: the rows
    with every feature and derived input finite (computed if not given); `derived`:
    (values, names) of the model's derived inputs (derived_inputs)."""
    values, dnames = derived
    if finite is None:
        finite = finite_tracks(data, values)
    nowhere = {} if finite.any() else {**nowhere_finite(data, names, "feature"),
                                       **nowhere_finite(values, dnames, "derived input")}
    if nowhere:
        raise GhostError("; ".join(f"{n} is {what} for every track" for n, what in
                                   nowhere.items()) + ": no track can be scored (is the "
                         "branch filled in this input?)")
    ranges = model.saved.training_ranges or {}
    lo, hi, outside_fraction = column_stats(data, finite, [ranges.get(n) for n in names])
    if lo is None:
        return
    if finite.sum() < CONSTANT_MIN_TRACKS:  # so few tracks may well agree by chance
        constant = []
    elif ranges:
        constant = [n for j, n in enumerate(names)
                    if lo[j] == hi[j] and n in ranges and ranges[n][0] < ranges[n][1]]
    else:
        constant = unfilled({n: data[:, j] for j, n in enumerate(names)}, names)
    outside = {n: float(outside_fraction[j]) for j, n in enumerate(names)
               if n in ranges and n not in constant and outside_fraction[j] > OUTSIDE_WARNING}
    if any(n in ranges for n in dnames):  # a ratio may leave its range where its parts do not
        outside.update((n, float(f)) for n, f in zip(dnames, column_stats(
            values, finite, [ranges.get(n) for n in dnames])[2]) if f > OUTSIDE_WARNING)
    if not constant and not outside:
        return
    parts = []
    if constant:
        zero = [n for n in constant if lo[names.index(n)] == 0]
        others = {}
        if zero and source.kind == "root" and track in TRACK_TYPES:
            others = read_root([source.path], tree, [], optional=other_track_branches(track))
        if zero:
            parts.append(track_mismatch(track, zero, others, fix="score it with a {} model"))
        rest = [n for n in constant if n not in zero]
        if rest:
            parts.append(f"features {', '.join(rest)} are constant here but were not in "
                         "training")
    if outside:
        parts.append("outside the model's training range: " + ", ".join(
            f"{n} for {f:.1%} of the tracks" for n, f in outside.items()))
    message = "; ".join(parts)
    if len(constant) * 2 >= len(names):
        raise GhostError(f"{message}: {len(constant)} of the model's {len(names)} features "
                         "carry no information here, so its scores would mean nothing")
    warn(f"{message}; the model sees inputs unlike its training data, so its scores and "
         "metrics are not meaningful")


def nowhere_finite(data, names, what="feature"):
    """{"<what> <name>": what it holds} for the columns finite on no track: "NaN",
    "+inf", "-inf" or several of them joined by "or"."""
    out = {}
    for j, name in enumerate(names):
        col = data[:, j]
        if not np.isfinite(col).any():
            out[f"{what} {name}"] = " or ".join(kind for kind, has in (
                ("NaN", np.isnan(col)), ("+inf", col == np.inf), ("-inf", col == -np.inf))
                if has.any())
    return out


def overflow_warning(data, overflow, finite, names):
    """The warning on the tracks with finite features that the model cannot compute
    in float32 (scoring.score_model's overflow), naming the features in which they
    lie beyond every track scored (`finite`)."""
    lo, hi, _ = column_stats(data, finite, [None] * len(names))
    x = data[overflow]
    beyond = [n for j, n in enumerate(names)
              if lo is None or ((x[:, j] < lo[j]) | (x[:, j] > hi[j])).any()]
    named = f" ({', '.join(beyond)} beyond the range of the others)" if beyond else ""
    return (f"{int(overflow.sum()):,} tracks have finite features that the model cannot "
            f"compute in float32{named}: their probability is NaN and they are left out "
            "of the analysis, like non-finite tracks")


def finite_part(values, finite):
    """values of the tracks with every feature finite (None stays None): a view,
    not a copy, where every track is."""
    if values is None:
        return None
    return values if finite.all() else values[finite]


def release_features(inp):
    """Once scored, the features are needed only by --compare and --ranking: keep the
    kinematics columns (copies, where they are views of the features) and the first
    TREE_ROWS tracks' features (results.root's trees), and let the [tracks, features]
    array go before the analysis allocates its own."""
    inp.columns = {k: np.ascontiguousarray(v) for k, v in (inp.columns or {}).items()}
    inp.data = inp.data[:TREE_ROWS].copy()


def column_stats(data, finite, ranges, chunk=1 << 18):
    """Per column of data's finite rows: (min, max, fraction outside its range, 0
    where `ranges` has None), or Nones without a finite row; in chunks of rows, so
    nothing the size of `data` is copied."""
    lo_r = np.array([r[0] if r else -np.inf for r in ranges], dtype=np.float64)
    hi_r = np.array([r[1] if r else np.inf for r in ranges], dtype=np.float64)
    lo = np.full(data.shape[1], np.inf)
    hi = np.full(data.shape[1], -np.inf)
    outside = np.zeros(data.shape[1], dtype=np.int64)
    for start in range(0, len(data), chunk):
        x, ok = data[start:start + chunk], finite[start:start + chunk]
        x = x if ok.all() else x[ok]  # a copy only where a track is not finite
        if len(x):
            lo, hi = np.minimum(lo, x.min(axis=0)), np.maximum(hi, x.max(axis=0))
            outside += ((x < lo_r) | (x > hi_r)).sum(axis=0)
    n = int(finite.sum())
    return (None, None, None) if n == 0 else (lo, hi, outside / n)


@dataclass
class Settings:
    track: str
    features: list
    network: int                # None when nothing records it
    normalization: object       # features.MinMax applied before scoring, or None
    normalization_origin: str


def choose_features(track_flag, features_flag, model, source):
    """(track, feature names in the model's column order): flags first, then what
    the model records, then the dataset."""
    saved = model.saved
    track = track_flag or saved.track or source.meta.track or None
    if features_flag:
        names = features_flag
    elif track_flag and track_flag != saved.track:
        names = features_for(track_flag)
    elif saved.features:
        names = list(saved.features)
    elif track:
        try:
            names = features_for(track)
        except ValueError as e:
            raise GhostError(f"{e} (from the model's metadata/config); pass --track")
    elif source.meta.features:
        names = list(source.meta.features)
    else:
        raise GhostError(f"{model.path} does not record its features (no metadata): "
                         "pass --features a,b,c (the model's column order) or --track")
    if model.n_in is not None and model.n_in != len(names):
        raise GhostError(f"{model.path} takes {model.n_in} input features, but {len(names)} "
                         f"features are selected ({','.join(names)})")
    config = saved.model
    if config is not None and config.derived and list(config.branches) != names:
        raise GhostError(f"{model.path} computes its derived inputs from the features "
                         f"{','.join(config.branches)} in this order, but "
                         f"{','.join(names)} are selected")
    return track, names


def choose_normalization(normalize_flag, network, model, source, names):
    """(the min-max transform to apply before scoring or None, where it comes from):
    inputs a network 0 model gets must be normalized, a network 1 model's never."""
    if source.meta.normalized:
        refuse_normalized(network, True, f"{source.path} holds normalized features "
                          f"(normalized: true in {meta_path(source.path)})",
                          "use a dataset made without --normalize")
        if normalize_flag:
            log(f"note: {source.path} is already normalized; not normalizing again")
        return None, None
    refuse_normalized(network, normalize_flag, "--normalize would normalize twice",
                      "drop --normalize")
    if not normalize_flag and network != 0:
        return None, None
    recorded = model.saved.model.normalization if model.saved.model else None
    origin = "the model's metadata/config"
    if recorded is None and source.meta.normalization and source.meta.features == names:
        recorded, origin = source.meta.normalization, meta_path(source.path)
    if recorded is None:
        raise GhostError("normalization needs the offsets and scales recorded at "
                         f"training time, but {model.path} records none: pass "
                         "--config with a 'normalization' entry")
    problem = width_problem(recorded.to_dict(), len(names), "selected features",
                            "normalization")
    if problem:
        raise GhostError(problem)
    return recorded, origin


def resolve_settings(model, source, track=None, features=None, normalize=False):
    """Track, features, network and the normalization to apply: from the model's
    record and the input, where the flags (--track, --features, --normalize) do not
    say otherwise."""
    track, names = choose_features(track, features, model, source)
    network = model.saved.model.network if model.saved.model else None
    norm, origin = choose_normalization(normalize, network, model, source, names)
    return Settings(track, names, network, norm, origin)
