"""Benchmark the default figures, drawn one by one in this process (not a test).

    .venv/bin/python -m bench.bench_figures [--tracks N] [--out DIR] [--format png,pdf]
                                            [--only STEM,...] [--compare DIR_A DIR_B]

Draws, on fixed synthetic data (make_sample's columns, seed 7; the "network" scores
its exact log-likelihood ratio with noise), every figure of
  - an inference run (plots.figure_jobs: the analysis, the comparison with the
    limit, the performance vs kinematics), and
  - a training report (the same with the overtraining check and INT8 compared, and
    the search front, history, ranking and correlations of 20 made-up trials),
  - make_dataset.py --plot's feature figures,
each drawn and written (drawing.write_figure) into --out (a temporary folder when not
given), and prints each figure's seconds (wall clock and this process's CPU) and the
totals, with the load average: on a shared machine the wall clock varies from run to
run.  --compare DIR_A DIR_B: the fraction
of differing pixels of every PNG the two folders share (no drawing).
"""
import argparse
import os
import sys
import tempfile
import time
from functools import partial

import numpy as np

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT_DIR)


class _Saved:  # what evaluation.evaluate asks of an artifacts.SavedConfig
    working_point = None

    def cut(self):
        return (None,)


def _trials(rng, n=20, epochs=10):
    trials = []
    for i in range(n):
        done = epochs if i % 3 else 3
        loss = 0.3 + 0.2 * rng.random() - 0.01 * np.arange(1, done + 1)
        auc = 0.9 + 0.05 * rng.random() + 0.002 * np.arange(1, done + 1)
        trials.append({"params": {"l0": 8 * (i + 1)}, "epochs": done, "macs": 100 * (i + 1),
                       "auc": float(auc[-1]), "rejection@0.99": float(0.5 + 0.3 * rng.random()),
                       "loss": float(loss[-1]), "select": "loss", "best_epoch": done,
                       "history": {"epoch": list(range(1, done + 1)), "loss": list(loss),
                                   "train_loss": list(loss - 0.01), "auc": list(auc)}})
    return trials


def jobs(tracks, seed=7):
    """{group: [(stem, draw(plt) -> Figure)]} on fixed data."""
    import kinematics
    from diagnostic_plots import correlation_figure, feature_figure, history, search_front
    from diagnostics import correlations
    from evaluation import Sample, evaluate, ranking_figure
    from features import HEAVY_TAILED, LIMIT, features_for
    from make_sample import generate
    from plots import figure_jobs
    rng = np.random.default_rng(seed)
    names = features_for("matching")
    cols = generate(tracks, "matching", seed=seed)
    x = np.stack([cols[n] for n in names], axis=1)
    ok = np.isfinite(x).all(axis=1)
    x, labels, llr = x[ok], cols["ghost"][ok] > 0.5, cols[LIMIT][ok]
    score = 1 / (1 + np.exp(-(llr + rng.normal(0, 1.0, len(llr)))))
    columns = kinematics.columns_of(x, names, {})
    half = len(score) // 2
    groups = {}
    plain = Sample("network", _Saved(), 1000, score, labels, limit=llr, columns=columns)
    e = evaluate(plain, f"bench, {len(score):,} tracks", {})
    groups["inference"] = [(s, d) for s, d, _ in figure_jobs(e.plot)]
    report = Sample("network", _Saved(), 1000, score[half:], labels[half:],
                    train=(score[:half], labels[:half]), limit=llr[half:],
                    columns={k: v[half:] for k, v in columns.items()})
    int8 = np.clip(score[half:] + rng.normal(0, 0.01, len(score) - half), 0, 1)
    e = evaluate(report, "bench report", {}, [("INT8", int8, 1000)], always_compare=True)
    trials = _trials(rng)
    rows = [{"feature": n, "auc_drop": 0.01 * (len(names) - i), "rejection_drop": 0.02 * i}
            for i, n in enumerate(names)]
    corr = correlations(x[:50_000], labels[:50_000])
    groups["report"] = [(s, d) for s, d, _ in figure_jobs(e.plot)] + [
        ("search_front", partial(search_front, trials=trials, best=trials[4]["params"])),
        ("history", partial(history, trials=trials, best=trials[4]["params"])),
        ("ranking", partial(ranking_figure, reference={"auc": 0.95, "rejection@0.99": 0.6},
                            rows=rows, title="test split")),
        ("correlations", partial(correlation_figure, matrices=corr, names=names))]
    groups["features"] = [(n, partial(feature_figure, name=n, x=x[:, j], ghost=labels,
                                      heavy=n in HEAVY_TAILED)) for j, n in enumerate(names)]
    return groups


def run(args):
    from drawing import style, write_figure
    groups = jobs(args.tracks)
    out = args.out or tempfile.mkdtemp(prefix="bench_figures_")
    totals = {}
    for group, todo in groups.items():
        os.makedirs(os.path.join(out, group), exist_ok=True)
        for stem, draw in todo:
            if args.only and stem not in args.only:
                continue
            start, cpu = time.perf_counter(), time.process_time()
            with style() as plt:
                fig = draw(plt)
                write_figure(fig, [os.path.join(out, group, f"{stem}.{fmt}")
                                   for fmt in args.format.split(",")], label="LHCb simulation")
            seconds = (time.perf_counter() - start, time.process_time() - cpu)
            totals[group] = np.add(totals.get(group, 0.0), seconds)
            print(f"{group:10s} {stem:24s} {seconds[0]:7.2f} s wall {seconds[1]:7.2f} s cpu",
                  flush=True)
    for group, seconds in totals.items():
        print(f"{group:10s} {'TOTAL':24s} {seconds[0]:7.2f} s wall {seconds[1]:7.2f} s cpu")
    print(f"load average {os.getloadavg()[0]:.1f}; figures in {out}")


def compare(a, b):
    """The fraction of differing pixels of each PNG both folders hold (and the
    largest difference of a channel, 0-1); a size change is reported as such."""
    import matplotlib.image
    for group in sorted(os.listdir(a)):
        for name in sorted(os.listdir(os.path.join(a, group))):
            pa, pb = os.path.join(a, group, name), os.path.join(b, group, name)
            if not name.endswith(".png") or not os.path.exists(pb):
                continue
            ia, ib = matplotlib.image.imread(pa), matplotlib.image.imread(pb)
            if ia.shape != ib.shape:
                print(f"{group:10s} {name:28s} size {ia.shape[:2]} -> {ib.shape[:2]}")
                continue
            diff = np.abs(ia - ib).max(axis=2)
            print(f"{group:10s} {name:28s} {np.mean(diff > 0):8.4%} of pixels differ, "
                  f"largest {diff.max():.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=200_000)
    parser.add_argument("--out")
    parser.add_argument("--format", default="png")
    parser.add_argument("--only", type=lambda s: set(s.split(",")))
    parser.add_argument("--compare", nargs=2)
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
    else:
        run(args)


if __name__ == "__main__":
    main()
