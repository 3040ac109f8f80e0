"""search.py: the Ray Tune search.  Its cost budget (--max-macs), the selection metric
(--select), the original study's space, what it writes under --path, a Ray cluster
to join, the best trial's choice, and a failing trial or a full disk ending with one
line."""
import csv
import json
import os
import subprocess

import pytest

from architecture import macs_and_params
from artifacts import load_config
from dataset import load_meta
from features import DERIVED
from helpers import (
    ROOT_DIR,
    assert_clean_error,
    run_code,
    run_script,
    search,
    start_ray_cluster,
    stop_ray_cluster,
)
from search import best_trial
from utils import GhostError

BUDGET_TRIALS = 2  # the trials of the search within a cost budget


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


# ---------------------------------------------------------------------------
# what a search writes, where it runs
# ---------------------------------------------------------------------------


def test_search_writes_little_and_no_data(raw_dataset, trained_model):
    files = [f for f in trained_model.ray.rglob("*") if f.is_file()]
    sizes = {str(f): f.stat().st_size for f in files}
    assert sum(sizes.values()) < 1_000_000, sizes  # 2 trials: metrics + a few checkpoints
    assert max(sizes.values()) < 100_000, max(sizes.items(), key=lambda kv: kv[1])
    data_bytes = os.path.getsize(raw_dataset + "_train_data.npy")
    assert max(sizes.values()) < data_bytes / 2  # no copy of the data anywhere
    params = [json.load(open(f)) for f in files if f.name == "params.json"]
    assert params and all("data" not in p and "hidden" in p for p in params)


@pytest.mark.ray
def test_join_an_existing_ray_cluster(raw_dataset, tmp_path):
    port, _ = start_ray_cluster(cpus=1)
    try:
        proc = run_script("training.py", "-f", raw_dataset, "-n", "2", "--epochs", "1",
                          "--batch", "512", "--address", f"127.0.0.1:{port}",
                          "--path", tmp_path / "ray", "--save", "--no-report",
                          "--output-dir", tmp_path / "m")
        assert proc.returncode == 0, proc.stderr
        assert "[2/2]" in proc.stdout
        assert (tmp_path / "m" / "ghost_model.onnx").is_file()
    finally:
        stop_ray_cluster(port)


# ---------------------------------------------------------------------------
# the search space: cost budget, selection metric, the original space
# ---------------------------------------------------------------------------


def _trials(folder):
    with open(folder / "training_report" / "search_trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def budget_search(raw_dataset, tmp_path_factory):
    """A small search within 1,000 multiply-adds, picked by rejection at 99 %; its
    report without figures (--no-plots)."""
    return search(raw_dataset, tmp_path_factory.mktemp("budget"), "-n", BUDGET_TRIALS,
                  "--epochs", "1", "--cpu", "1", "--seed", "5", "--max-macs", "1000",
                  "--select", "rejection@0.99", "--no-plots")


def test_max_macs_is_respected_by_every_trial(budget_search, raw_dataset, capsys):
    trials = _trials(budget_search)
    assert len(trials) == BUDGET_TRIALS
    n_inputs = len(load_meta(raw_dataset).inputs())  # the features, then the derived inputs
    assert n_inputs == 13 + len(DERIVED["matching"])  # the MACs count the derived inputs
    for t in trials:
        hidden = [int(w) for w in t["hidden"].split("x")]
        assert int(t["macs"]) == macs_and_params(n_inputs, hidden)[0] <= 1000
    config = load_config(str(budget_search / "ghost_model_config.json"))
    assert config["macs"] <= 1000


def test_a_report_without_plots_has_its_tables_and_pages_only(budget_search):
    """--no-plots: the training report's tables, metrics.json, results.root and page,
    and no figure (the page shows none)."""
    report = budget_search / "training_report"
    names = set(os.listdir(report))
    assert {"search_trials.csv", "metrics.json", "results.root", "index.html"} <= names
    assert not [n for n in names if n.endswith((".png", ".pdf"))]
    assert "<img" not in (report / "index.html").read_text()


def test_trials_reuse_one_worker_process(trained_model):
    """Tune reuses a trial's actor for the next (reuse_actors): the session's search
    (2 trials on --cpu 1) started one worker process, not one per trial (each start
    imports torch, seconds per trial); each trial still seeds itself (the seed
    reproducibility check in test_training.py)."""
    results = [json.loads(f.read_text().splitlines()[0])
               for f in trained_model.ray.rglob("result.json")]
    assert len(results) == 2
    assert len({r["pid"] for r in results}) == 1


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


def test_select_loss_picks_the_lowest_validation_loss(trained_model):
    out = trained_model.models  # a search with the default --select loss
    trials = _trials(out)
    config = load_config(str(out / "ghost_model_config.json"))
    best = min(trials, key=lambda t: float(t["loss"]))
    assert float(best["lr"]) == pytest.approx(config["lr"], rel=1e-5)


@pytest.mark.ray
def test_original_space_is_the_seeds(raw_dataset, tmp_path):
    out = search(raw_dataset, tmp_path, "-n", "1", "--epochs", "1", "--cpu", "1",
                 "--space", "original", "--inputs", "minmax", "--no-report")
    config = load_config(str(out / "ghost_model_config.json"))
    assert len(config["hidden"]) == 1 and config["l0"] in (8, 16, 32, 64, 128)
    assert config["optimizer"] in ("adam", "sgd") and config["schedule"] == "constant"
    assert config["batch"] == 2048 and config["inputs"] == "minmax"


# ---------------------------------------------------------------------------
# failing trials and a full disk: one line each, no traceback
# ---------------------------------------------------------------------------


FAILING = """
import errno, sys
import cli, search, training
def failing_trial(params, setup, data):
    raise {error}
search.train_trial = failing_trial  # pickled by value: the trials run it
cli.run_cli(training.main, sys.argv[1:])
"""


def _run_with_failing_trials(error, *args):
    return run_code(FAILING.format(error=error), *args, cwd=ROOT_DIR)


def _trial_lines(proc, n):
    lines = [ln for ln in proc.stdout.splitlines() if " failed: " in ln]
    assert len(lines) == n, proc.stdout
    return lines


@pytest.mark.ray
def test_a_failing_trial_is_one_line_and_its_log_stays(raw_dataset, tmp_path):
    proc = _run_with_failing_trials('ValueError("the trial broke")', "-f", raw_dataset,
                                    "-n", "1", "--epochs", "1", "--cpu", "1",
                                    "--path", tmp_path / "ray")
    assert_clean_error(proc, "all 1 trials failed", "the trial broke")
    assert "Traceback" not in proc.stdout + proc.stderr
    [line] = _trial_lines(proc, 1)
    assert "[1/1] trial" in line and "ValueError: the trial broke" in line
    log = line.rsplit("(its log: ", 1)[1].rstrip(")")
    assert log.startswith(str(tmp_path / "ray" / "ghost_search"))
    assert "the trial broke" in open(os.path.join(log, "error.txt")).read()


@pytest.mark.ray
def test_a_full_disk_under_path_is_one_line(raw_dataset, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs",
                                  str(disk)], capture_output=True).returncode == 0
    except OSError:  # no mount command
        mounted = False
    args = ["-f", raw_dataset, "-n", "1", "--epochs", "1", "--cpu", "1",
            "--path", disk / "ray"]
    try:
        if mounted:
            proc = run_script("training.py", *args)
        else:  # no mount here: the trial's write fails as on a full disk
            proc = _run_with_failing_trials(
                'OSError(errno.ENOSPC, "No space left on device")', *args)
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)
    assert_clean_error(proc, "space")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "No space left on device" in _trial_lines(proc, 1)[0]
