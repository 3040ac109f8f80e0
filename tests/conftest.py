"""Shared fixtures: small synthetic Allen files, datasets and models made once per test
run (helpers.made_once: once for all pytest-xdist workers too).  Helpers (running a
script, the one-line error check, ...) are in helpers.py.

Tests that start Ray carry the `ray` marker, so that `pytest -m "not ray"` skips them:
those that run a search themselves are marked where they are defined, those that
use a fixture running one (RAY_FIXTURES, here or in their module) are marked here.
Under pytest-xdist (`make test`: -n 3, on two cores: a third worker fills the seconds a
search waits on Ray) the searches come first (one per worker at a time), then the other
tests, last those that only read the trained model (_unit)."""
import contextlib
import io
import json
import os

import pytest
from figure_checks import recording

from helpers import (
    RAY_FIXTURES,
    SEARCH,
    SEARCH_FIXTURES,
    SavedSearch,
    derived_models_in,
    made_once,
    quick_models_in,
    run_inference,
    sample_file,
    search,
    torch_scores,
    write_tracks,
)

os.environ.setdefault("MPLBACKEND", "Agg")
# one thread per process (the scripts and Ray inherit it): the tests' networks are
# tiny, each pytest-xdist worker has a core, and torch's thread pool on a busy machine
# costs ten times the work it shares
os.environ.setdefault("OMP_NUM_THREADS", "1")



@pytest.hookimpl(tryfirst=True)  # before -m reads the markers
def pytest_collection_modifyitems(config, items):
    units = {}
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        searches = item.get_closest_marker("ray") is not None or bool(uses & SEARCH_FIXTURES)
        if uses & RAY_FIXTURES:
            item.add_marker(pytest.mark.ray)
        units[item.nodeid] = _unit(item.nodeid, uses & SEARCH_FIXTURES, searches,
                                   "trained_model" in uses, _module_fixtures(item))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: units[item.nodeid][0])
        path = _units_file(config)
        tmp = path.with_suffix(f".{os.environ['PYTEST_XDIST_WORKER']}")
        tmp.write_text(json.dumps({nodeid: unit for nodeid, (_, unit) in units.items()}))
        os.replace(tmp, path)


def _module_fixtures(item):
    """The module-scoped fixtures a test uses (its unit of work keeps them built once)."""
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.items() if info is not None else ()
    return {name for name, d in defs if d and d[-1].scope == "module"}


def _unit(nodeid, fixtures, searches, trained, shared):
    """A test's place in line and its unit of work under pytest-xdist (a worker runs
    one unit at a time, in this order): first the search that makes trained_model
    (the seed's reproducibility check), then the searches of a shared module fixture
    (each fixture's tests one unit: it runs once), then every other search alone, then
    the other tests, those that only read trained_model last (made by then).  A test
    is a unit alone unless it shares a module-scoped fixture (`shared`): then its
    module's tests of the same fixtures are one unit, the fixture built once; small
    units keep the workers busy to the end."""
    module = nodeid.split("::")[0]
    if searches and trained:
        return (0, 0), f"ray {nodeid}"
    if fixtures:
        return (0, 1), f"ray {module} {' '.join(sorted(fixtures))}"
    if searches:
        return (0, 2), f"ray {nodeid}"
    alone = f"{module} {' '.join(sorted(shared))}" if shared else nodeid
    return ((2, 0), f"trained {alone}") if trained else ((1, 0), alone)


def _units_file(config):
    """Each test's unit of work, from the workers (they collect) to the scheduler (it
    does not): xdist's own --dist loadgroup renames the tests, which pytest 9 no
    longer lets it do."""
    base = config._tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "units.json"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist (make test: -n 3): one unit of work (_unit) at a time to each
    worker, in the workers' order."""
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            if not hasattr(self, "units"):
                self.units = json.loads(_units_file(config).read_text())
            return self.units[nodeid]

    config.option.loadscopereorder = False  # the workers' order, not the largest first
    return Units(config, log)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    return made_once(tmp_path_factory, "samples", lambda folder: folder)


def _sample(tmp_path_factory, name, **kw):
    return made_once(tmp_path_factory, name, lambda d: sample_file(d, f"{name}.root", **kw))


@pytest.fixture(scope="session")
def matching_file(tmp_path_factory):
    return _sample(tmp_path_factory, "matching", tracks=20000, track="matching", seed=1)


@pytest.fixture(scope="session")
def forward_file(tmp_path_factory):
    return _sample(tmp_path_factory, "forward", tracks=20000, track="forward", seed=2)


@pytest.fixture(scope="session")
def rntuple_file(tmp_path_factory):
    return _sample(tmp_path_factory, "rntuple", tracks=5000, track="matching", seed=3,
                   fmt="rntuple")


@pytest.fixture(scope="session")
def clustered_file(tmp_path_factory):
    """50,000 matching tracks in 25 clusters of 2,000: ROOT's threads really
    interleave them."""
    def make(folder):
        import ROOT

        from make_sample import generate
        path = str(folder / "clustered.root")
        opts = ROOT.RDF.RSnapshotOptions()
        opts.fAutoFlush = 2000
        cols = generate(50_000, "matching", seed=4)
        ROOT.RDF.FromNumpy(cols).Snapshot("kalman_validator/kalman_ip_tree", path,
                                          list(cols), opts)
        return path
    return made_once(tmp_path_factory, "clustered", make)


def _dataset(tmp_path_factory, name, matching_file, *options):
    def make(folder):
        import make_dataset
        prefix = str(folder / name)
        make_dataset.main(["-f", matching_file, "--output", prefix, "--track", "matching",
                           *options])
        return prefix
    return made_once(tmp_path_factory, name, make)


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory, matching_file):
    """A matching dataset prefix with raw (unnormalized) features."""
    return _dataset(tmp_path_factory, "raw", matching_file)


@pytest.fixture(scope="session")
def norm_dataset(tmp_path_factory, matching_file):
    """A matching dataset prefix with min-max normalized features."""
    return _dataset(tmp_path_factory, "norm", matching_file, "--normalize")


@pytest.fixture(scope="session")
def small_file(tmp_path_factory):
    """5,000 matching tracks, every feature finite, with the label and the limit."""
    def make(folder):
        from make_sample import generate
        return write_tracks(folder / "small.root",
                            generate(5000, "matching", seed=11, nonfinite=0))
    return made_once(tmp_path_factory, "small", make)


@pytest.fixture(scope="session")
def trained_model(raw_dataset, tmp_path_factory):
    """The session's one Ray search with --save (helpers.SEARCH: 2 trials of 2 epochs,
    INT8, the baseline, figures as PNG and PDF), shared by every test that only
    reads a trained model, its report or its console: a SavedSearch.  Each figure of
    its report is checked as it is written (figure_checks.recording, into
    folder/figure_checks; tests/test_plots.py reads them)."""
    def make(folder):
        console = io.StringIO()
        with contextlib.redirect_stdout(console), recording(folder / "figure_checks"):
            models = search(raw_dataset, folder, *SEARCH, "--format", "png,pdf")
        return SavedSearch(models, folder / "ray", console.getvalue())
    return made_once(tmp_path_factory, "trained", make)


@pytest.fixture(scope="session")
def feature_plots(tmp_path_factory, matching_file):
    """make_dataset.py --plot --plot-transformed --format png,pdf on the matching file,
    shared by the tests that read its figures and page: (the dataset's prefix, the
    figures' folder)."""
    def make(folder):
        import make_dataset
        prefix, plots = folder / "data" / "ds", folder / "features"
        (folder / "data").mkdir()
        make_dataset.main(["-f", matching_file, "--output", str(prefix), "--track", "matching",
                           "--plot", "--plot-transformed", "--plots-dir", str(plots),
                           "--format", "png,pdf"])
        return str(prefix), plots
    return made_once(tmp_path_factory, "feature_plots", make)


@pytest.fixture(scope="session")
def analysis_run(trained_model, feature_plots, tmp_path_factory):
    """inference.py with the session's trained model on feature_plots' dataset (INT8
    compared, the ranking, --label "LHCb preliminary"), each figure checked as it is
    written (into folder/figure_checks): its plots folder."""
    def make(folder):
        models = trained_model.models
        with recording(folder / "figure_checks"):
            assert run_inference("-f", feature_plots[0], "--model", models / "ghost_model.onnx",
                                 "--compare", models / "ghost_model_int8.onnx", "--ranking",
                                 "--plots-dir", folder / "analysis",
                                 "--label", "LHCb preliminary") == 0
        return folder / "analysis"
    return made_once(tmp_path_factory, "analysis_run", make)


@pytest.fixture(scope="session")
def quick_models(tmp_path_factory, raw_dataset, norm_dataset):
    """Models trained briefly, without Ray (helpers.quick_models_in): {name: path}."""
    return made_once(tmp_path_factory, "models",
                     lambda d: quick_models_in(d, raw_dataset, norm_dataset))


@pytest.fixture(scope="session")
def root_features(matching_file):
    """The matching file's features (tracks x 13, entry order) and labels."""
    import numpy as np

    import rootio
    from features import DEFAULT_TREE, LABEL, features_for
    names = features_for("matching")
    cols = rootio.read_root([matching_file], DEFAULT_TREE, names, optional=(LABEL,))
    data = np.stack([cols[n] for n in names], axis=1)
    return data, cols[LABEL]


@pytest.fixture(scope="session")
def reference(quick_models, root_features):
    """net1's probability per entry of the matching file, NaN for non-finite tracks."""
    import numpy as np
    data, _ = root_features
    finite = np.isfinite(data).all(axis=1)
    ref = np.full(len(data), np.nan, dtype=np.float32)
    ref[finite] = torch_scores(quick_models, "net1", data[finite])
    return ref


@pytest.fixture(scope="session")
def derived_models(tmp_path_factory, matching_file):
    """Network 1 with derived inputs, float and INT8, trained briefly without Ray and
    saved as training.py --save saves (helpers.derived_models_in)."""
    return made_once(tmp_path_factory, "derived_models",
                     lambda d: derived_models_in(d, matching_file))
