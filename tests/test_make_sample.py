"""Tests of make_sample.py: schema, physics and CLI of the synthetic kalman_validator file."""

import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import make_sample
from features import LIMIT, features_for
from helpers import ROOT_DIR, help_outputs
from metrics import roc_auc

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import ROOT

TREE = "kalman_validator/kalman_ip_tree"
N = 5000
# The schema of Allen's kalman_validator tree (README, "Data"), written out again so a
# slip in the module shows.
SCHEMA = """z x y tx ty qop first_qop best_qop best_pt chi2 chi2V chi2T chi2UT ndof ndofV ndofT
kalman_ip kalman_ipx kalman_ipy kalman_ip_chi2 kalman_docaz velo_ip velo_ipx velo_ipy
velo_ip_chi2 velo_docaz n_velo n_ut n_scifi pr_forward_quality pr_match_chi2 pr_match_dtx
pr_match_dty pr_match_dx pr_match_dy pr_seed_chi2 pr_velo_ut_chi2
ghost mcp_p mcp_x mcp_y mcp_z""".split() + ["truth_llr"]  # and the generator's own truth
COUNTERS = ["n_velo", "n_ut", "n_scifi", "ndof", "ndofV", "ndofT"]
MATCH_ONLY = ["pr_match_chi2", "pr_match_dtx", "pr_match_dty", "pr_match_dx", "pr_match_dy",
              "pr_seed_chi2"]


def read(path):
    """All branches of the file as numpy arrays."""
    cols = ROOT.RDataFrame(TREE, str(path)).AsNumpy(SCHEMA)
    return {k: np.asarray(v) for k, v in cols.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("samples")
    out = {}
    for track in ("matching", "forward"):
        out[track] = d / f"{track}.root"
        make_sample.make_sample(str(out[track]), tracks=N, track=track, seed=7)
    return out


@pytest.fixture(scope="module")
def data(files):
    return {track: read(path) for track, path in files.items()}


def test_schema_all_float32(files):
    f = ROOT.TFile.Open(str(files["matching"]))
    assert f.Get("kalman_validator").InheritsFrom("TDirectory")
    tree = f.Get(TREE)
    assert tree.InheritsFrom("TTree") and tree.GetEntries() == N
    names = [b.GetName() for b in tree.GetListOfBranches()]
    assert sorted(names) == sorted(SCHEMA)
    for name in SCHEMA:
        assert tree.GetBranch(name).GetLeaf(name).GetTypeName() == "Float_t", name
    f.Close()
    df = ROOT.RDataFrame(TREE, str(files["forward"]))
    assert all(str(df.GetColumnType(name)) == "Float_t" for name in SCHEMA)


def test_arrays_float32_and_summary(tmp_path):
    cols = make_sample.generate(1000, "matching", 0.2, 1, 0.01)
    assert sorted(cols) == sorted(SCHEMA)
    assert all(v.dtype == np.float32 and v.shape == (1000,) for v in cols.values())
    s = make_sample.make_sample(str(tmp_path / "s.root"), tracks=1000, ghost_rate=0.2,
                                nonfinite=0.01)
    assert s["tracks"] == 1000 and s["ghosts"] == 200 and s["nonfinite"] == 10
    assert s["seconds"] > 0
    assert os.listdir(tmp_path) == ["s.root"]  # no temporary file left behind


def test_ghost_fraction(data):
    for cols in data.values():
        assert set(np.unique(cols["ghost"])) == {0.0, 1.0}
        assert abs(cols["ghost"].mean() - 0.15) < 0.01
    cols = make_sample.generate(N, "matching", ghost_rate=0.3, seed=1)
    assert abs(cols["ghost"].mean() - 0.3) < 0.01


def test_counters_integral_and_consistent(data):
    for cols in data.values():
        for name in COUNTERS:
            x = cols[name]
            assert np.all(np.isfinite(x)) and np.all(x == np.round(x)), name
        assert cols["n_velo"].min() >= 3 and cols["n_velo"].max() <= 23
        assert set(np.unique(cols["n_scifi"])) <= {10.0, 11.0, 12.0}
        assert cols["n_ut"].min() >= 0 and cols["n_ut"].max() <= 4
        assert np.all(cols["ndof"] >= 2)
        assert np.all(cols["ndof"] == cols["ndofV"] + cols["ndofT"])


def test_other_track_type_pr_branches_zero(data):
    m, f = data["matching"], data["forward"]
    assert np.all(m["pr_forward_quality"] == 0)
    for name in MATCH_ONLY:
        assert np.all(f[name] == 0), name
        assert np.count_nonzero(m[name]) > 0.9 * N, name
    assert np.count_nonzero(f["pr_forward_quality"]) > 0.9 * N


def test_seed_reproducible(tmp_path, files, data):
    again = tmp_path / "again.root"
    make_sample.make_sample(str(again), tracks=N, track="matching", seed=7)
    a, b = data["matching"], read(again)
    for name in SCHEMA:
        assert np.array_equal(a[name], b[name], equal_nan=True), name
    c = make_sample.generate(N, "matching", 0.15, seed=8)
    assert not np.array_equal(a["qop"], c["qop"], equal_nan=True)
    assert not np.array_equal(a["ghost"], c["ghost"])


def test_nonfinite_values(data):
    for cols in data.values():
        bad = np.zeros(N, dtype=bool)
        for name in SCHEMA:
            bad |= ~np.isfinite(cols[name])
        assert bad.sum() == round(0.002 * N)
        for name in COUNTERS + ["ghost", "mcp_p", "mcp_x", "mcp_y", "mcp_z", "truth_llr"]:
            assert np.all(np.isfinite(cols[name])), name
    cols = make_sample.generate(N, "matching", 0.15, 3, nonfinite=0.05)
    every = np.stack(list(cols.values()))
    assert (~np.isfinite(every)).any(axis=0).sum() == round(0.05 * N)
    assert (~np.isfinite(every)).sum() == round(0.05 * N)  # one value per broken track
    x = np.stack([cols[k] for k in features_for("matching")])
    assert (~np.isfinite(x)).any(axis=0).mean() > 0.015  # many land in the features
    assert np.isnan(x).any() and np.isinf(x).any()
    cols = make_sample.generate(N, "matching", 0.15, 3, nonfinite=0)
    assert all(np.all(np.isfinite(v)) for v in cols.values())


def test_match_dtx_follows_magnet_kick(data):
    c = data["matching"]
    ok = np.isfinite(c["qop"]) & np.isfinite(c["pr_match_dtx"])
    real, ghost = ok & (c["ghost"] == 0), ok & (c["ghost"] == 1)
    assert np.corrcoef(c["qop"][real], c["pr_match_dtx"][real])[0, 1] > 0.8
    assert abs(np.corrcoef(c["qop"][ghost], c["pr_match_dtx"][ghost])[0, 1]) < 0.3
    slope = np.polyfit(c["qop"][real], c["pr_match_dtx"][real], 1)[0]
    assert 1.0e3 < slope < 1.4e3  # ~1.2 GeV kick


def test_ghosts_look_worse(data):
    for cols in data.values():
        g = cols["ghost"] == 1
        r = cols["chi2"] / cols["ndof"]
        ok = np.isfinite(r)
        assert r[ok & g].mean() > 1.5 * r[ok & ~g].mean()
        assert cols["n_velo"][g].mean() < cols["n_velo"][~g].mean() - 0.5
        assert np.median(cols["mcp_p"][~g]) > 5e3  # ~10 GeV real tracks
        assert np.all(cols["mcp_p"][g] == 0) and np.all(cols["mcp_z"][g] == 0)
        assert np.all(cols["mcp_p"][~g] > 0)


def test_best_pt_formula(data):
    c = data["matching"]
    t2 = c["tx"].astype(np.float64) ** 2 + c["ty"].astype(np.float64) ** 2
    expect = np.sqrt(t2 / (1 + t2)) / np.abs(c["best_qop"].astype(np.float64))
    ok = np.isfinite(c["best_qop"] * c["tx"] * c["ty"] * c["best_pt"])
    assert ok.sum() > 0.99 * N
    np.testing.assert_allclose(c["best_pt"][ok], expect[ok], rtol=1e-4)


def test_rntuple_readable_by_name(tmp_path, data):
    path = tmp_path / "nt.root"
    make_sample.make_sample(str(path), tracks=N, track="matching", seed=7, fmt="rntuple")
    f = ROOT.TFile.Open(str(path))
    assert f.Get("kalman_validator").InheritsFrom("TDirectory")
    assert f.Get("kalman_validator").GetKey("kalman_ip_tree").GetClassName() == \
        "ROOT::RNTuple"
    f.Close()
    df = ROOT.RDataFrame(TREE, str(path))
    assert df.Count().GetValue() == N
    assert all(str(df.GetColumnType(name)) == "float" for name in SCHEMA)
    b = read(path)
    for name in SCHEMA:
        assert np.array_equal(data["matching"][name], b[name], equal_nan=True), name


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


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(ROOT_DIR, "make_sample.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("args", [
    ["--ghost-rate", "1.5"],
    ["--ghost-rate", "0"],
    ["--tracks", "0"],
    ["-o", "/nonexistent/folder/x.root"],
    ["--track", "downstream"],
])
def test_cli_errors(args, tmp_path):
    p = cli(*args, "--tracks", "10", cwd=tmp_path) if "--tracks" not in args else \
        cli(*args, cwd=tmp_path)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert os.listdir(tmp_path) == []


def test_cli_writes_file(tmp_path):
    out = tmp_path / "cli.root"
    p = cli("-o", str(out), "--tracks", "300", "--track", "forward", "--seed", "3")
    assert p.returncode == 0, p.stderr
    ghosts = int(ROOT.RDataFrame(TREE, str(out)).Sum("ghost").GetValue())
    title, line = p.stdout.splitlines()[-2:]
    assert title == f"=== synthetic Allen sample: {out} (ttree, {TREE})"
    assert line.startswith(f"    300 forward tracks: {ghosts} ghosts ({ghosts / 300:.2%}), ")
    assert os.listdir(tmp_path) == ["cli.root"]  # the one file its --help names (-o)
    (names, _), = help_outputs("make_sample.py")["files named by options:"]
    assert names == {"-o/--output FILE.root"}
    assert ROOT.RDataFrame(TREE, str(out)).Count().GetValue() == 300


def test_help_does_not_import_root():
    code = "import sys, make_sample; assert 'ROOT' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT_DIR, timeout=60).returncode == 0
    p = cli("--help")
    assert p.returncode == 0 and "--ghost-rate" in p.stdout
