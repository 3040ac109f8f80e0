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

The cases (fault_inputs.py, fault_models.py) run in forked children of a fork server
(forkserver.ForkServer): the imports are paid once; a handful run as real subprocesses
too (test_real_exit_path).
"""
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

import make_dataset
from dataset import load_dataset, load_split
from fault_inputs import (
    ARRAY_CASES,
    JSON_CASES,
    JSON_TRAINING_ONLY,
    NAMES,
    ROOT_CASES,
    ROOT_INFERENCE,
    SPEC,
    TRAINING_ONLY,
    _root_columns,
    copy_dataset,
)
from fault_models import CONFIG_CASES, ONNX_CASES, PTH_CASES
from faultlib import assert_refused, assert_unchanged, snapshot
from features import LABEL
from helpers import ROOT_DIR, assert_clean_error, fork_server, run_script, write_tracks
from utils import GhostError


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


@pytest.mark.parametrize("options,needles", [
    (["--derived", "x := chi2 / "], ["--derived", "cannot parse 'chi2 /'"]),
    (["--derived", "x := chi3 / ndof"], ["--derived", "unknown branch 'chi3'"]),
    (["--derived", "chi2 := chi2 / ndof"], ["'chi2'", "takes the name of a branch"]),
    (["--derived", "log := chi2"], ["'log'", "takes the name of a function"]),
    (["--derived", "x := chi2", "--derived", "x := ndof"], ["x", "declared twice"]),
    (["--derived", "x := exp(chi2)"], ["unknown function 'exp'"]),
    (["--derived", "x := chi2.real"], ["'chi2.real'", "not allowed"]),
    (["--derived", "x = chi2"], ["cannot read derived input"]),
    (["--derived", "x := residual(chi2, 2)"], ["cannot fit x := residual(chi2, 2.0)",
                                               "same for every real track", "bad.root"]),
    (["--normalize", "--derived", "x := chi2 / ndof"], ["--derived", "--normalize"]),
], ids=["syntax", "unknown_branch", "branch_name", "function_name", "twice", "call",
        "attribute", "no_walrus", "unfittable_residual", "with_normalize"])
def test_bad_derived_options_are_refused(base, server, tmp_path, options, needles):
    """make_dataset.py --derived: one error line naming what is wrong, nothing written."""
    w = str(tmp_path)
    path = _root_columns(lambda c: None)(base, w)  # a good file, named bad.root
    before = snapshot(w, base.dir)
    result = server.run(*run_make_dataset(base, w, path, *options)[:2], w)
    assert_refused(result, *needles)
    assert_unchanged(before, snapshot(w, base.dir))


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
    prefix = copy_dataset(base.raw, str(tmp_path))
    x, y = load_split(prefix, "test")
    np.save(f"{prefix}_test_data.npy", x.astype(np.float64))
    np.save(f"{prefix}_test_labels.npy", y.astype(np.int8).ravel())
    x2, y2 = load_split(prefix, "test")
    assert x2.dtype == y2.dtype == np.float32 and y2.shape == y.shape
    assert np.array_equal(x2, x) and np.array_equal(y2, y)
    np.save(f"{prefix}_test_data.npy", np.full_like(x, 1e39, dtype=np.float64))
    with pytest.raises(GhostError, match="beyond float32's range"):
        load_split(prefix, "test")
