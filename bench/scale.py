"""Scale benchmark: the whole pipeline on one large matching file (not a test).

    .venv/bin/python -m bench.scale [--tracks 10000000] [--cache bench/.cache/scale] [--skip ...]

Makes (once, cached) a --tracks sample with make_sample.py, then runs each step as
its own process, as a user would, and measures its wall time and the peak memory
of its whole process tree (PSS, so Ray's shared object store counts once; RSS too):
  bare read    ROOT alone reading the 14 columns (13 matching features + label)
               into numpy, serial: the floor every step is compared with
  make_dataset make_dataset.py --track matching (defaults: every track, class weights)
  training     training.py's default search (8 trials, 20 epochs) on a balanced
               dataset (--balance subsample: 1.8M training tracks from 10M, as the
               seed made them); its make_dataset run is not timed
  inference    inference.py with the trained .onnx, default outputs + --output .npy
  4 files, Ray the same sample split into 4 files (cached), scored as Ray tasks on a
               local cluster of its own (bench.cluster_run: `ray start --head` with 2
               cores, its processes measured with the run's), a friend file per input
Prints a table with each step's wall time and peak PSS against the bare read's,
and the load average before it; the numbers go in the README.  Run it on a quiet
machine: the times are wall-clock times.  Above 10M tracks the sample is made in
10M-track parts of seeds 7, 8, ... joined in one file (make_sample below).
"""
import argparse
import os
import subprocess
import sys

from bench.bench_training import run_measured

TREE = "kalman_validator/kalman_ip_tree"
NOTES = ("read ", "scored ", "bare ", "dataset ", "search done", "wrote ")
SAMPLE_PART = 10_000_000  # tracks per make_sample.py run: larger samples are joined
ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(cmd, log):
    """(wall seconds, peak PSS bytes, peak RSS bytes, output) of a command; its
    output saved to `log`."""
    wall, pss, rss, _, output, code = run_measured(cmd, cwd=ROOT_DIR, interval=0.05)
    with open(log, "w") as f:
        f.write(output)
    if code:
        print(output[-3000:])
        raise SystemExit(f"{' '.join(cmd[:3])} failed with exit code {code}")
    return wall, pss, rss, output


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracks", type=int, default=10_000_000)
    p.add_argument("--cache", default=os.path.join(ROOT_DIR, "bench", ".cache", "scale"))
    p.add_argument("--skip", nargs="*", default=[],
                   help="steps to leave out: make_dataset training inference files")
    args = p.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    py = sys.executable
    sample = make_sample(args.cache, args.tracks)
    ds = os.path.join(args.cache, f"ds_{args.tracks}")
    models = os.path.join(args.cache, f"model_{args.tracks}")
    model = os.path.join(models, "ghost_model.onnx")
    if "training" in args.skip and "inference" not in args.skip and not os.path.exists(model):
        p.error(f"--skip training times inference with an earlier run's model: {model} "
                "is missing (add --skip inference, or run the training once)")
    steps = [("bare read", [py, "-m", "bench.bare_read", sample])]
    if "make_dataset" not in args.skip:
        steps.append(("make_dataset", [py, "make_dataset.py", "-f", sample, "--output", ds,
                                       "--track", "matching"]))
    balanced = os.path.join(args.cache, f"balanced_{args.tracks}")
    if "training" not in args.skip and not os.path.exists(balanced + "_features.json"):
        subprocess.run([py, "make_dataset.py", "-f", sample, "--output", balanced, "--track",
                        "matching", "--balance", "subsample"], cwd=ROOT_DIR, check=True,
                       stdout=subprocess.DEVNULL)
    if "training" not in args.skip:
        steps.append(("training", [py, "training.py", "-f", balanced, "--save", "--nocuda",
                                   "--output-dir", models, "--path",
                                   os.path.join(args.cache, "ray_results")]))
    if "inference" not in args.skip:
        steps.append(("inference", [py, "inference.py", "-f", sample, "--model", model,
                                    "--output",
                                    os.path.join(args.cache, "scores.npy"), "--plots-dir",
                                    os.path.join(args.cache, "plots")]))
    if "files" not in args.skip:
        parts = split_sample(sample, os.path.join(args.cache, f"parts_{args.tracks}"), 4)
        steps.append(("4 files, Ray", [py, "-m", "bench.cluster_run", "2", "inference.py",
                                       "-f", *parts, "--model", model, "--output-dir",
                                       os.path.join(args.cache, "friends"), "--plots-dir",
                                       os.path.join(args.cache, "plots_files"), "--address"]))
    print(f"{os.cpu_count()} CPUs, {args.tracks:,} tracks, load average "
          f"{os.getloadavg()[0]:.2f} before")
    floor = None
    for name, cmd in steps:
        load = os.getloadavg()[0]
        wall, pss, rss, output = measure(cmd, os.path.join(
            args.cache, f"{name.replace(' ', '_').replace(',', '')}_{args.tracks}.log"))
        floor = floor or (wall, pss)
        notes = [ln.strip() for ln in output.splitlines() if ln.startswith(NOTES)][:3]
        print(f"{name:13s} {wall:8.1f} s  {wall / floor[0]:5.2f}x bare read  peak PSS "
              f"{pss / 2**30:5.2f} GB ({pss / floor[1]:4.2f}x)  RSS {rss / 2**30:5.2f} GB  "
              f"load average {load:.2f} before", flush=True)
        for ln in notes:
            print(f"{'':15s}{ln[:110]}")
    print(f"load average {os.getloadavg()[0]:.2f} after")


def make_sample(cache, tracks):
    """The --tracks sample (made once): make_sample.py's, seed 7; above SAMPLE_PART
    tracks (make_sample.py holds about 540 bytes a track: 5.2 GB at 10M), parts of
    SAMPLE_PART tracks, seeds 7, 8, ... (the first is the SAMPLE_PART sample itself),
    made once each and joined one after another in one file by ROOT's TFileMerger,
    which copies the compressed baskets as they are."""
    sample = os.path.join(cache, f"matching_{tracks}.root")
    sizes = [min(SAMPLE_PART, tracks - i) for i in range(0, tracks, SAMPLE_PART)]
    parts = [(os.path.join(cache, f"matching_{n}" + (f"_seed{7 + i}" if i else "") + ".root"),
              n, 7 + i) for i, n in enumerate(sizes)]
    for path, n, seed in parts if not os.path.exists(sample) else []:
        if not os.path.exists(path):
            subprocess.run([sys.executable, "make_sample.py", "-o", path, "--tracks", str(n),
                            "--track", "matching", "--seed", str(seed)], cwd=ROOT_DIR,
                           check=True)
    if not os.path.exists(sample):
        code = ("import ROOT\nm = ROOT.TFileMerger(False)\n"
                f"assert m.OutputFile({sample + '.tmp'!r}, 'RECREATE', 501)\n"  # ZSTD 1
                f"for f in {[p for p, _, _ in parts]!r}:\n    assert m.AddFile(f)\n"
                "assert m.Merge()\n")
        subprocess.run([sys.executable, "-c", code], cwd=ROOT_DIR, check=True)
        os.replace(sample + ".tmp", sample)
    return sample


def split_sample(sample, folder, n):
    """The sample's entries in `n` consecutive files part0.root.. in `folder` (made
    once): a production's many files."""
    parts = [os.path.join(folder, f"part{i}.root") for i in range(n)]
    if not all(map(os.path.exists, parts)):
        os.makedirs(folder, exist_ok=True)
        code = (f"import ROOT\ntree = {TREE!r}\n"
                f"total = ROOT.RDataFrame(tree, {sample!r}).Count().GetValue()\n"
                f"for i, out in enumerate({parts!r}):\n"
                f"    lo, hi = total * i // {n}, total * (i + 1) // {n}\n"
                f"    ROOT.RDataFrame(tree, {sample!r}).Range(lo, hi).Snapshot(tree, out)\n")
        subprocess.run([sys.executable, "-c", code], cwd=ROOT_DIR, check=True)
    return parts


if __name__ == "__main__":
    main()
