"""Writers that fail cleanly, and the writing side's edge cases of issue #16.

- A full disk at each write (a small tmpfs mounted by the test, else a simulated
  limit on the size of written files): make_sample.py -o, inference.py --output
  (.root, .npy) and every file of --plots-dir; each run ends with exit 2, one
  `error:` line naming the output, no traceback, no temporary and no half file.
- inference.py --ranking --no-plots; values near float32's maximum; the C++ header
  (NaN for +-inf and NaN features, a namespace that compiles whatever the file
  name, written only with the run's other outputs); --calibrate's refusals; the
  guard rails on one track and on a feature that is nowhere finite; the same input
  given twice; --compare with an unsuitable model refused before the long work.
"""
import json
import os
import re
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT_DIR, assert_clean_error, run_script
from features import DEFAULT_TREE, features_for

MATCHING = features_for("matching")
CXX = shutil.which("g++") or shutil.which("c++")
PAGE = 4096


# ---------------------------------------------------------------------------
# models, briefly trained, and small inputs
# ---------------------------------------------------------------------------

def _train(prefix, config, steps=150):
    import torch

    import models
    from architecture import ModelConfig
    from dataset import load_split
    torch.manual_seed(0)
    x, y = load_split(prefix, "train")
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    model = models.build_model(ModelConfig.from_dict(config))
    if config.get("int8"):
        model.set_int8(True, observing=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(x), (512,), generator=gen)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model.logits(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if config.get("int8"):
        model.set_int8(True)  # freeze the observed ranges
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory, raw_dataset):
    """net1 (float, standardized inside, with its training ranges), int8 (the same,
    quantized) and forward (8 inputs, untrained): .onnx paths."""
    import models as nets
    from architecture import ModelConfig
    from artifacts import SavedConfig, onnx_bytes
    from dataset import load_meta, load_split
    d = tmp_path_factory.mktemp("writer_models")
    meta = load_meta(raw_dataset)
    train, _ = load_split(raw_dataset, "train")
    ranges = {n: [float(train[:, j].min()), float(train[:, j].max())]
              for j, n in enumerate(meta.features)}
    base = {"n_features": 13, "l0": 16, "activation": "relu", "track": "matching",
            "features": meta.features, "normalization": meta.normalization.to_dict(),
            "inputs": "standard", "standardization": meta.standardization.to_dict(),
            "threshold": 0.5, "network": 1, "int8": False, "training_ranges": ranges,
            "ghost_fraction": 0.15}
    paths = {}
    for name, extra in (("net1", {}), ("int8", {"int8": True})):
        config = {**base, **extra}
        paths[name] = str(d / f"{name}.onnx")
        with open(paths[name], "wb") as f:
            f.write(onnx_bytes(_train(raw_dataset, config), SavedConfig.from_dict(config)))
    forward = {**base, "n_features": 8, "track": "forward", "features": features_for("forward"),
               "inputs": "minmax", "normalization": {"offsets": [0.0] * 8, "scales": [1.0] * 8},
               "standardization": None, "training_ranges": None}
    paths["forward"] = str(d / "forward.onnx")
    with open(paths["forward"], "wb") as f:
        f.write(onnx_bytes(nets.build_model(ModelConfig.from_dict(forward)).eval(),
                           SavedConfig.from_dict(forward)))
    return paths


def _write(path, cols):
    from rootwrite import write_root
    write_root(str(path), DEFAULT_TREE, cols)
    return str(path)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """5,000 matching tracks, every feature finite, with the label and the limit."""
    from make_sample import generate
    return _write(tmp_path_factory.mktemp("small") / "small.root",
                  generate(5000, "matching", seed=11, nonfinite=0))


def _lines(text, prefix):
    return [ln for ln in text.splitlines() if ln.startswith(prefix)]


# ---------------------------------------------------------------------------
# a full disk at each write
# ---------------------------------------------------------------------------

class SmallDisk:
    """A folder on a small tmpfs that the test mounts, filled up to leave `free`
    bytes; where mounting is not allowed, a plain folder, and each run gets a limit
    on the size of every file it writes instead (RLIMIT_FSIZE: writes beyond it fail
    with EFBIG, as on a full disk they fail with ENOSPC)."""

    def __init__(self, path):
        self.path = path
        path.mkdir()
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
                               capture_output=True, text=True)
        self.mounted = mount.returncode == 0
        self.limit = None
        self.filler = path / ".filler"

    def fill(self, free, limit=None):
        """Leave `free` bytes (a multiple of PAGE) on the tmpfs; without one, limit
        each file to `limit` bytes (default `free`)."""
        if not self.mounted:
            self.limit = max(limit or free, PAGE // 2)
            return
        st = os.statvfs(self.path)
        with open(self.filler, "wb") as f:
            f.write(b"\0" * (st.f_bavail * st.f_frsize - free))
        st = os.statvfs(self.path)
        assert st.f_bavail * st.f_frsize == free

    @property
    def why(self):
        return "No space left on device" if self.mounted else "File too large"

    def run(self, script, *args):
        def limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.limit))
        return subprocess.run([sys.executable, os.path.join(ROOT_DIR, script),
                               *map(str, args)], capture_output=True, text=True,
                              timeout=600, preexec_fn=limit if self.limit else None)

    def files(self):
        """Every file on it but the filler: temporaries and outputs alike."""
        return sorted(os.path.relpath(os.path.join(d, n), self.path)
                      for d, _, names in os.walk(self.path) for n in names
                      if os.path.join(d, n) != str(self.filler))

    def close(self):
        if self.mounted:
            subprocess.run(["umount", str(self.path)], check=True)


@pytest.fixture
def disk(tmp_path):
    d = SmallDisk(tmp_path / "disk")
    yield d
    d.close()


def _pages(size):
    return -(-size // PAGE) * PAGE


# inference.py --no-plots writes its plots folder in this order
PLOTS_ORDER = ["metrics.json", "thresholds.csv", "comparison.csv", "results.root",
               "index.html"]


@pytest.fixture(scope="module")
def plots_sizes(models, small_file, tmp_path_factory):
    """The size of each file of a --no-plots run's plots folder."""
    plots = tmp_path_factory.mktemp("reference") / "plots"
    proc = run_script("inference.py", "-f", small_file, "--model", models["net1"],
                      "--plots-dir", plots, "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(plots)) == sorted(PLOTS_ORDER)
    return {name: os.path.getsize(plots / name) for name in PLOTS_ORDER}


def _assert_nothing_left(disk, proc, output):
    """Exit 2, one error line, no traceback, and nothing on the disk: no temporary,
    no half file.  The error names the output and the system's reason (on a
    simulated full disk, numpy's short writes carry no reason)."""
    needles = [output, disk.why] if output.endswith(".root") or disk.mounted else [output]
    assert_clean_error(proc, "could not write", *needles)
    assert disk.files() == [], disk.files()


@pytest.mark.parametrize("fmt", ["ttree", "rntuple"])
def test_full_disk_make_sample(disk, fmt):
    disk.fill(4 * PAGE)
    out = disk.path / "sample.root"
    proc = disk.run("make_sample.py", "-o", out, "--tracks", 5000, "--format", fmt)
    _assert_nothing_left(disk, proc, str(out))


@pytest.mark.parametrize("ext", ["root", "npy"])
def test_full_disk_inference_output(disk, models, small_file, tmp_path, ext):
    disk.fill(2 * PAGE)
    out = disk.path / f"probabilities.{ext}"
    proc = disk.run("inference.py", "-f", small_file, "--model", models["net1"],
                    "--output", out, "--plots-dir", tmp_path / "plots", "--no-plots")
    _assert_nothing_left(disk, proc, str(out))
    assert not os.path.exists(tmp_path / "plots") or os.listdir(tmp_path / "plots") == []


@pytest.mark.parametrize("target", PLOTS_ORDER)
def test_full_disk_at_each_file_of_the_plots_folder(disk, models, small_file, plots_sizes,
                                                    target):
    before = PLOTS_ORDER[:PLOTS_ORDER.index(target)]
    disk.fill(sum(_pages(plots_sizes[name]) for name in before),
              limit=plots_sizes[target] // 2)
    plots = disk.path / "plots"
    proc = disk.run("inference.py", "-f", small_file, "--model", models["net1"],
                    "--plots-dir", plots, "--no-plots")
    # with a limit per file instead, the first file over it fails
    _assert_nothing_left(disk, proc, str(plots / target) if disk.mounted else str(plots))


def test_full_disk_while_drawing_the_figures(disk, models, small_file, plots_sizes):
    disk.fill(sum(_pages(size) for size in plots_sizes.values()), limit=2 * PAGE)
    plots = disk.path / "plots"
    proc = disk.run("inference.py", "-f", small_file, "--model", models["net1"],
                    "--plots-dir", plots)
    _assert_nothing_left(disk, proc, str(plots))


def test_root_writes_keep_types_and_entries(tmp_path):
    """The writer that replaced RDataFrame's Snapshot: every numpy type as its ROOT
    type, TTree and RNTuple, entries in order, an empty tree."""
    import rootio
    import rootwrite
    rng = np.random.default_rng(0)
    cols = {"f": rng.normal(size=1000).astype(np.float32), "d": rng.normal(size=1000),
            "i": rng.integers(-5, 5, 1000).astype(np.int32),
            "l": rng.integers(0, 1 << 40, 1000), "b": rng.random(1000) < 0.5,
            "u8": rng.integers(0, 255, 1000).astype(np.uint8)}
    want = {"f": "float32", "d": "float64", "i": "int32", "l": "int64", "b": "bool",
            "u8": "uint8"}
    for fmt in ("ttree", "rntuple"):
        path = str(tmp_path / f"{fmt}.root")
        rootwrite.write_root(path, "dir/sub/t", cols, fmt=fmt, zstd_level=1)
        info = rootio.inspect_tree(path, "dir/sub/t")
        assert info.kind == ("TTree" if fmt == "ttree" else "RNTuple")
        assert info.entries == 1000 and info.columns == want
        back = rootio.read_root([path], "dir/sub/t", list(cols))
        for name, values in cols.items():
            np.testing.assert_array_equal(back[name], values.astype(np.float32))
        rootwrite.write_root(path, "t", {k: v[:0] for k, v in cols.items()}, fmt=fmt)
        assert rootio.inspect_tree(path, "t").entries == 0
    with pytest.raises(rootio.GhostError, match="complex128"):
        rootwrite.write_root(str(tmp_path / "c.root"), "t", {"c": np.zeros(3, complex)})
    assert not os.path.exists(tmp_path / "c.root")


# ---------------------------------------------------------------------------
# inference.py: --ranking --no-plots, values near float32's maximum
# ---------------------------------------------------------------------------

def test_ranking_without_figures(models, small_file, tmp_path):
    out, plots = tmp_path / "p.npy", tmp_path / "plots"
    proc = run_script("inference.py", "-f", small_file, "--model", models["net1"], "--ranking",
                      "--no-plots", "--output", out, "--plots-dir", plots)
    assert proc.returncode == 0, proc.stderr
    assert len(np.load(out)) == 5000
    assert {"ranking.csv", "metrics.json", "index.html"} <= set(os.listdir(plots))
    assert not [n for n in os.listdir(plots) if n.endswith((".png", ".pdf"))]
    assert len(json.loads((plots / "metrics.json").read_text())["ranking"]) == 13


def test_values_near_float32_max_are_left_out_like_non_finite_tracks(models, tmp_path):
    from make_sample import generate
    cols = generate(20000, "matching", seed=12, nonfinite=0)
    huge = np.random.default_rng(0).permutation(20000)[:200]
    cols["qop"][huge[:100]], cols["qop"][huge[100:]] = 3e38, -3e38
    path = _write(tmp_path / "huge.root", cols)
    out, plots = tmp_path / "p.npy", tmp_path / "plots"
    proc = run_script("inference.py", "-f", path, "--model", models["net1"], "--output", out,
                      "--plots-dir", plots, "--no-plots")
    assert proc.returncode == 0, proc.stderr
    warning = [ln for ln in _lines(proc.stderr, "warning:") if "float32" in ln]
    assert len(warning) == 1 and "200 tracks" in warning[0] and "qop" in warning[0], \
        proc.stderr
    p = np.load(out)
    nan = np.flatnonzero(np.isnan(p))
    assert sorted(nan) == sorted(huge)
    assert ((p[np.isfinite(p)] >= 0) & (p[np.isfinite(p)] <= 1)).all()
    metrics = json.loads((plots / "metrics.json").read_text())
    assert metrics["tracks_labelled"] == 19800 and metrics["tracks_nonfinite"] == 200


# ---------------------------------------------------------------------------
# the C++ header
# ---------------------------------------------------------------------------

DRIVER = r"""
#include <cstdio>
#include <vector>
#include HEADER
int main(int argc, char** argv) {
    std::FILE* in = std::fopen(argv[1], "rb");
    std::vector<float> x(NAMESPACE::n_features);
    std::vector<float> p;
    while (std::fread(x.data(), sizeof(float), x.size(), in) == x.size())
        p.push_back(NAMESPACE::ghost_probability(x.data()));
    std::fclose(in);
    std::FILE* out = std::fopen(argv[2], "wb");
    std::fwrite(p.data(), sizeof(float), p.size(), out);
    std::fclose(out);
    return 0;
}
"""


def _export(model, header):
    """inference.py --export-cpp: the namespace it reports."""
    proc = run_script("inference.py", "--model", model, "--export-cpp", header)
    assert proc.returncode == 0, proc.stderr
    return re.search(r"C\+\+ namespace (\S+),", proc.stdout).group(1)


def _compile_and_run(header, namespace, x, tmp_path, opt="-O1"):
    assert CXX, "a C++ compiler (g++) is needed: ROOT needs one too"
    driver, exe = tmp_path / "driver.cpp", tmp_path / "score"
    driver.write_text(DRIVER)
    build = subprocess.run([CXX, opt, "-std=c++17", "-Wall", f"-I{header.parent}",
                            f'-DHEADER="{header.name}"', f"-DNAMESPACE={namespace}",
                            str(driver), "-o", str(exe)], capture_output=True, text=True,
                           timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    x.astype(np.float32).tofile(tmp_path / "x.bin")
    subprocess.run([str(exe), str(tmp_path / "x.bin"), str(tmp_path / "p.bin")], check=True,
                   timeout=120)
    return np.fromfile(tmp_path / "p.bin", dtype=np.float32)


@pytest.mark.parametrize("name", ["net1", "int8"])
def test_the_header_gives_nan_for_infinite_and_nan_features(models, raw_dataset, tmp_path,
                                                           name):
    import onnxruntime as ort

    from dataset import load_split
    header = tmp_path / f"{name}.hpp"
    namespace = _export(models[name], header)
    x = load_split(raw_dataset, "test")[0][:8].copy()
    for row, (col, value) in enumerate([(0, np.inf), (12, -np.inf), (4, np.nan),
                                        (1, np.inf), (5, -np.inf)]):
        x[row, col] = value
    got = _compile_and_run(header, namespace, x, tmp_path)
    assert np.isnan(got[:5]).all(), got
    want = ort.InferenceSession(models[name]).run(None, {"features": x[5:]})[0].ravel()
    assert np.abs(got[5:] - want).max() < 1e-6


@pytest.mark.parametrize("stem", ["1model", "class", "my-model.v2", "int", "__x", "std"])
def test_export_cpp_namespace_compiles_whatever_the_file_name(models, raw_dataset, tmp_path,
                                                               stem):
    from dataset import load_split
    header = tmp_path / f"{stem}.hpp"
    namespace = _export(models["net1"], header)
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", namespace) and "__" not in namespace
    x = load_split(raw_dataset, "test")[0][:3]
    assert np.isfinite(_compile_and_run(header, namespace, x, tmp_path, opt="-O0")).all()


def test_export_cpp_is_written_only_with_a_run_that_succeeds(models, tmp_path):
    from make_sample import generate
    empty = _write(tmp_path / "empty.root", {k: v[:0] for k, v in generate(10).items()})
    header = tmp_path / "model.hpp"
    proc = run_script("inference.py", "-f", empty, "--model", models["net1"], "--export-cpp",
                      header, "--plots-dir", tmp_path / "plots")
    assert_clean_error(proc, "holds no tracks")
    assert not header.exists() and os.listdir(tmp_path) == ["empty.root"]


def test_export_cpp_with_a_run_writes_the_header_with_its_outputs(models, small_file,
                                                                   tmp_path):
    header, out = tmp_path / "model.hpp", tmp_path / "p.npy"
    proc = run_script("inference.py", "-f", small_file, "--model", models["net1"],
                      "--export-cpp", header, "--output", out, "--plots-dir",
                      tmp_path / "plots", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert "namespace model {" in header.read_text() and out.exists()
    assert str(header) in _lines(proc.stdout, "wrote ")[-1]


# ---------------------------------------------------------------------------
# --calibrate, guard rails, the same file twice, --compare
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--calibrate"], "--calibrate needs --output"),
    (["--calibrate", "0.2"], "--calibrate needs --output"),
    (["--calibrate", "0.1,0.3", "--output", "p.npy"], "one ghost fraction"),
])
def test_calibrate_refusals(models, small_file, tmp_path, args, needle):
    proc = run_script("inference.py", "-f", small_file, "--model", models["net1"],
                      "--plots-dir", "plots", *args, cwd=tmp_path)
    assert_clean_error(proc, needle)
    assert "read " not in proc.stdout and os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_a_feature_nowhere_finite_is_named_as_such(models, tmp_path, value):
    from make_sample import generate
    cols = generate(3000, "matching", seed=13, nonfinite=0)
    cols["chi2"][:] = value
    path = _write(tmp_path / "bad.root", cols)
    proc = run_script("inference.py", "-f", path, "--model", models["net1"], "--plots-dir",
                      tmp_path / "plots", "--output", tmp_path / "p.npy")
    what = "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
    assert_clean_error(proc, "chi2", f"{what} for every track")
    assert "0 for every track" not in proc.stderr
    assert not (tmp_path / "p.npy").exists()


def test_one_track_is_scored(models, tmp_path):
    from make_sample import generate
    path = _write(tmp_path / "one.root", generate(1, "matching", seed=14, nonfinite=0))
    out = tmp_path / "p.npy"
    proc = run_script("inference.py", "-f", path, "--model", models["net1"], "--output", out,
                      "--plots-dir", tmp_path / "plots")
    assert proc.returncode == 0, proc.stderr
    assert "constant" not in proc.stderr
    p = np.load(out)
    assert p.shape == (1,) and 0 <= p[0] <= 1


def test_the_same_file_twice_is_read_once(models, small_file, tmp_path):
    import make_dataset
    from dataset import load_split
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(small_file, folder / "a.root")
    os.symlink(folder / "a.root", folder / "link.root")
    once = tmp_path / "once"
    assert make_dataset.main(["-f", str(folder / "a.root"), "--output", str(once),
                              "--track", "matching"]) in (0, None)
    for i, inputs in enumerate((["in/a.root", "./in/a.root"], ["in/a.root", "in/link.root"])):
        prefix = tmp_path / f"twice{i}"
        proc = run_script("make_dataset.py", "-f", *inputs, "--output", prefix, "--track",
                          "matching", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        warning = _lines(proc.stderr, "warning:")
        assert len(warning) == 1 and "a.root" in warning[0] and "once" in warning[0], \
            proc.stderr
        train, test = load_split(str(prefix), "train")[0], load_split(str(prefix), "test")[0]
        seen = {row.tobytes() for row in train}
        assert sum(row.tobytes() in seen for row in test) <= 2  # chance coincidences only
        for split in ("train", "test"):
            assert len(load_split(str(prefix), split)[0]) == len(load_split(str(once),
                                                                            split)[0])
    # inference on it: the test split holds each track once, as from the file alone
    proc = run_script("inference.py", "-f", tmp_path / "twice1", "--model", models["net1"],
                      "--plots-dir", tmp_path / "plots", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "plots" / "metrics.json").read_text())
    assert metrics["tracks"] == len(load_split(str(once), "test")[0])


@pytest.mark.parametrize("kind", ["width", "junk", "missing"])
def test_compare_with_an_unsuitable_model_is_refused_before_reading(models, small_file,
                                                                    tmp_path, kind):
    other = {"width": models["forward"], "junk": str(tmp_path / "junk.onnx"),
             "missing": str(tmp_path / "missing.onnx")}[kind]
    (tmp_path / "junk.onnx").write_bytes(b"not a model\n" * 10)
    proc = run_script("inference.py", "-f", small_file, "--model", models["net1"],
                      "--compare", other, "--output", tmp_path / "p.npy",
                      "--plots-dir", tmp_path / "plots")
    assert_clean_error(proc, other)
    assert "read " not in proc.stdout and "scored" not in proc.stdout, proc.stdout
    assert sorted(os.listdir(tmp_path)) == ["junk.onnx"]
