"""inference.py end to end: a .root file or a dataset prefix in, the threshold
analysis, metrics, plots and per-track probabilities out; working points and
--calibrate; bad input and unwritable outputs refused with one line."""
import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import inference
import rootio
import rootwrite
from dataset import load_split
from features import DEFAULT_TREE, DERIVED, features_for
from helpers import (
    ROOT_DIR,
    assert_clean_error,
    help_outputs,
    listed,
    run_inference,
    run_script,
    torch_scores,
)
from metrics import roc_auc
from utils import GhostError

# the seed's accuracy, ghost/real, confusion and rate plots, merged into one threshold scan
SEED_PLOTS = ["thresholds.png", "confusion.png", "roc.png"]
MATCHING = features_for("matching")


def test_default_thresholds_are_the_original_26():
    t = inference.DEFAULT_THRESHOLDS
    assert len(t) == 26 and t[0] == 0.10 and t[14] == 0.80 and t[15] == 0.81
    assert t[23] == 0.89 and t[-2:] == (0.90, 0.95)
    assert list(t) == sorted(t)


# ---------------------------------------------------------------------------
# full runs on a .root file
# ---------------------------------------------------------------------------


def test_root_file_all_outputs(quick_models, matching_file, root_features, reference, tmp_path,
                               capsys):
    out, plots = tmp_path / "scores.npy", tmp_path / "plots"
    assert run_inference("-f", matching_file, "--model", quick_models["net1"], "--output", out,
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


def test_root_output_is_a_friend_tree(quick_models, matching_file, reference, tmp_path):
    out = tmp_path / "scores.root"
    assert run_inference("-f", matching_file, "--model", quick_models["net1"], "--output", out,
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


def test_parallel_read_gives_the_serial_per_track_output(quick_models, clustered_file, tmp_path):
    """--threads 2 reads the 25 clusters in parallel, in any order; every track's
    probability is still at its entry, as a serial read and a plain RDataFrame see it."""
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"p{n}.npy"
        assert run_inference("-f", clustered_file, "--model", quick_models["net1"], "--threads", n,
                             "--output", outs[n], "--no-plots", "--plots-dir", tmp_path / "p") == 0
    serial, threaded = np.load(outs[1]), np.load(outs[2])
    np.testing.assert_array_equal(threaded, serial)
    ROOT = rootio.import_root()
    cols = ROOT.RDataFrame(DEFAULT_TREE, clustered_file).AsNumpy(MATCHING)
    data = np.stack([np.asarray(cols[c], dtype=np.float32) for c in MATCHING], axis=1)
    finite = np.isfinite(data).all(axis=1)
    np.testing.assert_allclose(serial[finite], torch_scores(quick_models, "net1", data[finite]),
                               atol=1e-6)
    assert np.isnan(serial[~finite]).all()


def test_ranking_without_figures(quick_models, small_file, tmp_path):
    out, plots = tmp_path / "p.npy", tmp_path / "plots"
    proc = run_script("inference.py", "-f", small_file, "--model", quick_models["net1"],
                      "--ranking", "--no-plots", "--output", out, "--plots-dir", plots)
    assert proc.returncode == 0, proc.stderr
    assert len(np.load(out)) == 5000
    assert {"ranking.csv", "metrics.json", "index.html"} <= set(os.listdir(plots))
    assert not [n for n in os.listdir(plots) if n.endswith((".png", ".pdf"))]
    # the features and the model's derived inputs, each ranked (as the training report)
    ranked = [r["feature"] for r in json.loads((plots / "metrics.json").read_text())["ranking"]]
    derived = [f"{d.split(' := ')[0]} := " for d in DERIVED["matching"]]
    assert len(ranked) == 13 + len(DERIVED["matching"]), ranked
    assert all(any(r.startswith(d) for r in ranked) for d in derived), ranked
    assert "derived input" in (plots / "index.html").read_text()


# ---------------------------------------------------------------------------
# working points and calibration
# ---------------------------------------------------------------------------


def test_inference_working_points_everywhere(trained_model, matching_file, tmp_path, capsys):
    plots, model = tmp_path / "p", str(trained_model.models / "ghost_model.onnx")
    assert inference.main(["-f", matching_file, "--model", model,
                           "--working-point", "0.99,0.9", "--plots-dir", str(plots)]) == 0
    text = capsys.readouterr().out
    assert "    99.0% efficiency: score > " in text  # the headline's lines
    assert "    model's 99.0% point: score > " in text and "(fixed on the validation split)" in text
    metrics = json.loads((plots / "metrics.json").read_text())
    wps = metrics["working_points"]
    assert [w["label"] for w in wps] == ["99.0% efficiency", "90.0% efficiency",
                                         "model's 99.0% point"]
    assert abs(wps[0]["real_efficiency"] - 0.99) < 1e-3 and 0 < wps[0]["ghost_rejection"] < 1
    rows = (plots / "thresholds.csv").read_text().splitlines()
    assert rows[-1].endswith(",model's 99.0% point")
    assert (plots / "rejection.png").is_file() and (plots / "kinematics_pt.png").is_file()


def test_calibrated_probabilities_shift_the_logit(trained_model, matching_file, tmp_path):
    raw, cal = tmp_path / "raw.npy", tmp_path / "cal.npy"
    model = str(trained_model.models / "ghost_model.onnx")
    for out, extra in ((raw, []), (cal, ["--calibrate", "0.15"])):
        assert inference.main(["-f", matching_file, "--model", model, "--output", str(out),
                               "--plots-dir", str(tmp_path / "p"), "--no-plots",
                               *extra]) == 0
    p, q = np.load(raw).astype(np.float64), np.load(cal).astype(np.float64)
    ok = np.isfinite(p) & (p > 1e-6) & (p < 1 - 1e-6)
    shift = math.log(0.15 / 0.85)  # from the balanced training mix (0.5) to 15 %
    np.testing.assert_allclose(np.log(q[ok] / (1 - q[ok])), np.log(p[ok] / (1 - p[ok])) + shift,
                               atol=2e-3)
    assert np.array_equal(np.isnan(p), np.isnan(q))
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert metrics["output_calibrated_to_ghost_fraction"] == 0.15


@pytest.mark.parametrize("args, needle", [
    (["--calibrate"], "--calibrate needs --output"),
    (["--calibrate", "0.2"], "--calibrate needs --output"),
    (["--calibrate", "0.1,0.3", "--output", "p.npy"], "one ghost fraction"),
])
def test_calibrate_refusals(quick_models, small_file, tmp_path, args, needle):
    proc = run_script("inference.py", "-f", small_file, "--model", quick_models["net1"],
                      "--plots-dir", "plots", *args, cwd=tmp_path)
    assert_clean_error(proc, needle)
    assert "read " not in proc.stdout and os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# dataset prefixes
# ---------------------------------------------------------------------------


def test_dataset_prefix_overtraining(quick_models, raw_dataset, tmp_path, capsys):
    plots = tmp_path / "plots"
    assert run_inference("-f", raw_dataset, "--model", quick_models["net1_pth"], "--config",
                         quick_models["net1_pkl"], "--plots-dir", plots) == 0
    out = capsys.readouterr().out
    assert "overtraining check" in out
    for name in SEED_PLOTS + ["overtraining.png", "scores.png", "rejection.png"]:
        assert (plots / name).is_file(), name
    over = json.loads((plots / "metrics.json").read_text())["overtraining"]
    for cls in ("ghost", "real"):
        assert 0.0 <= over[cls]["p_value"] <= 1.0 and over[cls]["n_train"] > over[cls]["n_test"]
    # as TMVA prints it: each working point's efficiency and rejection on both splits
    metrics = json.loads((plots / "metrics.json").read_text())
    train_data, train_labels = load_split(raw_dataset, "train")
    train_scores = torch_scores(quick_models, "net1", train_data)
    train_labels = train_labels[:, 0] > 0.5
    assert len(over["working_points"]) == len(metrics["working_points"])
    for row, wp in zip(over["working_points"], metrics["working_points"]):
        assert row["label"] == wp["label"] and row["threshold"] == wp["threshold"]
        assert row["real_efficiency_test"] == pytest.approx(wp["real_efficiency"])
        assert row["ghost_rejection_test"] == pytest.approx(wp["ghost_rejection"])
        kept = train_scores[~train_labels] <= wp["threshold"]  # within one track
        assert row["real_efficiency_train"] == pytest.approx(kept.mean(), abs=1 / kept.size)
    assert "real-track efficiency" in out.split("overtraining check")[1].splitlines()[1]


def test_one_class_and_empty_inputs(quick_models, raw_dataset, tmp_path, capsys):
    data, labels = load_split(raw_dataset, "test")
    real = labels[:, 0] == 0
    for name, sel in (("reals", real), ("empty", np.zeros(len(real), bool))):
        for split in ("train", "valid", "test"):
            np.save(tmp_path / f"{name}_{split}_data.npy", data[sel])
            np.save(tmp_path / f"{name}_{split}_labels.npy", labels[sel])
    assert run_inference("-f", tmp_path / "reals", "--model", quick_models["net1"],
                         "--plots-dir", tmp_path / "p") == 0
    assert "only real tracks" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert metrics["roc_auc"] is None and metrics["ghosts"] == 0
    assert (tmp_path / "p" / "roc.png").is_file()
    with pytest.raises(GhostError, match="no tracks"):
        run_inference("-f", tmp_path / "empty", "--model", quick_models["net1"],
                      "--plots-dir", tmp_path / "q")


# ---------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written
# ---------------------------------------------------------------------------


def test_bad_inputs_fail_cleanly(quick_models, matching_file, norm_dataset, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(__import__("collections").OrderedDict(network=1)))
    out = tmp_path / "never.npy"
    base = ["-f", matching_file, "--plots-dir", tmp_path / "plots"]
    cases = [
        (["--model", tmp_path / "missing.onnx"], ["does not exist"]),
        (["--model", junk], ["not a readable ONNX model"]),
        (["--model", quick_models["net1_pth"]], ["needs --config"]),
        (["--model", quick_models["net1_pth"], "--config", evil], ["refusing to unpickle"]),
        (["--model", quick_models["net1"], "--output", tmp_path / "s.csv"], [".npy or .root"]),
        (["--model", quick_models["net1"], "--track", "forward"], ["13", "8"]),
        (["--model", quick_models["foreign"], "--features", ",".join(MATCHING[:-1] + ["nope"]),
          "--output", out], ["nope"]),
        (["--model", quick_models["net1"], "--normalize"], ["normalize twice"]),
    ]
    for args, needles in cases:
        assert_clean_error(run_script("inference.py", *base, *args), *needles)
    proc = run_script("inference.py", "-f", norm_dataset, "--model", quick_models["net1"])
    assert_clean_error(proc, "normalized", "network 1")
    assert not out.exists() and not (tmp_path / "plots").exists()


def test_bad_format_and_working_point_are_one_line(matching_file, tmp_path):
    proc = run_script("inference.py", "-f", matching_file, "--format", "svg")
    assert_clean_error(proc, "--format must be png, pdf or both")
    proc = run_script("inference.py", "-f", matching_file, "--working-point", "1.2")
    assert_clean_error(proc, "--working-point must be numbers in (0, 1)")


def test_unlabelled_root_file_still_scores(quick_models, root_features, tmp_path):
    ROOT = rootio.import_root()
    data, _ = root_features
    path = str(tmp_path / "nolabel.root")
    cols = {n: np.ascontiguousarray(data[:500, j]) for j, n in enumerate(MATCHING)}
    ROOT.RDF.FromNumpy(cols).Snapshot(DEFAULT_TREE, path)
    out = tmp_path / "s.npy"
    proc = run_script("inference.py", "-f", path, "--model", quick_models["net1"],
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


def test_empty_rntuple_is_a_clean_error(quick_models, tmp_path):
    from make_sample import generate
    path = str(tmp_path / "empty.root")
    rootwrite.write_root(path, DEFAULT_TREE, {k: v[:0] for k, v in generate(10).items()},
                     fmt="rntuple")
    proc = run_script("inference.py", "-f", path, "--model", quick_models["net1"],
                      "--plots-dir", tmp_path / "p")
    assert_clean_error(proc, "holds no tracks")


@pytest.mark.parametrize("where,needles", [
    (["--output", "/proc/ghost_p.npy"], ["/proc", "not writable"]),
    (["--plots-dir", "/proc/ghost_plots"], ["--plots-dir", "/proc"]),
])
def test_unwritable_outputs_fail_before_scoring(quick_models, matching_file, tmp_path, where,
                                                needles):
    proc = run_script("inference.py", "-f", matching_file, "--model", quick_models["net1"],
                      *where)
    assert_clean_error(proc, *needles)
    assert "scored" not in proc.stdout and "read " not in proc.stdout


# ---------------------------------------------------------------------------
# the answer first, and the files --help names
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(quick_models, raw_dataset, tmp_path_factory):
    """inference.py with every output asked for, on a dataset prefix (the train split,
    the limit, the kinematics' spectators), with --compare, --ranking, --output and
    --export-cpp: (its folder, its console)."""
    d = tmp_path_factory.mktemp("full_run")
    proc = run_script("inference.py", "-f", raw_dataset, "--model", quick_models["net1"],
                      "--compare", quick_models["int8"], "--ranking", "--output", d / "p.root",
                      "--export-cpp", d / "m.hpp", "--plots-dir", d / "plots")
    assert proc.returncode == 0, proc.stderr
    return d, proc.stdout


def test_the_files_written_are_those_its_help_names(full_run):
    d, _ = full_run
    sections = help_outputs("inference.py")
    plots = next(rows for heading, rows in sections.items() if "--plots-dir" in heading)
    assert set(os.listdir(d / "plots")) == listed(plots)
    named = next(rows for heading, rows in sections.items() if "named by options" in heading)
    assert {n.split()[0] for names, _ in named for n in names} == {"--output", "--export-cpp"}
    assert sorted(os.listdir(d)) == ["m.hpp", "p.root", "plots"]


def headline(console):
    """The block that ends a script's console: its title line (`=== ...`) and the
    lines under it."""
    lines = console.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("=== "))
    block = lines[start:]
    assert all(line.startswith("    ") for line in block[1:]), block
    return block


def test_the_headline_ends_the_console_and_matches_metrics_json(full_run):
    d, out = full_run
    block = headline(out)
    m = json.loads((d / "plots" / "metrics.json").read_text())
    assert len(block) <= 9
    assert block[1] == f"    ROC AUC {m['roc_auc']:.4f} (the limit, truth_llr: " \
                      f"{m['limit']['auc']:.4f})"
    points = m["working_points"]  # 99 % and 95 % (quick models record no point of their own)
    assert len(points) == 2
    for wp, line in zip(points, block[2:4]):
        assert line == (f"    {wp['label']}: score > {wp['threshold']:.4f} ({wp['origin']}): "
                        f"real-track efficiency {wp['real_efficiency']:.2%}, ghost rejection "
                        f"{wp['ghost_rejection']:.2%}")
    gap = m["gap_to_limit"]
    assert block[4] == (f"    gap to the limit: AUC {gap['auc_gap']:.4f} lower; "
                        f"{gap['rejection_fraction@0.99']:.1%} of the limit's ghost rejection "
                        "at 99 % real-track efficiency")
    assert block[5:] == [f"    open {d / 'plots' / 'index.html'}",
                         f"    per-track ghost probabilities: {d / 'p.root'}"]


def test_the_threshold_table_only_with_verbose(quick_models, raw_dataset, tmp_path):
    table = "thresh     acc      TP      TN"  # the table's head, in ML words
    consoles = {}
    for flag in ([], ["--verbose"]):
        proc = run_script("inference.py", "-f", raw_dataset, "--model", quick_models["net1"],
                          "--no-plots", "--plots-dir", tmp_path / "plots", *flag)
        assert proc.returncode == 0, proc.stderr
        consoles[bool(flag)] = proc.stdout
    assert table not in consoles[False] and "best threshold by" not in consoles[False]
    assert table in consoles[True] and consoles[True].count("\n") >= 26
    assert headline(consoles[False]) == headline(consoles[True])  # the same answer
