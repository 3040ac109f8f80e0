"""Shared fixtures: small synthetic Allen files and datasets made once per session."""
import os
import subprocess
import sys

import pytest

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("MPLBACKEND", "Agg")


def run_script(script, *args, cwd=None, timeout=600):
    """Run one of the toolkit's scripts as a user would; returns CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT_DIR, script), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def assert_clean_error(proc, *needles):
    """Exit code 2, no traceback, and a one-line `error:` naming the needles."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("samples")


def _sample(sample_dir, name, **kw):
    from make_sample import make_sample
    path = str(sample_dir / name)
    if not os.path.exists(path):
        make_sample(path, **kw)
    return path


@pytest.fixture(scope="session")
def matching_file(sample_dir):
    return _sample(sample_dir, "matching.root", tracks=20000, track="matching", seed=1)


@pytest.fixture(scope="session")
def forward_file(sample_dir):
    return _sample(sample_dir, "forward.root", tracks=20000, track="forward", seed=2)


@pytest.fixture(scope="session")
def rntuple_file(sample_dir):
    return _sample(sample_dir, "rntuple.root", tracks=5000, track="matching", seed=3,
                   fmt="rntuple")


@pytest.fixture(scope="session")
def clustered_file(sample_dir):
    """50,000 matching tracks in 25 clusters of 2,000: ROOT's threads really
    interleave them."""
    import ROOT

    from make_sample import generate
    path = str(sample_dir / "clustered.root")
    opts = ROOT.RDF.RSnapshotOptions()
    opts.fAutoFlush = 2000
    cols = generate(50_000, "matching", seed=4)
    ROOT.RDF.FromNumpy(cols).Snapshot("kalman_validator/kalman_ip_tree", path, list(cols),
                                      opts)
    return path


@pytest.fixture(scope="session")
def raw_dataset(sample_dir, matching_file):
    """A matching dataset prefix with raw (unnormalized) features."""
    import make_dataset
    prefix = str(sample_dir / "raw")
    make_dataset.main(["-f", matching_file, "--output", prefix, "--track", "matching"])
    return prefix


@pytest.fixture(scope="session")
def norm_dataset(sample_dir, matching_file):
    """A matching dataset prefix with min-max normalized features."""
    import make_dataset
    prefix = str(sample_dir / "norm")
    make_dataset.main(["-f", matching_file, "--output", prefix, "--track", "matching",
                       "--normalize"])
    return prefix
