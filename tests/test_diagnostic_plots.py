"""diagnostic_plots.py: the feature figures (binning, transformed, PDF, index.html) and
the search's history figure."""
import os

import numpy as np

from diagnostic_plots import _bins
from features import DERIVED, features_for


def test_integer_branches_are_binned_per_integer():
    edges, logx = _bins(np.array([3.0, 4.0, 4.0, 12.0, 23.0]), heavy=False)
    assert np.array_equal(edges, np.arange(2.5, 23.6, 1.0)) and not logx
    edges, logx = _bins(np.geomspace(1, 1e6, 1000), heavy=True)
    assert logx and len(edges) == 81


def test_feature_plots_transformed_and_pdf(feature_plots):
    """make_dataset.py --plot --plot-transformed --format png,pdf (conftest)."""
    _, plots = feature_plots
    # the features, then the default derived inputs, a figure each
    names = features_for("matching") + [d.split(" := ")[0] for d in DERIVED["matching"]]
    assert sorted(os.listdir(plots)) == sorted([f"{n}.png" for n in names] +
                                               [f"{n}.pdf" for n in names] + ["index.html"])
    page = (plots / "index.html").read_text()
    assert all(f'<img src="{n}.png"' in page for n in names)
    assert all((plots / f"{n}.{fmt}").stat().st_size > 5000
               for n in names for fmt in ("png", "pdf"))
    assert "<figcaption>kick := residual(pr_match_dtx, qop): ghosts and real" in page
    assert "standardized, as network 1 sees them" in page


def test_history_shows_training_and_validation_and_the_best_epoch():
    """history.png: training (dashed) and validation loss, the selection metric, the
    chosen trial's best epoch marked, integer epochs, every point inside the frame."""
    from diagnostic_plots import history
    from drawing import style
    trials = [{"params": {"l": 1}, "select": "rejection@0.99", "best_epoch": 3,
               "history": {"epoch": [1, 2, 3, 4], "loss": [0.41, 0.35, 0.33, 0.34],
                           "train_loss": [0.55, 0.35, 0.31, 0.29], "auc": [0.9] * 4,
                           "rejection@0.99": [0.3, 0.4, 0.5, 0.45]}},
              {"params": {"l": 2}, "select": "rejection@0.99", "best_epoch": 2,
               "history": {"epoch": [1, 2], "loss": [0.6, 0.5], "train_loss": [0.7, 0.6],
                           "auc": [0.8, 0.81], "rejection@0.99": [0.1, 0.2]}}]
    with style() as plt:
        fig = history(plt, trials, {"l": 1})
        loss, chosen = fig.axes
        styles = {(line.get_linestyle(), line.get_color()) for line in loss.get_lines()}
        assert ("--", "tab:red") in styles and ("-", "tab:red") in styles
        assert "rejection@0.99" in chosen.get_ylabel()
        star = [line for line in chosen.get_lines() if line.get_marker() == "*"]
        assert len(star) == 1 and list(star[0].get_xdata()) == [3]
        assert list(star[0].get_ydata()) == [0.5]
        for ax in fig.axes:
            x0, x1 = ax.get_xlim()
            y0, y1 = ax.get_ylim()
            assert x0 < 1 and x1 > 4
            for line in ax.get_lines():
                y = np.asarray(line.get_ydata(), dtype=float)
                assert not y.size or (y0 < y.min() and y.max() < y1)
            ticks = [t for t in ax.get_xticks() if x0 <= t <= x1]
            assert ticks and all(float(t).is_integer() for t in ticks)
        plt.close(fig)


def test_feature_axes_in_readable_units_and_counters_at_whole_ticks():
    """q/p drawn in 1/GeV (its tick labels no longer run into each other), the stored
    values untouched; an integer counter ticks at integers only."""
    from diagnostic_plots import feature_figure
    from drawing import style
    rng = np.random.default_rng(0)
    ghost = rng.random(5000) < 0.2
    qop = (rng.normal(size=5000) * 2e-4).astype(np.float32)
    kept = qop.copy()
    counts = rng.integers(3, 7, 5000).astype(np.float32)
    with style() as plt:
        fig = feature_figure(plt, "qop", qop, ghost, heavy=False)
        ax = fig.axes[0]
        assert ax.get_xlabel() == "qop [1/GeV]" and np.array_equal(qop, kept)
        lo, hi = ax.get_xlim()
        assert hi - lo > 1.0  # in 1/GeV: about +-1, not +-0.001
        plt.close(fig)
        fig = feature_figure(plt, "n_velo", counts, ghost, heavy=False)
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks)
        plt.close(fig)
