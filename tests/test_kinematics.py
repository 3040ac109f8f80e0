"""kinematics.py: performance vs kinematics, its counts against brute-force masks
and its efficiencies against the global ones of an inference.py run."""
import json

import numpy as np
import pytest

import inference
from metrics import WorkingPoint, clopper_pearson


def test_kinematic_counts_equal_brute_force_masks():
    """performance's one-bincount-per-variable counts against a mask per bin and
    working point (ties at the cuts, NaN-free finite tracks, repeated cuts)."""
    import kinematics
    rng = np.random.default_rng(1)
    n = 50_000
    cols = {"qop": (rng.normal(size=n) * 1e-4).astype(np.float32),
            "best_pt": rng.exponential(1000, n).astype(np.float32),
            "tx": (rng.normal(size=n) * 0.1).astype(np.float32),
            "ty": (rng.normal(size=n) * 0.1).astype(np.float32),
            "n_velo": rng.integers(2, 26, n).astype(np.float32),
            "n_scifi": rng.integers(9, 13, n).astype(np.float32)}
    scores = np.round(rng.random(n), 2).astype(np.float32)
    labels = rng.random(n) < 0.2
    wps = [WorkingPoint(k, "", 0.9, t, {})
           for k, t in (("a", 0.9), ("b", 0.5), ("c", 0.9), ("d", 0.0), ("e", 0.29))]
    out = kinematics.performance(cols, scores, labels, wps)
    for var in kinematics.available(cols):
        x = kinematics.COMPUTE[var.name](cols)
        bins = np.searchsorted(np.asarray(var.edges), x, side="right")
        size = len(var.edges) + 1
        assert np.array_equal(out[var.name]["n_real"], np.bincount(bins[~labels], minlength=size))
        for wp, point in zip(wps, out[var.name]["points"]):
            kept = np.bincount(bins[~labels & (scores <= wp.threshold)], minlength=size)
            removed = np.bincount(bins[labels & (scores > wp.threshold)], minlength=size)
            assert np.array_equal(point["real_kept"], kept), (var.name, wp)
            assert np.array_equal(point["ghosts_removed"], removed), (var.name, wp)


def test_kinematic_efficiencies_add_up_to_the_global_ones(trained_model, matching_file, tmp_path):
    plots, model = tmp_path / "p", str(trained_model.models / "ghost_model.onnx")
    assert inference.main(["-f", matching_file, "--model", model, "--plots-dir", str(plots)]) == 0
    metrics = json.loads((plots / "metrics.json").read_text())
    kin = metrics["kinematics"]
    assert set(kin) == {"p", "pt", "eta", "n_velo", "n_scifi"}
    for var in kin.values():
        n_real, n_ghost = np.array(var["n_real"]), np.array(var["n_ghost"])
        assert n_real.sum() == metrics["reals"] and n_ghost.sum() == metrics["ghosts"]
        for point, wp in zip(var["points"], metrics["working_points"]):
            assert sum(point["real_kept"]) / n_real.sum() == pytest.approx(wp["real_efficiency"])
            assert sum(point["ghosts_removed"]) / n_ghost.sum() == pytest.approx(
                wp["ghost_rejection"])
            eff = np.array(point["efficiency"], dtype=float)
            lo, hi = (np.array(point[f"efficiency_{s}"], dtype=float) for s in ("low", "high"))
            full = n_real > 0
            assert np.isnan(eff[~full]).all() and np.isnan(lo[~full]).all()
            assert (lo[full] <= eff[full]).all() and (eff[full] <= hi[full]).all()
            want = clopper_pearson(np.array(point["real_kept"])[full], n_real[full])
            assert np.allclose(lo[full], want[0]) and np.allclose(hi[full], want[1])
    for name in ("p", "pt", "eta", "n_velo", "n_scifi"):
        assert (plots / f"kinematics_{name}.png").stat().st_size > 10_000
