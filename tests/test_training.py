"""training.py end to end: the same seed gives the same model, network 0 on a
normalized dataset, the model's own working point, the baseline and the limit beside
the network, bad input and what cannot be learned refused before Ray, and one run
at a time per folder."""
import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from architecture import ModelConfig
from artifacts import load_config
from dataset import load_dataset, load_meta
from derived import extend
from helpers import (
    ROOT_DIR,
    SEARCH,
    alive,
    assert_clean_error,
    descendants,
    help_outputs,
    listed,
    recount,
    run_script,
    search,
)
from models import build_model

SMALL = ["-n", "1", "--epochs", "1", "--batch", "512", "--cpu", "1"]  # a search that runs


@pytest.mark.ray
def test_seed_reproducibility(raw_dataset, tmp_path, trained_model):
    """The same search again gives the same model files, byte for byte, also when
    it writes them without the report (--no-report: the model files alone)."""
    trained = trained_model.models
    again = search(raw_dataset, tmp_path, *SEARCH, "--no-report")
    assert sorted(os.listdir(again)) == sorted(set(os.listdir(trained)) - {"training_report"})
    for name in ("ghost_model.onnx", "ghost_model_int8.onnx"):  # the same graphs
        graphs = [onnx.load(str(folder / name)).graph for folder in (trained, again)]
        assert graphs[0].SerializeToString() == graphs[1].SerializeToString(), name
    a = torch.load(trained / "ghost_model.pth", weights_only=True)
    b = torch.load(again / "ghost_model.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first, second = (load_config(str(folder / "ghost_model_config.pkl"))
                     for folder in (trained, again))
    # the same config, provenance included, but for when each run saved it
    assert first["provenance"].pop("created") <= second["provenance"].pop("created")
    assert first == second


@pytest.mark.ray
def test_network0_on_normalized_dataset(norm_dataset, tmp_path):
    out = search(norm_dataset, tmp_path, "-n", "1", "--epochs", "1", "--batch", "512",
                 "--cpu", "1", "--no-report")
    config = load_config(str(out / "ghost_model_config.pkl"))
    assert config["network"] == 0
    model = build_model(ModelConfig.from_dict(config))
    assert isinstance(model.norm, torch.nn.Identity)


def test_the_model_records_its_working_point_prior_and_ranges(trained_model, raw_dataset):
    import torch

    from models import load_model
    from trainer import predict
    trained = trained_model.models
    config = load_config(str(trained / "ghost_model_config.json"))
    model = load_model(ModelConfig.from_dict(config),
                       torch.load(trained / "ghost_model.pth", weights_only=True))
    valid_x, valid_y = load_dataset(raw_dataset)["valid"]
    p = predict(model, valid_x)
    reals = np.sort(p[valid_y.ravel() == 0])
    t = config["working_point"]["threshold"]
    assert config["working_point"]["efficiency"] == 0.99
    assert abs((reals <= t).sum() - 0.99 * len(reals)) <= 1
    meta = load_meta(raw_dataset)
    assert config["training_prior"] == 0.5
    assert config["ghost_fraction"] == pytest.approx(meta.ghost_fraction)
    train_x = load_dataset(raw_dataset)["train"][0]
    assert config["training_ranges"]["chi2"] == [float(train_x[:, 1].min()),
                                                 float(train_x[:, 1].max())]
    # the derived inputs' ranges too (the guard rails check them), as computed there
    inputs = extend(train_x, meta.derived, meta.features)
    assert list(config["training_ranges"]) == meta.inputs() != meta.features
    j = meta.inputs().index("chi2_ndof")
    assert config["training_ranges"]["chi2_ndof"] == [float(inputs[:, j].min()),
                                                      float(inputs[:, j].max())]


# ---------------------------------------------------------------------------
# the baseline and the limit beside the network
# ---------------------------------------------------------------------------


def test_baseline_and_limit_are_reported_beside_the_network(trained_model, raw_dataset):
    trained = trained_model.models
    config = load_config(str(trained / "ghost_model_config.json"))
    metrics = config["metrics"]
    for row in ("test", "baseline", "limit"):  # a 2-epoch search: sensible, not good
        assert 0.6 < metrics[row]["auc"] <= 1.0, row
        assert 0.0 < metrics[row]["rejection@0.99"] < 1.0, row
    assert metrics["limit"]["auc"] >= max(metrics["test"]["auc"], metrics["baseline"]["auc"])
    assert (trained / "training_report" / "search_front.png").stat().st_size > 10_000


def test_baseline_rows_on_the_console(trained_model):
    out = trained_model.stdout
    lines = out.splitlines()
    assert lines[-1].startswith("    open ")  # the headline is the run's end: it ended
    assert any(line.startswith("total time") for line in lines[-10:])
    rows = {ln.split()[0]: ln for ln in out.splitlines()
            if ln.startswith(("test ", "baseline (test)", "limit (test)"))}
    assert set(rows) == {"test", "baseline", "limit"}
    assert "gradient-boosted trees" in out and "natural mix" in out


# ---------------------------------------------------------------------------
# bad input: one line, exit 2, before Ray
# ---------------------------------------------------------------------------


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
    ("working_point_1", ["--working-point", "1"], ["--working-point", "(0, 1)"]),
    ("working_point_0", ["--working-point", "0"], ["--working-point", "(0, 1)"]),
    ("threshold_2", ["--threshold", "2"], ["--threshold", "[0, 1]"]),
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


def test_no_report_without_save_is_refused(raw_dataset, tmp_path):
    proc = run_script("training.py", "-f", raw_dataset, "--no-report",
                      "--path", tmp_path / "ray")
    assert_clean_error(proc, "--no-report", "add --save")
    assert not (tmp_path / "ray").exists()


@pytest.mark.parametrize("options", [["--no-plots"], ["--save", "--no-report", "--no-plots"]])
def test_no_plots_without_a_report_is_refused(raw_dataset, tmp_path, options):
    proc = run_script("training.py", "-f", raw_dataset, *options, "--path", tmp_path / "ray",
                      "--output-dir", tmp_path / "models")
    assert_clean_error(proc, "--no-plots", "add --save (without --no-report)")
    assert not (tmp_path / "ray").exists() and not (tmp_path / "models").exists()


def test_threshold_only_cuts_the_accuracy_column():
    """--threshold T: the accuracy's cut; by default the model's own threshold (its
    working point's), which is the model's threshold either way."""
    import training
    record = {"threshold": 0.83}
    assert training.accuracy_cut(SimpleNamespace(threshold=None), record) == 0.83
    assert training.accuracy_cut(SimpleNamespace(threshold=0.5), record) == 0.5
    help_text = run_script("training.py", "--help").stdout
    assert "--working-point" in help_text and "default 0.99" in help_text


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


def _variant(raw_dataset, prefix, **arrays):
    """raw_dataset with some arrays replaced ({split}_{data|labels}: array)."""
    for split in ("train", "valid", "test"):
        for kind in ("data", "labels"):
            path = f"{prefix}_{split}_{kind}.npy"
            if f"{split}_{kind}" in arrays:
                np.save(path, arrays[f"{split}_{kind}"])
            else:
                os.symlink(f"{raw_dataset}_{split}_{kind}.npy", path)
    return recount(prefix, raw_dataset)  # the JSON's counts agree: only the fault remains


@pytest.mark.parametrize("case,needles", [
    ("one_class", ["valid split", "only real tracks"]),
    ("empty_test", ["test split", "no tracks"]),
    ("constant", ["every feature of the training split", "constant"]),
    ("budget", ["--max-macs 10", "no architecture fits"]),
])
def test_what_cannot_be_learned_is_refused_before_ray(raw_dataset, tmp_path, case, needles):
    valid_y = np.load(raw_dataset + "_valid_labels.npy")
    train_x = np.load(raw_dataset + "_train_data.npy")
    arrays, extra = {}, []
    if case == "one_class":
        arrays["valid_labels"] = np.zeros_like(valid_y)
    elif case == "empty_test":
        arrays["test_data"] = np.zeros((0, train_x.shape[1]), np.float32)
        arrays["test_labels"] = np.zeros((0, 1), np.float32)
    elif case == "constant":
        arrays["train_data"] = np.ones_like(train_x)
    else:
        extra = ["--max-macs", "10"]
    prefix = _variant(raw_dataset, str(tmp_path / "ds"), **arrays)
    proc = run_script("training.py", "-f", prefix, "-n", "1", "--epochs", "1", "--cpu", "1",
                      "--path", tmp_path / "ray", "--save", "--output-dir", tmp_path / "m",
                      *extra)
    assert_clean_error(proc, *needles)
    assert "trials x" not in proc.stdout
    assert not (tmp_path / "ray").exists() and not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------
# outputs checked and locked before Ray starts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case,needles", [
    ("output_dir_is_file", ["--output-dir", "is a file"]),
    ("path_is_file", ["--path", "is a file"]),
    ("output_dir_in_proc", ["--output-dir", "/proc/ghost_models"]),
    ("json_not_object", ["_features.json", "not an object"]),
    # 13 features and 5 derived inputs (features.DERIVED["matching"])
    ("norm_wrong_length", ["_features.json", "12 offsets for 18 inputs"]),
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
        if case.endswith("no_names"):  # arrays without names: no derived inputs either
            del meta["features"], meta["derived"]
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


@pytest.fixture(scope="module")
def contested(raw_dataset, tmp_path_factory):
    """A small search started on folders whose locks and a temporary were left by
    killed runs (SIGKILL), and the same search started again while the first runs."""
    tmp = tmp_path_factory.mktemp("contested")
    out, ray_dir = tmp / "m", tmp / "ray"
    out.mkdir()
    ray_dir.mkdir()
    (ray_dir / ".ghost_search.lock").write_text(f"{_dead_pid()}\n")
    (out / ".ghost_tracks.lock").write_text(f"{_dead_pid()}\n")
    stale = out / f".ghost_model.tmp{_dead_pid()}_3.onnx"
    stale.write_text("half a model")
    args = [sys.executable, os.path.join(ROOT_DIR, "training.py"), "-f", raw_dataset,
            *SMALL, "--path", str(ray_dir), "--save", "--no-report", "--output-dir", str(out)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:  # the first one holds its locks once it starts Ray
            if "trials x" in line:
                break
        second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    finally:
        _, err = first.communicate(timeout=600)
    return SimpleNamespace(first=first, err=err, second=second, out=out, ray=ray_dir,
                           stale=stale)


def test_a_running_search_locks_its_folders(raw_dataset, tmp_path, contested):
    out, ray_dir = tmp_path / "m", tmp_path / "ray"
    out.mkdir()
    ray_dir.mkdir()
    args = ["-f", raw_dataset, *SMALL, "--path", ray_dir, "--save", "--output-dir", out]
    (out / ".ghost_tracks.lock").write_text(f"{os.getpid()}\n")  # a live owner: this test
    proc = run_script("training.py", *args)
    assert_clean_error(proc, "--output-dir", "in use by another run", str(os.getpid()))
    (out / ".ghost_tracks.lock").unlink()
    (ray_dir / ".ghost_search.lock").write_text(f"{os.getpid()}\n")
    proc = run_script("training.py", *args)
    assert_clean_error(proc, "--path", "in use by another run")
    assert not (out / "ghost_model.onnx").exists()
    # a lock whose owner died (SIGKILL) is taken over, as are its temporaries
    out, ray_dir, stale = contested.out, contested.ray, contested.stale
    assert contested.first.returncode == 0, contested.err
    assert (out / "ghost_model.onnx").is_file() and not stale.exists()
    assert not (out / ".ghost_tracks.lock").exists()
    assert not (ray_dir / ".ghost_search.lock").exists()


def test_two_searches_at_once_one_is_refused(contested):
    assert_clean_error(contested.second, "in use by another run", str(contested.first.pid))
    assert contested.first.returncode == 0, contested.err
    assert (contested.out / "ghost_model.onnx").is_file()


# ---------------------------------------------------------------------------
# the answer first, and the files --help names
# ---------------------------------------------------------------------------


def test_the_files_written_are_those_its_help_names(trained_model):
    """The session's search ran with --save --int8 --baseline --format png,pdf: every
    file --help lists is written, and nothing else."""
    models = trained_model.models
    sections = help_outputs("training.py")
    files = next(rows for heading, rows in sections.items() if "--output-dir with" in heading)
    report = next(rows for heading, rows in sections.items() if "training_report" in heading)
    assert set(os.listdir(models)) == listed(files) | {"training_report"}
    figures = {n for n in listed(report) if n.endswith(".png")}
    assert set(os.listdir(models / "training_report")) == \
        listed(report) | {n.replace(".png", ".pdf") for n in figures}


def test_the_headline_ends_the_console_and_matches_metrics_json(trained_model):
    models = trained_model.models
    m = json.loads((models / "training_report" / "metrics.json").read_text())
    lines = trained_model.stdout.splitlines()
    block = lines[max(i for i, line in enumerate(lines) if line.startswith("=== ")):]
    assert len(block) <= 9 and block[0].startswith("=== the chosen network: ")
    own = next(w for w in m["working_points"] if w["label"].startswith("model's"))
    assert block[1] == (f"    network: ROC AUC {m['roc_auc']:.4f}; score > "
                        f"{own['threshold']:.4f} (its 99.0% point, from the validation "
                        f"split): real-track efficiency {own['real_efficiency']:.2%}, "
                        f"ghost rejection {own['ghost_rejection']:.2%}")
    config = load_config(str(models / "ghost_model_config.json"))
    assert own["threshold"] == pytest.approx(config["working_point"]["threshold"])
    curves = {c["name"].split()[0]: c for c in m["comparison"]}
    assert block[2].startswith(f"    INT8: ROC AUC {curves['INT8']['auc']:.4f}; score > ")
    for name, line in zip(("baseline", "limit"), block[3:5]):
        rejection = next(r["ghost_rejection"] for r in curves[name]["ghost_rejection"]
                         if r["target_efficiency"] == 0.99)
        assert line == (f"    {name}: ROC AUC {curves[name]['auc']:.4f}; ghost rejection "
                        f"{rejection:.2%} at 99.0% real-track efficiency")
    assert block[5].startswith(f"    model files in {models}: ghost_model{{.pth,")
    assert block[6] == f"    open {models / 'training_report' / 'index.html'}"


# ---------------------------------------------------------------------------
# a run that listens: SIGINT and SIGTERM at three stages
# ---------------------------------------------------------------------------

@pytest.mark.ray
@pytest.mark.parametrize("stage,signum", [
    ("searching:", signal.SIGINT),                   # the search (Tune stops, keeps it)
    ("fitting the gradient-boosted", signal.SIGINT),  # the baseline, after the search
    ("writing the model files", signal.SIGTERM),     # the report, Ray long shut down
])
def test_a_signal_ends_the_run_at_any_stage(raw_dataset, tmp_path, stage, signum):
    """The signal is sent when the stage announces itself: exit 128 + signal, one
    error line, no model file, no temporary, no empty folder made by the run, and
    none of Ray's processes left (those seen while the search ran)."""
    models = tmp_path / "m"
    proc = subprocess.Popen(
        [sys.executable, "-u", os.path.join(ROOT_DIR, "training.py"), "-f", raw_dataset,
         *SMALL, "--baseline", "--save", "--output-dir", models, "--path", tmp_path / "ray"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ray_processes, lines = set(), []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(("searching:", "  ")):  # Ray runs
            ray_processes |= set(descendants(proc.pid))
        if line.startswith(stage):
            ray_processes |= set(descendants(proc.pid))
            proc.send_signal(signum)
            break
    out, err = proc.communicate(timeout=300)
    assert lines[-1].startswith(stage), "".join(lines) + out + err
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"stopped by {signal.Signals(signum).name}" in errors[0]
    assert "--resume" in errors[0]  # the search (finished or not) is kept
    assert not models.exists() or not os.listdir(models), os.listdir(models)
    assert ray_processes  # seen, and gone with the run
    assert not [p for p in ray_processes if alive(p)]


def test_suggest_derived_prints_the_table_and_writes_the_csv(raw_dataset, tmp_path):
    """--suggest-derived: no search (no Ray folder), the top N as ready --derived
    lines on the console, every candidate in suggested_derived.csv."""
    from suggest import candidates
    out = tmp_path / "out"
    proc = run_script("training.py", "-f", raw_dataset, "--suggest-derived", "3",
                      "--output-dir", out, "--path", tmp_path / "ray")
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.splitlines()
    at = next(i for i, line in enumerate(table) if line.split()[:3] == ["rank", "AUC", "gain"])
    rows = table[at + 1:at + 4]
    assert [r.split()[0] for r in rows] == ["1", "2", "3"]
    assert all(" --derived '" in r and " := " in r for r in rows)
    meta = load_meta(raw_dataset)
    csv = (out / "suggested_derived.csv").read_text().splitlines()
    assert len(csv) == 1 + len(candidates(meta.features, meta.derived))
    assert csv[1].split(",")[1] in rows[0]
    assert not (tmp_path / "ray").exists() and os.listdir(out) == ["suggested_derived.csv"]


@pytest.mark.parametrize("extra,needles", [
    (["--suggest-derived", "--save"], ["trains no model", "drop --save"]),
    (["--suggest-derived", "--int8", "--baseline"], ["drop --int8, --baseline"]),
    (["--suggest-derived", "0"], ["--suggest-derived must be at least 1"]),
    (["--suggest-derived", "--network", "0"], ["--network 0 takes none"]),
    (["--suggest-derived", "many"], ["--suggest-derived", "invalid int value"]),
])
def test_suggest_derived_bad_combinations(raw_dataset, tmp_path, extra, needles):
    out = tmp_path / "out"
    out.mkdir()
    proc = run_script("training.py", "-f", raw_dataset, "--output-dir", out, *extra)
    assert_clean_error(proc, *needles)
    assert not list(out.iterdir())


def test_suggest_derived_refuses_a_normalized_dataset(norm_dataset, tmp_path):
    proc = run_script("training.py", "-f", norm_dataset, "--suggest-derived",
                      "--output-dir", tmp_path)
    assert_clean_error(proc, "network 1's first layer", "remake it without --normalize")
