"""INT8 ONNX model: does onnxruntime compute the same numbers on every x86 CPU?

    .venv/bin/python bench/int8_cpus.py MODEL_int8.onnx DATASET_PREFIX
    qemu-x86_64 -cpu Haswell .venv/bin/python bench/int8_cpus.py ...   # AVX2, no VNNI

Compares onnxruntime with graph optimizations on (Q/DQ pairs fused into integer
kernels, whose arithmetic depends on the CPU's instruction set) and off (the plain
Q/DQ graph in float) on the test split, and prints the AUC of both.  On x86 CPUs
without VNNI the fused u8 x s8 kernels add pairs of products in saturating 16-bit
registers: with 8-bit weights they disagreed on 16 % of tracks (max 0.23), with the
toolkit's 7-bit weights they agree exactly.  `bench/int8_cpus.sh` runs both ways.
"""
import sys

import numpy as np
import onnxruntime as ort
from scipy.stats import rankdata


def auc(scores, labels):
    ranks = rankdata(scores)
    pos = labels > 0.5
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def main(model, prefix):
    x = np.load(f"{prefix}_test_data.npy")
    y = np.load(f"{prefix}_test_labels.npy").ravel()
    out = {}
    for name, level in (("fused", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                        ("plain", ort.GraphOptimizationLevel.ORT_DISABLE_ALL)):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        out[name] = session.run(None, {session.get_inputs()[0].name: x})[0].ravel()
    diff = np.abs(out["fused"] - out["plain"])
    print(f"{len(x):,} tracks; fused vs plain Q/DQ graph: max |diff| {diff.max():.3g}, "
          f"{np.mean(diff < 1e-3):.2%} within 1e-3, {np.mean(diff == 0):.2%} identical")
    print(f"AUC fused {auc(out['fused'], y):.5f}, plain {auc(out['plain'], y):.5f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
