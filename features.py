"""What a track type means for the toolkit: its ROOT branches, label, tree, and how
the features are scaled before a network sees them.

The one place these are defined; make_dataset.py, training.py and inference.py all
ask this module.  Feature lists are the original study's (see docs in README.md).
"""
import math
from dataclasses import dataclass

import numpy as np

F32_MAX = float(np.finfo(np.float32).max)  # what a scaled feature must stay within

# Default location of the tracks in an Allen kalman_validator file.
DEFAULT_TREE = "kalman_validator/kalman_ip_tree"

# Truth label: 1.0 for a ghost, 0.0 for a real track.
LABEL = "ghost"

# Track type -> feature branches, in column order.
TRACK_FEATURES = {
    "forward": [
        "best_pt", "chi2", "first_qop", "n_scifi", "n_velo", "ndof",
        "pr_forward_quality", "qop",
    ],
    "matching": [
        "best_pt", "chi2", "first_qop", "n_scifi", "n_velo", "ndof",
        "pr_match_chi2", "pr_match_dtx", "pr_match_dty", "pr_match_dx",
        "pr_match_dy", "pr_seed_chi2", "qop",
    ],
}
TRACK_TYPES = tuple(TRACK_FEATURES)

# Fixed min-max bounds used instead of the training split's own min/max.
# Values outside are clipped, so the heavy tails do not squash the bulk.
FIXED_BOUNDS = {
    "best_pt": (0.0, 1.0e4),
    "chi2": (0.0, 400.0),
}

# Derived inputs (derived.py: `name := expression` of the track type's features), the
# quantities physicists give TMVA as expressions: network 1's first layer computes
# them from the raw branches, beside them.  make_dataset.py --derived adds more,
# --no-derived drops these.  From the physics of a track:
#   chi2_ndof  the fit quality per degree of freedom (chi2 grows with ndof)
#   dqop       the relative change of q/p from pattern recognition to the Kalman fit
#   sin_theta  pT / p, the polar angle (best_pt = p sin(theta))
#   kick       matching: the slope change in the magnet less what q/p predicts, the
#              kick's slope fitted on the real tracks of the training split
#   log_p      matching: log of the momentum (MeV), whose spectrum is log-normal
# Chosen by measurement (screening on make_sample.py's 400,000-track samples, seed 11:
# a fixed 2 x 128 network, 8 epochs, seeds 1-3, test split; AUC / ghost rejection at
# 99 % efficiency, means): without derived inputs matching 0.9531 / 0.672, forward
# 0.9067 / 0.402; with these matching 0.9577 / 0.696, forward 0.9174 / 0.436 (limit
# 0.9603 / 0.709 and 0.9190 / 0.443).  Leaving one out (seed 1): dqop gives most
# (+0.004 / +0.010 AUC, +0.018 / +0.030 rejection), sin_theta +0.001 AUC and +0.007 /
# +0.003; over seeds 1-3 kick +0.0004 AUC (matching), chi2_ndof +0.0025 rejection on
# forward (neutral on matching, kept as the standard fit quality), log_p +0.0025
# rejection on matching (neutral on forward: left out there).  Measured, not taken
# (none clearly better; the pulls hard-code the generator's resolutions): the kick and
# pr_match_dx over their resolution, logit(sin_theta), first_qop / qop - 1 (in place
# of dqop: worse, without dqop's log1p), (chi2 - ndof) / sqrt(ndof).
DERIVED = {
    "forward": ["chi2_ndof := chi2 / ndof", "dqop := qop / first_qop - 1",
                "sin_theta := best_pt * abs(qop)"],
    "matching": ["chi2_ndof := chi2 / ndof", "dqop := qop / first_qop - 1",
                 "sin_theta := best_pt * abs(qop)", "kick := residual(pr_match_dtx, qop)",
                 "log_p := -log(abs(qop))"],
}

# Features whose distribution has a heavy tail: plotted on a log scale, and
# transformed by a signed log1p before they are standardized (Standardize).
HEAVY_TAILED = {"best_pt", "chi2", "pr_seed_chi2", "chi2_ndof", "dqop"}
TRANSFORMS = ("identity", "log")  # "log": sign(x) * log(1 + |x|)

# Units for axis labels: Allen's files hold MeV and mm (qop: charge over momentum).
UNITS = {"best_pt": "MeV", "qop": "1/MeV", "first_qop": "1/MeV", "pr_match_dx": "mm",
         "pr_match_dy": "mm", "pr_match_dtx": "slope", "pr_match_dty": "slope",
         "n_velo": "hits", "n_scifi": "hits", "ndof": "degrees of freedom"}


# Shown in friendlier units on plots only (factor, unit): q/p in 1/GeV, not 1e-4/MeV.
DISPLAY_UNITS = {"qop": (1e3, "1/GeV"), "first_qop": (1e3, "1/GeV")}


def axis_label(name):
    unit = DISPLAY_UNITS.get(name, (1, UNITS.get(name)))[1]
    return f"{name} [{unit}]" if unit else name


def display_values(name, x):
    """x in the unit axis_label(name) names (the stored values are untouched)."""
    factor = DISPLAY_UNITS.get(name, (1, None))[0]
    return x * np.float32(factor) if factor != 1 else x

# Simulation truth, never a feature.  LIMIT: the exact log-likelihood ratio that
# make_sample.py's generator knows for each of its tracks, the best any classifier
# can do; inference reports the gap to it where the input has it.
LIMIT = "truth_llr"
TRUTH = ("ghost", "mcp_p", "mcp_x", "mcp_y", "mcp_z", LIMIT)


def features_for(track):
    """Feature branch names of a track type; a clear error for an unknown one."""
    if track not in TRACK_FEATURES:
        raise ValueError(
            f"unknown track type {track!r}: valid types are {', '.join(TRACK_TYPES)}")
    return list(TRACK_FEATURES[track])


def transform_of(name):
    """The transform a feature gets before standardization."""
    return "log" if name in HEAVY_TAILED else "identity"


def own_branches(track):
    """The features only this track type uses (its pattern-recognition branches)."""
    others = {f for t, names in TRACK_FEATURES.items() if t != track for f in names}
    return [f for f in features_for(track) if f not in others]


def other_track_branches(track):
    """The branches that tell the other track types apart from `track`."""
    return [f for t in TRACK_TYPES if t != track for f in own_branches(t)]


def unfilled(columns, names):
    """The features with no finite non-zero value: an Allen file written for another
    track type leaves that type's pr_* branches at 0 for every track."""
    return [n for n in names
            if not np.any((columns[n] != 0) & np.isfinite(columns[n]))]


def track_mismatch(track, zero, others, fix="use --track {}"):
    """One sentence on features that are 0 for every track; `others`: the branches of
    the other track types read from the same input ({name: array}), to say which
    type the file looks like, and `fix` what to do then."""
    filled = [t for t in TRACK_TYPES if t != track and own_branches(t)
              and all(b in others for b in own_branches(t))
              and not unfilled(others, own_branches(t))]
    looks = (f"; it looks like {' or '.join(filled)} tracks "
             f"({', '.join(b for t in filled for b in own_branches(t))} filled): "
             f"{fix.format(filled[0])}" if filled else "")
    return (f"{track + ' ' if track else ''}features {', '.join(zero)} are 0 for every "
            f"track (not filled in this input){looks}")


@dataclass(frozen=True)
class MinMax:
    """The original study's input scaling, x -> clip((x - offset) / scale, 0, 1) per
    feature: FIXED_BOUNDS where given, else the training split's own min and max.

    One arithmetic wherever it runs: numpy (make_dataset.py --normalize, inference)
    and the model's first layer (models.MinMaxNorm) both compute, in float32,
    (x - offset) * inv_scale with the inv_scale of float32_arrays()."""
    offsets: tuple
    scales: tuple

    def __post_init__(self):
        if len(self.offsets) != len(self.scales):
            raise ValueError(f"{len(self.offsets)} offsets but {len(self.scales)} scales")
        for key in ("offsets", "scales"):
            if not all(_is_number(v) for v in getattr(self, key)):
                raise ValueError(f"normalization {key} must be finite numbers")
        if any(v <= 0 for v in self.scales):
            raise ValueError("normalization scales must be positive")
        _check_float32(self.offsets, self.scales, "normalization offsets and scales")

    def __len__(self):
        return len(self.offsets)

    @classmethod
    def fit(cls, train, names):
        """From the training split only (never validation or test statistics),
        [tracks, names] or its columns (_column).  The span is taken in float64; a
        feature whose span or its inverse float32 cannot hold (values near
        float32's maximum: min-max scaling would turn tracks into NaN) is refused
        by name (ValueError)."""
        offsets, scales = [], []
        for i, name in enumerate(names):
            if name in FIXED_BOUNDS:
                lo, hi = FIXED_BOUNDS[name]
            else:
                column = _column(train, i)
                lo, hi = float(column.min()), float(column.max())
            offsets.append(float(lo))
            scales.append(float(hi) - float(lo) if hi > lo else 1.0)
        bad = _not_float32(offsets, scales)
        if bad:
            raise ValueError("; ".join(
                f"feature {names[i]} spans [{offsets[i]:.4g}, {offsets[i] + scales[i]:.4g}] "
                f"on the train split, a range float32 cannot scale (its largest number is "
                f"{F32_MAX:.4g})" for i in bad) + ": min-max scaling would turn tracks into NaN")
        return cls(tuple(offsets), tuple(scales))

    @classmethod
    def from_dict(cls, d):
        """From {"offsets": [...], "scales": [...]}; ValueError if malformed."""
        if not isinstance(d, dict) or not all(
                isinstance(d.get(k), (list, tuple)) for k in ("offsets", "scales")):
            raise ValueError("the normalization must hold lists 'offsets' and 'scales'")
        return cls(tuple(d["offsets"]), tuple(d["scales"]))

    def to_dict(self):
        return {"offsets": list(self.offsets), "scales": list(self.scales)}

    def float32_arrays(self):
        """(offsets, inv_scales) as float32 arrays: the constants of the arithmetic."""
        return _affine_float32(self.offsets, self.scales)

    def apply(self, data):
        """float32 [n, features] in [0, 1]."""
        offsets, inv_scales = self.float32_arrays()
        out = (np.asarray(data, dtype=np.float32) - offsets) * inv_scales
        return np.clip(out, 0.0, 1.0, out=out)


def _affine_float32(shifts, scales):
    """(shift, 1 / scale) in float32, the reciprocal taken in float32 as torch does:
    x -> (x - shift) * inv_scale gives the same bits in numpy and in a model layer."""
    with np.errstate(over="ignore", divide="ignore"):
        return (np.asarray(shifts, dtype=np.float64).astype(np.float32),
                (np.float32(1.0) / np.asarray(scales, dtype=np.float64).astype(np.float32))
                .astype(np.float32))


def _not_float32(shifts, scales):
    """The features whose shift, scale or inverse scale float32 cannot hold (a
    finite shift, a finite positive inverse): scaling them would give inf or NaN."""
    shift, inv = _affine_float32(shifts, scales)
    with np.errstate(over="ignore"):
        scale = np.asarray(scales, dtype=np.float64).astype(np.float32)
    ok = np.isfinite(shift) & np.isfinite(scale) & np.isfinite(inv) & (inv > 0)
    return [int(i) for i in np.flatnonzero(~ok)]


def _check_float32(shifts, scales, what):
    bad = _not_float32(shifts, scales)
    if bad:
        raise ValueError(f"{what} of feature(s) {', '.join(str(i) for i in bad)} "
                         f"(counted from 0) are not representable in float32")


def _column(train, i):
    """Column i of the training split: `train` is [tracks, features], or a
    sequence of its columns (derived.Extended: the derived inputs' values computed
    one column at a time, never the extended split whole)."""
    return train[:, i] if isinstance(train, np.ndarray) else train[i]


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def signed_log1p(x, out=None):
    """sign(x) * log(1 + |x|): heavy tails compressed, sign and 0 kept (numpy);
    `out`: the array that takes the result (x itself: in place)."""
    sign = np.sign(x)
    out = np.log1p(np.abs(x, out=out), out=out)
    return np.multiply(sign, out, out=out)


@dataclass(frozen=True)
class Standardize:
    """The default input scaling of network 1: each feature through its transform
    (transform_of: a signed log1p for heavy tails, else identity), then
    standardized, (t(x) - mean) / std, with mean and std of the training split after
    the transform.  Unlike MinMax, it keeps the information in the heavy tails.

    One arithmetic wherever it runs: numpy (inference) and the model's first layer
    (models.StandardizeLayer) compute (t(x) - mean) * inv_std in float32 with the
    constants of float32_arrays()."""
    transforms: tuple   # per feature, from TRANSFORMS
    means: tuple
    stds: tuple

    def __post_init__(self):
        if not len(self.transforms) == len(self.means) == len(self.stds):
            raise ValueError("standardization: transforms, means and stds differ in length")
        if not all(t in TRANSFORMS for t in self.transforms):
            raise ValueError(f"standardization transforms must be one of {TRANSFORMS}")
        if not all(_is_number(v) for v in self.means + self.stds) or min(self.stds) <= 0:
            raise ValueError("standardization means must be finite and stds positive")
        _check_float32(self.means, self.stds, "standardization means and stds")

    def __len__(self):
        return len(self.means)

    @classmethod
    def fit(cls, train, names):
        """Means and standard deviations of the transformed training split
        ([tracks, names] or its columns, _column), column by column in float64 (one
        column's copy at a time, transformed in place, not the whole split's).  A
        feature whose constants float32 cannot hold, or whose training values would
        overflow float32 once standardized, is refused by name (ValueError)."""
        transforms = tuple(transform_of(n) for n in names)
        means, stds, lo, hi = [], [], [], []
        for i, transform in enumerate(transforms):
            column = _column(train, i)
            lo.append(column.min())
            hi.append(column.max())
            t = np.array(column, dtype=np.float64)
            if transform == "log":
                signed_log1p(t, out=t)
            means.append(float(t.mean()))
            stds.append(float(t.std()))
        stds = [s if s > 0 else 1.0 for s in stds]
        bad = _not_float32(means, stds)
        if bad:
            raise ValueError("; ".join(f"feature {names[i]} has a spread of {stds[i]:.4g} on "
                                       "the train split, too small for float32 to standardize"
                                       for i in bad))
        scaling = cls(transforms, tuple(means), tuple(stds))
        scaling.check_range(np.array(lo), np.array(hi), names, "the train split")
        return scaling

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or not all(
                isinstance(d.get(k), (list, tuple)) for k in ("transforms", "means", "stds")):
            raise ValueError("the standardization must hold lists 'transforms', 'means' "
                             "and 'stds'")
        return cls(tuple(d["transforms"]), tuple(d["means"]), tuple(d["stds"]))

    def to_dict(self):
        return {"transforms": list(self.transforms), "means": list(self.means),
                "stds": list(self.stds)}

    def log_mask(self):
        return np.array([t == "log" for t in self.transforms])

    def float32_arrays(self):
        """(means, inv_stds) as float32 arrays: the constants of the arithmetic."""
        return _affine_float32(self.means, self.stds)

    def check_range(self, lo, hi, names, where):
        """ValueError naming the features whose values in [lo, hi] (per feature)
        overflow float32 once standardized, as the model's first layer computes."""
        with np.errstate(all="ignore"):
            extremes = self.apply(np.array([lo, hi], dtype=np.float32))
        bad = np.flatnonzero(~np.isfinite(extremes).all(axis=0))
        if len(bad):
            raise ValueError("; ".join(
                f"feature {names[i]} reaches {max(abs(lo[i]), abs(hi[i])):.4g} in {where}, "
                f"which overflows float32 once standardized (mean {self.means[i]:.4g}, std "
                f"{self.stds[i]:.4g})" for i in bad))

    def apply(self, data):
        """float32 [n, features], standardized."""
        means, inv_stds = self.float32_arrays()
        t = _transform(np.asarray(data, dtype=np.float32), self.transforms)
        return ((t - means) * inv_stds).astype(np.float32, copy=False)


def overflowing(data, finite, scaling, extend=None, chunk=1 << 18):
    """The tracks with every feature finite that `scaling` (the model's input
    transform, features.MinMax or Standardize, computed in float32 as the model
    does; None: none) takes beyond float32's range: bool [n].  `extend`: rows of
    data -> the inputs the scaling covers (the model's derived inputs appended,
    architecture.ModelConfig.extend), applied a chunk of rows at a time.  The
    transforms are monotone, so only columns whose extremes overflow can; in those,
    only values beyond half of what their scale allows are candidates, and only the
    candidates' rows are transformed."""
    grow = extend or np.asarray
    out = np.zeros(len(data), dtype=bool)
    if scaling is None or not len(data):
        return out
    top = np.finfo(np.float32).max
    with np.errstate(all="ignore"):
        edges = scaling.apply(np.array([[top], [-top]], np.float32).repeat(len(scaling), 1))
        risky = np.flatnonzero(~np.isfinite(edges).all(axis=0))
        if not risky.size:
            return out
        shift, inv = scaling.float32_arrays()
        logs = scaling.log_mask() if hasattr(scaling, "log_mask") else np.zeros(len(inv), bool)
        bound = np.where(logs, 0, top / 2 / np.maximum(inv, 1) - np.abs(shift))[risky]
        for lo in range(0, len(data), chunk):
            x = grow(data[lo:lo + chunk])[:, risky]
            out[lo:lo + chunk] = (np.abs(x) > bound).any(axis=1)
        rows = np.flatnonzero(out & finite)
        out[:] = False
        out[rows] = ~np.isfinite(scaling.apply(grow(data[rows]))[:, risky]).all(axis=1)
    return out


def width_problem(record, n, what, key):
    """The one check that a scaling fits its features: the first list of `record`
    (a MinMax or Standardize as plain data, {"offsets": [...], ...}) that does not
    hold n entries, one per feature (`what` names the n: features, columns,
    inputs), in words; None where every list does.  `key` names the scaling."""
    for part, values in record.items():
        if part != "transforms" and isinstance(values, list) and len(values) != n:
            return (f"the {key}'s {part} do not match the {what} ({len(values)} {part} "
                    f"for {n} {what})")
    return None


def _transform(data, transforms):
    out = np.array(data, copy=True)
    logs = [i for i, t in enumerate(transforms) if t == "log"]
    out[:, logs] = signed_log1p(out[:, logs])
    return out
