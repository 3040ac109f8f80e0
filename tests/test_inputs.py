"""inputs.py: what inference.py feeds a model: the normalization recorded with it,
and the guard rails (another track type, features outside the training range or
nowhere finite, values float32 cannot hold, a single track); the dataset's file names
from dataset.py; normalized inputs for network 1 and a normalization of the wrong
width refused by the one refusal and the one width check."""
import json

import numpy as np
import pytest

from architecture import ModelConfig
from artifacts import SavedConfig, onnx_bytes
from dataset import DatasetMeta, load_split, meta_path, split_paths
from features import DEFAULT_TREE, DERIVED, MinMax, Standardize, features_for
from helpers import (
    assert_clean_error,
    lines_starting,
    run_inference,
    run_script,
    torch_scores,
    write_tracks,
)
from inputs import Source, choose_normalization, describe_source
from models import build_model
from scoring import LoadedModel
from utils import GhostError

MATCHING = features_for("matching")


# ---------------------------------------------------------------------------
# the normalization recorded with the model
# ---------------------------------------------------------------------------


def test_network0_uses_the_recorded_normalization(quick_models, matching_file, root_features,
                                                  tmp_path, capsys):
    """The file's own min/max differ from the recorded transform; only the recorded
    one reproduces training-time inputs."""
    out = tmp_path / "s.npy"
    assert run_inference("-f", matching_file, "--model", quick_models["net0"], "--output", out,
                         "--no-plots", "--plots-dir", tmp_path / "p") == 0
    assert "normalized with the transform recorded" in capsys.readouterr().out
    data, _ = root_features
    finite = np.isfinite(data).all(axis=1)
    rec = MinMax.from_dict(quick_models["net0_config"]["normalization"])
    expected = torch_scores(quick_models, "net0", rec.apply(data[finite]))
    scores = np.load(out)
    np.testing.assert_allclose(scores[finite], expected, atol=1e-6)
    own = MinMax.fit(data[finite], MATCHING)
    assert not np.allclose(own.offsets, rec.offsets) or not np.allclose(own.scales, rec.scales)
    own = torch_scores(quick_models, "net0", own.apply(data[finite]))
    assert np.abs(own - expected).max() > 1e-3  # the test can tell the two apart


def test_normalized_dataset_is_not_normalized_again(quick_models, norm_dataset, tmp_path):
    out = tmp_path / "s.npy"
    assert run_inference("-f", norm_dataset, "--model", quick_models["net0"], "--normalize",
                         "--output", out, "--no-plots", "--plots-dir", tmp_path / "p") == 0
    data, _ = load_split(norm_dataset, "test")
    np.testing.assert_allclose(np.load(out), torch_scores(quick_models, "net0", data), atol=1e-6)


# ---------------------------------------------------------------------------
# guard rails
# ---------------------------------------------------------------------------


def test_forward_file_through_a_matching_model_warns(quick_models, forward_file, tmp_path):
    proc = run_script("inference.py", "-f", forward_file, "--model", quick_models["net1"],
                      "--plots-dir", tmp_path / "p", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, proc.stderr
    for needle in ("pr_match_chi2", "pr_seed_chi2", "0 for every track",
                   "looks like forward", "not meaningful"):
        assert needle in warnings[0], needle


def test_matching_file_through_a_matching_model_is_quiet(quick_models, matching_file, tmp_path):
    proc = run_script("inference.py", "-f", matching_file, "--model", quick_models["net1"],
                      "--plots-dir", tmp_path / "p", "--no-plots")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


def _forward_model(path, forward_file):
    """A forward model with the training ranges of a forward file (weights random:
    the guard rails look at the inputs only)."""
    from rootio import MATRIX, read_root
    names = features_for("forward")
    x = read_root([forward_file], DEFAULT_TREE, names, matrix=True)[MATRIX]
    x = x[np.isfinite(x).all(axis=1)]
    config = ModelConfig(network=1, n_features=8, hidden=(8,), inputs="standard",
                         standardization=Standardize.fit(x, names))
    ranges = {n: [float(x[:, j].min()), float(x[:, j].max())] for j, n in enumerate(names)}
    saved = SavedConfig(model=config, track="forward", features=names, threshold=0.5,
                        training_ranges=ranges)
    path.write_bytes(onnx_bytes(build_model(config).eval(), saved))
    return path


def _derived_forward_model(path, forward_file):
    """A forward model that computes the default derived inputs (features.DERIVED) in
    its first layer, with the training ranges of a forward file's features and
    derived inputs (weights random: the guard rails look at the inputs only)."""
    from derived import extend, parse_all
    from features import DERIVED
    from rootio import MATRIX, read_root
    names = features_for("forward")
    derived = tuple(parse_all(DERIVED["forward"], names))
    x = read_root([forward_file], DEFAULT_TREE, names, matrix=True)[MATRIX]
    x = extend(x, derived, names)
    x = x[np.isfinite(x).all(axis=1)]
    inputs = names + [d.name for d in derived]
    config = ModelConfig(network=1, n_features=8, hidden=(8,), inputs="standard",
                         standardization=Standardize.fit(x, inputs), derived=derived,
                         branches=tuple(names))
    ranges = {n: [float(x[:, j].min()), float(x[:, j].max())] for j, n in enumerate(inputs)}
    saved = SavedConfig(model=config, track="forward", features=names, threshold=0.5,
                        training_ranges=ranges)
    path.write_bytes(onnx_bytes(build_model(config).eval(), saved))
    return path, ranges


def test_guard_rails_check_the_derived_inputs_too(tmp_path, forward_file):
    from make_sample import generate
    from rootwrite import write_root
    model, ranges = _derived_forward_model(tmp_path / "derived.onnx", forward_file)
    cols = generate(4000, "forward", seed=9, nonfinite=0)
    # chi2 and ndof each in their training range, their ratio below its own for 5 %
    low = ranges["chi2"][0] * 1.01 / ranges["ndof"][1]
    assert low < ranges["chi2_ndof"][0]
    cols["chi2"][:200], cols["ndof"][:200] = ranges["chi2"][0] * 1.01, ranges["ndof"][1]
    path = str(tmp_path / "ratio.root")
    write_root(path, DEFAULT_TREE, cols)
    proc = run_script("inference.py", "-f", path, "--model", model, "--plots-dir",
                      tmp_path / "p", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    warning = lines_starting(proc.stderr, "warning:")
    assert warning == ["warning: outside the model's training range: chi2_ndof for 5.0% of "
                       "the tracks; the model sees inputs unlike its training data, so its "
                       "scores and metrics are not meaningful"], proc.stderr
    # a derived input finite on no track: nothing can be scored, and it is named
    cols["ndof"][:] = 0.0
    write_root(path, DEFAULT_TREE, cols)
    proc = run_script("inference.py", "-f", path, "--model", model, "--plots-dir",
                      tmp_path / "q", "--output", tmp_path / "s.npy")
    assert_clean_error(proc, "derived input chi2_ndof is +inf for every track",
                       "no track can be scored")
    assert not (tmp_path / "s.npy").exists() and not (tmp_path / "q").exists()
    # the model computes its derived inputs from its branches in its order
    names = features_for("forward")
    proc = run_script("inference.py", "-f", forward_file, "--model", model, "--features",
                      ",".join(names[::-1]), "--plots-dir", tmp_path / "r", "--no-plots")
    assert_clean_error(proc, "computes its derived inputs from the features "
                       f"{','.join(names)} in this order")


def test_guard_rails_fire_on_a_forward_model_with_a_matching_file(tmp_path, forward_file,
                                                                  matching_file):
    model = _forward_model(tmp_path / "forward.onnx", forward_file)
    proc = run_script("inference.py", "-f", matching_file, "--model", model,
                      "--plots-dir", tmp_path / "p", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, proc.stderr
    for needle in ("pr_forward_quality", "0 for every track", "looks like matching",
                   "not meaningful"):
        assert needle in warnings[0], needle
    quiet = run_script("inference.py", "-f", forward_file, "--model", model,
                       "--plots-dir", tmp_path / "q", "--no-plots")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr


def test_guard_rails_name_features_outside_the_training_range(tmp_path, forward_file):
    from make_sample import generate
    from rootwrite import write_root
    model = _forward_model(tmp_path / "forward.onnx", forward_file)
    cols = generate(5000, "forward", seed=9, nonfinite=0)
    cols["chi2"] = cols["chi2"] * 1000.0  # far beyond anything in training
    path = str(tmp_path / "shifted.root")
    write_root(path, DEFAULT_TREE, cols)
    proc = run_script("inference.py", "-f", path, "--model", model, "--plots-dir",
                      tmp_path / "p", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    warning = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "outside the model's training range: chi2 for" in warning[0]
    fraction = float(warning[0].split("chi2 for ")[1].split("%")[0])
    assert 50 < fraction <= 100
    # half of the features or more carry nothing: an error, nothing written
    for name in features_for("forward")[:4]:
        cols[name] = np.full_like(cols[name], 3.0)
    write_root(path, DEFAULT_TREE, cols)
    proc = run_script("inference.py", "-f", path, "--model", model, "--plots-dir",
                      tmp_path / "q", "--output", tmp_path / "s.npy")
    assert_clean_error(proc, "constant here but were not in training", "4 of the model's 8")
    assert not (tmp_path / "s.npy").exists() and not (tmp_path / "q").exists()


def test_values_near_float32_max_are_left_out_like_non_finite_tracks(quick_models, tmp_path):
    from make_sample import generate
    cols = generate(20000, "matching", seed=12, nonfinite=0)
    huge = np.random.default_rng(0).permutation(20000)[:250]
    # pr_match_dty (std ~0.005, read by no derived input) overflows once standardized;
    # a huge qop makes the derived dqop = qop / first_qop - 1 infinite: a non-finite input
    cols["pr_match_dty"][huge[:100]], cols["pr_match_dty"][huge[100:200]] = 3e38, -3e38
    cols["qop"][huge[200:]] = 3e38
    path = write_tracks(tmp_path / "huge.root", cols)
    out, plots = tmp_path / "p.npy", tmp_path / "plots"
    proc = run_script("inference.py", "-f", path, "--model", quick_models["net1"], "--output", out,
                      "--plots-dir", plots, "--no-plots")
    assert proc.returncode == 0, proc.stderr
    warning = [ln for ln in lines_starting(proc.stderr, "warning:") if "float32" in ln]
    assert len(warning) == 1 and "200 tracks" in warning[0] and "pr_match_dty" in warning[0], \
        proc.stderr
    assert ("50 tracks have a non-finite feature or derived input (50 only a derived input)"
            in proc.stdout)
    p = np.load(out)
    nan = np.flatnonzero(np.isnan(p))
    assert sorted(nan) == sorted(huge)
    assert ((p[np.isfinite(p)] >= 0) & (p[np.isfinite(p)] <= 1)).all()
    metrics = json.loads((plots / "metrics.json").read_text())
    assert metrics["tracks_labelled"] == 19750 and metrics["tracks_nonfinite"] == 250
    assert metrics["tracks_nonfinite_derived_only"] == 50
    names = [d["name"] for d in quick_models["net1_config"]["derived"]]  # raw_dataset's
    assert names == [t.split(" := ")[0] for t in DERIVED["matching"]]  # matching's defaults
    assert [d["name"] for d in metrics["derived"]] == names


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_a_feature_nowhere_finite_is_named_as_such(quick_models, tmp_path, value):
    from make_sample import generate
    cols = generate(3000, "matching", seed=13, nonfinite=0)
    cols["chi2"][:] = value
    path = write_tracks(tmp_path / "bad.root", cols)
    proc = run_script("inference.py", "-f", path, "--model", quick_models["net1"], "--plots-dir",
                      tmp_path / "plots", "--output", tmp_path / "p.npy")
    what = "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
    assert_clean_error(proc, "chi2", f"{what} for every track")
    assert "0 for every track" not in proc.stderr
    assert not (tmp_path / "p.npy").exists()


def test_one_track_is_scored(quick_models, tmp_path):
    from make_sample import generate
    path = write_tracks(tmp_path / "one.root", generate(1, "matching", seed=14, nonfinite=0))
    out = tmp_path / "p.npy"
    proc = run_script("inference.py", "-f", path, "--model", quick_models["net1"], "--output", out,
                      "--plots-dir", tmp_path / "plots")
    assert proc.returncode == 0, proc.stderr
    assert "constant" not in proc.stderr
    p = np.load(out)
    assert p.shape == (1,) and 0 <= p[0] <= 1


NORM = MinMax((0.0, 0.0), (1.0, 2.0))


def _model(network, normalization=None):
    config = ModelConfig(network=network, n_features=2, hidden=(4,),
                         normalization=normalization or (NORM if network == 1 else None))
    return LoadedModel("onnx", "m.onnx", SavedConfig(model=config), True, 2, False)


def test_a_missing_prefix_names_its_test_arrays(tmp_path):
    prefix = str(tmp_path / "ds")
    with pytest.raises(GhostError, match=f"{split_paths(prefix, 'test')[0]} is missing"):
        describe_source(prefix)


def test_network_1_refuses_normalized_inputs(tmp_path):
    normalized = Source("dataset", "ds", DatasetMeta(normalized=True))
    with pytest.raises(GhostError, match="network 1 normalizes inside the model, but ds "
                                         "holds normalized features") as e:
        choose_normalization(False, 1, _model(1), normalized, ["a", "b"])
    assert meta_path("ds") in str(e.value)
    raw = Source("root", "f.root", DatasetMeta())
    with pytest.raises(GhostError, match="--normalize would normalize twice"):
        choose_normalization(True, 1, _model(1), raw, ["a", "b"])
    assert choose_normalization(False, 1, _model(1), raw, ["a", "b"]) == (None, None)
    assert choose_normalization(False, 0, _model(0, NORM), raw, ["a", "b"])[0] is NORM


def test_a_normalization_of_another_width_is_refused():
    raw = Source("root", "f.root", DatasetMeta())
    with pytest.raises(GhostError, match=r"the normalization's offsets do not match the "
                                         r"selected features \(2 offsets for 3 selected"):
        choose_normalization(True, 0, _model(0, NORM), raw, ["a", "b", "c"])
