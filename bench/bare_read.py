"""Baseline: ROOT alone reading the 14 columns (13 matching features + label) into numpy."""
import sys
import time
import warnings

t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import ROOT

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from features import DEFAULT_TREE, LABEL, features_for  # noqa: E402

columns = features_for("matching") + [LABEL]
arrays = ROOT.RDataFrame(DEFAULT_TREE, sys.argv[1]).AsNumpy(columns)
print(f"bare RDataFrame read of {len(columns)} columns x {len(arrays[LABEL]):,} tracks: "
      f"{time.perf_counter() - t0:.2f} s")
