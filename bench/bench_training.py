"""Training benchmarks.

  throughput  one trial's training speed (network 1, l0=32, batch 2048, Adam), in
              samples/s, on the CPU (one thread, as in a trial) or CUDA; --share K
              runs K such trainings at once on one device (trials sharing a GPU).
              Targets: >= 4 M samples/s on 2 CPU cores, >= 8 M on one H100 GPU.
  search      a full `training.py -n 4 --epochs 10` search: wall time, peak memory of
              the whole process tree (driver + Ray + trials), bytes written under
              --path.  Targets: < 40 s, < 2 GB, < 50 MB.

Without a dataset prefix, `throughput --synthetic` trains on random arrays of the
same shape (180,000 x 13), which is what the GPU machine (torch only) runs.
"""
import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from features import MinMax

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_or_fake(prefix, synthetic):
    if synthetic:
        rng = np.random.default_rng(0)
        x = rng.random((180_000, 13), dtype=np.float32) * 10
        y = (rng.random((180_000, 1)) < 0.5).astype(np.float32)
        return x, y, MinMax((0.0,) * 13, (10.0,) * 13)
    from dataset import load_meta, load_split
    x, y = load_split(prefix, "train")
    return x, y, load_meta(prefix).normalization


def throughput_worker(prefix, synthetic, device, epochs, threads, queue=None, eager=False):
    import torch

    from architecture import ModelConfig
    from models import build_model
    from trainer import Trainer, TrainSettings, make_optimizer, to_tensors
    torch.set_num_threads(threads)
    x, y, norm = load_or_fake(prefix, synthetic)
    config = ModelConfig(network=1, n_features=x.shape[1], hidden=(32,), normalization=norm)
    settings = TrainSettings(optimizer="adam", lr=1e-3, batch=2048, epochs=epochs, seed=0)
    device = torch.device(device)
    model = build_model(config).to(device)
    opt = make_optimizer(settings, model, device)
    tx, ty = to_tensors(model, (x, y), device)
    trainer = Trainer(model, opt, tx, ty, 2048, seed=0, use_graph=False if eager else None)
    trainer.epoch()  # warm-up (and CUDA graph capture)
    rates = []
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        trainer.epoch()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append((len(tx) // 2048) * 2048 / (time.perf_counter() - t))
    result = {"best": max(rates), "median": float(np.median(rates)),
              "graph": trainer.graph is not None}
    if queue is not None:
        queue.put(result)
    return result


def bench_throughput(args):
    if args.share == 1:
        r = throughput_worker(args.prefix, args.synthetic, args.device, args.epochs,
                              args.threads, eager=args.eager)
        target = 8e6 if args.device.startswith("cuda") else 4e6
        print(f"one trial on {args.device} ({args.threads} thread(s), cuda graph "
              f"{r['graph']}): best {r['best'] / 1e6:.2f} M samples/s, median "
              f"{r['median'] / 1e6:.2f} M (target {target / 1e6:.0f} M)")
        return
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=throughput_worker,
                         args=(args.prefix, args.synthetic, args.device, args.epochs,
                               args.threads, queue, args.eager)) for _ in range(args.share)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    total = sum(r["median"] for r in results)
    print(f"{args.share} trials sharing {args.device} (cuda graph {results[0]['graph']}): "
          + ", ".join(f"{r['median'] / 1e6:.2f}" for r in results)
          + f" M samples/s each, {total / 1e6:.2f} M in total")


def tree_memory(pid):
    """(sum of PSS, sum of RSS, PSS per command) in bytes over a process and all
    its descendants."""
    def children(p):
        out = []
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    out += [int(c) for c in f.read().split()]
        except OSError:
            pass
        return out

    todo, pss, rss = [pid], 0, 0
    parts = {}
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                        with open(f"/proc/{p}/cmdline") as c:
                            name = c.read().replace("\0", " ")[:40]
                        parts[name] = parts.get(name, 0) + int(line.split()[1]) * 1024
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo += children(p)
    return pss, rss, parts


def run_measured(cmd, cwd=None, interval=0.1):
    """Run `cmd` to its end, sampling its process tree's memory: (wall seconds,
    peak PSS bytes, peak RSS bytes, PSS per command at the PSS peak, output,
    exit code)."""
    peak = [0, 0, {}]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=cwd)

    def sample():
        while proc.poll() is None:
            # two readings back to back, the smaller kept: a process forked while the
            # tree is read can be counted whole in both parent and child (its pages'
            # sharers not yet counted), a false peak of up to twice the parent
            pss, rss, parts = min(tree_memory(proc.pid), tree_memory(proc.pid),
                                  key=lambda m: m[0])
            if pss > peak[0]:
                peak[0], peak[2] = pss, parts
            peak[1] = max(peak[1], rss)
            time.sleep(interval)

    sampler = threading.Thread(target=sample)
    sampler.start()
    output = proc.communicate()[0]
    wall = time.perf_counter() - t
    sampler.join()
    return wall, peak[0], peak[1], peak[2], output, proc.returncode


def bench_search(args):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, os.path.join(ROOT_DIR, "training.py"), "-f", args.prefix,
               "-n", "4", "--epochs", "10", "--path", os.path.join(tmp, "ray"), "--save",
               "--output-dir", os.path.join(tmp, "models"), "--nocuda"]
        wall, pss, rss, parts, output, code = run_measured(cmd)
        if code:
            print(output)
            raise SystemExit(f"search failed with exit code {code}")
        written = sum(os.path.getsize(os.path.join(d, f))
                      for d, _, files in os.walk(os.path.join(tmp, "ray")) for f in files)
    print(output.rstrip())
    print("at the peak (PSS, MB): " + ", ".join(
        f"{name.strip()}: {b / 2**20:.0f}" for name, b in
        sorted(parts.items(), key=lambda kv: -kv[1])[:6]))
    print(f"search -n 4 --epochs 10: wall {wall:.1f} s (target < 40 s), peak memory "
          f"{pss / 2**30:.2f} GB PSS / {rss / 2**30:.2f} GB RSS summed over the "
          f"process tree (target < 2 GB), written under --path {written / 2**20:.2f} MB "
          f"(target < 50 MB)")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("throughput", "search"))
    p.add_argument("prefix", nargs="?", help="dataset prefix (from a 1M-track sample)")
    p.add_argument("--synthetic", action="store_true", help="random arrays, no dataset")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--share", type=int, default=1)
    p.add_argument("--eager", action="store_true", help="no CUDA graph")
    args = p.parse_args()
    if not args.prefix and not args.synthetic:
        p.error("give a dataset prefix or --synthetic")
    (bench_throughput if args.what == "throughput" else bench_search)(args)


if __name__ == "__main__":
    main()
