"""The fault corpus: for every artifact kind the tools read, corrupted variants,
each run through the script that reads it.  Every case must end with exit code 2,
one `error:` line naming the file, no traceback, and nothing written: no output,
no temporary, no folder.

    ROOT inputs        make_dataset.py -f, inference.py -f X.root
    dataset arrays     training.py -f PREFIX, inference.py -f PREFIX
    features JSON      the same
    spectators         the same
    configs .pkl/.json inference.py --model X.pth --config
    .pth state dicts   inference.py --model X.pth
    .onnx models       inference.py --model X.onnx

The cases run in forked children of a fork server (faultlib.ForkServer): the
imports are paid once; a handful run as real subprocesses too (test_real_exit_path).
"""
import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

import make_dataset
from dataset import load_dataset, load_split
from faultlib import assert_refused, assert_unchanged, flipped, snapshot, truncated
from features import DEFAULT_TREE, LABEL, features_for
from helpers import ROOT_DIR, assert_clean_error, fork_server, run_script, write_tracks
from utils import GhostError

NAMES = features_for("matching")
QOP = NAMES.index("qop")


@dataclass
class Base:
    dir: str
    root: str       # a good matching file, 3,000 tracks
    columns: dict   # 1,000 tracks of the generator: the 13 features and the label
    raw: str        # dataset prefixes made from `root`
    norm: str
    onnx: str       # a network 1 model for `raw`, saved as training.py saves it
    pth: str
    pkl: str
    config_json: str


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from make_sample import generate, make_sample
    d = tmp_path_factory.mktemp("fault_base")
    root = str(d / "good.root")
    make_sample(root, tracks=3000, track="matching", seed=5)
    quiet = ["--track", "matching", "--threads", "1"]
    make_dataset.main(["-f", root, "--output", str(d / "raw"), *quiet])
    models = subprocess.Popen([sys.executable, os.path.join(ROOT_DIR, "tests", "faultlib.py"),
                               "models", str(d / "raw"), str(d)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    make_dataset.main(["-f", root, "--output", str(d / "norm"), "--normalize", *quiet])
    columns = generate(1000, "matching", seed=6, nonfinite=0)
    columns = {k: columns[k] for k in NAMES + [LABEL]}
    _, err = models.communicate(timeout=300)
    assert models.returncode == 0, err
    return Base(str(d), root, columns, str(d / "raw"), str(d / "norm"),
                str(d / "ghost_model.onnx"), str(d / "ghost_model.pth"),
                str(d / "ghost_model_config.pkl"), str(d / "ghost_model_config.json"))


@pytest.fixture(scope="module")
def server():
    """The fork server (helpers.fork_server), its ROOT compiler warm."""
    return fork_server()


# ---------------------------------------------------------------------------
# how each script is run on a case's file (script, argv, setup in the child);
# `w` is the case's own folder
# ---------------------------------------------------------------------------

def run_make_dataset(b, w, path, *extra):
    return "make_dataset", ["-f", path, "--output", f"{w}/ds", "--track", "matching",
                            "--threads", "1", *extra], None


def run_inference_root(b, w, path):
    return "inference", ["-f", path, "--model", b.onnx, "--output", f"{w}/s.npy",
                         "--plots-dir", f"{w}/plots", "--no-plots", "--threads", "1"], None


def run_training(b, w, prefix):
    return "training", ["-f", prefix, "--batch", "256", "-n", "1", "--epochs", "1",
                        "--cpu", "1", "--path", f"{w}/ray", "--save",
                        "--output-dir", f"{w}/models"], "no_search"


def run_inference(b, w, prefix, model=None, config=None):
    model_args = ["--model", model or b.onnx] + (["--config", config] if config else [])
    return "inference", ["-f", prefix, *model_args, "--output", f"{w}/s.npy",
                         "--plots-dir", f"{w}/plots", "--no-plots"], None


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


def _copy_dataset(src, w):
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
        prefix = _copy_dataset(getattr(b, source), w)
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
        prefix = _copy_dataset(b.raw, w)
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
        prefix = _copy_dataset(getattr(b, source), w)
        _edit_json(prefix, change)
        return prefix
    return build


def _json_bytes(fn):
    return _bytes_of("_features.json", fn)


def _put(key, value):
    return lambda m: m.update({key: value})


def _put_in(key, sub, value):
    def change(m):
        m[key][sub] = value
    return change


def _bad_weights(m):
    m["class_weights"]["ghost"] *= 2


def _counts_off(m):
    m["counts"]["train"]["ghost"] += 1


def _dump(text):
    def write(src, dst):
        with open(dst, "w") as f:
            f.write(text)
    return write


JSON_CASES = {  # name: (build, needles)
    "truncated": (_json_bytes(lambda s, d: truncated(s, d, os.path.getsize(s) // 2)), []),
    "empty_file": (_json_bytes(lambda s, d: truncated(s, d, 0)), []),
    "flipped_bytes": (_json_bytes(lambda s, d: flipped(s, d, 1, 8)), []),
    "a_list": (_json(lambda m: [m]), ["not an object"]),
    "features_a_string": (_json(_put("features", "best_pt,chi2")), ["features"]),
    "features_numbers": (_json(_put("features", list(range(13)))), ["features"]),
    "features_12_names": (_json(_put("features", NAMES[:12])), ["12"]),
    "normalization_strings": (_json(_put_in("normalization", "offsets", ["0"] * 13)),
                              ["normalization"]),
    "normalization_zero_scale": (_json(_put_in("normalization", "scales", [0.0] * 13)),
                                 ["normalization"]),
    "normalization_scale_1e-45": (_json(_put_in("normalization", "scales", [1e-45] * 13)),
                                  ["normalization"]),
    "normalization_offset_1e39": (_json(_put_in("normalization", "offsets", [1e39] * 13)),
                                  ["normalization"]),
    "normalization_a_list": (_json(_put("normalization", [0, 1])), ["normalization"]),
    "standardization_unknown_transform": (
        _json(_put_in("standardization", "transforms", ["cube"] * 13)), ["standardization"]),
    "standardization_zero_std": (_json(_put_in("standardization", "stds", [0.0] * 13)),
                                 ["standardization"]),
    "standardization_nan_mean": (_json(_put_in("standardization", "means", [None] * 13)),
                                 ["standardization"]),
    "counts_off_by_one": (_json(_counts_off), ["counts"]),
    "counts_a_list": (_json(_put("counts", [1, 2])), ["counts"]),
    "balance_unknown": (_json(_put("balance", "both")), ["balance"]),
    "class_weights_missing": (_json(_put("class_weights", None)), ["class_weights"]),
    "class_weights_inconsistent": (_json(_bad_weights), ["class_weights"]),
    "class_weights_with_subsample": (_json(_put("balance", "subsample")), ["balance"]),
    "normalized_a_string": (_json(_put("normalized", "yes")), ["normalized"]),
    "normalized_true_on_raw_arrays": (_json(_put("normalized", True)), ["[0, 1]"]),
    "spectators_a_string": (_json(_put("spectators", "truth_llr")), ["spectators"]),
    "spectators_4_names": (_json(_put("spectators", ["truth_llr", "tx", "ty", "eta"])),
                           ["spectators"]),
    "track_a_number": (_json(_put("track", 7)), ["track"]),
    "ghost_fraction_a_string": (_json(_put("ghost_fraction", "15%")), ["ghost_fraction"]),
    "ghost_fraction_above_1": (_json(_put("ghost_fraction", 1.5)), ["ghost_fraction"]),
    "seed_a_string": (_json(_put("seed", "42")), ["seed"]),
    "infinity_literal": (_json_bytes(_dump('{"features": ' + json.dumps(NAMES) +
                                           ', "normalization": {"offsets": [Infinity], '
                                           '"scales": [1]}}')), ["normalization"]),
}

JSON_TRAINING_ONLY = ["normalized_true_on_raw_arrays"]  # inference.py: network 1 refused


# ---------------------------------------------------------------------------
# model configs, .pth state dicts, .onnx models
# ---------------------------------------------------------------------------

def _config(change, suffix=".pkl"):
    def build(b, w):
        with open(b.pkl, "rb") as f:
            config = pickle.load(f)
        config = change(config) or config
        path = f"{w}/bad{suffix}"
        if suffix == ".pkl":
            with open(path, "wb") as f:
                pickle.dump(config, f)
        else:
            with open(path, "w") as f:
                json.dump(config, f)
        return path
    return build


def _config_bytes(fn, suffix=".pkl"):
    def build(b, w):
        src = b.pkl if suffix == ".pkl" else b.config_json
        return fn(src, f"{w}/bad{suffix}")
    return build


def _evil(b, w):
    with open(f"{w}/bad.pkl", "wb") as f:
        f.write(b"cos\nsystem\n(S'touch pwned'\ntR.")
    return f"{w}/bad.pkl"


def _norm_short(c):
    c["normalization"]["offsets"] = c["normalization"]["offsets"][:12]


CONFIG_CASES = {  # name: (build(b, w) -> config path, needles)
    "pkl_empty": (_config_bytes(lambda s, d: truncated(s, d, 0)), []),
    "pkl_truncated": (_config_bytes(lambda s, d: truncated(s, d, os.path.getsize(s) // 2)),
                      []),
    "pkl_flipped": (_config_bytes(lambda s, d: flipped(s, d, 0, 8)), []),
    "pkl_code": (_evil, ["unpickle"]),
    "pkl_a_list": (_config(lambda c: [c]), ["dict"]),
    "json_truncated": (_config_bytes(lambda s, d: truncated(s, d, os.path.getsize(s) // 2),
                                     ".json"), []),
    "json_flipped": (_config_bytes(lambda s, d: flipped(s, d, 0, 8), ".json"), []),
    "json_a_string": (_config(lambda c: "ghost_model", ".json"), ["dict"]),
    "n_features_a_string": (_config(_put("n_features", "thirteen")), ["n_features"]),
    "n_features_12": (_config(_put("n_features", 12)), []),
    "n_features_float": (_config(_put("n_features", 13.5)), ["n_features"]),
    "hidden_zero": (_config(_put("hidden", [0])), ["hidden"]),
    "hidden_a_string": (_config(_put("hidden", "8")), ["hidden"]),
    "hidden_float": (_config(_put("hidden", [8.5])), ["hidden"]),
    "activation_unknown": (_config(_put("activation", "swish")), ["activation"]),
    "activation_a_number": (_config(_put("activation", 3)), ["activation"]),
    "network_5": (_config(_put("network", 5)), ["network"]),
    "network_a_string": (_config(_put("network", "1")), ["network"]),
    "int8_a_string": (_config(_put("int8", "no")), ["int8"]),
    "inputs_unknown": (_config(_put("inputs", "zscore")), ["inputs"]),
    "normalization_short": (_config(_norm_short), ["normalization"]),
    "standardization_negative_std": (_config(_put_in("standardization", "stds", [-1.0] * 13)),
                                     ["standardization"]),
    "normalization_infinite_json": (_config(_put_in("normalization", "offsets",
                                                    [float("inf")] * 13), ".json"),
                                    ["normalization"]),
    "normalization_scale_1e39": (_config(_put_in("normalization", "scales", [1e39] * 13)),
                                 ["normalization"]),
    "threshold_nan_json": (_config(_put("threshold", float("nan")), ".json"), ["threshold"]),
    "features_a_string": (_config(_put("features", "best_pt")), ["features"]),
    "track_a_number": (_config(_put("track", 7)), ["track"]),
    "threshold_a_string": (_config(_put("threshold", "0.5")), ["threshold"]),
    "threshold_2": (_config(_put("threshold", 2.0)), ["threshold"]),
    "working_point_a_list": (_config(_put("working_point", [0.99])), ["working_point"]),
    "training_prior_1": (_config(_put("training_prior", 1.0)), ["training_prior"]),
    "training_ranges_a_list": (_config(_put("training_ranges", [0, 1])), ["training_ranges"]),
}


def _state(change):
    def build(b, w):
        import torch
        state = torch.load(b.pth, weights_only=True)
        state = change(state) or state
        torch.save(state, f"{w}/bad.pth")
        return f"{w}/bad.pth"
    return build


def _pth_bytes(fn):
    return lambda b, w: fn(b.pth, f"{w}/bad.pth")


def _first_weight(state):
    return next(k for k, v in state.items() if v.dim() == 2)


def _drop_weight(state):
    del state[_first_weight(state)]


def _transpose_weight(state):
    key = _first_weight(state)
    state[key] = state[key].t().contiguous()


def _nan_weight(state):
    state[_first_weight(state)][0, 0] = float("nan")


def _inf_weight(state):
    state[_first_weight(state)][0, 0] = float("-inf")


def _int_weights(state):
    key = _first_weight(state)
    state[key] = state[key].to(dtype=__import__("torch").int64)


def _module(b, w):
    import torch
    torch.save(torch.nn.Linear(13, 1), f"{w}/bad.pth")
    return f"{w}/bad.pth"


PTH_CASES = {  # name: (build(b, w) -> .pth path, needles)
    "empty": (_pth_bytes(lambda s, d: truncated(s, d, 0)), []),
    "truncated_10": (_pth_bytes(lambda s, d: truncated(s, d, 10)), []),
    "truncated_half": (_pth_bytes(lambda s, d: truncated(s, d, os.path.getsize(s) // 2)), []),
    "truncated_end": (_pth_bytes(lambda s, d: truncated(s, d, -10)), []),
    "flipped_start": (_pth_bytes(lambda s, d: flipped(s, d, 0, 8)), []),
    "flipped_weights": (_pth_bytes(lambda s, d: flipped(s, d, os.path.getsize(s) // 2)),
                        ["CRC"]),
    "flipped_directory": (_pth_bytes(lambda s, d: flipped(s, d, -60, 30)), []),
    "text_file": (_pth_bytes(lambda s, d: _dump("weights\n")(s, d) or d), []),
    "a_module": (_module, []),
    "a_list": (_state(lambda s: list(s.values())), ["state dict"]),
    "missing_key": (_state(_drop_weight), []),
    "extra_key": (_state(lambda s: s.update({"extra.weight": s[_first_weight(s)]})), []),
    "wrong_shape": (_state(_transpose_weight), []),
    "nan_weight": (_state(_nan_weight), ["finite"]),
    "inf_weight": (_state(_inf_weight), ["finite"]),
    "integer_weights": (_state(_int_weights), []),
}


def _proto(change):
    def build(b, w):
        import onnx
        proto = onnx.load(b.onnx)
        change(proto)
        with open(f"{w}/bad.onnx", "wb") as f:
            f.write(proto.SerializeToString())
        return f"{w}/bad.onnx"
    return build


def _onnx_bytes(fn):
    return lambda b, w: fn(b.onnx, f"{w}/bad.onnx")


def _record(change):
    def edit(proto):
        from artifacts import METADATA_KEY
        for prop in proto.metadata_props:
            if prop.key == METADATA_KEY:
                prop.value = change(json.loads(prop.value))
    return edit


def _second_input(proto):
    import onnx
    proto.graph.input.append(onnx.helper.make_tensor_value_info("extra", 1, ["batch", 2]))


def _input_type(elem):
    def edit(proto):
        proto.graph.input[0].type.tensor_type.elem_type = elem
    return edit


def _input_rank3(proto):
    proto.graph.input[0].type.tensor_type.shape.dim.add().dim_value = 1


def _output_width(proto):
    proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value = 2


def _input_width(proto):
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 12


def _nan_initializer(proto):
    import onnx
    from onnx import numpy_helper
    t = next(t for t in proto.graph.initializer if len(t.dims) == 2)
    array = numpy_helper.to_array(t).copy()
    array.flat[0] = np.nan
    t.CopyFrom(numpy_helper.from_array(array, t.name))
    assert onnx


def _dangling(proto):
    proto.graph.node[0].input[0] = "nowhere"


def _no_output(proto):
    del proto.graph.output[:]


ONNX_CASES = {  # name: (build(b, w) -> .onnx path, needles)
    "empty": (_onnx_bytes(lambda s, d: truncated(s, d, 0)), []),
    "truncated_10": (_onnx_bytes(lambda s, d: truncated(s, d, 10)), []),
    "truncated_half": (_onnx_bytes(lambda s, d: truncated(s, d, os.path.getsize(s) // 2)), []),
    "truncated_end": (_onnx_bytes(lambda s, d: truncated(s, d, -10)), []),
    "flipped_start": (_onnx_bytes(lambda s, d: flipped(s, d, 0, 8)), []),
    "text_file": (_onnx_bytes(lambda s, d: _dump("not a model\n")(s, d) or d), []),
    "second_input": (_proto(_second_input), ["input"]),
    "input_int64": (_proto(_input_type(7)), ["float"]),
    "input_rank_3": (_proto(_input_rank3), ["dimensions"]),
    "input_12_wide": (_proto(_input_width), ["12"]),
    "output_2_wide": (_proto(_output_width), ["output"]),
    "no_output": (_proto(_no_output), []),
    "dangling_node_input": (_proto(_dangling), []),
    "nan_weight": (_proto(_nan_initializer), ["finite"]),
    "record_not_json": (_proto(_record(lambda r: "{not json")), ["metadata"]),
    "record_a_list": (_proto(_record(lambda r: json.dumps([r]))), ["metadata"]),
    "record_hidden_a_string": (_proto(_record(lambda r: json.dumps({**r, "hidden": "x"}))),
                               ["hidden"]),
    "record_n_features_12": (_proto(_record(lambda r: json.dumps({**r, "n_features": 12}))),
                             ["12"]),
    "record_features_numbers": (_proto(_record(lambda r: json.dumps(
        {**r, "features": list(range(13))}))), ["features"]),
    "record_threshold_a_string": (_proto(_record(lambda r: json.dumps(
        {**r, "threshold": "high"}))), ["threshold"]),
}


# ---------------------------------------------------------------------------
# the corpus: every case its own test
# ---------------------------------------------------------------------------

def _cases():
    """(kind, name, script, build, file named, needles) for every case."""
    cases = []
    for name, (build, needles, extra) in ROOT_CASES.items():
        cases.append(("root", name, "make_dataset", build, "bad.root", needles, extra))
        if name in ROOT_INFERENCE:
            cases.append(("root", name, "inference", build, "bad.root", needles, []))
    for kind, table in (("arrays", ARRAY_CASES), ("arrays", TRAINING_ONLY)):
        for name, (build, named, needles) in table.items():
            scripts = ["training"] if table is TRAINING_ONLY else ["training", "inference"]
            kind = "spectators" if named == SPEC else kind
            for script in scripts:
                cases.append((kind, name, script, build, "ds" + named, needles, []))
    for name, (build, needles) in JSON_CASES.items():
        for script in ("training", "inference")[:1 if name in JSON_TRAINING_ONLY else 2]:
            cases.append(("json", name, script, build, "ds_features.json", needles, []))
    for kind, table in (("config", CONFIG_CASES), ("pth", PTH_CASES), ("onnx", ONNX_CASES)):
        for name, (build, needles) in table.items():
            cases.append((kind, name, "inference", build, None, needles, []))
    return cases


CASES = _cases()
# cases that fail because of code outside dataset/artifacts/features/architecture/
# make_dataset's arrays/scoring's loaders: {test id: the area that owns the fix}
def _param(case):
    kind, name, script = case[:3]
    case_id = f"{kind}-{name}-{script}"
    return pytest.param(case, id=case_id)


def _command(b, w, kind, script, build, extra):
    target = build(b, w)
    if kind == "root":
        if script == "make_dataset":
            return run_make_dataset(b, w, target, *extra)
        return run_inference_root(b, w, target)
    if kind in ("arrays", "spectators", "json"):
        runner = run_training if script == "training" else run_inference
        return runner(b, w, target)
    if kind == "config":
        return run_inference(b, w, b.raw, model=b.pth, config=target)
    return run_inference(b, w, b.raw, model=target, config=b.pkl if kind == "pth" else None)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_corpus(base, server, tmp_path, case):
    kind, name, script, build, named, needles, extra = case
    w = str(tmp_path)
    script, argv, setup = _command(base, w, kind, script, build, extra)
    before = snapshot(w, base.dir)
    result = server.run(script, argv, w, timeout=120, setup=setup)
    after = snapshot(w, base.dir)
    named = named or os.path.basename(next(a for a in argv if str(a).startswith(f"{w}/bad")))
    assert_refused(result, named, *needles)
    assert_unchanged(before, after)


def test_corpus_size():
    """Roughly 10-25 variants per artifact kind (what the closing note reports)."""
    kinds = {}
    for kind, name, *_ in CASES:
        kinds.setdefault(kind, set()).add(name)
    sizes = {k: len(v) for k, v in kinds.items()}
    assert set(sizes) == {"root", "arrays", "spectators", "json", "config", "pth", "onnx"}
    assert all(n >= 6 for n in sizes.values()), sizes


# ---------------------------------------------------------------------------
# the real exit path: a few cases as a user runs them, in a subprocess
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind,name,script", [
    ("root", "truncated_half", "make_dataset"),
    ("arrays", "data_nan", "training"),
    ("onnx", "truncated_half", "inference"),
])
def test_real_exit_path(base, tmp_path, kind, name, script):
    case = next(c for c in CASES if c[:3] == (kind, name, script))
    w = str(tmp_path)
    script, argv, _ = _command(base, w, kind, script, case[3], case[6])
    before = snapshot(w, base.dir)
    proc = run_script(f"{script}.py", *argv)
    assert_clean_error(proc, *case[5])
    assert_unchanged(before, snapshot(w, base.dir))


# ---------------------------------------------------------------------------
# numbers at the edges of float32
# ---------------------------------------------------------------------------

def _huge_qop_file(path, value, n=20_000, bad=200):
    from make_sample import generate
    columns = generate(n, "matching", seed=8, nonfinite=0)
    columns = {k: columns[k] for k in NAMES + [LABEL]}
    columns["qop"][:bad // 2], columns["qop"][bad // 2:bad] = value, -value
    return write_tracks(path, columns)


def test_normalize_near_float32_max_is_refused_by_name(server, tmp_path):
    """qop = +-3e38 on 200 of 20,000 tracks: the min-max scale of that range is not
    representable in float32, and --normalize wrote NaN into the arrays (exit 0)."""
    path = _huge_qop_file(str(tmp_path / "huge.root"), 3e38)
    before = snapshot(str(tmp_path))
    result = server.run(*run_make_dataset(None, str(tmp_path), path, "--normalize")[:2],
                        str(tmp_path))
    assert_refused(result, "qop", "float32")
    assert_unchanged(before, snapshot(str(tmp_path)))


def test_finite_inputs_stay_finite_within_float32(server, tmp_path):
    """+-1.5e38: a range float32 still holds; every array finite, normalized in [0, 1]."""
    path = _huge_qop_file(str(tmp_path / "large.root"), 1.5e38)
    for extra in ([], ["--normalize"]):
        result = server.run(*run_make_dataset(None, str(tmp_path), path, *extra)[:2],
                            str(tmp_path))
        assert result.rc == 0, result.stderr
        splits = load_dataset(f"{tmp_path}/ds")  # the validating reader agrees
        for data, _ in splits.values():
            assert np.isfinite(data).all()
            if extra:
                assert data.min() >= 0 and data.max() <= 1


def test_real_numeric_dtypes_are_read_as_float32(base, tmp_path):
    prefix = _copy_dataset(base.raw, str(tmp_path))
    x, y = load_split(prefix, "test")
    np.save(f"{prefix}_test_data.npy", x.astype(np.float64))
    np.save(f"{prefix}_test_labels.npy", y.astype(np.int8).ravel())
    x2, y2 = load_split(prefix, "test")
    assert x2.dtype == y2.dtype == np.float32 and y2.shape == y.shape
    assert np.array_equal(x2, x) and np.array_equal(y2, y)
    np.save(f"{prefix}_test_data.npy", np.full_like(x, 1e39, dtype=np.float64))
    with pytest.raises(GhostError, match="beyond float32's range"):
        load_split(prefix, "test")
