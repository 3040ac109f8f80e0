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
import os
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from features import MinMax, Standardize
from utils import GhostError, one_line

SPLITS = ("train", "valid", "test")


def split_paths(prefix, split):
    return f"{prefix}_{split}_data.npy", f"{prefix}_{split}_labels.npy"


def meta_path(prefix):
    return f"{prefix}_features.json"


def has_dataset(prefix):
    return os.path.isfile(split_paths(prefix, "test")[0])


@dataclass
class DatasetMeta:
    """What {prefix}_features.json records.  Every field has a default, so arrays
    written by hand (no JSON, or an older one) still load."""
    track: str = None
    features: list = None          # branch names, in column order
    label: str = None
    tree: str = None
    input_files: list = field(default_factory=list)
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

    @classmethod
    def from_dict(cls, d, path, width=None):
        """Checked where models are built from it: the feature names and the
        normalization, one finite offset and one positive scale per feature, and
        as many features as the arrays have columns (`width`, when known)."""
        if not isinstance(d, dict):
            raise GhostError(f"{path} holds a JSON {type(d).__name__}, not an object")
        known = {f.name for f in fields(cls)}
        meta = cls(**{k: v for k, v in d.items() if k in known})
        names = meta.features
        if names is not None and not (isinstance(names, list) and names
                                      and all(isinstance(n, str) for n in names)):
            raise GhostError(f"{path}: 'features' must be a list of branch names")
        if names is not None and width is not None and len(names) != width:
            raise GhostError(f"{path} lists {len(names)} features, but the arrays have "
                             f"{width} columns")
        norm = meta.normalization
        if norm is not None:
            for key in ("offsets", "scales"):
                values = norm.get(key) if isinstance(norm, dict) else None
                if not isinstance(values, list):
                    continue
                if names is not None and len(values) != len(names):
                    raise GhostError(f"{path}: the normalization has {len(values)} {key} for "
                                     f"{len(names)} features")
                if width is not None and len(values) != width:
                    raise GhostError(f"{path}: the normalization has {len(values)} {key}, "
                                     f"but the arrays have {width} columns")
            try:
                meta.normalization = MinMax.from_dict(norm)
            except ValueError as e:
                raise GhostError(f"{path}: {e}")
        if meta.standardization is not None:
            try:
                meta.standardization = Standardize.from_dict(meta.standardization)
            except ValueError as e:
                raise GhostError(f"{path}: {e}")
            if names is not None and len(meta.standardization) != len(names):
                raise GhostError(f"{path}: the standardization has "
                                 f"{len(meta.standardization)} entries for {len(names)} features")
        if meta.balance not in ("subsample", "weights"):
            raise GhostError(f"{path}: balance must be 'subsample' or 'weights'")
        if meta.balance == "weights" and not (
                isinstance(meta.class_weights, dict)
                and all(isinstance(meta.class_weights.get(k), (int, float)) and
                        meta.class_weights[k] > 0 for k in ("ghost", "real"))):
            raise GhostError(f"{path}: balance 'weights' needs positive class_weights "
                             "for 'ghost' and 'real'")
        meta.normalized = bool(meta.normalized)
        return meta

    def mix(self, split="test"):
        """Which class mix a split holds, in words: accuracy and thresholds depend on it."""
        if self.balance == "weights":
            fraction = f" ({self.ghost_fraction:.1%} ghosts)" if self.ghost_fraction else ""
            return f"the input's natural mix{fraction}"
        return "a balanced 50/50 mix (subsampled)"

    def to_dict(self):
        d = asdict(self)
        for key in ("normalization", "standardization"):
            scaling = getattr(self, key)
            d[key] = scaling.to_dict() if scaling else None
        return d


def load_meta(prefix, width=None):
    """The DatasetMeta of `{prefix}_features.json` (all defaults if there is none),
    checked against the arrays' `width` when given."""
    path = meta_path(prefix)
    if not os.path.isfile(path):
        return DatasetMeta()
    try:
        with open(path) as f:
            d = json.load(f)
    except (ValueError, OSError) as e:
        raise GhostError(f"cannot read {path}: {one_line(e)}")
    return DatasetMeta.from_dict(d, path, width)


def load_split(prefix, split):
    """One split's data [n, f] float32 and labels [n, 1] float32, validated."""
    data_path, label_path = split_paths(prefix, split)
    for path in (data_path, label_path):
        if not os.path.isfile(path):
            raise GhostError(f"dataset file {path} is missing")
    try:
        data = np.load(data_path, allow_pickle=False)
        labels = np.load(label_path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise GhostError(f"cannot read {data_path} / {label_path}: {one_line(e)}")
    if data.ndim != 2:
        raise GhostError(f"{data_path} has shape {data.shape}; expected [tracks, features]")
    labels = labels.reshape(-1, 1) if labels.ndim == 1 else labels
    if labels.ndim != 2 or labels.shape != (len(data), 1):
        raise GhostError(f"{label_path} has shape {labels.shape}, "
                         f"but {data_path} holds {len(data)} tracks")
    if not np.isin(labels, (0, 1)).all():
        raise GhostError(f"{label_path} holds labels other than 0 and 1")
    if not np.isfinite(data).all():
        raise GhostError(f"{data_path} holds non-finite values (NaN or inf)")
    return data.astype(np.float32, copy=False), labels.astype(np.float32, copy=False)


def load_dataset(prefix, splits=SPLITS):
    """{split: (data, labels)} for the given splits, with matching widths."""
    out = {s: load_split(prefix, s) for s in splits}
    widths = {s: d.shape[1] for s, (d, _) in out.items()}
    if len(set(widths.values())) > 1:
        raise GhostError(f"dataset splits disagree on the number of features: {widths}")
    return out


def spectators_path(prefix, split):
    return f"{prefix}_{split}_spectators.npy"


def load_spectators(prefix, split, meta):
    """{name: float32 array} of a split's spectators ({} if the dataset has none)."""
    path = spectators_path(prefix, split)
    if not meta.spectators or not os.path.isfile(path):
        return {}
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise GhostError(f"cannot read {path}: {one_line(e)}")
    if values.ndim != 2 or values.shape[1] != len(meta.spectators):
        raise GhostError(f"{path} has shape {values.shape}; expected [tracks, "
                         f"{len(meta.spectators)}]")
    return {name: values[:, j] for j, name in enumerate(meta.spectators)}


def write_dataset(out, prefix, splits, meta, spectators=None):
    """The six arrays, the JSON and, if given, the spectator arrays ({split: [n, k]})
    through `out` (outputs.AtomicOutputs)."""
    for split, (data, labels) in splits.items():
        data_path, label_path = split_paths(prefix, split)
        out.save_npy(data_path, data)
        out.save_npy(label_path, labels)
        if spectators:
            out.save_npy(spectators_path(prefix, split), spectators[split])
    out.save_json(meta_path(prefix), meta.to_dict())
