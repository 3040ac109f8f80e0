"""Baseline: ROOT alone reading the 14 columns (13 matching features + label) into numpy.

    python -m bench.bare_read FILE.root      (from the repository root)
"""
import sys
import time
import warnings

t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import ROOT

from features import DEFAULT_TREE, LABEL, features_for  # noqa: E402  (after ROOT, timed)

columns = features_for("matching") + [LABEL]
arrays = ROOT.RDataFrame(DEFAULT_TREE, sys.argv[1]).AsNumpy(columns)
print(f"bare RDataFrame read of {len(columns)} columns x {len(arrays[LABEL]):,} tracks: "
      f"{time.perf_counter() - t0:.2f} s")
