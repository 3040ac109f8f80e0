"""From the trained model to HLT1: the C++ header (compiled and compared with
onnxruntime), --export-cpp, and provenance in every artifact."""
import json
import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import inference
import training
from artifacts import METADATA_KEY, load_config
from dataset import load_split

DRIVER = r"""
// reads n x n_features float32 from argv[1], writes n float32 probabilities to argv[2]
#include <cstdio>
#include <vector>
#include HEADER
int main(int argc, char** argv) {
    std::FILE* in = std::fopen(argv[1], "rb");
    std::vector<float> x;
    float buf[4096];
    std::size_t got;
    while ((got = std::fread(buf, sizeof(float), 4096, in)) > 0) x.insert(x.end(), buf, buf + got);
    std::fclose(in);
    const std::size_t n = x.size() / NAMESPACE::n_features;
    std::vector<float> p(n);
    for (std::size_t t = 0; t < n; ++t)
        p[t] = NAMESPACE::ghost_probability(&x[t * NAMESPACE::n_features]);
    std::FILE* out = std::fopen(argv[2], "wb");
    std::fwrite(p.data(), sizeof(float), n, out);
    std::fclose(out);
    return 0;
}
"""
CXX = shutil.which("g++") or shutil.which("c++")


@pytest.fixture(scope="module")
def saved(raw_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    out = tmp / "models"
    training.main(["-f", raw_dataset, "-n", "1", "--epochs", "2", "--cpu", "1", "--int8",
                   "--path", str(tmp / "ray"), "--save", "--output-dir", str(out)])
    return out


def _compile_and_run(header, namespace, x, tmp_path):
    (tmp_path / "driver.cpp").write_text(DRIVER)
    exe = tmp_path / f"score_{namespace}"
    build = subprocess.run([CXX, "-O2", "-std=c++17", f"-I{header.parent}",
                            f'-DHEADER="{header.name}"', f"-DNAMESPACE={namespace}",
                            str(tmp_path / "driver.cpp"), "-o", str(exe)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    x.astype(np.float32).tofile(tmp_path / "x.bin")
    subprocess.run([str(exe), str(tmp_path / "x.bin"), str(tmp_path / "p.bin")], check=True,
                   timeout=120)
    return np.fromfile(tmp_path / "p.bin", dtype=np.float32)


@pytest.mark.parametrize("stem", ["ghost_model", "ghost_model_int8"])
def test_the_header_compiles_and_matches_onnxruntime(saved, raw_dataset, tmp_path, stem):
    assert CXX, "a C++ compiler (g++) is needed: ROOT needs one too"
    x, _ = load_split(raw_dataset, "test")
    x = x[:3000]  # finite: the dataset dropped the non-finite tracks
    got = _compile_and_run(saved / f"{stem}.hpp", stem, x, tmp_path)
    want = ort.InferenceSession(str(saved / f"{stem}.onnx")).run(
        None, {"features": x})[0].ravel()
    assert got.shape == want.shape and np.isfinite(got).all()
    # float: to 1e-6; INT8: every integer code the same, so the probabilities agree to
    # the float rounding of the last layer's logit (one code apart would be > 1e-4)
    assert np.abs(got - want).max() < 1e-6, np.abs(got - want).max()
    nan = x[:5].copy()
    nan[2, 4] = np.nan
    p = _compile_and_run(saved / f"{stem}.hpp", stem, nan, tmp_path)
    assert np.isnan(p[2]) and np.isfinite(np.delete(p, 2)).all()


def test_the_int8_header_holds_integer_arithmetic(saved):
    import re
    text = (saved / "ghost_model_int8.hpp").read_text()
    config = load_config(str(saved / "ghost_model_int8_config.json"))
    assert "constexpr bool int8 = true;" in text and "std::int32_t acc" in text
    weights = re.findall(r"static constexpr int w(\d+)\[(\d+)\]\[(\d+)\] = \{(.*?)\};", text,
                         re.S)
    assert len(weights) == len(config["hidden"]) + 1  # one integer matrix per layer
    for _, rows, cols, body in weights:
        codes = [int(v) for v in re.findall(r"-?\d+", body)]
        assert len(codes) == int(rows) * int(cols)
        assert max(abs(c) for c in codes) <= 63  # 7-bit, as in the ONNX file


def test_export_cpp_from_onnx_and_pth_gives_the_same_header(saved, tmp_path):
    for stem in ("ghost_model", "ghost_model_int8"):
        a, b = tmp_path / f"{stem}_a.hpp", tmp_path / f"{stem}_b.hpp"
        assert inference.main(["--model", str(saved / f"{stem}.onnx"), "--export-cpp",
                               str(a)]) == 0
        assert inference.main(["--model", str(saved / f"{stem}.pth"), "--config",
                               str(saved / f"{stem}_config.pkl"), "--export-cpp", str(b)]) == 0
        body = [ln for ln in (saved / f"{stem}.hpp").read_text().splitlines()
                if not ln.startswith("//")]

        for path, name in ((a, f"{stem}_a"), (b, f"{stem}_b")):
            lines = [ln.replace(name, stem) for ln in path.read_text().splitlines()
                     if not ln.startswith("//")]
            assert lines == body, path


PROVENANCE = ("toolkit", "commit", "created", "python", "torch", "onnx", "dataset",
              "search", "hyperparameters", "test_metrics")


def test_provenance_in_every_artifact(saved, raw_dataset):
    config = load_config(str(saved / "ghost_model_config.json"))
    prov = config["provenance"]
    assert set(PROVENANCE) <= set(prov)
    assert prov["toolkit"].startswith("ghost-tracks ") and prov["commit"]
    assert prov["dataset"]["input_files"] and prov["dataset"]["seed"] == 42
    assert prov["dataset"]["counts"]["test"]["ghost"] > 0
    assert prov["hyperparameters"]["hidden"] == config["hidden"]
    assert prov["test_metrics"]["auc"] == config["metrics"]["test"]["auc"]
    int8 = load_config(str(saved / "ghost_model_int8_config.json"))
    assert int8["provenance"]["test_metrics"]["auc"] == int8["metrics"]["test"]["auc"]
    proto = onnx.load(str(saved / "ghost_model.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["provenance"]) == prov
    assert json.loads(props[METADATA_KEY])["provenance"] == prov
    assert proto.producer_name == "ghost-tracks" and prov["commit"] in proto.producer_version
    header = (saved / "ghost_model.hpp").read_text()
    for key in PROVENANCE:
        assert f"// {key}: " in header, key
