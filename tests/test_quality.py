"""Classifier quality: input transforms, the search over depth and cost, selection,
class weights, the baseline, the generator's known optimum and model comparison."""
import csv
import json
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

import make_sample
import training
from architecture import ModelConfig, macs_and_params
from artifacts import SavedConfig, load_config, onnx_bytes
from conftest import assert_clean_error, run_script
from dataset import load_dataset, load_meta, load_spectators
from features import LIMIT, TRACK_FEATURES, TRUTH, MinMax, Standardize, features_for
from metrics import roc_auc
from models import build_model
from trainer import Trainer, TrainSettings, evaluate, lr_at, make_optimizer, to_tensors

# ---------------------------------------------------------------------------
# the known optimum: make_sample's exact log-likelihood ratio
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("track", ["matching", "forward"])
def test_truth_llr_is_the_generators_exact_likelihood_ratio(track):
    """Calibrated: among tracks whose LLR says a ghost probability p (with the
    generator's prior), a fraction p are ghosts, in every decile of p."""
    cols = make_sample.generate(200_000, track, ghost_rate=0.2, seed=5, nonfinite=0)
    llr = cols[LIMIT].astype(np.float64)
    ghost = cols["ghost"] == 1
    assert np.isfinite(llr).all()
    posterior = 1 / (1 + np.exp(-(llr + math.log(0.2 / 0.8))))
    edges = np.quantile(posterior, np.linspace(0, 1, 11))
    deciles = np.clip(np.searchsorted(edges, posterior, side="right") - 1, 0, 9)
    for d in range(10):
        sel = deciles == d
        p, n = posterior[sel].mean(), sel.sum()
        assert abs(ghost[sel].mean() - p) < 4 * math.sqrt(p * (1 - p) / n) + 2e-3, (d, p)
    # and it separates better than any single feature
    best_single = max(max(roc_auc(cols[f], ghost), 1 - roc_auc(cols[f], ghost))
                      for f in features_for(track))
    assert roc_auc(llr, ghost) > best_single + 0.1


def test_the_limit_is_never_a_feature(tmp_path, matching_file):
    assert LIMIT in TRUTH and all(LIMIT not in names for names in TRACK_FEATURES.values())
    import make_dataset
    prefix = str(tmp_path / "ds")
    make_dataset.main(["-f", matching_file, "--output", prefix, "--track", "matching"])
    meta = load_meta(prefix)
    assert meta.features == features_for("matching")
    assert meta.spectators == [LIMIT, "tx", "ty"]  # beside the features, never among them
    test = load_dataset(prefix)["test"]
    llr = load_spectators(prefix, "test", meta)[LIMIT]
    assert test[0].shape[1] == 13 and llr.shape == (len(test[0]),)
    assert roc_auc(llr, test[1].ravel()) > 0.9  # aligned with the test split's rows


# ---------------------------------------------------------------------------
# input transforms
# ---------------------------------------------------------------------------

def test_standardized_inputs_round_trip_through_onnx():
    cols = make_sample.generate(20_000, "matching", seed=6, nonfinite=0)
    names = features_for("matching")
    x = np.stack([cols[n] for n in names], axis=1)
    std = Standardize.fit(x, names)
    assert std.transforms[names.index("chi2")] == "log"
    assert std.transforms[names.index("qop")] == "identity"
    config = ModelConfig(network=1, n_features=13, hidden=(32, 16), inputs="standard",
                         standardization=std)
    torch.manual_seed(0)
    model = build_model(config).eval()
    blob = onnx_bytes(model, SavedConfig(model=config, features=names))
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(model.norm(torch.from_numpy(x)).numpy(), std.apply(x),
                                   atol=1e-5)
    got = ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(
        None, {"features": x})[0]
    import onnx
    from onnx2torch import convert
    with torch.inference_mode():
        converted = convert(onnx.load_from_string(blob))(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 1e-5 and np.abs(converted - want).max() < 1e-5


def _heavy_tailed_problem(n=40_000, seed=0):
    """The signal lives in a heavy-tailed feature (a chi2-like, log-normal with a few
    huge values); the other feature is noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.float32)
    seed_chi2 = rng.lognormal(np.where(y == 1, 0.8, 0.0), 1.0)
    seed_chi2[rng.random(n) < 0.001] *= 1e5  # the tail that min-max scales to
    x = np.stack([seed_chi2, rng.normal(size=n)], axis=1).astype(np.float32)
    return x, y.reshape(-1, 1)


def _train_auc(config, x, y, epochs=6):
    torch.manual_seed(1)
    model = build_model(config)
    settings = TrainSettings(optimizer="adamw", lr=3e-3, batch=512, epochs=epochs, seed=1,
                             weight_decay=1e-4, schedule="onecycle")
    tx, ty = to_tensors(model, (x[:30_000], y[:30_000]), torch.device("cpu"))
    loop = Trainer(model, make_optimizer(settings, model, torch.device("cpu")), tx, ty,
                   512, 1, settings=settings)
    for _ in range(epochs):
        loop.epoch()
    vx, vy = to_tensors(model, (x[30_000:], y[30_000:]), torch.device("cpu"))
    return evaluate(model, vx, vy, 0.5)["auc"]


def test_a_heavy_tailed_signal_is_learned_with_the_log_transform():
    x, y = _heavy_tailed_problem()
    names = ["pr_seed_chi2", "noise"]
    intrinsic = roc_auc(x[30_000:, 0], y[30_000:])
    standard = _train_auc(ModelConfig(network=1, n_features=2, hidden=(16,),
                                      inputs="standard",
                                      standardization=Standardize.fit(x[:30_000], names)), x, y)
    minmax = _train_auc(ModelConfig(network=1, n_features=2, hidden=(16,), inputs="minmax",
                                    normalization=MinMax.fit(x[:30_000], names)), x, y)
    assert standard > intrinsic - 0.01  # all the feature has
    assert standard > minmax + 0.05, (standard, minmax)


def test_learning_rate_schedules():
    s = TrainSettings(optimizer="adamw", lr=1e-2, batch=1, epochs=1, seed=0,
                      schedule="onecycle")
    assert lr_at(s, 0, 100) == pytest.approx(1e-2 / 25)
    assert lr_at(s, 30, 100) == pytest.approx(1e-2)
    assert lr_at(s, 100, 100) == pytest.approx(1e-2 / 1e4)
    lrs = [lr_at(s, i, 100) for i in range(101)]
    assert max(lrs) == pytest.approx(1e-2) and lrs.index(max(lrs)) == 30
    c = TrainSettings(optimizer="adamw", lr=1e-2, batch=1, epochs=1, seed=0, schedule="cosine")
    assert lr_at(c, 5, 100) == pytest.approx(1e-2) and lr_at(c, 100, 100) == pytest.approx(0)
    k = TrainSettings(optimizer="adam", lr=1e-2, batch=1, epochs=1, seed=0)
    assert {lr_at(k, i, 100) for i in range(100)} == {1e-2}


# ---------------------------------------------------------------------------
# class mix: every track with class weights, or the original subsample
# ---------------------------------------------------------------------------

def test_balance_weights_keeps_every_track_and_subsample_balances(tmp_path, matching_file):
    import make_dataset
    sizes, clean = {}, None
    for balance in ("weights", "subsample"):
        prefix = str(tmp_path / balance)
        make_dataset.main(["-f", matching_file, "--output", prefix, "--track", "matching",
                           "--balance", balance])
        meta, splits = load_meta(prefix), load_dataset(prefix)
        sizes[balance] = sum(len(y) for _, y in splits.values())
        clean = meta.tracks_read - meta.tracks_dropped_nonfinite
        train = splits["train"][1].ravel()
        if balance == "weights":
            w = meta.class_weights
            assert meta.balance == "weights" and abs(meta.ghost_fraction - 0.15) < 0.01
            for _, y in splits.values():  # each split at the file's natural mix
                assert abs(y.mean() - meta.ghost_fraction) < 0.01
            # both classes weigh the same in the loss
            assert w["ghost"] * train.sum() == pytest.approx(w["real"] * (1 - train).sum())
            assert w["ghost"] * train.sum() == pytest.approx(len(train) / 2)
            assert "natural mix" in meta.mix()
        else:
            assert meta.class_weights is None and train.mean() == 0.5
            assert "balanced" in meta.mix()
    # every clean track of the file, none dropped by balancing
    assert sizes["weights"] == clean and sizes["subsample"] < 0.35 * clean


def test_class_weights_weigh_the_training_loss():
    torch.manual_seed(0)
    x = torch.randn(1000, 3)
    y = (torch.rand(1000, 1) < 0.2).float()
    model = build_model(ModelConfig(network=0, n_features=3, hidden=(8,)))
    loop = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), x, y, 1000, 0,
                   weights=(0.5, 2.5))
    with torch.no_grad():
        manual = torch.nn.functional.binary_cross_entropy_with_logits(
            model.core(x), y, reduction="none") * (0.5 + 2.0 * y)
        assert float(loop._loss(x, y)) == pytest.approx(float(manual.mean()), rel=1e-6)
    assert evaluate(model, x, y, 0.5, (0.5, 2.5))["loss"] == pytest.approx(
        float(manual.mean()), rel=1e-5)


# ---------------------------------------------------------------------------
# the search: cost budget, selection metric, baseline, the front
# ---------------------------------------------------------------------------

def _trials(folder):
    with open(folder / "training_report" / "search_trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def budget_search(raw_dataset, tmp_path_factory):
    """A small search within 1,000 multiply-adds, picked by rejection at 99 %, with
    the baseline."""
    tmp = tmp_path_factory.mktemp("budget")
    out = tmp / "models"
    training.main(["-f", raw_dataset, "-n", "4", "--epochs", "2", "--cpu", "1",
                   "--seed", "5", "--max-macs", "1000", "--select", "rejection@0.99",
                   "--baseline", "--path", str(tmp / "ray"), "--save",
                   "--output-dir", str(out)])
    return out


def test_max_macs_is_respected_by_every_trial(budget_search, capsys):
    trials = _trials(budget_search)
    assert len(trials) == 4
    for t in trials:
        hidden = [int(w) for w in t["hidden"].split("x")]
        assert int(t["macs"]) == macs_and_params(13, hidden)[0] <= 1000
    config = load_config(str(budget_search / "ghost_model_config.json"))
    assert config["macs"] <= 1000


def test_too_small_a_budget_is_a_clean_error(raw_dataset, tmp_path):
    proc = run_script("training.py", "-f", raw_dataset, "--max-macs", "50",
                      "--path", tmp_path / "ray")
    assert_clean_error(proc, "--max-macs 50", "no architecture fits")


def test_select_picks_the_best_trial_by_the_named_metric(budget_search):
    trials = _trials(budget_search)
    config = load_config(str(budget_search / "ghost_model_config.json"))
    best = max(trials, key=lambda t: float(t["rejection@0.99"]))
    assert [int(w) for w in best["hidden"].split("x")] == config["hidden"]
    assert float(best["lr"]) == pytest.approx(config["lr"], rel=1e-5)


def test_select_loss_picks_the_lowest_validation_loss(tmp_path, raw_dataset):
    out = tmp_path / "m"
    training.main(["-f", raw_dataset, "-n", "3", "--epochs", "2", "--cpu", "1", "--seed", "8",
                   "--path", str(tmp_path / "ray"), "--save", "--output-dir", str(out)])
    trials = _trials(out)
    config = load_config(str(out / "ghost_model_config.json"))
    best = min(trials, key=lambda t: float(t["loss"]))
    assert float(best["lr"]) == pytest.approx(config["lr"], rel=1e-5)


def test_baseline_and_limit_are_reported_beside_the_network(budget_search, raw_dataset):
    config = load_config(str(budget_search / "ghost_model_config.json"))
    metrics = config["metrics"]
    for row in ("test", "baseline", "limit"):  # a 2-epoch search: sensible, not good
        assert 0.6 < metrics[row]["auc"] <= 1.0, row
        assert 0.0 < metrics[row]["rejection@0.99"] < 1.0, row
    assert metrics["limit"]["auc"] >= max(metrics["test"]["auc"], metrics["baseline"]["auc"])
    assert (budget_search / "training_report" / "search_front.png").stat().st_size > 10_000


def test_baseline_rows_on_the_console(raw_dataset, tmp_path):
    proc = run_script("training.py", "-f", raw_dataset, "-n", "1", "--epochs", "1", "--cpu",
                      "1", "--baseline", "--path", tmp_path / "ray")
    assert proc.returncode == 0, proc.stderr
    rows = {ln.split()[0]: ln for ln in proc.stdout.splitlines()
            if ln.startswith(("test ", "baseline (test)", "limit (test)"))}
    assert set(rows) == {"test", "baseline", "limit"}
    assert "gradient-boosted trees" in proc.stdout and "natural mix" in proc.stdout


def test_original_space_is_the_seeds(raw_dataset, tmp_path):
    out = tmp_path / "m"
    training.main(["-f", raw_dataset, "-n", "2", "--epochs", "1", "--cpu", "1",
                   "--space", "original", "--inputs", "minmax", "--path",
                   str(tmp_path / "ray"), "--save", "--output-dir", str(out)])
    config = load_config(str(out / "ghost_model_config.json"))
    assert len(config["hidden"]) == 1 and config["l0"] in (8, 16, 32, 64, 128)
    assert config["optimizer"] in ("adam", "sgd") and config["schedule"] == "constant"
    assert config["batch"] == 2048 and config["inputs"] == "minmax"


# ---------------------------------------------------------------------------
# inference: several models and the limit on the same tracks
# ---------------------------------------------------------------------------

def test_compare_models_and_the_gap_to_the_limit(budget_search, tmp_path, matching_file):
    import inference
    plots = tmp_path / "p"
    other = tmp_path / "other.onnx"
    other.write_bytes((budget_search / "ghost_model.onnx").read_bytes())
    assert inference.main(["-f", matching_file, "--model",
                           str(budget_search / "ghost_model.onnx"), "--compare", str(other),
                           "--plots-dir", str(plots), "--no-plots"]) == 0
    with open(plots / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["ghost_model.onnx", "other.onnx", f"limit ({LIMIT})"]
    assert rows[0]["auc"] == rows[1]["auc"]  # the same model scores the same
    metrics = json.loads((plots / "metrics.json").read_text())
    gap = metrics["gap_to_limit"]
    assert gap["auc_gap"] == pytest.approx(metrics["limit"]["auc"] - metrics["roc_auc"])
    assert 0 < gap["rejection_fraction@0.99"] <= 1.0
    assert inference.main(["-f", matching_file, "--model",
                           str(budget_search / "ghost_model.onnx"), "--compare", str(other),
                           "--plots-dir", str(tmp_path / "q")]) == 0
    assert (tmp_path / "q" / "compare.png").stat().st_size > 10_000


def test_compare_refuses_a_model_of_other_features(budget_search, tmp_path, matching_file):
    forward = tmp_path / "forward.onnx"
    names = features_for("forward")
    config = ModelConfig(network=1, n_features=8, hidden=(8,), inputs="standard",
                         standardization=Standardize(("identity",) * 8, (0.0,) * 8,
                                                     (1.0,) * 8))
    forward.write_bytes(onnx_bytes(build_model(config).eval(),
                                   SavedConfig(model=config, track="forward", features=names)))
    proc = run_script("inference.py", "-f", matching_file, "--model",
                      budget_search / "ghost_model.onnx", "--compare", forward,
                      "--plots-dir", tmp_path / "p")
    assert_clean_error(proc, "--compare", "forward.onnx", "pr_forward_quality")
