"""Ray Tune search for the best ghost classifier, then deployable artifacts.

    python training.py -f ../data/dataset --save

reads the arrays written by make_dataset.py and, with --save, writes
ghost_model.pth, ghost_model_config.pkl (+ .json) and ghost_model.onnx
(+ ghost_model_int8.* with --int8) into --output-dir.
"""
import argparse
import contextlib
import os
from dataclasses import replace

from architecture import default_network, normalizes_inside
from artifacts import ARTIFACT, SavedConfig, save_model_files
from dataset import load_dataset, load_meta
from outputs import AtomicOutputs, FolderLock, prepare_folder, remove_stale_temporaries
from search import TrialSetup
from utils import GhostError, Stopwatch, log, pick_device, run_cli


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--filename", required=True,
                   help="dataset prefix written by make_dataset.py")
    p.add_argument("--network", type=int, choices=(0, 1), default=None,
                   help="0: plain MLP on normalized data, 1: MLP with embedded "
                        "normalization on raw data (default: chosen from the dataset)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per trial (default 20)")
    p.add_argument("-n", "--num_samples", type=int, default=8,
                   help="configurations to explore (default 8)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="probability above which a track is a ghost (default 0.5)")
    p.add_argument("--batch", type=int, default=2048, help="batch size (default 2048)")
    p.add_argument("--path", default="ray_results",
                   help="folder for Ray's output: metrics and checkpoints (default ray_results)")
    p.add_argument("--cpu", type=int, default=os.cpu_count(),
                   help="CPU cores for the search; one trial per core (default all)")
    p.add_argument("--gpu", type=int, default=0,
                   help="GPUs for the search, shared by --trials-per-gpu trials each")
    p.add_argument("--trials-per-gpu", type=int, default=4,
                   help="trials sharing one GPU with --gpu (default 4)")
    p.add_argument("--cuda", type=int, default=None,
                   help="CUDA device for the final evaluation and INT8 fine-tuning")
    p.add_argument("--nocuda", action="store_true", help="never use CUDA")
    p.add_argument("--int8", action="store_true",
                   help="quantization-aware fine-tuning of the best model to INT8")
    p.add_argument("--int8-epochs", type=int, default=3,
                   help="epochs of INT8 quantization-aware fine-tuning (default 3)")
    p.add_argument("--save", action="store_true", help="write the model files")
    p.add_argument("--output-dir", default=".", help="where --save writes (default .)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (host:port) instead of starting one")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted search stored under --path/--name")
    p.add_argument("--name", default="ghost_search",
                   help="name of the search under --path (default ghost_search)")
    args = p.parse_args(argv)
    for name in ("epochs", "num_samples", "batch", "cpu", "trials_per_gpu"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.gpu < 0 or args.int8_epochs < 1:
        p.error("--gpu must be >= 0 and --int8-epochs >= 1")
    if not 0.0 <= args.threshold <= 1.0:
        p.error(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.gpu and args.nocuda:
        p.error("--gpu and --nocuda contradict each other")
    return args


def load_data(prefix, batch):
    """The three splits as numpy arrays, and the DatasetMeta make_dataset.py wrote."""
    splits = load_dataset(prefix)
    n_train, width = splits["train"][0].shape
    meta = load_meta(prefix, width)
    if n_train < batch:
        raise GhostError(f"the training split holds {n_train} tracks, fewer than one "
                         f"batch of {batch}: use a smaller --batch")
    if not meta.features:
        meta.features = [f"f{i}" for i in range(width)]
    return splits, meta


def resolve_network(requested, meta):
    """Network 1 takes raw data, network 0 normalized data; refuse the mix-ups."""
    network = requested if requested is not None else default_network(meta.normalized)
    if normalizes_inside(network) and meta.normalized:
        raise GhostError("network 1 normalizes inside the model, but this dataset is "
                         "already normalized: remake it without --normalize or use --network 0")
    if normalizes_inside(network) and meta.normalization is None:
        raise GhostError("network 1 needs the normalization recorded in the dataset's "
                         "_features.json; remake the dataset with make_dataset.py")
    if not normalizes_inside(network) and not meta.normalized:
        raise GhostError("network 0 expects normalized inputs, but this dataset is raw: "
                         "remake it with make_dataset.py --normalize or use --network 1")
    return network


def prepare_outputs(args, locks):
    """Every output location checked, and locked against a concurrent run, before
    Ray starts: the Ray folder of this search and, with --save, the model folder
    (where stale temporaries of killed runs are removed)."""
    prepare_folder(args.path, "--path")
    locks.enter_context(FolderLock(args.path, "--path", name=f".{args.name}.lock"))
    if args.save:
        prepare_folder(args.output_dir, "--output-dir")
        locks.enter_context(FolderLock(args.output_dir, "--output-dir"))
        remove_stale_temporaries(args.output_dir)


def search(args, splits, setup):
    """The Ray Tune search; returns the best trial's hyperparameters, weights and
    epoch.  Ray runs only here; torch is not imported in this process before."""
    from search import best_trial, init_ray, run_search
    init_ray(args)
    try:
        results = run_search(args, {s: splits[s] for s in ("train", "valid")}, setup)
        return best_trial(results)
    finally:
        import ray
        ray.shutdown()


def print_table(rows):
    """rows: {name: {metric: value}} -> one aligned table."""
    cols = ["loss", "accuracy", "auc"]
    log(f"{'':<22}" + "".join(f"{c:>10}" for c in cols))
    for name, metrics in rows.items():
        log(f"{name:<22}" + "".join(f"{metrics.get(c, float('nan')):>10.4f}" for c in cols))


def finish(args, splits, meta, setup, params, state):
    """The best model evaluated on the validation and test splits (a table on the
    console), and its INT8 version with --int8: [(file stem, model, SavedConfig)]."""
    import torch

    from models import build_model
    from trainer import evaluate, quantize, to_tensors
    device = pick_device(args.nocuda, args.cuda)
    torch.manual_seed(args.seed)
    config, settings = setup.model_config(params), setup.train_settings(params)
    model = build_model(config)
    model.load_state_dict(state)
    model = model.to(device).eval()
    valid, test = (to_tensors(model, splits[s], device) for s in ("valid", "test"))
    rows = {"validation": evaluate(model, *valid, args.threshold),
            "test": evaluate(model, *test, args.threshold)}
    saved = SavedConfig(model=config, track=meta.track or "", features=meta.features,
                        threshold=args.threshold, training=settings.to_dict(),
                        metrics=dict(rows))
    artifacts = [(ARTIFACT, model, saved)]
    if args.int8:  # same normalization layer: the normalized test tensors serve both
        qmodel = quantize(model, settings, splits["train"], device, args.int8_epochs)
        rows["test (INT8)"] = evaluate(qmodel, *test, args.threshold)
        qsaved = SavedConfig(model=replace(config, int8=True), track=saved.track,
                             features=saved.features, threshold=args.threshold,
                             training=saved.training,
                             metrics={**saved.metrics, "test": rows["test (INT8)"]})
        artifacts.append((f"{ARTIFACT}_int8", qmodel, qsaved))
    print_table(rows)
    return artifacts


def save(artifacts, folder):
    """Every model's files, all renamed into place together at the end."""
    with AtomicOutputs() as out:
        for stem, model, saved in artifacts:
            save_model_files(out, folder, stem, model.cpu(), saved)
    log(f"saved {ARTIFACT}.pth, {ARTIFACT}_config.pkl/.json, {ARTIFACT}.onnx"
        + (f" and {ARTIFACT}_int8.*" if len(artifacts) > 1 else "")
        + f" in {os.path.abspath(folder)}")


def main(argv=None):
    args = parse_args(argv)
    clock = Stopwatch()
    with contextlib.ExitStack() as locks:
        splits, meta = load_data(args.filename, args.batch)
        network = resolve_network(args.network, meta)
        prepare_outputs(args, locks)
        if args.gpu or args.cuda is not None:  # check GPU flags before a long search
            from search import check_gpu_flags
            check_gpu_flags(args)
        setup = TrialSetup(network, splits["train"][0].shape[1], meta.normalization,
                           args.batch, args.epochs, args.seed, args.threshold, args.gpu > 0)
        log(f"dataset {args.filename}: {setup.n_features} features, "
            + ", ".join(f"{s} {len(y):,}" for s, (_, y) in splits.items())
            + f"; network {network}; {args.num_samples} trials x {args.epochs} epochs")
        params, state, epoch = search(args, splits, setup)
        log(f"search done in {clock():.1f} s; best: l0={params['l0']} lr={params['lr']:.2e} "
            f"{params['optimizer']} {params['activation']} (epoch {epoch})")
        artifacts = finish(args, splits, meta, setup, params, state)
        if args.save:
            save(artifacts, args.output_dir)
    log(f"total time {clock():.1f} s")


if __name__ == "__main__":
    run_cli(main)
