"""The hyperparameter search with Ray Tune: start or join Ray, run an ASHA search
whose trials train with trainer.py on arrays shared through Ray's object store,
and restore the best trial.  Ray is imported inside the functions.
"""
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

from architecture import ModelConfig
from trainer import Trainer, TrainSettings, evaluate, make_optimizer, seed_everything, to_tensors
from utils import GhostError, log, one_line, pick_device

CHECKPOINT = "checkpoint.pt"


def search_space():
    """The original study's space: width, learning rate, optimizer, activation."""
    from ray import tune
    return {
        "l0": tune.choice([8, 16, 32, 64, 128]),
        "lr": tune.loguniform(1e-4, 1e-1),
        "optimizer": tune.choice(["adam", "sgd"]),
        "activation": tune.choice(["relu", "leaky_relu", "elu", "tanh"]),
    }


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares besides the searched hyperparameters (plain data,
    handed to the trials once by Ray, never part of a trial's config)."""
    network: int
    n_features: int
    normalization: object   # features.MinMax or None
    batch: int
    epochs: int
    seed: int
    threshold: float
    use_gpu: bool

    def model_config(self, params):
        return ModelConfig(network=self.network, n_features=self.n_features,
                           l0=int(params["l0"]), activation=params["activation"],
                           normalization=self.normalization)

    def train_settings(self, params):
        return TrainSettings(optimizer=params["optimizer"], lr=float(params["lr"]),
                             batch=self.batch, epochs=self.epochs, seed=self.seed)


def train_trial(params, setup, data):
    """One Ray Tune trial of the hyperparameters `params`: train, report validation
    loss every epoch with a checkpoint, resume from the trial's last checkpoint
    when restored."""
    import torch
    from ray import tune

    from models import build_model
    torch.set_num_threads(1)  # one core per trial: tiny matrices, no thread overhead
    seed_everything(setup.seed)
    device = torch.device("cuda" if setup.use_gpu and torch.cuda.is_available() else "cpu")
    model = build_model(setup.model_config(params)).to(device)
    settings = setup.train_settings(params)
    opt = make_optimizer(settings, model, device)
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
    trainer = Trainer(model, opt, x, y, settings.batch, settings.seed + start)
    for epoch in range(start, settings.epochs):
        train_loss = trainer.epoch()
        metrics = evaluate(model, vx, vy, setup.threshold)
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "epoch": epoch + 1}, os.path.join(folder, CHECKPOINT))
            tune.report({"loss": metrics["loss"], "accuracy": metrics["accuracy"],
                         "auc": metrics["auc"], "train_loss": train_loss,
                         "epoch": epoch + 1},
                        checkpoint=tune.Checkpoint.from_directory(folder))


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
        raise GhostError(f"cannot start or reach {where}: {one_line(e, last=False)}")
    have = ray.cluster_resources().get("GPU", 0)
    if args.gpu and have < args.gpu:
        raise GhostError(f"--gpu {args.gpu} asked, but the Ray cluster has {have:g} GPU(s)")


def trial_line_callback(total, epochs):
    """A Ray Tune callback printing one line per finished (or failed) trial."""
    from ray import tune

    class TrialLine(tune.Callback):
        @staticmethod
        def finished(trials, trial):
            return 1 + sum(t is not trial and t.status in ("TERMINATED", "ERROR")
                           for t in trials)

        def on_trial_complete(self, iteration, trials, trial, **info):
            c, r = trial.config, trial.last_result or {}
            stop = "" if r.get("epoch") == epochs else "  (stopped early by ASHA)"
            log(f"[{self.finished(trials, trial)}/{total}] l0={c['l0']:<3} lr={c['lr']:.2e} "
                f"{c['optimizer']:<4} {c['activation']:<10} epochs {r.get('epoch', 0):>3}"
                f"  val loss {r.get('loss', float('nan')):.4f}"
                f"  acc {r.get('accuracy', float('nan')):.4f}{stop}")

        def on_trial_error(self, iteration, trials, trial, **info):
            log(f"[{self.finished(trials, trial)}/{total}] trial {trial.trial_id} failed; "
                f"error in {trial.error_file or 'the Ray logs'}")

    return TrialLine()


def run_search(args, data, setup):
    """Run (or resume) the ASHA search; returns Ray's ResultGrid."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    resources = {"cpu": 1}
    if args.gpu:
        resources["gpu"] = 1.0 / args.trials_per_gpu
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, setup=setup, data=data), resources)
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
            param_space=search_space(),
            tune_config=tune.TuneConfig(
                metric="loss", mode="min", scheduler=scheduler,
                num_samples=args.num_samples,
                search_alg=BasicVariantGenerator(random_state=args.seed)),
            run_config=tune.RunConfig(
                name=args.name, storage_path=storage, verbose=0,
                callbacks=[trial_line_callback(args.num_samples, args.epochs),
                           JsonLoggerCallback(),
                           CSVLoggerCallback()],
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=2, checkpoint_score_attribute="loss",
                    checkpoint_score_order="min")))
    return tuner.fit()


def best_trial(results):
    """The best trial's hyperparameters, its best checkpoint's weights and epoch;
    a clear error if all failed."""
    import torch
    unfinished = sum(r.error is None and not r.metrics.get("done") for r in results)
    if unfinished:
        raise GhostError(f"the search was interrupted with {unfinished} of {len(results)} "
                         f"trials unfinished; continue it with --resume")
    ok = [r for r in results if r.error is None and r.metrics]
    if not ok:
        errors = {one_line(r.error) for r in results if r.error}
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
