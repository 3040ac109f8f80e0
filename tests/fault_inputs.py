"""The fault corpus' inputs (test_faults.py runs them): corrupted ROOT files and
dataset files (arrays, the features JSON, spectators), each case a builder
build(base, workdir) -> the path to give the script, and what the error must name."""
import json
import os
import shutil

import numpy as np

from faultlib import flipped, truncated
from features import DEFAULT_TREE, DERIVED, LABEL, features_for
from helpers import write_tracks

NAMES = features_for("matching")
N_INPUTS = len(NAMES) + len(DERIVED["matching"])  # the corpus datasets: the default derived inputs
QOP = NAMES.index("qop")


# ---------------------------------------------------------------------------
# ROOT inputs
# ---------------------------------------------------------------------------

def _root_bytes(fn):
    return lambda b, w: fn(b.root, f"{w}/bad.root")


def _root_columns(change, tree=DEFAULT_TREE):
    def build(b, w):
        columns = {k: v.copy() for k, v in b.columns.items()}
        change(columns)
        return write_tracks(f"{w}/bad.root", columns, tree)
    return build


def _set(name, value, rows=slice(None)):
    def change(columns):
        columns[name][rows] = value
    return change


def _vector_branch(b, w):
    import ROOT
    ROOT.gInterpreter.Declare("std::vector<float> fault_hits() { return {1.f, 2.f}; }")
    df = ROOT.RDataFrame(200)
    for name in NAMES + [LABEL]:
        df = df.Define(name, "float(rdfentry_ % 2)")
    df.Redefine("chi2", "fault_hits()").Snapshot(DEFAULT_TREE, f"{w}/bad.root")
    return f"{w}/bad.root"


def _text(b, w):
    with open(f"{w}/bad.root", "w") as f:
        f.write("run,track,ghost\n1,2,0\n")
    return f"{w}/bad.root"


def _qop_huge(columns):
    columns["qop"][:100] = 3e38
    columns["qop"][100:200] = -3e38


ROOT_CASES = {  # name: (build(b, w) -> path, needles, make_dataset's extra options)
    "empty_file": (_root_bytes(lambda s, d: truncated(s, d, 0)), [], []),
    "truncated_100": (_root_bytes(lambda s, d: truncated(s, d, 100)), [], []),
    "truncated_quarter": (_root_bytes(lambda s, d: truncated(s, d, os.path.getsize(s) // 4)),
                          [], []),
    "truncated_half": (_root_bytes(lambda s, d: truncated(s, d, os.path.getsize(s) // 2)),
                       [], []),
    "truncated_end": (_root_bytes(lambda s, d: truncated(s, d, -300)), [], []),
    "flipped_magic": (_root_bytes(lambda s, d: flipped(s, d, 0, 4)), [], []),
    "flipped_header": (_root_bytes(lambda s, d: flipped(s, d, 8, 40)), [], []),
    "flipped_keys_at_end": (_root_bytes(lambda s, d: flipped(s, d, -400, 200)), [], []),
    "text_file": (_text, [], []),
    "other_tree": (_root_columns(lambda c: None, tree="other/tree"), ["no tree"], []),
    "missing_branch": (_root_columns(lambda c: c.pop("pr_seed_chi2")), ["pr_seed_chi2"], []),
    "missing_label": (_root_columns(lambda c: c.pop(LABEL)), [LABEL], []),
    "vector_branch": (_vector_branch, ["chi2"], []),
    "empty_tree": (_root_columns(lambda c: [c.update({k: v[:0]}) for k, v in c.items()]),
                   [], []),
    "feature_nan_everywhere": (_root_columns(_set("chi2", np.nan)), [], []),
    "feature_inf_everywhere": (_root_columns(_set("qop", np.inf)), [], []),
    "labels_2": (_root_columns(_set(LABEL, 2.0, slice(0, 10))), [LABEL], []),
    "labels_minus_1": (_root_columns(_set(LABEL, -1.0, slice(0, 10))), [LABEL], []),
    "labels_half": (_root_columns(_set(LABEL, 0.5, slice(0, 10))), [LABEL], []),
    "one_class": (_root_columns(_set(LABEL, 0.0)), [], []),
    "qop_near_float32_max_normalize": (_root_columns(_qop_huge), ["qop"], ["--normalize"]),
}
# what inference.py must refuse too (a one-class or all-NaN input is scored: exit 0)
ROOT_INFERENCE = ["empty_file", "truncated_100", "truncated_quarter", "truncated_half",
                  "truncated_end", "flipped_magic", "flipped_header", "flipped_keys_at_end",
                  "text_file", "other_tree", "missing_branch", "vector_branch", "empty_tree",
                  "labels_2", "labels_minus_1", "labels_half"]


# ---------------------------------------------------------------------------
# datasets: arrays, the features JSON, spectators
# ---------------------------------------------------------------------------

DATASET_FILES = [f"_{s}_{k}.npy" for s in ("train", "valid", "test")
                 for k in ("data", "labels", "spectators")] + ["_features.json"]


def copy_dataset(src, w):
    prefix = f"{w}/ds"
    for suffix in DATASET_FILES:
        if os.path.exists(src + suffix):
            shutil.copyfile(src + suffix, prefix + suffix)
    return prefix


def _load(path):
    return np.load(path, allow_pickle=False)


def _array(suffix, change, source="raw", fix_counts=False):
    """The dataset with `{prefix}{suffix}` replaced by change(array) (an array, or
    bytes written as they are)."""
    def build(b, w):
        prefix = copy_dataset(getattr(b, source), w)
        path = prefix + suffix
        new = change(_load(path))
        if isinstance(new, bytes):
            with open(path, "wb") as f:
                f.write(new)
        else:
            os.remove(path)
            np.save(path, new, allow_pickle=True)
        if fix_counts:  # the JSON agrees with the new arrays: only the fault remains
            _edit_json(prefix, lambda m: m.update(counts=_counts(prefix)))
        return prefix
    return build


def _bytes_of(suffix, fn):
    def build(b, w):
        prefix = copy_dataset(b.raw, w)
        fn(prefix + suffix, prefix + suffix)
        return prefix
    return build


def _counts(prefix):
    counts = {}
    for split in ("train", "valid", "test"):
        y = _load(f"{prefix}_{split}_labels.npy").ravel()
        counts[split] = {"ghost": int((y == 1).sum()), "real": int((y == 0).sum())}
    return counts


def _edit_json(prefix, change):
    path = prefix + "_features.json"
    with open(path) as f:
        meta = json.load(f)
    meta = change(meta) or meta
    with open(path, "w") as f:
        json.dump(meta, f)


def _labels(value, rows=slice(0, 5)):
    def change(y):
        y = y.copy()
        y[rows] = value
        return y
    return change


def _data(value, rows=slice(0, 5), column=3):
    def change(x):
        x = x.copy()
        x[rows, column] = value
        return x
    return change


def _qop_outside(x):
    x = x.copy()
    x[:100, QOP], x[100:200, QOP] = 3e38, -3e38
    return x


def _structured(x):
    out = np.zeros(len(x), dtype=[("a", "f4"), ("b", "f4")])
    out["a"] = x[:, 0]
    return out


DATA, LAB, SPEC = "_train_data.npy", "_train_labels.npy", \
    "_test_spectators.npy"
ARRAY_CASES = {  # name: (build(b, w) -> prefix, the file named, needles)
    "data_empty_file": (_array(DATA, lambda x: b""), DATA, []),
    "data_truncated_header": (_bytes_of(DATA, lambda s, d: truncated(s, d, 30)), DATA, []),
    "data_truncated_half": (_bytes_of(DATA, lambda s, d: truncated(s, d, os.path.getsize(s)
                                                                   // 2)), DATA, []),
    "data_truncated_4_bytes": (_bytes_of(DATA, lambda s, d: truncated(s, d, -4)), DATA, []),
    "labels_truncated_half": (_bytes_of(LAB, lambda s, d: truncated(s, d, os.path.getsize(s)
                                                                    // 2)), LAB, []),
    "data_flipped_magic": (_bytes_of(DATA, lambda s, d: flipped(s, d, 0, 6)), DATA, []),
    "data_flipped_header": (_bytes_of(DATA, lambda s, d: flipped(s, d, 20, 12)), DATA, []),
    "data_text_file": (_array(DATA, lambda x: b"0.1,0.2\n0.3,0.4\n"), DATA, []),
    "data_bool": (_array(DATA, lambda x: x > 0), DATA, ["bool"]),
    "data_object": (_array(DATA, lambda x: x.astype(object)), DATA, []),
    "data_str": (_array(DATA, lambda x: x.astype(str)), DATA, []),
    "data_complex": (_array(DATA, lambda x: x.astype(np.complex64)), DATA, ["complex"]),
    "data_structured": (_array(DATA, _structured), DATA, []),
    "data_1d": (_array(DATA, lambda x: x[:, 0]), DATA, ["shape"]),
    "data_3d": (_array(DATA, lambda x: x[:, :, None]), DATA, ["shape"]),
    "data_12_columns": (_array(DATA, lambda x: x[:, :12]), DATA, ["12"]),
    "labels_2_columns": (_array(LAB, lambda y: np.hstack([y, y])), LAB, ["shape"]),
    "labels_one_short": (_array(LAB, lambda y: y[:-1]), LAB, ["shape"]),
    "labels_bool": (_array(LAB, lambda y: y > 0.5), LAB, ["bool"]),
    "data_nan": (_array(DATA, _data(np.nan)), DATA, ["non-finite"]),
    "data_inf": (_array(DATA, _data(np.inf)), DATA, ["non-finite"]),
    "data_minus_inf": (_array(DATA, _data(-np.inf)), DATA, ["non-finite"]),
    "labels_nan": (_array(LAB, _labels(np.nan)), LAB, []),
    "labels_2": (_array(LAB, _labels(2.0)), LAB, ["0 and 1"]),
    "labels_minus_1": (_array(LAB, _labels(-1.0)), LAB, ["0 and 1"]),
    "labels_half": (_array(LAB, _labels(0.5)), LAB, ["0 and 1"]),
    "raw_qop_near_float32_max": (_array(DATA, _qop_outside), DATA, ["qop"]),
    "labels_missing": (_bytes_of(LAB, lambda s, d: os.remove(d)), LAB, ["missing"]),
    "spectators_empty_file": (_array(SPEC, lambda s: b""), SPEC, []),
    "spectators_truncated": (_bytes_of(SPEC, lambda s, d: truncated(s, d, 100)), SPEC, []),
    "spectators_truncated_half": (_bytes_of(SPEC, lambda s, d: truncated(s, d, os.path.getsize(
        s) // 2)), SPEC, []),
    "spectators_bool": (_array(SPEC, lambda s: s > 0), SPEC, ["bool"]),
    "spectators_3d": (_array(SPEC, lambda s: s[:, :, None]), SPEC, ["shape"]),
    "spectators_2_columns": (_array(SPEC, lambda s: s[:, :2]), SPEC, ["shape"]),
    "spectators_one_short": (_array(SPEC, lambda s: s[:-1]), SPEC, []),
    "spectators_1d": (_array(SPEC, lambda s: s[:, 0]), SPEC, ["shape"]),
    "spectators_str": (_array(SPEC, lambda s: s.astype(str)), SPEC, []),
    "spectators_flipped_header": (_bytes_of(SPEC, lambda s, d: flipped(s, d, 10, 20)),
                                  SPEC, []),
}
# training.py's alone: the learnability of what it reads (one class, or no track, in
# a split) and normalized arrays (the model here is network 1, which inference.py
# refuses on them before it reads the arrays)
TRAINING_ONLY = {
    "normalized_qop_near_float32_max": (_array(DATA, _qop_outside, source="norm"), DATA,
                                        ["qop"]),
    "normalized_above_1": (_array(DATA, _data(1.5), source="norm"), DATA, ["[0, 1]"]),
    "one_class_valid": (_array("_valid_labels.npy", lambda y: np.zeros_like(y),
                               fix_counts=True), "_valid_labels.npy", ["valid"]),
    "one_class_train": (_array(LAB, lambda y: np.ones_like(y), fix_counts=True), LAB,
                        ["train"]),
    "empty_train_split": (_array(LAB, lambda y: y[:0], fix_counts=True), LAB, []),
}


def _json(change, source="raw"):
    def build(b, w):
        prefix = copy_dataset(getattr(b, source), w)
        _edit_json(prefix, change)
        return prefix
    return build


def _json_bytes(fn):
    return _bytes_of("_features.json", fn)


def put(key, value):
    return lambda m: m.update({key: value})


def put_in(key, sub, value):
    def change(m):
        m[key][sub] = value
    return change


def _bad_weights(m):
    m["class_weights"]["ghost"] *= 2


def _counts_off(m):
    m["counts"]["train"]["ghost"] += 1


def dump(text):
    def write(src, dst):
        with open(dst, "w") as f:
            f.write(text)
    return write


JSON_CASES = {  # name: (build, needles)
    "truncated": (_json_bytes(lambda s, d: truncated(s, d, os.path.getsize(s) // 2)), []),
    "empty_file": (_json_bytes(lambda s, d: truncated(s, d, 0)), []),
    "flipped_bytes": (_json_bytes(lambda s, d: flipped(s, d, 1, 8)), []),
    "a_list": (_json(lambda m: [m]), ["not an object"]),
    "features_a_string": (_json(put("features", "best_pt,chi2")), ["features"]),
    "features_numbers": (_json(put("features", list(range(13)))), ["features"]),
    "features_12_names": (_json(put("features", NAMES[:12])), ["12"]),
    "normalization_strings": (_json(put_in("normalization", "offsets", ["0"] * 13)),
                              ["normalization"]),
    "normalization_zero_scale": (_json(put_in("normalization", "scales", [0.0] * 13)),
                                 ["normalization"]),
    "normalization_scale_1e-45": (_json(put_in("normalization", "scales", [1e-45] * 13)),
                                  ["normalization"]),
    "normalization_offset_1e39": (_json(put_in("normalization", "offsets", [1e39] * 13)),
                                  ["normalization"]),
    "normalization_a_list": (_json(put("normalization", [0, 1])), ["normalization"]),
    "standardization_unknown_transform": (
        _json(put_in("standardization", "transforms", ["cube"] * 13)), ["standardization"]),
    "standardization_zero_std": (_json(put_in("standardization", "stds", [0.0] * 13)),
                                 ["standardization"]),
    "standardization_nan_mean": (_json(put_in("standardization", "means", [None] * 13)),
                                 ["standardization"]),
    "counts_off_by_one": (_json(_counts_off), ["counts"]),
    "counts_a_list": (_json(put("counts", [1, 2])), ["counts"]),
    "balance_unknown": (_json(put("balance", "both")), ["balance"]),
    "class_weights_missing": (_json(put("class_weights", None)), ["class_weights"]),
    "class_weights_inconsistent": (_json(_bad_weights), ["class_weights"]),
    "class_weights_with_subsample": (_json(put("balance", "subsample")), ["balance"]),
    "normalized_a_string": (_json(put("normalized", "yes")), ["normalized"]),
    "normalized_true_on_raw_arrays": (_json(put("normalized", True)), ["[0, 1]"]),
    "spectators_a_string": (_json(put("spectators", "truth_llr")), ["spectators"]),
    "spectators_4_names": (_json(put("spectators", ["truth_llr", "tx", "ty", "eta"])),
                           ["spectators"]),
    "track_a_number": (_json(put("track", 7)), ["track"]),
    "features_page_a_number": (_json(put("features_page", 3)), ["features_page"]),
    "ghost_fraction_a_string": (_json(put("ghost_fraction", "15%")), ["ghost_fraction"]),
    "ghost_fraction_above_1": (_json(put("ghost_fraction", 1.5)), ["ghost_fraction"]),
    "seed_a_string": (_json(put("seed", "42")), ["seed"]),
    "infinity_literal": (_json_bytes(dump('{"features": ' + json.dumps(NAMES) +
                                           ', "normalization": {"offsets": [Infinity], '
                                           '"scales": [1]}}')), ["normalization"]),
}

def put_derived(name, key, value):
    """Set `key` of the recorded derived input `name` (a dataset JSON or a config)."""
    def change(m):
        next(d for d in m["derived"] if d["name"] == name)[key] = value
    return change


def _derived_twice(m):
    m["derived"].append(dict(m["derived"][0]))


def _scalings_of_the_features(m):
    for key in ("normalization", "standardization"):
        m[key] = {k: v[:len(NAMES)] for k, v in m[key].items()}


DERIVED_RECORD_CASES = {  # the derived inputs a dataset JSON or a config records
    "derived_a_string": (put("derived", "chi2_ndof := chi2 / ndof"), ["derived"]),
    "derived_entry_a_number": (put("derived", [3]), ["derived"]),
    "derived_entry_without_expression": (put("derived", [{"name": "x"}]), ["expression"]),
    "derived_unknown_branch": (put_derived("chi2_ndof", "expression", "chi3 / ndof"),
                               ["chi3"]),
    "derived_import": (put_derived("chi2_ndof", "expression", "__import__('os').getcwd()"),
                       ["not allowed"]),
    "derived_named_as_a_branch": (put_derived("chi2_ndof", "name", "chi2"),
                                  ["chi2", "takes the name of a branch"]),
    "derived_declared_twice": (_derived_twice, ["chi2_ndof", "declared twice"]),
    "derived_residual_unfitted": (put_derived("kick", "fit", None), ["kick", "fitted"]),
    "derived_fit_holds_residual": (put_derived("kick", "fit", "residual(pr_match_dtx, qop)"),
                                   ["kick", "residual"]),
    "derived_fit_a_number": (put_derived("kick", "fit", 0.5), ["kick", "fit"]),
}
JSON_CASES.update({
    **{name: (_json(change), needles) for name, (change, needles) in
       DERIVED_RECORD_CASES.items()},
    "derived_dropped_scalings_kept": (_json(put("derived", [])),
                                      [f"{N_INPUTS} offsets", "13 features"]),
    "derived_scalings_of_the_features": (_json(_scalings_of_the_features),
                                         ["13 offsets", f"{N_INPUTS} inputs"]),
})

JSON_TRAINING_ONLY = ["normalized_true_on_raw_arrays"]  # inference.py: network 1 refused
