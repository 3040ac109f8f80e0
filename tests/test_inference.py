import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import inference
import report
import rootio
import rootwrite
from architecture import ModelConfig
from artifacts import SavedConfig, onnx_bytes
from conftest import ROOT_DIR, assert_clean_error, run_script
from dataset import load_meta, load_split
from features import DEFAULT_TREE, LABEL, MinMax, features_for
from metrics import SortedScores, analyse, rejection_at, roc_auc, threshold_table
from utils import GhostError, plain

# the seed's accuracy, ghost/real, confusion and rate plots, merged into one threshold scan
SEED_PLOTS = ["thresholds.png", "confusion.png", "roc.png"]
MATCHING = features_for("matching")


# ---------------------------------------------------------------------------
# models trained here, briefly, so the metrics mean something
# ---------------------------------------------------------------------------

def _train(config, prefix, steps=300):
    import torch

    import models
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


def _foreign(onnx_path, out_path):
    """The model as tf2onnx would write a Keras one: no metadata, other names."""
    import onnx
    proto = onnx.load(onnx_path)
    del proto.metadata_props[:]
    renames = {"features": "dense_input", "probabilities": "dense_1"}
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = renames.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    onnx.checker.check_model(proto)
    onnx.save(proto, out_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, raw_dataset, norm_dataset):
    import torch

    d = tmp_path_factory.mktemp("models")
    meta = load_meta(raw_dataset)
    base = {"n_features": 13, "l0": 16, "activation": "relu", "track": "matching",
            "features": meta.features, "normalization": meta.normalization.to_dict(),
            "inputs": "standard", "standardization": meta.standardization.to_dict(),
            "threshold": 0.5}
    paths = {}
    for name, extra, prefix in (("net1", {"network": 1, "int8": False}, raw_dataset),
                                ("net0", {"network": 0, "int8": False}, norm_dataset),
                                ("int8", {"network": 1, "int8": True}, raw_dataset)):
        config = {**base, **extra}
        model = _train(config, prefix)
        paths[name] = str(d / f"{name}.onnx")
        with open(paths[name], "wb") as f:
            f.write(onnx_bytes(model, SavedConfig.from_dict(config)))
        torch.save(model.state_dict(), d / f"{name}.pth")
        with open(d / f"{name}.pkl", "wb") as f:
            pickle.dump(config, f)
        paths[f"{name}_pth"], paths[f"{name}_pkl"] = str(d / f"{name}.pth"), str(d / f"{name}.pkl")
        paths[f"{name}_config"] = config
    paths["foreign"] = str(d / "keras_like.onnx")
    _foreign(paths["net1"], paths["foreign"])
    return paths


def _torch_scores(paths, name, data):
    """Reference: the .pth weights through models.load_model, plain forward."""
    import torch

    import models
    model = models.load_model(ModelConfig.from_dict(paths[f"{name}_config"]),
                              torch.load(paths[f"{name}_pth"], weights_only=True))
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(data))).numpy().ravel()


@pytest.fixture(scope="module")
def root_features(matching_file):
    cols = rootio.read_root([matching_file], DEFAULT_TREE, MATCHING, optional=(LABEL,))
    data = np.stack([cols[n] for n in MATCHING], axis=1)
    return data, cols[LABEL]


@pytest.fixture(scope="module")
def reference(trained, root_features):
    """net1's probability per entry of the matching file, NaN for non-finite tracks."""
    data, _ = root_features
    finite = np.isfinite(data).all(axis=1)
    ref = np.full(len(data), np.nan, dtype=np.float32)
    ref[finite] = _torch_scores(trained, "net1", data[finite])
    return ref


def run(*args):
    """inference.main in-process; returns its exit code."""
    return inference.main([str(a) for a in args])


# ---------------------------------------------------------------------------
# metrics against hand-computed and brute-force values
# ---------------------------------------------------------------------------

def test_default_thresholds_are_the_original_26():
    t = inference.DEFAULT_THRESHOLDS
    assert len(t) == 26 and t[0] == 0.10 and t[14] == 0.80 and t[15] == 0.81
    assert t[23] == 0.89 and t[-2:] == (0.90, 0.95)
    assert list(t) == sorted(t)


def test_threshold_metrics_by_hand():
    scores = [0.05, 0.15, 0.30, 0.45, 0.55, 0.62, 0.70, 0.80, 0.90, 0.97]
    labels = [0, 0, 1, 0, 1, 0, 1, 1, 0, 1]  # ghosts: .30 .55 .70 .80 .97
    m = threshold_table(SortedScores.of(scores, labels), [0.3, 0.5, 0.97])
    # t = 0.5: TP .55 .70 .80 .97, FN .30, FP .62 .90, TN .05 .15 .45
    assert [int(m[k][1]) for k in ("n_tp", "n_fn", "n_fp", "n_tn")] == [4, 1, 2, 3]
    assert m["accuracy"][1] == pytest.approx(0.7)
    assert (m["tp"][1], m["tn"][1], m["fp"][1], m["fn"][1]) == pytest.approx((0.4, 0.3, 0.2, 0.1))
    assert m["sensitivity"][1] == pytest.approx(0.8) and m["specificity"][1] == pytest.approx(0.6)
    assert m["fpr"][1] == pytest.approx(0.4) and m["fnr"][1] == pytest.approx(0.2)
    assert m["precision"][1] == pytest.approx(4 / 6) and m["f1"][1] == pytest.approx(8 / 11)
    assert m["pred_ghost"][1] == pytest.approx(0.6) and m["pred_real"][1] == pytest.approx(0.4)
    assert m["true_ghost"][1] == pytest.approx(0.5) and m["youden_j"][1] == pytest.approx(0.4)
    # t = 0.3: a score equal to the threshold is not a ghost (probability > threshold)
    assert [int(m[k][0]) for k in ("n_tp", "n_fn", "n_fp", "n_tn")] == [4, 1, 3, 2]
    # t = 0.97: no track passes; precision undefined, no ZeroDivisionError
    assert int(m["n_tp"][2]) == 0 and int(m["n_fp"][2]) == 0
    assert np.isnan(m["precision"][2]) and m["f1"][2] == 0.0
    assert m["accuracy"][2] == pytest.approx(0.5) and m["pred_ghost"][2] == 0.0

    res = analyse(np.array(scores), np.array(labels, bool), [0.3, 0.5, 0.97])
    assert res.best_youden_j["threshold"] == 0.5 and res.best_f1["threshold"] == 0.5
    # ghosts .30 .55 .70 .80 .97, real tracks .05 .15 .45 .62 .90
    (r90, r60) = rejection_at(SortedScores.of(scores, labels), (0.9, 0.6))
    # 90 % of 5 real tracks -> keep all 5: cut at 0.90, only the 0.97 ghost removed
    assert r90["threshold"] == 0.90 and r90["real_efficiency"] == 1.0
    assert r90["ghost_rejection"] == pytest.approx(0.2)
    # 60 % -> keep 3: cut at 0.45, ghosts above it: .55 .70 .80 .97
    assert r60["threshold"] == 0.45 and r60["real_efficiency"] == pytest.approx(0.6)
    assert r60["ghost_rejection"] == pytest.approx(0.8)
    assert "nan" in report.format_table(m).splitlines()[3]
    assert plain({"p": float("nan")}) == {"p": None}


def test_roc_and_auc_against_brute_force():
    rng = np.random.default_rng(3)
    labels = rng.random(400) < 0.3
    scores = np.round(np.clip(rng.normal(0.4 + 0.25 * labels, 0.2), 0, 1), 2)  # many ties
    g, r = scores[labels], scores[~labels]
    pairs = (g[:, None] > r[None, :]).mean() + 0.5 * (g[:, None] == r[None, :]).mean()
    assert roc_auc(scores, labels) == pytest.approx(pairs, abs=1e-12)
    fpr, tpr, thr = analyse(scores, labels, []).roc
    assert np.trapezoid(tpr, fpr) == pytest.approx(pairs, abs=1e-12)
    assert len(thr) == len(np.unique(scores)) + 1  # every distinct score, plus "all ghost"
    for t, x, y in zip(thr, fpr, tpr):
        assert x == pytest.approx((r > t).mean()) and y == pytest.approx((g > t).mean())
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


# ---------------------------------------------------------------------------
# full runs on a .root file
# ---------------------------------------------------------------------------

def test_root_file_all_outputs(trained, matching_file, root_features, reference, tmp_path,
                               capsys):
    out, plots = tmp_path / "scores.npy", tmp_path / "plots"
    assert run("-f", matching_file, "--model", trained["net1"], "--output", out,
               "--plots-dir", plots) == 0
    text = capsys.readouterr().out
    for name in SEED_PLOTS + ["scores.png", "rejection.png", "thresholds.csv", "metrics.json"]:
        assert (plots / name).stat().st_size > 1000 or name.endswith((".csv", ".json")), name
    assert not (plots / "overtraining.png").exists()  # only on a dataset prefix
    assert not [p for p in os.listdir(plots) if ".tmp" in p]

    scores = np.load(out)
    data, labels = root_features
    finite = np.isfinite(data).all(axis=1)
    assert scores.dtype == np.float32 and scores.shape == (len(data),)
    assert np.array_equal(np.isnan(scores), ~finite) and (~finite).sum() > 0
    np.testing.assert_allclose(scores[finite], reference[finite], atol=1e-6)
    assert f"{int((~finite).sum())} tracks have a non-finite feature" in text
    assert "M tracks/s" in text and "ROC AUC" in text

    metrics = json.loads((plots / "metrics.json").read_text(),  # strict JSON: no NaN
                         parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert metrics["tracks"] == len(data) and metrics["tracks_nonfinite"] == (~finite).sum()
    assert len(metrics["thresholds"]) == 26
    auc = roc_auc(scores[finite], labels[finite])
    assert metrics["roc_auc"] == pytest.approx(auc) and auc > 0.85
    assert [r["target_efficiency"] for r in metrics["ghost_rejection"]] == [0.9, 0.95, 0.99, 0.995]
    assert metrics["best_youden_j"]["threshold"] in inference.DEFAULT_THRESHOLDS
    rows = (plots / "thresholds.csv").read_text().splitlines()
    assert len(rows) == 1 + 26 + 2 and rows[0].startswith("threshold,accuracy")
    assert rows[-2].endswith(",99.0% efficiency") and rows[-1].endswith(",95.0% efficiency")
    assert all(r.endswith(",") for r in rows[1:27])  # the scan: no working point
    # the table agrees with a direct count at 0.5
    y = labels[finite] == 1
    row = metrics["thresholds"][inference.DEFAULT_THRESHOLDS.index(0.5)]
    assert row["n_tp"] == int(((scores[finite] > 0.5) & y).sum())
    assert row["n_fp"] == int(((scores[finite] > 0.5) & ~y).sum())


def test_root_output_is_a_friend_tree(trained, matching_file, reference, tmp_path):
    out = tmp_path / "scores.root"
    assert run("-f", matching_file, "--model", trained["net1"], "--output", out,
               "--no-plots", "--plots-dir", tmp_path / "p") == 0
    ROOT = rootio.import_root()
    f = ROOT.TFile.Open(str(out))
    tree = f.Get("ghost_probability")
    assert tree.GetEntries() == len(reference)
    assert [b.GetName() for b in tree.GetListOfBranches()] == ["ghost_prob"]
    assert tree.GetLeaf("ghost_prob").GetTypeName() == "Float_t"
    f.Close()
    # as a friend of the input tree: entry i of one is entry i of the other
    fin = ROOT.TFile.Open(matching_file)
    t = fin.Get(DEFAULT_TREE)
    t.AddFriend("ghost_probability", str(out))
    cols = ROOT.RDataFrame(t).AsNumpy(["ghost_prob", "ghost"])
    np.testing.assert_allclose(cols["ghost_prob"], reference, atol=1e-6)
    fin.Close()


def test_parallel_read_gives_the_serial_per_track_output(trained, clustered_file, tmp_path):
    """--threads 2 reads the 25 clusters in parallel, in any order; every track's
    probability is still at its entry, as a serial read and a plain RDataFrame see it."""
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"p{n}.npy"
        assert run("-f", clustered_file, "--model", trained["net1"], "--threads", n,
                   "--output", outs[n], "--no-plots", "--plots-dir", tmp_path / "p") == 0
    serial, threaded = np.load(outs[1]), np.load(outs[2])
    np.testing.assert_array_equal(threaded, serial)
    ROOT = rootio.import_root()
    cols = ROOT.RDataFrame(DEFAULT_TREE, clustered_file).AsNumpy(MATCHING)
    data = np.stack([np.asarray(cols[c], dtype=np.float32) for c in MATCHING], axis=1)
    finite = np.isfinite(data).all(axis=1)
    np.testing.assert_allclose(serial[finite], _torch_scores(trained, "net1", data[finite]),
                               atol=1e-6)
    assert np.isnan(serial[~finite]).all()


def test_network0_uses_the_recorded_normalization(trained, matching_file, root_features,
                                                  tmp_path, capsys):
    """The file's own min/max differ from the recorded transform; only the recorded
    one reproduces training-time inputs."""
    out = tmp_path / "s.npy"
    assert run("-f", matching_file, "--model", trained["net0"], "--output", out,
               "--no-plots", "--plots-dir", tmp_path / "p") == 0
    assert "normalized with the transform recorded" in capsys.readouterr().out
    data, _ = root_features
    finite = np.isfinite(data).all(axis=1)
    rec = MinMax.from_dict(trained["net0_config"]["normalization"])
    expected = _torch_scores(trained, "net0", rec.apply(data[finite]))
    scores = np.load(out)
    np.testing.assert_allclose(scores[finite], expected, atol=1e-6)
    own = MinMax.fit(data[finite], MATCHING)
    assert not np.allclose(own.offsets, rec.offsets) or not np.allclose(own.scales, rec.scales)
    own = _torch_scores(trained, "net0", own.apply(data[finite]))
    assert np.abs(own - expected).max() > 1e-3  # the test can tell the two apart


def test_keras_like_model_without_metadata(trained, matching_file, reference, tmp_path,
                                           capsys):
    out = tmp_path / "s.npy"
    assert run("-f", matching_file, "--model", trained["foreign"], "--features",
               ",".join(MATCHING), "--output", out, "--no-plots", "--backend", "torch",
               "--plots-dir", tmp_path / "p") == 0
    text = capsys.readouterr().out
    assert "no metadata" in text and "onnx2torch" in text
    np.testing.assert_allclose(np.load(out), reference, atol=1e-6, equal_nan=True)
    with pytest.raises(GhostError, match="--features"):
        run("-f", matching_file, "--model", trained["foreign"])


def test_auto_backend_cross_check_and_no_torch_import(trained, matching_file, reference,
                                                     tmp_path):
    """auto: an .onnx on the CPU runs with onnxruntime and never imports torch;
    --cross-check scores tracks again with torch (onnx2torch) and reports the gap."""
    out, plots = tmp_path / "auto.npy", tmp_path / "p"
    code = ("import sys, inference; rc = inference.main(sys.argv[1:]); "
            "print('torch imported:', 'torch' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "-f", matching_file, "--model",
                           trained["net1"], "--output", str(out), "--no-plots",
                           "--plots-dir", str(plots), "--nocuda"], cwd=ROOT_DIR,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "(onnxruntime, cpu, batch" in proc.stdout and "torch imported: False" in proc.stdout
    assert np.nanmax(np.abs(np.load(out) - reference)) < 1e-5
    assert run("-f", matching_file, "--model", trained["net1"], "--cross-check",
               "--no-plots", "--plots-dir", plots) == 0
    check = json.loads((plots / "metrics.json").read_text())["cross_check"]
    assert check["engine"].startswith("torch (onnx2torch)") and check["tracks"] > 1000
    assert check["max_abs_diff"] < 1e-5
    assert run("-f", matching_file, "--model", trained["net1_pth"], "--config",
               trained["net1_pkl"], "--cross-check", "--no-plots", "--plots-dir", plots) == 0
    check = json.loads((plots / "metrics.json").read_text())
    assert check["scoring"].startswith("torch (load_model)")
    assert check["cross_check"]["engine"].startswith("onnxruntime")
    assert check["cross_check"]["max_abs_diff"] < 1e-5


def test_device_resident_scorer_equals_batched(trained, root_features):
    """The GPU path (one transfer in, batches on the device, one transfer out),
    run on the CPU device: the same probabilities as the CPU batches, and a wrong
    output shape is a clear error."""
    import torch

    import scoring
    data, _ = root_features
    x = np.nan_to_num(data[:5000])
    model = scoring.load_model_file(trained["net1_pth"], trained["net1_pkl"])
    cpu, _ = scoring.make_scorer(model, "torch", nocuda=True, batch=777)
    on_device = scoring.resident(model.module.eval(), torch.device("cpu"), 777)
    np.testing.assert_array_equal(on_device(x), cpu(x))
    wrong = scoring.resident(torch.nn.Linear(x.shape[1], 2), torch.device("cpu"), 777)
    with pytest.raises(GhostError, match="expected one probability per track"):
        wrong(x)


def test_backends_agree_and_pth_equals_onnx(trained, matching_file, reference, tmp_path,
                                            capsys):
    a, b = tmp_path / "ort.npy", tmp_path / "pth.npy"
    assert run("-f", matching_file, "--model", trained["net1"], "--backend", "onnxruntime",
               "--output", a, "--no-plots", "--plots-dir", tmp_path / "p") == 0
    assert "onnxruntime" in capsys.readouterr().out
    assert run("-f", matching_file, "--model", trained["net1_pth"], "--config",
               trained["net1_pkl"], "--output", b, "--thresholds", "0.3,0.5",
               "--plots-dir", tmp_path / "p2", "--no-plots") == 0
    ort, pth = np.load(a), np.load(b)
    assert np.array_equal(np.isnan(ort), np.isnan(reference))
    assert np.nanmax(np.abs(ort - reference)) < 1e-5  # reference is the torch forward
    np.testing.assert_allclose(pth, reference, atol=1e-6, equal_nan=True)
    scan = [r for r in (tmp_path / "p2" / "thresholds.csv").read_text().splitlines()[1:]
            if r.endswith(",")]  # the rows of working points name them in the last column
    assert [float(r.split(",")[0]) for r in scan] == [0.3, 0.5]


def test_int8_onnx_runs_with_onnxruntime(trained, matching_file, root_features, tmp_path,
                                         capsys):
    out = tmp_path / "s.npy"
    assert run("-f", matching_file, "--model", trained["int8"], "--output", out,
               "--backend", "torch", "--no-plots", "--plots-dir", tmp_path / "p") == 0
    text = capsys.readouterr().out  # torch asked: said why onnxruntime runs it instead
    assert "INT8 ONNX model" in text and "onnxruntime" in text and "error" not in text
    data, labels = root_features
    finite = np.isfinite(data).all(axis=1)
    scores = np.load(out)
    assert roc_auc(scores[finite], labels[finite]) > 0.8
    # the same weights in torch (fake quantization through load_model) agree closely
    torch_int8 = _torch_scores(trained, "int8", data[finite])
    assert np.abs(scores[finite] - torch_int8).max() < 0.02


# ---------------------------------------------------------------------------
# dataset prefixes
# ---------------------------------------------------------------------------

def test_dataset_prefix_overtraining(trained, raw_dataset, tmp_path, capsys):
    plots = tmp_path / "plots"
    assert run("-f", raw_dataset, "--model", trained["net1_pth"], "--config",
               trained["net1_pkl"], "--plots-dir", plots) == 0
    assert "overtraining check" in capsys.readouterr().out
    for name in SEED_PLOTS + ["overtraining.png", "scores.png", "rejection.png"]:
        assert (plots / name).is_file(), name
    over = json.loads((plots / "metrics.json").read_text())["overtraining"]
    for cls in ("ghost", "real"):
        assert 0.0 <= over[cls]["p_value"] <= 1.0 and over[cls]["n_train"] > over[cls]["n_test"]


def test_normalized_dataset_is_not_normalized_again(trained, norm_dataset, tmp_path):
    out = tmp_path / "s.npy"
    assert run("-f", norm_dataset, "--model", trained["net0"], "--normalize",
               "--output", out, "--no-plots", "--plots-dir", tmp_path / "p") == 0
    data, _ = load_split(norm_dataset, "test")
    np.testing.assert_allclose(np.load(out), _torch_scores(trained, "net0", data), atol=1e-6)


def test_one_class_and_empty_inputs(trained, raw_dataset, tmp_path, capsys):
    data, labels = load_split(raw_dataset, "test")
    real = labels[:, 0] == 0
    for name, sel in (("reals", real), ("empty", np.zeros(len(real), bool))):
        for split in ("train", "valid", "test"):
            np.save(tmp_path / f"{name}_{split}_data.npy", data[sel])
            np.save(tmp_path / f"{name}_{split}_labels.npy", labels[sel])
    assert run("-f", tmp_path / "reals", "--model", trained["net1"],
               "--plots-dir", tmp_path / "p") == 0
    assert "only real tracks" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert metrics["roc_auc"] is None and metrics["ghosts"] == 0
    assert (tmp_path / "p" / "roc.png").is_file()
    with pytest.raises(GhostError, match="no tracks"):
        run("-f", tmp_path / "empty", "--model", trained["net1"], "--plots-dir", tmp_path / "q")


# ---------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written
# ---------------------------------------------------------------------------

def test_bad_inputs_fail_cleanly(trained, matching_file, norm_dataset, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(__import__("collections").OrderedDict(network=1)))
    out = tmp_path / "never.npy"
    base = ["-f", matching_file, "--plots-dir", tmp_path / "plots"]
    cases = [
        (["--model", tmp_path / "missing.onnx"], ["does not exist"]),
        (["--model", junk], ["not a readable ONNX model"]),
        (["--model", trained["net1_pth"]], ["needs --config"]),
        (["--model", trained["net1_pth"], "--config", evil], ["refusing to unpickle"]),
        (["--model", trained["net1"], "--output", tmp_path / "s.csv"], [".npy or .root"]),
        (["--model", trained["net1"], "--track", "forward"], ["13", "8"]),
        (["--model", trained["foreign"], "--features", ",".join(MATCHING[:-1] + ["nope"]),
          "--output", out], ["nope"]),
        (["--model", trained["net1"], "--normalize"], ["normalize twice"]),
    ]
    for args, needles in cases:
        assert_clean_error(run_script("inference.py", *base, *args), *needles)
    proc = run_script("inference.py", "-f", norm_dataset, "--model", trained["net1"])
    assert_clean_error(proc, "normalized", "network 1")
    assert not out.exists() and not (tmp_path / "plots").exists()


def test_unlabelled_root_file_still_scores(trained, root_features, tmp_path):
    ROOT = rootio.import_root()
    data, _ = root_features
    path = str(tmp_path / "nolabel.root")
    cols = {n: np.ascontiguousarray(data[:500, j]) for j, n in enumerate(MATCHING)}
    ROOT.RDF.FromNumpy(cols).Snapshot(DEFAULT_TREE, path)
    out = tmp_path / "s.npy"
    proc = run_script("inference.py", "-f", path, "--model", trained["net1"],
                      "--output", out, "--plots-dir", tmp_path / "plots")
    assert proc.returncode == 0, proc.stderr
    assert "metrics need labels" in proc.stdout and "Traceback" not in proc.stderr
    assert np.load(out).shape == (500,) and not (tmp_path / "plots").exists()


def test_help_imports_nothing_heavy():
    code = ("import sys, inference\n"
            "try:\n    inference.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = {'torch', 'ROOT', 'onnx', 'onnx2torch', 'onnxruntime', 'matplotlib',"
            " 'scipy'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT_DIR, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--thresholds" in proc.stdout and "--backend" in proc.stdout


# ---------------------------------------------------------------------------
# mixed-up inputs: warned about or refused, never a crash
# ---------------------------------------------------------------------------

def test_empty_rntuple_is_a_clean_error(trained, tmp_path):
    from make_sample import generate
    path = str(tmp_path / "empty.root")
    rootwrite.write_root(path, DEFAULT_TREE, {k: v[:0] for k, v in generate(10).items()},
                     fmt="rntuple")
    proc = run_script("inference.py", "-f", path, "--model", trained["net1"],
                      "--plots-dir", tmp_path / "p")
    assert_clean_error(proc, "holds no tracks")


def test_forward_file_through_a_matching_model_warns(trained, forward_file, tmp_path):
    proc = run_script("inference.py", "-f", forward_file, "--model", trained["net1"],
                      "--plots-dir", tmp_path / "p", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, proc.stderr
    for needle in ("pr_match_chi2", "pr_seed_chi2", "0 for every track",
                   "looks like forward", "not meaningful"):
        assert needle in warnings[0], needle


def test_matching_file_through_a_matching_model_is_quiet(trained, matching_file, tmp_path):
    proc = run_script("inference.py", "-f", matching_file, "--model", trained["net1"],
                      "--plots-dir", tmp_path / "p", "--no-plots")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("where,needles", [
    (["--output", "/proc/ghost_p.npy"], ["/proc", "not writable"]),
    (["--plots-dir", "/proc/ghost_plots"], ["--plots-dir", "/proc"]),
])
def test_unwritable_outputs_fail_before_scoring(trained, matching_file, tmp_path, where,
                                                needles):
    proc = run_script("inference.py", "-f", matching_file, "--model", trained["net1"],
                      *where)
    assert_clean_error(proc, *needles)
    assert "scored" not in proc.stdout and "read " not in proc.stdout
