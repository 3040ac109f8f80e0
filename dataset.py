"""The dataset files, both halves of the contract: make_dataset.py writes them,
training.py and inference.py read them.

    {prefix}_{train,valid,test}_data.npy    float32 [tracks, features]
    {prefix}_{train,valid,test}_labels.npy  float32 [tracks, 1], 1 = ghost
    {prefix}_features.json                  DatasetMeta: what the arrays hold
    {prefix}_{split}_spectators.npy         float32 [tracks, spectators], optional:
                                            branches read beside the features and
                                            never fed to a model (the generator's
                                            truth_llr, for the limit)
"""
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from derived import compute_all, from_dicts
from features import MinMax, Standardize, width_problem
from records import check_fields, in_range, is_distinct_names, is_int, is_names, is_real, is_text
from utils import GhostError, one_line

SPLITS = ("train", "valid", "test")


def split_paths(prefix, split):
    return f"{prefix}_{split}_data.npy", f"{prefix}_{split}_labels.npy"


def meta_path(prefix):
    return f"{prefix}_features.json"


def dataset_files(prefix):
    """Every file a dataset prefix names: what make_dataset.py writes (the
    spectators where there are some), what training.py and inference.py read."""
    return [path for split in SPLITS
            for path in (*split_paths(prefix, split), spectators_path(prefix, split))
            ] + [meta_path(prefix)]


def dataset_outputs(prefix="PREFIX"):
    """The files of dataset_files for --help, [(names, what)]: `{a,b}` for each split."""
    splits = "{" + ",".join(SPLITS) + "}"
    data, labels = split_paths(prefix, splits)
    return [(data, "float32 [tracks, features], columns in the order of the features JSON"),
            (labels, "float32 [tracks, 1], 1 = ghost"),
            (spectators_path(prefix, splits), "where the input has them: float32 [tracks, "
             "spectators], branches never fed to a model (the generator's truth_llr, tx, ty)"),
            (meta_path(prefix), "track type, features, input files, counts per split and "
             "class, the balance and class weights, both input scalings of the train split")]


def has_dataset(prefix):
    return os.path.isfile(split_paths(prefix, "test")[0])


def _counts(v):
    return isinstance(v, dict) and all(
        k in SPLITS and isinstance(c, dict) and set(c) == {"ghost", "real"}
        and all(is_int(n) and n >= 0 for n in c.values()) for k, c in v.items())


def _input_files(v):
    """File names (older toolkits: paths), or provenance.file_record's dicts."""
    return is_names(v) or (isinstance(v, list) and all(
        isinstance(f, dict) and is_text(f.get("name")) and _tracks(f.get("bytes"))
        and is_text(f.get("sha256")) for f in v))


def _tracks(v):
    return is_int(v) and v >= 0


# What each field of the JSON must hold (null: not recorded, the default).
FIELD_TYPES = {
    "track": (is_text, "a string"),
    "features": (is_distinct_names, "a list of distinct branch names"),
    "label": (is_text, "a string"),
    "tree": (is_text, "a string"),
    "input_files": (_input_files, 'a list of file names or of {"name", "bytes", "sha256"}'),
    "seed": (is_int, "a whole number"),
    "fraction": (in_range(0, 1, open_lo=True), "a number in (0, 1]"),
    "tracks_read": (_tracks, "a whole number >= 0"),
    "tracks_dropped_nonfinite": (_tracks, "a whole number >= 0"),
    "dropped_per_feature": (lambda v: isinstance(v, dict) and all(map(_tracks, v.values())),
                            "an object {feature: tracks}"),
    "counts": (_counts, 'an object {split: {"ghost": n, "real": n}}'),
    "balance": (lambda v: v in ("subsample", "weights"), "'subsample' or 'weights'"),
    "ghost_fraction": (in_range(0, 1), "a number in [0, 1]"),
    "class_weights": (lambda v: isinstance(v, dict) and set(v) == {"ghost", "real"} and all(
        is_real(w) and w > 0 for w in v.values()), 'positive weights {"ghost": w, "real": w}'),
    "normalized": (lambda v: isinstance(v, bool), "true or false"),
    "normalization": (lambda v: isinstance(v, dict), "an object"),
    "standardization": (lambda v: isinstance(v, dict), "an object"),
    "spectators": (is_names, "a list of branch names"),
    "derived": (lambda v: isinstance(v, list), "a list of derived inputs"),
    "features_page": (is_text, "a string"),
}


@dataclass
class DatasetMeta:
    """What {prefix}_features.json records.  Every field has a default, so arrays
    written by hand (no JSON, or an older one) still load."""
    track: str = None
    features: list = None          # branch names, in column order
    label: str = None
    tree: str = None
    input_files: list = field(default_factory=list)  # provenance.file_record's
    seed: int = None
    fraction: float = None
    tracks_read: int = None
    tracks_dropped_nonfinite: int = None
    dropped_per_feature: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)   # split -> {"ghost": n, "real": n}
    balance: str = "subsample"                  # or "weights": every track, class weights
    ghost_fraction: float = None                # of the clean input: its natural mix
    class_weights: dict = None                  # {"ghost": w, "real": w} with "weights"
    normalized: bool = False                    # arrays already min-max normalized
    normalization: MinMax = None                # min-max: network 0, --inputs minmax
    standardization: Standardize = None         # network 1's default first layer
    spectators: list = field(default_factory=list)  # columns of the spectator arrays
    # derived.Derived inputs (fitted on the train split), computed by network 1's
    # first layer from the features; the scalings cover the features, then them
    derived: list = field(default_factory=list)
    features_page: str = None                   # make_dataset.py --plot's index.html

    @classmethod
    def from_dict(cls, d, path, width=None, arrays=None):
        """Checked where it is read: every field's type, the normalization and the
        standardization (one finite offset and one positive scale per feature, all
        float32 can hold), the balance and its class weights, and as many features
        as the arrays (the file `arrays`) have columns (`width`, when known)."""
        if not isinstance(d, dict):
            raise GhostError(f"{path} holds a JSON {type(d).__name__}, not an object")
        try:
            check_fields(d, FIELD_TYPES)
        except ValueError as e:
            raise GhostError(f"{path}: {e}")
        known = {f.name for f in fields(cls)}
        meta = cls(**{k: v for k, v in d.items() if k in known and v is not None})
        n = len(meta.features) if meta.features is not None else width
        if n != width and arrays:
            raise GhostError(f"{arrays} has {width} columns, but {path} lists {n} features")
        if n != width and width is not None:
            raise GhostError(f"{path} lists {n} features, but the arrays have {width} columns")
        what = "features" if meta.features else "columns"  # what the n entries are for
        if meta.derived:
            meta.derived = _derived(meta.derived, meta.features, path)
            n, what = (None if n is None else n + len(meta.derived)), "inputs"
        for key, kind in (("normalization", MinMax), ("standardization", Standardize)):
            scaling = getattr(meta, key)
            if scaling is None:
                continue
            problem = None if n is None else width_problem(scaling, n, what, key)
            if problem:
                raise GhostError(f"{path}: {problem}")
            try:
                setattr(meta, key, kind.from_dict(scaling))
            except ValueError as e:
                raise GhostError(f"{path}: {e}")
        if meta.balance == "weights" and meta.class_weights is None:
            raise GhostError(f"{path}: balance 'weights' needs positive class_weights "
                             "for 'ghost' and 'real'")
        if meta.balance == "subsample" and meta.class_weights is not None:
            raise GhostError(f"{path}: class_weights are recorded, but the balance is "
                             "'subsample' (classes balanced by subsampling, no weights)")
        return meta

    def mix(self, split="test"):
        """Which class mix a split holds, in words: accuracy and thresholds depend on it."""
        if self.balance == "weights":
            fraction = f" ({self.ghost_fraction:.1%} ghosts)" if self.ghost_fraction else ""
            return f"the input's natural mix{fraction}"
        return "a balanced 50/50 mix (subsampled)"

    def inputs(self):
        """The names of network 1's inputs: the features, then the derived inputs."""
        return list(self.features or []) + [d.name for d in self.derived]

    def to_dict(self):
        d = asdict(self)
        d["derived"] = [x.to_dict() for x in self.derived]
        for key in ("normalization", "standardization"):
            scaling = getattr(self, key)
            d[key] = scaling.to_dict() if scaling else None
        return d


def _derived(records, features, path):
    """The recorded derived inputs as derived.Derived, fitted (GhostError if not)."""
    if not features:
        raise GhostError(f"{path}: derived inputs are recorded without the features they read")
    try:
        derived = from_dicts(records, features)
    except ValueError as e:
        raise GhostError(f"{path}: {e}")
    if pending := [d.name for d in derived if d.needs_fit()]:
        raise GhostError(f"{path}: derived input(s) {', '.join(pending)} were never fitted")
    return derived


def load_meta(prefix, width=None, arrays=None):
    """The DatasetMeta of `{prefix}_features.json` (all defaults if there is none),
    checked against the arrays' `width` (of the file `arrays`) when given."""
    path = meta_path(prefix)
    if not os.path.isfile(path):
        return DatasetMeta()
    try:
        with open(path) as f:
            d = json.load(f)
    except (ValueError, OSError, RecursionError) as e:
        raise GhostError(f"cannot read {path}: {one_line(e)}")
    return DatasetMeta.from_dict(d, path, width, arrays)


KINDS = {"b": "booleans", "O": "Python objects", "U": "text", "S": "bytes",
         "c": "complex numbers", "V": "structured records", "M": "dates", "m": "durations"}


def read_array(path):
    """A .npy file of real numbers (any integer or float type) as float32; anything
    else (unreadable, truncated, bool, text, complex, records) is a one-line error."""
    try:
        array = np.load(path, allow_pickle=False)
    except MemoryError:
        raise
    except Exception as e:  # ValueError, EOFError, OSError, header syntax errors...
        raise GhostError(f"cannot read {path}: {one_line(e)}")
    if not isinstance(array, np.ndarray):  # an .npz archive under another name
        raise GhostError(f"{path} is not a .npy array but a {type(array).__name__}")
    if array.dtype.kind not in "fiu":
        raise GhostError(f"{path} holds {KINDS.get(array.dtype.kind, 'values')} "
                         f"({array.dtype}); expected real numbers (float32)")
    with np.errstate(over="ignore"):
        return array.astype(np.float32, copy=False)


def load_split(prefix, split):
    """One split's data [n, f] and labels [n, 1], float32, validated: shapes, real
    numbers, finite features, labels 0 or 1, and agreement with the features JSON
    (columns, counts, class weights, the [0, 1] range of normalized arrays, values
    the recorded standardization keeps finite)."""
    data_path, label_path = split_paths(prefix, split)
    for path in (data_path, label_path):
        if not os.path.isfile(path):
            raise GhostError(f"dataset file {path} is missing")
    data, labels = read_array(data_path), read_array(label_path)
    if data.ndim != 2 or data.shape[1] == 0:
        raise GhostError(f"{data_path} has shape {data.shape}; expected [tracks, features]")
    labels = labels.reshape(-1, 1) if labels.ndim == 1 else labels
    if labels.ndim != 2 or labels.shape != (len(data), 1):
        raise GhostError(f"{label_path} has shape {labels.shape}, "
                         f"but {data_path} holds {len(data)} tracks")
    odd = ~np.isin(labels, (0, 1))
    if odd.any():
        raise GhostError(f"{label_path} holds {int(odd.sum())} labels other than 0 and 1 "
                         f"(such as {labels[odd][0]:g})")
    meta = load_meta(prefix, data.shape[1], data_path)
    if len(data):
        lo, hi = data.min(axis=0), data.max(axis=0)  # NaN and inf show here
        _check_values(meta, prefix, data_path, data, lo, hi)
    _check_counts(meta, prefix, split, labels)
    return data, labels


def _column_names(meta, width):
    return meta.features or [f"column {j}" for j in range(width)]


def _check_values(meta, prefix, data_path, data, lo, hi):
    names = _column_names(meta, data.shape[1])
    bad = np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))
    if len(bad):
        counts = ", ".join(f"{int((~np.isfinite(data[:, j])).sum())} in {names[j]}"
                           for j in bad)
        raise GhostError(f"{data_path} holds non-finite values (NaN or inf, or beyond "
                         f"float32's range): {counts}")
    if meta.normalized:
        out = np.flatnonzero((lo < 0) | (hi > 1))
        if len(out):
            j = out[0]
            raise GhostError(f"{data_path} holds values outside [0, 1] ({names[j]} from "
                             f"{lo[j]:.4g} to {hi[j]:.4g}), but {meta_path(prefix)} records "
                             "the arrays as normalized")
    elif meta.standardization is not None:
        if meta.derived:  # the scalings cover the derived inputs too
            names = meta.inputs()
            extra = compute_all(meta.derived, data, meta.features)
            bad = [f"{int((~np.isfinite(extra[:, j])).sum())} in {d.name}"
                   for j, d in enumerate(meta.derived) if not np.isfinite(extra[:, j]).all()]
            if bad:
                raise GhostError(f"{data_path}: derived inputs are NaN or inf for tracks "
                                 f"({', '.join(bad)}): remake the dataset with make_dataset.py")
            lo, hi = np.r_[lo, extra.min(axis=0)], np.r_[hi, extra.max(axis=0)]
        try:
            meta.standardization.check_range(lo, hi, names, data_path)
        except ValueError as e:
            raise GhostError(f"{e}, as recorded in {meta_path(prefix)}")


def _check_counts(meta, prefix, split, labels):
    """The JSON's counts and class weights agree with the labels of `split`."""
    label_path = split_paths(prefix, split)[1]
    ghosts = int(labels.sum())
    reals = len(labels) - ghosts
    recorded = meta.counts.get(split)
    if recorded is not None and (recorded["ghost"], recorded["real"]) != (ghosts, reals):
        raise GhostError(f"{meta_path(prefix)}: counts of the {split} split say "
                         f"{recorded['ghost']} ghosts and {recorded['real']} real tracks, but "
                         f"{label_path} holds {ghosts} and {reals}")
    weights = meta.class_weights
    if split == "train" and weights is not None and ghosts and reals:
        expected = {"ghost": len(labels) / (2 * ghosts), "real": len(labels) / (2 * reals)}
        if any(not math.isclose(weights[k], expected[k], rel_tol=1e-4) for k in expected):
            raise GhostError(f"{meta_path(prefix)}: class_weights (ghost {weights['ghost']:.4g}"
                             f", real {weights['real']:.4g}) do not match the labels of "
                             f"{label_path}, which give ghost {expected['ghost']:.4g}, real "
                             f"{expected['real']:.4g}")


def load_dataset(prefix, splits=SPLITS):
    """{split: (data, labels)} for the given splits, each validated (load_split),
    with matching widths and, since a network learns from them, tracks of both
    classes in every split."""
    out = {s: load_split(prefix, s) for s in splits}
    widths = {s: d.shape[1] for s, (d, _) in out.items()}
    if len(set(widths.values())) > 1:
        raise GhostError(f"dataset splits disagree on the number of features: {widths}")
    for split, (_, labels) in out.items():
        label_path = split_paths(prefix, split)[1]
        ghosts = int(labels.sum())
        if len(labels) == 0:
            raise GhostError(f"{label_path}: the {split} split holds no tracks")
        if ghosts in (0, len(labels)):
            raise GhostError(f"{label_path}: the {split} split holds only "
                             f"{'real tracks' if ghosts == 0 else 'ghosts'}; training needs "
                             "both classes in every split")
    return out


def spectators_path(prefix, split):
    return f"{prefix}_{split}_spectators.npy"


def load_spectators(prefix, split, meta):
    """{name: float32 array} of a split's spectators ({} if the dataset has none):
    one row per track of the split, one column per name the JSON lists."""
    path = spectators_path(prefix, split)
    if not meta.spectators or not os.path.isfile(path):
        return {}
    values = read_array(path)
    try:
        tracks = len(np.load(split_paths(prefix, split)[1], mmap_mode="r"))
    except Exception:  # its own reader says what is wrong with it
        tracks = None
    k = len(meta.spectators)
    if values.ndim != 2 or values.shape[1] != k or tracks not in (None, len(values)):
        raise GhostError(f"{path} has shape {values.shape}, but {meta_path(prefix)} lists {k} "
                         f"spectators ({', '.join(meta.spectators)}) for "
                         f"{'?' if tracks is None else tracks} tracks: expected "
                         f"[{'tracks' if tracks is None else tracks}, {k}]")
    return {name: values[:, j] for j, name in enumerate(meta.spectators)}


def write_dataset(out, prefix, splits, meta, spectators=None):
    """The six arrays, the JSON and, if given, the spectator arrays ({split: [n, k]})
    through `out` (outputs.AtomicOutputs)."""
    for split, (data, labels) in splits.items():
        data_path, label_path = split_paths(prefix, split)
        out.save_npy(data_path, data)
        out.save_npy(label_path, labels)
    write_spectators(out, prefix, spectators or {})
    out.save_json(meta_path(prefix), meta.to_dict())


def write_spectators(out, prefix, spectators):
    """The spectator arrays {split: [n, k]} through `out` (outputs.AtomicOutputs)."""
    for split, values in spectators.items():
        out.save_npy(spectators_path(prefix, split), values)
