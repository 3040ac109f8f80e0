"""Benchmark inference.py on 1,000,000 matching tracks (not a test).

    .venv/bin/python -m bench.bench_inference [--tracks N] [--cache DIR] [--repeat K]
                                              [--model FILE.onnx]

Makes (once, cached) a synthetic matching file with make_sample and a quick l0=32
network-1 model (briefly trained, exported to ONNX; --model: another one, e.g. the
default search's), then times
  (a) the full `inference.py` command end to end (subprocess, wall clock: read, score,
      every threshold and metric, all plots, --output), best of --repeat runs;
  (b) the scoring pass alone, tracks/s, for the torch and onnxruntime scorers that
      inference.py builds, on the tracks already in memory, best of --repeat passes.
Prints a table next to the targets.  The machine's load average is printed too: on a
shared machine the numbers vary from run to run.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TARGET_WALL_S = 10.0        # full analysis of 1M tracks
TARGET_RATE = 100e6         # scoring pass, tracks/s, torch on CPU


def prepare(cache, tracks):
    """The cached sample file and model (made on first use)."""
    os.makedirs(cache, exist_ok=True)
    sample = os.path.join(cache, f"matching_{tracks}.root")
    model_path = os.path.join(cache, "bench_model_l0_32.onnx")
    if not os.path.exists(sample):
        from make_sample import make_sample
        info = make_sample(sample, tracks=tracks, track="matching", seed=7)
        print(f"made {sample} in {info['seconds']:.1f} s")
    if not os.path.exists(model_path):
        import torch

        import models
        import trainer
        from architecture import ModelConfig
        from artifacts import SavedConfig, onnx_bytes
        from features import MinMax, features_for
        from make_sample import generate
        names = features_for("matching")
        cols = generate(100_000, "matching", seed=8)
        x = np.stack([cols[n] for n in names], axis=1)
        y = cols["ghost"].reshape(-1, 1)
        ok = np.isfinite(x).all(axis=1)
        x, y = x[ok], y[ok]
        config = ModelConfig(network=1, n_features=len(names), hidden=(32,),
                             normalization=MinMax.fit(x, names))
        torch.manual_seed(0)
        model = models.build_model(config)
        cpu = torch.device("cpu")
        settings = trainer.TrainSettings(optimizer="adam", lr=1e-2, batch=1024, epochs=3,
                                         seed=0)
        loop = trainer.Trainer(model, trainer.make_optimizer(settings, model, cpu),
                               *trainer.to_tensors(model, (x, y), cpu), settings.batch,
                               settings.seed, settings=settings)
        for _ in range(settings.epochs):  # about 300 steps of 1,024 tracks
            loop.epoch()
        with open(model_path, "wb") as f:
            saved = SavedConfig(model=config, track="matching", features=names, threshold=0.5)
            f.write(onnx_bytes(model.eval(), saved))
        print(f"made {model_path}")
    return sample, model_path


def time_cli(sample, model_path, cache, repeat):
    """Wall time of the full command, best of `repeat`."""
    cmd = [sys.executable, os.path.join(ROOT_DIR, "inference.py"), "-f", sample,
           "--model", model_path, "--output", os.path.join(cache, "scores.npy"),
           "--plots-dir", os.path.join(cache, "plots")]
    best, last = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        last = subprocess.run(cmd, capture_output=True, text=True, cwd=cache)
        best = min(best, time.perf_counter() - t0)
        if last.returncode:
            sys.exit(f"inference.py failed:\n{last.stderr}")
    lines = [ln for ln in last.stdout.splitlines() if ln.startswith(("read ", "scored "))]
    return best, lines


def time_scoring(sample, model_path, repeat):
    """tracks/s of the scoring pass alone, per backend and batch (data in memory);
    "auto" is the batch inference.py picks for the model."""
    from features import DEFAULT_TREE, features_for
    from rootio import MATRIX, read_root
    from scoring import load_model_file, make_scorer
    names = features_for("matching")
    data = read_root([sample], DEFAULT_TREE, names, matrix=True)[MATRIX]
    data[~np.isfinite(data).all(axis=1)] = 0.0
    model = load_model_file(model_path)
    rates = {}
    for backend in ("torch", "onnxruntime"):
        for batch in (None, 4096, 16384, 65536):
            score, desc = make_scorer(model, backend, nocuda=True, batch=batch)
            score(data[:100_000])  # warm up
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                score(data)
                best = min(best, time.perf_counter() - t0)
            rates[f"{desc}{' (auto)' if batch is None else ''}"] = len(data) / best
    return rates


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracks", type=int, default=1_000_000)
    p.add_argument("--cache", default="/tmp/ghost_bench",
                   help="cache folder for the sample and model (default /tmp/ghost_bench)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--model", help="an .onnx model to time instead of the quick l0=32 one")
    args = p.parse_args()
    args.cache = os.path.abspath(args.cache)  # the CLI runs with the cache as its folder
    sample, model_path = prepare(args.cache, args.tracks)
    if args.model:
        model_path = os.path.abspath(args.model)
    import torch
    print(f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} before")
    wall, lines = time_cli(sample, model_path, args.cache, args.repeat)
    rates = time_scoring(sample, model_path, max(args.repeat, 5))
    print(f"load average {os.getloadavg()[0]:.2f} after")
    for ln in lines:
        print(f"  inference.py: {ln}")
    print(f"\n{'measurement':78s} {'result':>14s} {'target':>14s}")
    print(f"{f'full inference.py, {args.tracks:,} tracks (wall)':78s} {wall:>12.2f} s "
          f"{f'< {TARGET_WALL_S:.0f} s':>14s}")
    for desc, rate in rates.items():
        target = f">= {TARGET_RATE / 1e6:.0f} M/s" if desc.startswith("torch") else "(~120 M/s)"
        print(f"{'scoring pass, ' + desc:78.78s} {rate / 1e6:>10.1f} M/s {target:>14s}")


if __name__ == "__main__":
    main()
