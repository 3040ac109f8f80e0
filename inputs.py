"""What inference.py feeds a model: the input (.root files, every entry in entry
order, file after file, or a dataset prefix) and the settings to read it with (track type, feature
columns, network, the normalization to apply), from the model's record, the input
and the flags.
"""
import glob
import os
from dataclasses import dataclass, field

import numpy as np

import kinematics
from architecture import refuse_normalized
from cli import expand_inputs
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
from rootstream import stream_root
from utils import GhostError, log, warn


@dataclass
class Source:
    kind: str      # "root" or "dataset"
    path: str      # the input as the console names it (several files: shown_files)
    meta: object   # dataset.DatasetMeta (all defaults for a .root file)
    files: list = field(default_factory=list)  # the .root files, in order ([path] for one)

    def __post_init__(self):
        if self.kind == "root" and not self.files:
            self.files = [self.path]


def input_files(names):
    """-f's values -> the .root files they name, in order (cli.expand_inputs:
    globs expanded, each file once, a missing one refused), or [] for a single name
    that is neither a .root file nor a glob (a dataset prefix)."""
    if len(names) == 1 and not names[0].endswith(".root") and not glob.has_magic(names[0]):
        return []
    files = expand_inputs(names)
    odd = [f for f in files if not f.endswith(".root")]
    if odd:
        raise GhostError(f"-f {odd[0]} is not a .root file: several inputs (or a glob) must "
                         "all be .root files; a dataset prefix comes alone")
    return files


def shown_files(files):
    """Several files as the console names them: all of up to three, else the count,
    the first and the last."""
    if len(files) <= 3:
        return ", ".join(files)
    return f"{len(files)} files ({files[0]} ... {files[-1]})"


def describe_source(names):
    """What -f names (one name or a list of them), without reading the data."""
    names = [names] if isinstance(names, str) else list(names)
    files = input_files(names)
    if files:
        return Source("root", shown_files(files), DatasetMeta(), files)
    path = names[0]
    if has_dataset(path):
        return Source("dataset", path, load_meta(path))
    if os.path.isfile(path):
        raise GhostError(f"{path} is neither a .root file nor a dataset prefix")
    raise GhostError(f"no input {path}: neither a .root file nor a dataset prefix "
                     f"({split_paths(path, 'test')[0]} is missing)")


@dataclass
class Input:
    """What was read: the features of every track (once scored, of the first
    TREE_ROWS), and where present the labels, the train split (on a dataset, for the
    overtraining check) and the known optimum."""
    data: np.ndarray          # float32 [n, features], raw branch values (or normalized)
    labels: np.ndarray = None  # bool [n], True = ghost
    train: tuple = None       # (data, labels) of the train split
    limit: np.ndarray = None  # the generator's log-likelihood ratio (features.LIMIT)
    columns: dict = None      # branches for the performance vs kinematics, where present
    nonfinite_derived: int = 0  # tracks whose features are finite but not a derived input
    bins: dict = None         # kinematics.bins_of per track, once scored (columns: None)


def stream_input(files, names, tree, chunk, add, optional=None):
    """Every entry of .root files in consecutive chunks of `chunk` entries, in entry
    order (rootstream.stream_root): add(first entry, total entries, features float32
    [n, features], the label's values or None, the limit or None, the kinematics
    columns) for each.  The arrays are reused for the next chunk.  `optional`: the
    branches read where every file has them (default optional_branches')."""

    def read(first, total, columns):
        data = columns[MATRIX]
        add(first, total, data, columns.get(LABEL), columns.get(LIMIT),
            kinematics.columns_of(data, names, columns))
    optional = optional_branches(names) if optional is None else optional
    return stream_root(files, tree, names, chunk, read, optional=optional)


def optional_branches(names):
    """The branches an input is read with where it has them, beside the features
    `names`: the label, the limit, the kinematics' own."""
    return (LABEL, LIMIT, *[b for b in kinematics.BRANCHES if b not in names])


def read_dataset(source, names):
    """A dataset's test split (and its train split), in memory: an Input with the
    limit where the dataset has it."""
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


def bad_labels(path, n):
    """The error for `n` label values other than 0 and 1 in `path`."""
    return GhostError(f"{path}: branch {LABEL!r} holds {n} values other than 0 and 1")


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


OUTSIDE_WARNING = 0.01  # a feature outside its training range for more tracks: warned
CONSTANT_MIN_TRACKS = 10  # fewer finite tracks: no feature is called constant
TREE_ROWS = 500_000  # the tracks (first in order) whose features results.root's trees hold
KINDS = (("NaN", np.isnan), ("+inf", lambda x: x == np.inf), ("-inf", lambda x: x == -np.inf))


class ColumnStats:
    """Per column of the finite rows seen, chunk after chunk: min, max and how many
    lie outside the column's range (`ranges`: (lo, hi) or None per column)."""

    def __init__(self, ranges):
        self.lo_r = np.array([r[0] if r else -np.inf for r in ranges], dtype=np.float64)
        self.hi_r = np.array([r[1] if r else np.inf for r in ranges], dtype=np.float64)
        self.lo, self.hi = np.full(len(ranges), np.inf), np.full(len(ranges), -np.inf)
        self.outside, self.n = np.zeros(len(ranges), dtype=np.int64), 0

    def add(self, data, finite, chunk=1 << 18):
        """Count data's `finite` rows in, a chunk of rows at a time, so nothing the
        size of `data` is copied."""
        for start in range(0, len(data), chunk):
            x, ok = data[start:start + chunk], finite[start:start + chunk]
            x = x if ok.all() else x[ok]  # a copy only where a track is not finite
            if len(x):
                self.lo = np.minimum(self.lo, x.min(axis=0))
                self.hi = np.maximum(self.hi, x.max(axis=0))
                self.outside += ((x < self.lo_r) | (x > self.hi_r)).sum(axis=0)
        self.n += int(finite.sum())
        return self

    def merge(self, other):
        """Another ColumnStats of the same ranges counted in (rows seen elsewhere)."""
        self.lo, self.hi = np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi)
        self.outside, self.n = self.outside + other.outside, self.n + other.n
        return self

    def result(self):
        """(min, max, fraction outside its range), or Nones without a finite row."""
        return (None, None, None) if self.n == 0 else (self.lo, self.hi, self.outside / self.n)


class GuardStats:
    """What the guard rails need of an input, summed up chunk by chunk (add): the
    features' and the derived inputs' ColumnStats over the tracks with every one
    finite, the features with no finite non-zero value (features.unfilled), and
    while no track is finite, what each column holds (NaN, +-inf)."""

    def __init__(self, model, names, dnames):
        self.names, self.dnames = names, dnames
        self.ranges = model.saved.training_ranges or {}
        self.features = ColumnStats([self.ranges.get(n) for n in names])
        self.derived = ColumnStats([self.ranges.get(n) for n in dnames])
        self.unfilled = set(names)
        self.kinds = {}  # "<what> <name>" -> set of what it holds, while nothing is finite

    def add(self, data, finite, values=None):
        """One chunk: its features, its rows with every input finite, and the
        derived inputs' values (derived_inputs; None without)."""
        self.features.add(data, finite)
        if values is not None and any(n in self.ranges for n in self.dnames):
            self.derived.add(values, finite)
        if not self.ranges and self.unfilled:
            self.unfilled &= set(unfilled({n: data[:, j] for j, n in enumerate(self.names)},
                                          self.names))
        if self.features.n == 0:
            for what, x, names in (("feature", data, self.names),
                                   ("derived input", values, self.dnames)):
                for j, name in enumerate(names):
                    held = self.kinds.setdefault(f"{what} {name}", set())
                    held.update(k for k, test in KINDS if test(x[:, j]).any())
                    if np.isfinite(x[:, j]).any():
                        held.add("finite")
        return self

    def merge(self, other):
        """The GuardStats of another input's tracks counted in, as if add had seen
        them (what the columns hold is read by guard only while no track is finite)."""
        self.features.merge(other.features)
        self.derived.merge(other.derived)
        self.unfilled &= other.unfilled
        for key, held in other.kinds.items():
            self.kinds.setdefault(key, set()).update(held)
        return self


def guard(source, tree, track, stats):
    """Guard rails: does the input look like what the model was trained on?

    - a feature or derived input finite on no track (NaN or +-inf everywhere): an
      error, as nothing can be scored;
    - features constant here but not in training (or, for a model that records no
      training ranges, 0 for every track): the input is of another track type or a
      branch is empty (from CONSTANT_MIN_TRACKS finite tracks up);
    - features and derived inputs outside the model's training range for more than
      1 % of the tracks.
    One warning line names them with their fractions; where half the features or more
    are constant the scores mean nothing, and it is an error.  `stats`: the input's
    GuardStats."""
    names, ranges = stats.names, stats.ranges
    nowhere = {n: " or ".join(k for k, _ in KINDS if k in held)
               for n, held in stats.kinds.items() if "finite" not in held}
    if stats.features.n == 0 and nowhere:
        raise GhostError("; ".join(f"{n} is {what} for every track" for n, what in
                                   nowhere.items()) + ": no track can be scored (is the "
                         "branch filled in this input?)")
    lo, hi, outside_fraction = stats.features.result()
    if lo is None:
        return
    if stats.features.n < CONSTANT_MIN_TRACKS:  # so few tracks may well agree by chance
        constant = []
    elif ranges:
        constant = [n for j, n in enumerate(names)
                    if lo[j] == hi[j] and n in ranges and ranges[n][0] < ranges[n][1]]
    else:
        constant = [n for n in names if n in stats.unfilled]
    outside = {n: float(outside_fraction[j]) for j, n in enumerate(names)
               if n in ranges and n not in constant and outside_fraction[j] > OUTSIDE_WARNING}
    if any(n in ranges for n in stats.dnames):  # a ratio may leave its range where its parts do not
        outside.update((n, float(f)) for n, f in zip(stats.dnames, stats.derived.result()[2])
                       if f > OUTSIDE_WARNING)
    if not constant and not outside:
        return
    parts = []
    if constant:
        zero = [n for n in constant if lo[names.index(n)] == 0]
        others = {}
        if zero and source.kind == "root" and track in TRACK_TYPES:
            others = read_root(source.files, tree, [], optional=other_track_branches(track))
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


def finite_part(values, finite):
    """values of the tracks with every feature finite (None stays None): a view,
    not a copy, where every track is."""
    if values is None:
        return None
    return values if finite.all() else values[finite]


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
