"""Ray Tune search for the best ghost classifier, then deployable artifacts.

    python training.py -f ../data/dataset --save

reads the arrays written by make_dataset.py and, with --save, writes
ghost_model.pth, ghost_model_config.pkl (+ .json) and ghost_model.onnx
(+ ghost_model_int8.* with --int8) into --output-dir.
"""
import argparse
import contextlib
import copy
import io
import logging
import os
import pickle
import shutil
import tempfile

import numpy as np

from utils import (AtomicOutputs, FolderLock, GhostError, Stopwatch, load_dataset,
                   load_dataset_meta, log, pick_device, plain, prepare_folder,
                   remove_stale_temporaries, roc_auc, run_cli)

CHECKPOINT = "checkpoint.pt"
ARTIFACT = "ghost_model"


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


# ---------------------------------------------------------------------------
# data and configuration
# ---------------------------------------------------------------------------

def load_data(args):
    """The three splits as numpy arrays, and what make_dataset.py recorded."""
    splits = load_dataset(args.filename)
    meta = load_dataset_meta(args.filename)
    n_train = len(splits["train"][0])
    if n_train < args.batch:
        raise GhostError(f"the training split holds {n_train} tracks, fewer than one "
                         f"batch of {args.batch}: use a smaller --batch")
    width = splits["train"][0].shape[1]
    names = meta.get("features") or [f"f{i}" for i in range(width)]
    offsets = (meta.get("normalization") or {}).get("offsets", names)
    if len(names) != width or len(offsets) != width:
        raise GhostError(f"{args.filename}_features.json describes "
                         f"{len(names) if len(names) != width else len(offsets)} features "
                         f"(names or normalization), but the arrays have {width} columns")
    return splits, meta


def resolve_network(requested, meta):
    """Network 1 takes raw data, network 0 normalized data; refuse the mix-ups."""
    normalized = bool(meta.get("normalized", False))
    network = requested if requested is not None else (0 if normalized else 1)
    if network == 1 and normalized:
        raise GhostError("network 1 normalizes inside the model, but this dataset is "
                         "already normalized: remake it without --normalize or use --network 0")
    if network == 1 and not meta.get("normalization"):
        raise GhostError("network 1 needs the normalization recorded in the dataset's "
                         "_features.json; remake the dataset with make_dataset.py")
    if network == 0 and not normalized:
        raise GhostError("network 0 expects normalized inputs, but this dataset is raw: "
                         "remake it with make_dataset.py --normalize or use --network 1")
    return network


def base_config(args, meta, network, n_features):
    """Everything a trial needs besides the searched hyperparameters; plain data."""
    return {
        "network": network,
        "n_features": n_features,
        "track": meta.get("track", ""),
        "features": meta.get("features") or [f"f{i}" for i in range(n_features)],
        "normalization": meta.get("normalization"),
        "threshold": args.threshold,
        "batch": args.batch,
        "epochs": args.epochs,
        "seed": args.seed,
        "int8": False,
        "use_gpu": args.gpu > 0,
    }


def search_space(base):
    """The original study's space: width, learning rate, optimizer, activation."""
    from ray import tune
    return {
        **base,
        "l0": tune.choice([8, 16, 32, 64, 128]),
        "lr": tune.loguniform(1e-4, 1e-1),
        "optimizer": tune.choice(["adam", "sgd"]),
        "activation": tune.choice(["relu", "leaky_relu", "elu", "tanh"]),
    }


# ---------------------------------------------------------------------------
# training: batches are slices of tensors already on the device
# ---------------------------------------------------------------------------

def make_optimizer(config, model, device):
    import torch
    params = list(model.parameters())
    cuda = device.type == "cuda"
    if config["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=config["lr"], fused=True, capturable=cuda)
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=config["lr"], momentum=0.9)
    raise GhostError(f"unknown optimizer {config['optimizer']!r}: valid are adam, sgd")


def to_tensors(model, data, device):
    """(x, y) on the device, x normalized once by the model's own layer, so that
    training runs model.core on it (identical to model.logits on raw x)."""
    import torch
    x = torch.as_tensor(data[0], device=device)
    y = torch.as_tensor(data[1], device=device)
    with torch.no_grad():
        x = model.norm(x).contiguous()
    return x, y


def gather_rows(t, index):
    """t[index] for a row permutation: numpy's take is ~6x faster than torch's
    advanced indexing on the CPU; on CUDA, index_select on the device."""
    import torch
    if t.device.type == "cpu":
        return torch.from_numpy(np.take(t.numpy(), index.numpy(), axis=0))
    return t.index_select(0, index.to(t.device))


class Trainer:
    """Epochs of shuffled mini-batches over device tensors.  On CUDA the whole
    step (forward, backward, optimizer) is captured once as a CUDA graph and
    replayed, which removes Python and kernel-launch overhead."""

    def __init__(self, model, optimizer, x, y, batch, seed, use_graph=None):
        import torch
        self.model, self.opt, self.x, self.y, self.batch = model, optimizer, x, y, batch
        self.device = x.device
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        if use_graph is None:
            use_graph = self.device.type == "cuda" and not any(
                m.enabled for m in model.fake_quants())
        self.graph = None
        if use_graph:
            try:
                self._capture()
            except RuntimeError as e:  # fall back to eager mode, say why
                log(f"CUDA graph capture failed ({e}); training in eager mode")
                self.graph = None

    def _loss(self, x, y):
        import torch.nn.functional as F
        return F.binary_cross_entropy_with_logits(self.model.core(x), y)

    def _step(self, x, y):
        loss = self._loss(x, y)
        for p in self.params:  # = zero_grad(set_to_none=True), without its overhead
            p.grad = None
        loss.backward()
        self.opt.step()
        return loss.detach()

    def _capture(self):
        import torch
        b, d = self.batch, self.device
        self.static_x = self.x[:b].clone()
        self.static_y = self.y[:b].clone()
        self.loss_sum = torch.zeros((), device=d)
        side = torch.cuda.Stream(d)
        side.wait_stream(torch.cuda.current_stream(d))
        with torch.cuda.stream(side):  # warm-up steps (real steps on the first batch)
            for _ in range(3):
                self._step(self.static_x, self.static_y)
        torch.cuda.current_stream(d).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            loss = self._loss(self.static_x, self.static_y)
            loss.backward()
            self.opt.step()
            self.loss_sum += loss.detach()

    def epoch(self):
        """One pass over the shuffled training set; returns the mean loss."""
        import torch
        self.model.train()
        perm = torch.randperm(len(self.x), generator=self.gen)
        xs, ys = gather_rows(self.x, perm), gather_rows(self.y, perm)
        steps = len(xs) // self.batch  # the last partial batch is dropped
        if self.graph is not None:
            self.loss_sum.zero_()
            for i in range(0, steps * self.batch, self.batch):
                self.static_x.copy_(xs[i:i + self.batch])
                self.static_y.copy_(ys[i:i + self.batch])
                self.graph.replay()
            return float(self.loss_sum) / steps
        losses = [self._step(xs[i:i + self.batch], ys[i:i + self.batch])
                  for i in range(0, steps * self.batch, self.batch)]
        return float(torch.stack(losses).mean())


def evaluate(model, x, y, threshold, raw=False, chunk=1 << 20):
    """Loss, accuracy and ROC AUC of a model on (x, y) in large no-grad chunks.
    x is already normalized by the model's layer unless raw=True."""
    import torch
    import torch.nn.functional as F
    model.eval()
    with torch.inference_mode():
        forward = model.logits if raw else model.core
        logits = torch.cat([forward(x[i:i + chunk]) for i in range(0, len(x), chunk)])
        loss = float(F.binary_cross_entropy_with_logits(logits, y))
        prob = torch.sigmoid(logits)
        accuracy = float(((prob > threshold).float() == y).float().mean())
    return {"loss": loss, "accuracy": accuracy,
            "auc": roc_auc(prob.cpu().numpy(), y.cpu().numpy())}


def seed_everything(seed):
    import torch
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train_trial(config, data):
    """One Ray Tune trial: train, report validation loss every epoch with a
    checkpoint, resume from the trial's last checkpoint when restored."""
    import torch
    from ray import tune

    from models import build_model
    torch.set_num_threads(1)  # one core per trial: tiny matrices, no thread overhead
    seed_everything(config["seed"])
    device = torch.device("cuda" if config["use_gpu"] and torch.cuda.is_available() else "cpu")
    model = build_model(config).to(device)
    opt = make_optimizer(config, model, device)
    x, y = to_tensors(model, data["train"], device)
    vx, vy = to_tensors(model, data["valid"], device)
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, CHECKPOINT), weights_only=True,
                               map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["epoch"])
    trainer = Trainer(model, opt, x, y, config["batch"], config["seed"] + start)
    for epoch in range(start, config["epochs"]):
        train_loss = trainer.epoch()
        metrics = evaluate(model, vx, vy, config["threshold"])
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "epoch": epoch + 1}, os.path.join(folder, CHECKPOINT))
            tune.report({"loss": metrics["loss"], "accuracy": metrics["accuracy"],
                         "auc": metrics["auc"], "train_loss": train_loss,
                         "epoch": epoch + 1},
                        checkpoint=tune.Checkpoint.from_directory(folder))


# ---------------------------------------------------------------------------
# the search
# ---------------------------------------------------------------------------

def check_gpu_flags(args):
    """--gpu needs CUDA here (unless the cluster at --address has it); --cuda K
    must name a device.  Imports torch, so only called when a GPU flag is given."""
    import torch
    if args.gpu and not args.address and not torch.cuda.is_available():
        raise GhostError(f"--gpu {args.gpu} asked, but CUDA is not available here")
    pick_device(args.nocuda, args.cuda)


def check_reachable(address, timeout=3.0):
    """Fail fast on an unreachable Ray address (ray.init would retry for minutes)."""
    import socket
    if address == "auto":
        return
    host, _, port = address.replace("ray://", "").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise GhostError(f"cannot reach the Ray cluster at {address}: {e}")


def has_ray_token():
    """Whether a Ray cluster token is at hand (as `ray start` leaves one)."""
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(
        os.environ.get("RAY_AUTH_TOKEN_PATH", os.path.expanduser("~/.ray/auth_token")))


def init_ray(args):
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if args.address and "RAY_AUTH_MODE" not in os.environ and has_ray_token():
        # clusters started by `ray start` (Ray >= 2.52) want their token; Ray reads
        # this before it is imported
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # JSON and CSV metrics only (added in run_search): Ray's TensorBoard logger would
    # import torch into the driver (+700 MB) and write event files nobody asked for
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    kw = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
    try:
        if args.address:
            check_reachable(args.address)
            ray.init(address=args.address, **kw)
        else:
            ray.init(address="local", num_cpus=args.cpu, num_gpus=args.gpu, **kw)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as e:
        where = f"the Ray cluster at {args.address}" if args.address else "a local Ray"
        raise GhostError(f"cannot start or reach {where}: {str(e).splitlines()[0]}")
    have = ray.cluster_resources().get("GPU", 0)
    if args.gpu and have < args.gpu:
        raise GhostError(f"--gpu {args.gpu} asked, but the Ray cluster has {have:g} GPU(s)")


def trial_line_callback(total):
    """A Ray Tune callback printing one line per finished (or failed) trial."""
    from ray import tune

    class TrialLine(tune.Callback):
        @staticmethod
        def finished(trials, trial):
            return 1 + sum(t is not trial and t.status in ("TERMINATED", "ERROR")
                           for t in trials)

        def on_trial_complete(self, iteration, trials, trial, **info):
            c, r = trial.config, trial.last_result or {}
            stop = "" if r.get("epoch") == c["epochs"] else "  (stopped early by ASHA)"
            log(f"[{self.finished(trials, trial)}/{total}] l0={c['l0']:<3} lr={c['lr']:.2e} "
                f"{c['optimizer']:<4} {c['activation']:<10} epochs {r.get('epoch', 0):>3}"
                f"  val loss {r.get('loss', float('nan')):.4f}"
                f"  acc {r.get('accuracy', float('nan')):.4f}{stop}")

        def on_trial_error(self, iteration, trials, trial, **info):
            log(f"[{self.finished(trials, trial)}/{total}] trial {trial.trial_id} failed; "
                f"error in {trial.error_file or 'the Ray logs'}")

    return TrialLine()


def run_search(args, data, base):
    """Run (or resume) the ASHA search; returns Ray's ResultGrid."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    resources = {"cpu": 1}
    if args.gpu:
        resources["gpu"] = 1.0 / args.trials_per_gpu
    trainable = tune.with_resources(tune.with_parameters(train_trial, data=data), resources)
    storage = os.path.abspath(args.path)
    folder = os.path.join(storage, args.name)
    if args.resume:
        if not tune.Tuner.can_restore(folder):
            raise GhostError(f"no search to resume in {folder}")
        log(f"resuming the search in {folder}")
        tuner = tune.Tuner.restore(folder, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        if os.path.isdir(folder):
            shutil.rmtree(folder)  # a new search replaces the previous one of that name
        scheduler = ASHAScheduler(max_t=args.epochs, grace_period=min(2, args.epochs),
                                  reduction_factor=2)
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(base),
            tune_config=tune.TuneConfig(
                metric="loss", mode="min", scheduler=scheduler,
                num_samples=args.num_samples,
                search_alg=BasicVariantGenerator(random_state=args.seed)),
            run_config=tune.RunConfig(
                name=args.name, storage_path=storage, verbose=0,
                callbacks=[trial_line_callback(args.num_samples), JsonLoggerCallback(),
                           CSVLoggerCallback()],
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=2, checkpoint_score_attribute="loss",
                    checkpoint_score_order="min")))
    return tuner.fit()


def best_trial(results):
    """Best config and its best checkpoint's weights; clear error if all failed."""
    import torch
    unfinished = sum(r.error is None and not r.metrics.get("done") for r in results)
    if unfinished:
        raise GhostError(f"the search was interrupted with {unfinished} of {len(results)} "
                         f"trials unfinished; continue it with --resume")
    ok = [r for r in results if r.error is None and r.metrics]
    if not ok:
        errors = {str(r.error).strip().splitlines()[-1] for r in results if r.error}
        raise GhostError(f"all {len(results)} trials failed: {'; '.join(sorted(errors))}")
    failed = len(results) - len(ok)
    if failed:
        log(f"{failed} of {len(results)} trials failed; choosing among the others")
    best = results.get_best_result(metric="loss", mode="min", scope="all",
                                   filter_nan_and_inf=True)
    checkpoint = best.get_best_checkpoint(metric="loss", mode="min")
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, CHECKPOINT), weights_only=True,
                           map_location="cpu")
    return dict(best.config), state["model"], int(state["epoch"])


# ---------------------------------------------------------------------------
# after the search: evaluate, quantize, save
# ---------------------------------------------------------------------------

def model_config(config):
    """The saved config: hyperparameters, features and normalization; plain data."""
    keep = ("network", "n_features", "l0", "activation", "optimizer", "lr", "batch",
            "epochs", "seed", "track", "features", "normalization", "threshold", "int8")
    return plain({k: config[k] for k in keep})


def quantize(model, config, data, device, epochs):
    """Quantization-aware fine-tuning: observe ranges for one epoch, then fine-tune
    with the ranges frozen; returns the INT8 model (fake-quantized)."""
    qmodel = copy.deepcopy(model).to(device).set_int8(True, observing=True)
    opt = make_optimizer({**config, "lr": config["lr"] * 0.1}, qmodel, device)
    x, y = to_tensors(qmodel, data["train"], device)
    trainer = Trainer(qmodel, opt, x, y, config["batch"], config["seed"], use_graph=False)
    for epoch in range(epochs):
        trainer.epoch()
        if epoch == 0:
            qmodel.set_int8(True, observing=False)
    return qmodel.set_int8(True, observing=False).eval()


def print_table(rows):
    """rows: {name: {metric: value}} -> one aligned table."""
    cols = ["loss", "accuracy", "auc"]
    log(f"{'':<22}" + "".join(f"{c:>10}" for c in cols))
    for name, metrics in rows.items():
        log(f"{name:<22}" + "".join(f"{metrics.get(c, float('nan')):>10.4f}" for c in cols))


def save_artifacts(folder, stem, model, config, out):
    import torch

    from models import onnx_bytes
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    out.save_bytes(os.path.join(folder, f"{stem}.pth"), buffer.getvalue())
    out.save_bytes(os.path.join(folder, f"{stem}_config.pkl"),
                   pickle.dumps(config, protocol=4))
    out.save_json(os.path.join(folder, f"{stem}_config.json"), config)
    out.save_bytes(os.path.join(folder, f"{stem}.onnx"), onnx_bytes(model, config))


def main(argv=None):
    args = parse_args(argv)
    with contextlib.ExitStack() as locks:
        run(args, locks)


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


def run(args, locks):
    clock = Stopwatch()
    splits, meta = load_data(args)
    network = resolve_network(args.network, meta)
    prepare_outputs(args, locks)
    if args.gpu or args.cuda is not None:  # check GPU flags before a long search
        check_gpu_flags(args)
    n_features = splits["train"][0].shape[1]
    base = base_config(args, meta, network, n_features)
    log(f"dataset {args.filename}: {n_features} features, "
        + ", ".join(f"{s} {len(y):,}" for s, (_, y) in splits.items())
        + f"; network {network}; {args.num_samples} trials x {args.epochs} epochs")

    init_ray(args)
    data = {s: splits[s] for s in ("train", "valid")}
    try:
        results = run_search(args, data, base)
        config, state, epoch = best_trial(results)
    finally:
        import ray
        ray.shutdown()
    log(f"search done in {clock():.1f} s; best: l0={config['l0']} lr={config['lr']:.2e} "
        f"{config['optimizer']} {config['activation']} (epoch {epoch})")

    import torch  # only now: the driver stays light while the trials run

    from models import build_model
    device = pick_device(args.nocuda, args.cuda)
    torch.manual_seed(args.seed)
    model = build_model(config)
    model.load_state_dict(state)
    model = model.to(device).eval()
    valid, test = (to_tensors(model, splits[s], device) for s in ("valid", "test"))
    rows = {"validation": evaluate(model, *valid, args.threshold),
            "test": evaluate(model, *test, args.threshold)}
    config = model_config(config)
    config["metrics"] = dict(rows)
    qmodel = None
    if args.int8:  # same normalization layer: the normalized test tensors serve both
        qmodel = quantize(model, config, splits, device, args.int8_epochs)
        rows["test (INT8)"] = evaluate(qmodel, *test, args.threshold)
    print_table(rows)

    if args.save:
        with AtomicOutputs() as out:
            save_artifacts(args.output_dir, ARTIFACT, model.cpu(), config, out)
            if qmodel is not None:
                qconfig = {**config, "int8": True,
                           "metrics": {**config["metrics"], "test": rows["test (INT8)"]}}
                save_artifacts(args.output_dir, f"{ARTIFACT}_int8", qmodel.cpu(), qconfig, out)
        log(f"saved {ARTIFACT}.pth, {ARTIFACT}_config.pkl/.json, {ARTIFACT}.onnx"
            + (f" and {ARTIFACT}_int8.*" if qmodel is not None else "")
            + f" in {os.path.abspath(args.output_dir)}")
    log(f"total time {clock():.1f} s")


if __name__ == "__main__":
    run_cli(main)
