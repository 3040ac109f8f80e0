"""diagnostic_plots.py: the feature figures (binning, transformed, PDF, index.html)."""
import os

import numpy as np

from diagnostic_plots import _bins
from features import features_for


def test_integer_branches_are_binned_per_integer():
    edges, logx = _bins(np.array([3.0, 4.0, 4.0, 12.0, 23.0]), heavy=False)
    assert np.array_equal(edges, np.arange(2.5, 23.6, 1.0)) and not logx
    edges, logx = _bins(np.geomspace(1, 1e6, 1000), heavy=True)
    assert logx and len(edges) == 81


def test_feature_plots_transformed_and_pdf(tmp_path, matching_file):
    import make_dataset
    plots = tmp_path / "plots"
    make_dataset.main(["-f", matching_file, "--output", str(tmp_path / "ds"), "--track",
                       "matching", "--plot", "--plot-transformed", "--plots-dir", str(plots),
                       "--format", "png,pdf"])
    names = features_for("matching")
    assert sorted(os.listdir(plots)) == sorted([f"{n}.png" for n in names] +
                                               [f"{n}.pdf" for n in names] + ["index.html"])
    page = (plots / "index.html").read_text()
    assert all(f'<img src="{n}.png"' in page for n in names)
