import json
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import trainer
import training
from architecture import ModelConfig, macs_and_params
from artifacts import METADATA_KEY, load_config, onnx_record
from conftest import ROOT_DIR, assert_clean_error, run_script
from dataset import load_split
from models import build_model, load_model
from search import ARCHITECTURES, best_trial
from utils import GhostError

ARTIFACTS = ["ghost_model.pth", "ghost_model_config.pkl", "ghost_model_config.json",
             "ghost_model.onnx", "ghost_model.hpp", "ghost_model_int8.pth",
             "ghost_model_int8_config.pkl", "ghost_model_int8_config.json",
             "ghost_model_int8.onnx", "ghost_model_int8.hpp"]
SEARCH = ["-n", "2", "--epochs", "2", "--batch", "512", "--cpu", "1", "--seed", "3"]


def search(prefix, tmp, *extra):
    out = tmp / "models"
    training.main(["-f", prefix, *SEARCH, "--path", str(tmp / "ray"), "--save",
                   "--output-dir", str(out), *extra])
    return out


@pytest.fixture(scope="module")
def trained(raw_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    return search(raw_dataset, tmp, "--int8")


def test_search_writes_all_artifacts(trained):
    for name in ARTIFACTS:
        assert (trained / name).is_file(), name
    assert not list(trained.glob("*.data")) and not list(trained.glob(".*tmp*"))


def test_config_is_plain_and_complete(trained, raw_dataset):
    config = load_config(str(trained / "ghost_model_config.pkl"))
    assert config == json.load(open(trained / "ghost_model_config.json"))
    meta = json.load(open(raw_dataset + "_features.json"))
    assert config["features"] == meta["features"] and config["track"] == "matching"
    assert config["normalization"] == meta["normalization"] and config["network"] == 1
    assert config["standardization"] == meta["standardization"]
    assert config["inputs"] == "standard"  # network 1's default first layer
    assert tuple(config["hidden"]) in ARCHITECTURES and config["l0"] == config["hidden"][0]
    assert (config["macs"], config["params"]) == macs_and_params(13, config["hidden"])
    assert config["macs"] <= 20000  # the default --max-macs
    assert config["optimizer"] == "adamw" and config["schedule"] == "onecycle"
    assert config["batch"] == 512 and config["weight_decay"] > 0
    assert config["int8"] is False and config["threshold"] == 0.5
    assert 0.5 < config["metrics"]["test"]["auc"] <= 1.0
    assert load_config(str(trained / "ghost_model_int8_config.pkl"))["int8"] is True


def test_onnx_matches_torch_and_describes_itself(trained, raw_dataset):
    config = load_config(str(trained / "ghost_model_config.pkl"))
    state = torch.load(trained / "ghost_model.pth", weights_only=True)
    model = load_model(ModelConfig.from_dict(config), state)
    x, _ = load_split(raw_dataset, "test")  # raw branch values: network 1
    proto = onnx.load(str(trained / "ghost_model.onnx"))
    assert [i.name for i in proto.graph.input] == ["features"]
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 13
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["track"] == "matching" and props["network"] == "1"
    assert props["features"].split(",") == config["features"]
    assert json.loads(props["normalization"]) == config["normalization"]
    assert float(props["threshold"]) == 0.5 and METADATA_KEY in props
    assert onnx_record(proto)["l0"] == config["l0"]
    session = ort.InferenceSession(str(trained / "ghost_model.onnx"))
    got = session.run(None, {"features": x})[0]
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    assert got.shape == (len(x), 1)
    assert np.abs(got - want).max() < 1e-5
    from onnx2torch import convert
    with torch.inference_mode():
        converted = convert(proto)(torch.from_numpy(x)).numpy()
    assert np.abs(converted - want).max() < 1e-5


def test_int8_artifacts_load_and_run(trained, raw_dataset):
    x, y = load_split(raw_dataset, "test")
    proto = onnx.load(str(trained / "ghost_model_int8.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    got = ort.InferenceSession(str(trained / "ghost_model_int8.onnx")).run(
        None, {"features": x})[0]
    config = load_config(str(trained / "ghost_model_int8_config.pkl"))
    model = load_model(ModelConfig.from_dict(config),
                       torch.load(trained / "ghost_model_int8.pth", weights_only=True))
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    # one INT8 rounding step of the logit can differ between runtimes
    assert np.mean(np.abs(got - want) < 1e-3) > 0.99
    accuracy = np.mean((got > 0.5) == (y > 0.5))
    assert accuracy > 0.6


def _int8_session(path, optimized):
    opts = ort.SessionOptions()
    if not optimized:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_int8_onnx_weights_are_7_bit(trained):
    """Every quantized weight is an integer in [-63, 63]: pairs of u8 x s8 products then
    fit the 16-bit sums of onnxruntime's AVX2 kernels (no VNNI), so no CPU saturates."""
    from onnx import numpy_helper
    proto = onnx.load(str(trained / "ghost_model_int8.onnx"))
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:  # constants may also come as Constant nodes
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    weights = [n for n in proto.graph.node
               if n.op_type == "QuantizeLinear" and n.input[0] in consts]
    config = load_config(str(trained / "ghost_model_int8_config.pkl"))
    assert len(weights) == len(config["hidden"]) + 1  # one per linear layer
    for node in weights:
        w, scale = consts[node.input[0]], consts[node.input[1]]
        q = np.round(w / scale)
        assert consts[node.input[2]].dtype == np.int8 and not consts[node.input[2]].any()
        assert q.min() >= -63 and q.max() <= 63, (q.min(), q.max())
        assert q.max() == 63 or q.min() == -63  # the range is used, not wasted


def test_int8_onnxruntime_same_with_and_without_graph_optimizations(trained, raw_dataset):
    """The fused integer kernels (optimizations on) compute what the plain Q/DQ graph
    computes, as tightly as torch and onnxruntime must agree: the same on every CPU."""
    x, _ = load_split(raw_dataset, "test")
    path = trained / "ghost_model_int8.onnx"
    fused = _int8_session(path, optimized=True).run(None, {"features": x})[0]
    plain_graph = _int8_session(path, optimized=False).run(None, {"features": x})[0]
    assert np.mean(np.abs(fused - plain_graph) < 1e-3) > 0.99


def test_seed_reproducibility(raw_dataset, tmp_path, trained):
    again = search(raw_dataset, tmp_path, "--int8")
    a = torch.load(trained / "ghost_model.pth", weights_only=True)
    b = torch.load(again / "ghost_model.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first, second = (load_config(str(folder / "ghost_model_config.pkl"))
                     for folder in (trained, again))
    # the same config, provenance included, but for when each run saved it
    assert first["provenance"].pop("created") <= second["provenance"].pop("created")
    assert first == second


def test_network0_on_normalized_dataset(norm_dataset, tmp_path):
    out = tmp_path / "m0"
    training.main(["-f", norm_dataset, "-n", "1", "--epochs", "1", "--batch", "512",
                   "--cpu", "1", "--path", str(tmp_path / "ray"), "--save",
                   "--output-dir", str(out)])
    config = load_config(str(out / "ghost_model_config.pkl"))
    assert config["network"] == 0
    model = build_model(ModelConfig.from_dict(config))
    assert isinstance(model.norm, torch.nn.Identity)


def test_resume_an_interrupted_search(raw_dataset, tmp_path):
    args = [sys.executable, "-u", os.path.join(ROOT_DIR, "training.py"), "-f", raw_dataset,
            "-n", "3", "--epochs", "3", "--batch", "512", "--cpu", "1",
            "--path", str(tmp_path / "ray"), "--save", "--output-dir", str(tmp_path / "m")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("[1/3]"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "Traceback" not in err
    assert "--resume" in err
    assert not (tmp_path / "m" / "ghost_model.pth").exists()
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "[1/3]" not in resumed.stdout
    assert "[3/3]" in resumed.stdout
    assert (tmp_path / "m" / "ghost_model.onnx").is_file()


def test_search_writes_little_and_no_data(raw_dataset, trained):
    files = [f for f in (trained.parent / "ray").rglob("*") if f.is_file()]
    sizes = {str(f): f.stat().st_size for f in files}
    assert sum(sizes.values()) < 1_000_000, sizes  # 2 trials: metrics + a few checkpoints
    assert max(sizes.values()) < 100_000, max(sizes.items(), key=lambda kv: kv[1])
    data_bytes = os.path.getsize(raw_dataset + "_train_data.npy")
    assert max(sizes.values()) < data_bytes / 2  # no copy of the data anywhere
    params = [json.load(open(f)) for f in files if f.name == "params.json"]
    assert params and all("data" not in p and "hidden" in p for p in params)


def test_trainer_learns_and_evaluate_is_consistent():
    torch.manual_seed(0)
    x = torch.rand(4096, 3)
    y = (x[:, :1] + x[:, 1:2] > 1.0).float()
    model = build_model(ModelConfig(network=0, n_features=3, hidden=(16,), activation="relu"))
    settings = trainer.TrainSettings(optimizer="adam", lr=1e-2, batch=256, epochs=16, seed=1)
    opt = trainer.make_optimizer(settings, model, torch.device("cpu"))
    loop = trainer.Trainer(model, opt, x, y, 256, seed=1)
    first = loop.epoch()
    for _ in range(15):
        last = loop.epoch()
    assert last < first * 0.5
    m = trainer.evaluate(model, x, y, 0.5)
    with torch.no_grad():
        p = model(x)
    assert m["accuracy"] == pytest.approx(float(((p > 0.5).float() == y).float().mean()))
    assert m["accuracy"] > 0.9 and m["auc"] > 0.95


def test_raw_batches_train_the_same_model_as_inputs_scaled_once(raw_dataset):
    """A CPU trial trains on the shared raw arrays, scaling each batch with the
    model's own layer: the same weights and the same validation metrics, bit for
    bit, as scaling the whole split once (which each trial would have to copy)."""
    from dataset import load_meta, load_split
    x, y = load_split(raw_dataset, "train")
    vx, vy = load_split(raw_dataset, "valid")
    meta = load_meta(raw_dataset)
    config = ModelConfig(network=1, n_features=x.shape[1], hidden=(16, 8), activation="elu",
                         inputs="standard", standardization=meta.standardization)
    runs = []
    for raw in (False, True):
        torch.manual_seed(3)
        model = build_model(config)
        settings = trainer.TrainSettings(optimizer="adam", lr=3e-3, batch=512, epochs=2,
                                         seed=5, schedule="onecycle")
        opt = trainer.make_optimizer(settings, model, torch.device("cpu"))
        tensors = (trainer.shared_tensors if raw else
                   lambda d, m=model: trainer.to_tensors(m, d, torch.device("cpu")))
        loop = trainer.Trainer(model, opt, *tensors((x, y)), 512, seed=5, settings=settings,
                               raw=raw, weights=(0.6, 2.5))
        losses = [loop.epoch() for _ in range(2)]
        metrics = trainer.evaluate(model, *tensors((vx, vy)), 0.5, raw=raw)
        runs.append((losses, metrics, model.state_dict()))
    (l0, m0, s0), (l1, m1, s1) = runs
    assert l0 == l1 and m0 == m1
    assert all(torch.equal(s0[k], s1[k]) for k in s0)


class FakeResult:
    def __init__(self, error=None, done=True):
        self.error, self.metrics = error, ({"done": done, "loss": 0.5} if not error else {})


class FakeGrid(list):
    pass


def test_best_trial_reports_why_all_failed_and_interruptions():
    grid = FakeGrid([FakeResult(RuntimeError("CUDA out of memory")),
                     FakeResult(RuntimeError("CUDA out of memory"))])
    with pytest.raises(GhostError, match="all 2 trials failed: CUDA out of memory"):
        best_trial(grid)
    with pytest.raises(GhostError, match="interrupted.*--resume"):
        best_trial(FakeGrid([FakeResult(), FakeResult(done=False)]))


def _write(prefix, **arrays):
    for split in ("train", "valid", "test"):
        x = arrays.get(f"{split}_x", np.random.rand(1000, 13).astype(np.float32))
        y = arrays.get(f"{split}_y", (np.arange(len(x)) % 2).reshape(-1, 1).astype(np.float32))
        np.save(f"{prefix}_{split}_data.npy", x)
        np.save(f"{prefix}_{split}_labels.npy", y)
    json.dump({"normalized": True, "features": [f"f{i}" for i in range(13)]},
              open(f"{prefix}_features.json", "w"))
    return prefix


@pytest.mark.parametrize("case,extra,needles", [
    ("missing", [], ["ds_valid_labels.npy is missing"]),
    ("shapes", [], ["shape"]),
    ("labels", [], ["labels other than 0 and 1"]),
    ("nan", [], ["non-finite"]),
    ("small", ["--batch", "4096"], ["fewer than one batch"]),
    ("gpu", ["--gpu", "1"], ["CUDA is not available"]),
    ("address", ["--address", "127.0.0.1:9"], ["cannot reach the Ray cluster"]),
    ("net1_on_normalized", ["--network", "1"], ["already normalized"]),
])
def test_bad_input(tmp_path, case, extra, needles):
    prefix = _write(str(tmp_path / "ds"))
    if case == "missing":
        os.remove(prefix + "_valid_labels.npy")
    elif case == "shapes":
        np.save(prefix + "_train_labels.npy", np.zeros((999, 1), np.float32))
    elif case == "labels":
        np.save(prefix + "_train_labels.npy", np.full((1000, 1), 2.0, np.float32))
    elif case == "nan":
        x = np.random.rand(1000, 13).astype(np.float32)
        x[5, 3] = np.nan
        np.save(prefix + "_test_data.npy", x)
    if case == "gpu" and torch.cuda.is_available():
        pytest.skip("this check needs a machine without CUDA")
    out = tmp_path / "out"
    out.mkdir()
    proc = run_script("training.py", "-f", prefix, "--save", "--output-dir", out,
                      "--path", tmp_path / "ray", "--batch", "256", *extra)
    assert_clean_error(proc, *needles)
    assert not list(out.iterdir())


def test_network0_on_raw_dataset_is_refused(raw_dataset, tmp_path):
    proc = run_script("training.py", "-f", raw_dataset, "--network", "0",
                      "--path", tmp_path / "ray")
    assert_clean_error(proc, "expects normalized inputs", "--normalize")


def test_help_imports_neither_ray_nor_torch():
    code = "import sys, training; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT_DIR).stdout
    assert out.split() == ["False", "False"]
    proc = run_script("training.py", "--help")
    for option in ("--network", "--epochs", "--num_samples", "--threshold", "--batch",
                   "--path", "--cpu", "--gpu", "--cuda", "--nocuda", "--int8", "--save",
                   "--seed", "--output-dir", "--address", "--resume"):
        assert option in proc.stdout, option


def test_join_an_existing_ray_cluster(raw_dataset, tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1",
                            "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert start.returncode == 0, start.stderr
    try:
        proc = run_script("training.py", "-f", raw_dataset, "-n", "2", "--epochs", "1",
                          "--batch", "512", "--address", f"127.0.0.1:{port}",
                          "--path", tmp_path / "ray", "--save", "--output-dir", tmp_path / "m")
        assert proc.returncode == 0, proc.stderr
        assert "[2/2]" in proc.stdout
        assert (tmp_path / "m" / "ghost_model.onnx").is_file()
    finally:
        subprocess.run([ray_cli, "stop"], capture_output=True, env=env, timeout=120)


# ---------------------------------------------------------------------------
# outputs checked and locked before Ray starts
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case,needles", [
    ("output_dir_is_file", ["--output-dir", "is a file"]),
    ("path_is_file", ["--path", "is a file"]),
    ("output_dir_in_proc", ["--output-dir", "/proc/ghost_models"]),
    ("json_not_object", ["_features.json", "not an object"]),
    ("norm_wrong_length", ["_features.json", "12 offsets for 13 features"]),
    ("norm_wrong_length_no_names", ["_features.json", "12", "13 columns"]),
])
def test_bad_outputs_and_metadata_fail_before_ray(tmp_path, raw_dataset, case, needles):
    prefix = str(tmp_path / "ds")
    for suffix in [f"_{s}_{k}.npy" for s in ("train", "valid", "test")
                   for k in ("data", "labels")]:
        os.symlink(raw_dataset + suffix, prefix + suffix)
    meta = json.load(open(raw_dataset + "_features.json"))
    afile = tmp_path / "afile"
    afile.write_text("")
    out, path = tmp_path / "out", tmp_path / "ray"
    if case == "output_dir_is_file":
        out = afile
    elif case == "path_is_file":
        path = afile
    elif case == "output_dir_in_proc":
        out = "/proc/ghost_models"
    elif case == "json_not_object":
        meta = [meta]
    elif case.startswith("norm_wrong_length"):
        meta["normalization"]["offsets"] = meta["normalization"]["offsets"][:12]
        if case.endswith("no_names"):
            del meta["features"]
    json.dump(meta, open(prefix + "_features.json", "w"))
    proc = run_script("training.py", "-f", prefix, "--save", "--output-dir", out,
                      "--path", path, "-n", "1", "--epochs", "1")
    assert_clean_error(proc, *needles)
    assert "trials x" not in proc.stdout  # nothing started
    assert not os.path.exists(tmp_path / "ray" / "ghost_search")


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_running_search_locks_its_folders(raw_dataset, tmp_path):
    out, ray_dir = tmp_path / "m", tmp_path / "ray"
    out.mkdir()
    ray_dir.mkdir()
    args = ["-f", raw_dataset, *SEARCH, "--path", ray_dir, "--save", "--output-dir", out]
    (out / ".ghost_tracks.lock").write_text(f"{os.getpid()}\n")  # a live owner: this test
    proc = run_script("training.py", *args)
    assert_clean_error(proc, "--output-dir", "in use by another run", str(os.getpid()))
    (out / ".ghost_tracks.lock").unlink()
    (ray_dir / ".ghost_search.lock").write_text(f"{os.getpid()}\n")
    proc = run_script("training.py", *args)
    assert_clean_error(proc, "--path", "in use by another run")
    assert not (out / "ghost_model.onnx").exists()
    # a lock whose owner died (SIGKILL) is taken over, as are its temporaries
    (ray_dir / ".ghost_search.lock").write_text(f"{_dead_pid()}\n")
    (out / ".ghost_tracks.lock").write_text(f"{_dead_pid()}\n")
    stale = out / f".ghost_model.tmp{_dead_pid()}_3.onnx"
    stale.write_text("half a model")
    proc = run_script("training.py", *args)
    assert proc.returncode == 0, proc.stderr
    assert (out / "ghost_model.onnx").is_file() and not stale.exists()
    assert not (out / ".ghost_tracks.lock").exists()
    assert not (ray_dir / ".ghost_search.lock").exists()


def test_two_searches_at_once_one_is_refused(raw_dataset, tmp_path):
    args = [sys.executable, os.path.join(ROOT_DIR, "training.py"), "-f", raw_dataset,
            *SEARCH, "--path", str(tmp_path / "ray"), "--save", "--output-dir",
            str(tmp_path / "m")]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:  # the first one holds its locks once it starts Ray
            if "trials x" in line:
                break
        second = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert_clean_error(second, "in use by another run", str(first.pid))
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert (tmp_path / "m" / "ghost_model.onnx").is_file()
