"""cpp_export.py: the model as a header-only C++ file, compiled and compared with
onnxruntime (float and INT8, NaN for non-finite features, any file name), the same
from .onnx and .pth, written only with a run that succeeds."""
import os
import re

import numpy as np
import onnxruntime as ort
import pytest

import inference
from artifacts import load_config
from dataset import load_split
from helpers import (
    CXX,
    N_DERIVED,
    assert_clean_error,
    compile_and_run,
    lines_starting,
    run_script,
    write_tracks,
)


@pytest.mark.parametrize("stem", ["ghost_model", "ghost_model_int8"])
def test_the_header_compiles_and_matches_onnxruntime(trained_model, raw_dataset, tmp_path, stem):
    trained = trained_model.models
    assert CXX, "a C++ compiler (g++) is needed: ROOT needs one too"
    x, _ = load_split(raw_dataset, "test")
    x = x[:3000]  # finite: the dataset dropped the non-finite tracks
    got = compile_and_run(trained / f"{stem}.hpp", stem, x, tmp_path)
    want = ort.InferenceSession(str(trained / f"{stem}.onnx")).run(
        None, {"features": x})[0].ravel()
    assert got.shape == want.shape and np.isfinite(got).all()
    # float: to 1e-6; INT8: every integer code the same, so the probabilities agree to
    # the float rounding of the last layer's logit (one code apart would be > 1e-4)
    assert np.abs(got - want).max() < 1e-6, np.abs(got - want).max()
    nan = x[:5].copy()
    nan[2, 4] = np.nan
    p = compile_and_run(trained / f"{stem}.hpp", stem, nan, tmp_path)
    assert np.isnan(p[2]) and np.isfinite(np.delete(p, 2)).all()


def test_the_int8_header_holds_integer_arithmetic(trained_model):
    trained = trained_model.models
    text = (trained / "ghost_model_int8.hpp").read_text()
    config = load_config(str(trained / "ghost_model_int8_config.json"))
    assert "constexpr bool int8 = true;" in text and "std::int32_t acc" in text
    weights = re.findall(r"static constexpr int w(\d+)\[(\d+)\]\[(\d+)\] = \{(.*?)\};", text,
                         re.S)
    assert len(weights) == len(config["hidden"]) + 1  # one integer matrix per layer
    for _, rows, cols, body in weights:
        codes = [int(v) for v in re.findall(r"-?\d+", body)]
        assert len(codes) == int(rows) * int(cols)
        assert max(abs(c) for c in codes) <= 63  # 7-bit, as in the ONNX file


def test_export_cpp_from_onnx_and_pth_gives_the_same_header(trained_model, tmp_path):
    trained = trained_model.models
    for stem in ("ghost_model", "ghost_model_int8"):
        a, b = tmp_path / f"{stem}_a.hpp", tmp_path / f"{stem}_b.hpp"
        assert inference.main(["--model", str(trained / f"{stem}.onnx"), "--export-cpp",
                               str(a)]) == 0
        assert inference.main(["--model", str(trained / f"{stem}.pth"), "--config",
                               str(trained / f"{stem}_config.pkl"), "--export-cpp", str(b)]) == 0
        body = [ln for ln in (trained / f"{stem}.hpp").read_text().splitlines()
                if not ln.startswith("//")]

        for path, name in ((a, f"{stem}_a"), (b, f"{stem}_b")):
            lines = [ln.replace(name, stem) for ln in path.read_text().splitlines()
                     if not ln.startswith("//")]
            assert lines == body, path


def _export(model, header):
    """inference.py --export-cpp: the namespace it reports."""
    proc = run_script("inference.py", "--model", model, "--export-cpp", header)
    assert proc.returncode == 0, proc.stderr
    return re.search(r"C\+\+ namespace (\S+),", proc.stdout).group(1)


@pytest.mark.parametrize("name", ["net1", "int8"])
def test_the_header_gives_nan_for_infinite_and_nan_features(quick_models, raw_dataset, tmp_path,
                                                            name):
    import onnxruntime as ort

    from dataset import load_split
    header = tmp_path / f"{name}.hpp"
    namespace = _export(quick_models[name], header)
    x = load_split(raw_dataset, "test")[0][:8].copy()
    for row, (col, value) in enumerate([(0, np.inf), (12, -np.inf), (4, np.nan),
                                        (1, np.inf), (5, -np.inf)]):
        x[row, col] = value
    got = compile_and_run(header, namespace, x, tmp_path)
    assert np.isnan(got[:5]).all(), got
    want = ort.InferenceSession(quick_models[name]).run(None, {"features": x[5:]})[0].ravel()
    assert np.abs(got[5:] - want).max() < 1e-6


@pytest.mark.parametrize("stem", ["1model", "class", "my-model.v2", "int", "__x", "std"])
def test_export_cpp_namespace_compiles_whatever_the_file_name(quick_models, raw_dataset, tmp_path,
                                                              stem):
    from dataset import load_split
    header = tmp_path / f"{stem}.hpp"
    namespace = _export(quick_models["net1"], header)
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", namespace) and "__" not in namespace
    x = load_split(raw_dataset, "test")[0][:3]
    assert np.isfinite(compile_and_run(header, namespace, x, tmp_path, opt="-O0")).all()


def test_export_cpp_is_written_only_with_a_run_that_succeeds(quick_models, tmp_path):
    from make_sample import generate
    empty = write_tracks(tmp_path / "empty.root", {k: v[:0] for k, v in generate(10).items()})
    header = tmp_path / "model.hpp"
    proc = run_script("inference.py", "-f", empty, "--model", quick_models["net1"], "--export-cpp",
                      header, "--plots-dir", tmp_path / "plots")
    assert_clean_error(proc, "holds no tracks")
    assert not header.exists() and os.listdir(tmp_path) == ["empty.root"]


def test_export_cpp_with_a_run_writes_the_header_with_its_outputs(quick_models, small_file,
                                                                  tmp_path):
    header, out = tmp_path / "model.hpp", tmp_path / "p.npy"
    proc = run_script("inference.py", "-f", small_file, "--model", quick_models["net1"],
                      "--export-cpp", header, "--output", out, "--plots-dir",
                      tmp_path / "plots", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert "namespace model {" in header.read_text() and out.exists()
    assert str(header) in lines_starting(proc.stdout, "wrote ")[-1]


def _int8_ties(header_text, x, per_feature=40):
    """Tracks of `x` with one feature set so that its input x0 / scale is exactly
    k + 0.5 in float32, as QuantizeLinear computes it: for every raw feature the
    header does not take the log of ((v - mean) * inv_scale, no transcendental
    function; the derived inputs come after the raw features)."""
    def floats(name):
        body = re.search(rf"{name}\[\d+\] = \{{(.*?)\}};", header_text, re.S).group(1)
        return np.array([float(v.rstrip("f")) for v in body.split(",")], dtype=np.float32)
    shift, inv = floats("shift"), floats("inv_scale")
    logs = [int(v) for v in re.search(r"take_log\[\d+\] = \{(.*?)\};", header_text).group(1)
            .split(",")]
    m = re.search(r"q0\[i\] = detail::quantize\(x0\[i\] / ([-0-9.e]+)f, (-?\d+)\);", header_text)
    s0, zp = np.float32(m.group(1)), int(m.group(2))
    rows = []
    for j in (j for j, lg in enumerate(logs[:x.shape[1]]) if not lg):  # raw features
        start = len(rows)
        for k in range(-zp, 255 - zp):
            t = np.float32((k + 0.5) * s0)
            v = np.float32(t / inv[j] + shift[j])
            up, down = np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(-np.inf))
            for cand in (v, up, down):
                if np.float32(np.float32(cand - shift[j]) * inv[j]) / s0 == np.float32(k + 0.5):
                    row = x[len(rows) % len(x)].copy()
                    row[j] = cand
                    rows.append(row)
                    break
            if len(rows) - start >= per_feature:
                break
    return np.array(rows, dtype=np.float32)


def test_the_int8_header_agrees_with_onnxruntime_on_200k_tracks(trained_model, tmp_path):
    """Over 200,000 generated tracks and crafted ties (x / scale exactly k + 0.5 at the
    first QuantizeLinear): every tie gives onnxruntime's codes; the few tracks whose
    probability differs (onnxruntime's vectorized log differs from the C library's in
    the last bit, which can move x / scale across a rounding boundary) stay within the
    bound the README states: at most 1 in 20,000 tracks, by less than 5e-3."""
    from features import features_for
    from make_sample import generate
    stem = "ghost_model_int8"
    header = trained_model.models / f"{stem}.hpp"
    cols = generate(200_000, "matching", seed=7, nonfinite=0)
    x = np.stack([cols[n] for n in features_for("matching")], axis=1).astype(np.float32)
    ties = _int8_ties(header.read_text(), x)
    assert len(ties) >= 100
    x = np.concatenate([x, ties])
    got = compile_and_run(header, stem, x, tmp_path)
    want = ort.InferenceSession(str(trained_model.models / f"{stem}.onnx")).run(
        None, {"features": x})[0].ravel()
    diff = np.abs(got.astype(np.float64) - want)
    assert np.isfinite(got).all()
    assert diff[-len(ties):].max() < 1e-6  # every tie rounds half to even, as onnxruntime
    differ = int((diff > 1e-6).sum())
    print(f"INT8 header vs onnxruntime: {differ} of {len(x):,} tracks differ, max {diff.max():.2e}")
    assert differ <= len(x) / 20_000 and diff.max() < 5e-3, (differ, diff.max())


def test_nonfinite_features_give_nan_in_every_engine(trained_model, raw_dataset, tmp_path):
    """NaN, +inf and -inf in any feature: NaN from both headers, the torch models and
    onnxruntime (float and INT8); the other tracks finite."""
    import torch

    from architecture import ModelConfig
    from models import load_model
    trained = trained_model.models
    x = load_split(raw_dataset, "test")[0][:40].copy()
    n_features = x.shape[1]
    bad = [(row, row % n_features, (np.nan, np.inf, -np.inf)[row % 3]) for row in range(30)]
    for row, col, value in bad:
        x[row, col] = value
    for stem in ("ghost_model", "ghost_model_int8"):
        config = load_config(str(trained / f"{stem}_config.json"))
        model = load_model(ModelConfig.from_dict(config),
                           torch.load(trained / f"{stem}.pth", weights_only=True))
        with torch.inference_mode():
            engines = {"torch": model(torch.from_numpy(x)).numpy().ravel(),
                       "onnxruntime": ort.InferenceSession(str(trained / f"{stem}.onnx")).run(
                           None, {"features": x})[0].ravel(),
                       "header": compile_and_run(trained / f"{stem}.hpp", stem, x, tmp_path)}
        for engine, p in engines.items():
            assert np.isnan(p[:30]).all(), (stem, engine, p[:30])
            assert np.isfinite(p[30:]).all(), (stem, engine)


# reads n x n_features float32 from argv[1], writes the n x n_inputs first-layer codes
# (int32) that the probed header (_probed) quantized for each track to argv[2]
CODES_DRIVER = r"""
#include <cstdio>
#include <vector>
#include HEADER
int main(int argc, char** argv) {
    std::FILE* in = std::fopen(argv[1], "rb");
    std::FILE* out = std::fopen(argv[2], "wb");
    std::vector<float> x(NAMESPACE::n_features);
    while (std::fread(x.data(), sizeof(float), x.size(), in) == x.size()) {
        NAMESPACE::ghost_probability(x.data());
        std::fwrite(NAMESPACE::probe_codes, sizeof(std::int32_t), NAMESPACE::n_inputs, out);
    }
    std::fclose(in);
    std::fclose(out);
    return 0;
}
"""


def _header_codes(header, x, folder):
    """The INT8 header's first-layer input codes of each track of `x`: the header
    with one line added that copies q0 out."""
    text = header.read_text()
    quantize = re.search(r"\n        q0\[i\] = detail::quantize\(.*?\);\n", text).group(0)
    text = text.replace("GHOST_HD inline float ghost_probability",
                        "inline std::int32_t probe_codes[n_inputs];\n"
                        "GHOST_HD inline float ghost_probability")
    text = text.replace(quantize, quantize + "    for (int i = 0; i < n_inputs; ++i) "
                                             "probe_codes[i] = q0[i];\n")
    probed = folder / header.name
    probed.write_text(text)
    codes = compile_and_run(probed, header.stem, x, folder, driver_code=CODES_DRIVER,
                            dtype=np.int32)
    return codes.reshape(len(x), -1)


def _onnx_codes(path, x):
    """onnxruntime's first-layer input codes (the output of /quant/QuantizeLinear)."""
    import onnx
    proto = onnx.load(str(path))
    node = next(n for n in proto.graph.node if n.name == "/quant/QuantizeLinear")
    proto.graph.output.append(onnx.helper.make_tensor_value_info(
        node.output[0], onnx.TensorProto.UINT8, None))
    session = ort.InferenceSession(proto.SerializeToString())
    return session.run([node.output[0]], {"features": x})[0].astype(np.int32)


def _generated(n, seed=7):
    from features import features_for
    from make_sample import generate
    cols = generate(n, "matching", seed=seed, nonfinite=0)
    return np.stack([cols[name] for name in features_for("matching")], axis=1).astype(np.float32)


def test_the_header_lists_the_derived_inputs(derived_models):
    """n_features stays the raw count (the interface); the head lists every derived
    input in its fitted form; every operation of the language is in the code."""
    from architecture import ModelConfig
    for name in ("float", "int8"):
        base = derived_models[name]
        text = base.with_suffix(".hpp").read_text()
        config = ModelConfig.from_dict(load_config(f"{base}_config.json"))
        assert len(config.derived) == N_DERIVED and config.n_features == 13
        assert "constexpr int n_features = 13;" in text
        assert f"constexpr int n_derived = {N_DERIVED};" in text
        assert "constexpr int n_inputs = n_features + n_derived;" in text
        head = [ln for ln in text.splitlines() if ln.startswith("//")]
        for d in config.derived:
            assert f"//   {d.name} := {d.fit or d.expression}" in head, d
            assert re.search(rf"in\[\d+\] = .*;  // {d.name}$", text, re.M), d
        kick = next(d for d in config.derived if d.name == "kick")
        assert kick.fit and "residual" not in kick.fit and "residual" not in text
        for op in ("detail::minimum(", "detail::maximum(", "fabsf(", "logf(", "sqrtf(",
                   "detail::mul(", " / ", "(-"):
            assert op in text, op


@pytest.mark.parametrize("name", ["float", "int8"])
def test_the_header_with_derived_inputs_agrees_with_onnxruntime(derived_models, tmp_path, name):
    """The test split and 200,000 generated tracks.  Float: to 1e-6.  INT8: every
    first-layer input code onnxruntime's but on at most 1 track in 20,000 (one code
    step, where onnxruntime's vectorized log differs from the C library's in the last
    bit: the standardization's and the derived inputs' log), and every track with the
    same codes to float rounding."""
    base = derived_models[name]
    header, onnx_file = base.with_suffix(".hpp"), base.with_suffix(".onnx")
    x = np.concatenate([load_split(derived_models["prefix"], "test")[0], _generated(200_000)])
    got = compile_and_run(header, base.name, x, tmp_path).astype(np.float64)
    want = ort.InferenceSession(str(onnx_file)).run(None, {"features": x})[0].ravel()
    assert np.isfinite(got).all() and np.isfinite(want).all()
    diff = np.abs(got - want)
    if name == "float":
        print(f"float header vs onnxruntime, derived inputs: max {diff.max():.2e} on "
              f"{len(x):,} tracks")
        assert diff.max() < 1e-6, diff.max()
        return
    codes = _header_codes(header, x, tmp_path)
    steps = np.abs(codes - _onnx_codes(onnx_file, x))
    off = np.flatnonzero(steps.any(axis=1))
    print(f"INT8 header vs onnxruntime, derived inputs: {len(off)} of {len(x):,} tracks one "
          f"code apart (inputs {sorted({int(j) for j in np.nonzero(steps[off])[1]})}), "
          f"probability by {diff[off].max() if len(off) else 0:.2e}; the others "
          f"max {np.delete(diff, off).max():.2e}")
    assert len(off) <= len(x) / 20_000, len(off)
    assert steps.max() <= 1  # one code step (a log of chi2 can move chi2's and lchi's)
    assert np.delete(diff, off).max() < 1e-6


def test_nonfinite_raw_or_derived_inputs_give_nan_in_every_engine(derived_models, tmp_path):
    """NaN, +inf and -inf in a raw feature, and finite raw features that make a
    derived input NaN or infinite (ndof = 0: chi2 / ndof = inf, 0 / 0; log and sqrt
    of a negative; an overflowing product or difference): NaN from the torch model,
    onnxruntime and the header, float and INT8; the other tracks finite."""
    import torch

    from architecture import ModelConfig
    from features import features_for
    from models import load_model
    col = {n: j for j, n in enumerate(features_for("matching"))}
    raw = [{"chi2": np.nan}, {"qop": np.inf}, {"pr_match_dx": -np.inf}, {"ndof": np.nan},
           {"n_velo": np.inf}, {"first_qop": -np.inf}, {"pr_match_dtx": np.nan}]
    derived = [{"ndof": 0.0}, {"ndof": 0.0, "chi2": 0.0}, {"first_qop": 0.0},
               {"chi2": -5.0}, {"n_velo": -4.0}, {"best_pt": 3e38, "qop": 10.0},
               {"pr_match_dx": 3e38, "pr_match_dy": -3e38}]
    x = load_split(derived_models["prefix"], "test")[0][:40].copy()
    for row, values in enumerate(raw + derived):
        for name, value in values.items():
            x[row, col[name]] = value
    bad = len(raw) + len(derived)
    assert np.isfinite(x[len(raw):]).all()  # raw values finite from here on
    config = ModelConfig.from_dict(load_config(f"{derived_models['float']}_config.json"))
    assert not np.isfinite(config.extend(x)[len(raw):bad]).all(axis=1).any()
    for name in ("float", "int8"):
        base = derived_models[name]
        config = ModelConfig.from_dict(load_config(f"{base}_config.json"))
        model = load_model(config, torch.load(f"{base}.pth", weights_only=True))
        with torch.inference_mode():
            engines = {"torch": model(torch.from_numpy(x)).numpy().ravel(),
                       "onnxruntime": ort.InferenceSession(f"{base}.onnx").run(
                           None, {"features": x})[0].ravel(),
                       "header": compile_and_run(base.with_suffix(".hpp"), base.name, x,
                                                 tmp_path)}
        for engine, p in engines.items():
            assert np.isnan(p[:bad]).all(), (name, engine, p[:bad])
            assert np.isfinite(p[bad:]).all(), (name, engine)


def test_export_cpp_with_derived_inputs_from_onnx_and_pth_gives_the_same_header(derived_models,
                                                                              tmp_path):
    for name in ("float", "int8"):
        base = derived_models[name]
        stem = base.name
        a, b = tmp_path / f"{stem}.hpp", tmp_path / "pth" / f"{stem}.hpp"
        b.parent.mkdir(exist_ok=True)
        assert inference.main(["--model", f"{base}.onnx", "--export-cpp", str(a)]) == 0
        assert inference.main(["--model", f"{base}.pth", "--config", f"{base}_config.pkl",
                               "--export-cpp", str(b)]) == 0
        want = base.with_suffix(".hpp").read_text().splitlines()
        for path in (a, b):
            got = path.read_text().splitlines()
            assert [ln for ln in got if not ln.startswith("// Generated")] == \
                [ln for ln in want if not ln.startswith("// Generated")], path
