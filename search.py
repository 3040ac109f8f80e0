"""The hyperparameter search with Ray Tune: start or join Ray, run an ASHA search
whose trials train with trainer.py on arrays shared through Ray's object store,
and restore the best trial.  Ray is imported inside the functions.
"""
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass
from functools import partial

import search_folder
from architecture import ACTIVATIONS, ModelConfig, hidden_widths, macs_and_params
from cli import STOP_SIGNALS, Stopped, listen, stop
from metrics import EFFICIENCIES
from search_folder import CHECKPOINT
from search_log import search_callbacks
from trainer import (
    Trainer,
    TrainSettings,
    evaluate,
    make_optimizer,
    seed_everything,
    shared_tensors,
    to_tensors,
)
from utils import GhostError, log, one_line, pick_device

TOOLKIT_DIR = os.path.dirname(os.path.abspath(__file__))


# The hidden layers the default search tries: the original one-layer widths, and
# two and three layers of equal width; those over --max-macs are left out.
ARCHITECTURES = ((8,), (16,), (32,), (64,), (128,), (16, 16), (32, 32), (64, 64),
                 (128, 128), (16, 16, 16), (32, 32, 32), (64, 64, 64), (128, 128, 128))
SPACES = ("default", "original")
# --select: the validation metric that stops trials early and picks the best one
SELECT = {"loss": "min", "auc": "max", **{f"rejection@{e:g}": "max" for e in EFFICIENCIES}}


def architectures(n_features, max_macs):
    """ARCHITECTURES within the budget; a clear error if none is."""
    fits = [h for h in ARCHITECTURES if macs_and_params(n_features, h)[0] <= max_macs]
    if not fits:
        cheapest = min(macs_and_params(n_features, h)[0] for h in ARCHITECTURES)
        raise GhostError(f"--max-macs {max_macs}: no architecture fits (the smallest, "
                         f"one hidden layer of 8, costs {cheapest} multiply-adds per track)")
    return fits


def search_space(space, n_features, max_macs, batch=None):
    """default: 1 to 3 hidden layers within --max-macs, AdamW with weight decay and a
    learning-rate schedule, batch size.  original: the seed's space (one hidden layer
    l0, Adam or SGD at a constant rate, four activations).  SGD is not in the default
    space: in a search of 8 trials on the seed's space it reached validation losses of
    0.59-0.69 where Adam reached 0.44."""
    from ray import tune
    tried = [name for name, act in ACTIVATIONS.items() if space in act.spaces]
    if space == "original":
        widths = [w for w in (8, 16, 32, 64, 128)
                  if macs_and_params(n_features, (w,))[0] <= max_macs]
        if not widths:
            architectures(n_features, max_macs)  # raises the clear error
        return {"l0": tune.choice(widths), "lr": tune.loguniform(1e-4, 1e-1),
                "optimizer": tune.choice(["adam", "sgd"]),
                "activation": tune.choice(tried)}
    return {"hidden": tune.choice([list(h) for h in architectures(n_features, max_macs)]),
            "activation": tune.choice(tried),
            "lr": tune.loguniform(1e-3, 1e-2),
            "weight_decay": tune.loguniform(1e-5, 1e-2),
            "batch": batch or tune.choice([512, 1024, 2048])}


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares besides the searched hyperparameters (plain data,
    handed to the trials once by Ray, never part of a trial's config)."""
    network: int
    n_features: int
    inputs: str              # network 1's first layer: "standard" or "minmax"
    normalization: object    # features.MinMax
    standardization: object  # features.Standardize
    epochs: int
    seed: int
    threshold: float         # of the accuracy; None: the trial's own 99 % point
    use_gpu: bool
    batch: int = 2048        # where the search does not choose it
    schedule: str = "onecycle"
    weights: tuple = None    # (real, ghost) loss weights, or None
    select: str = "loss"
    derived: tuple = ()      # derived.Derived inputs (fitted), computed in the first layer
    branches: tuple = None   # the features' names, which they read

    def n_inputs(self):
        """The first hidden layer's input width: the features and the derived inputs."""
        return self.n_features + len(self.derived)

    def model_config(self, params):
        return ModelConfig(network=self.network, n_features=self.n_features,
                           hidden=tuple(int(w) for w in hidden_widths(params)),
                           activation=params["activation"], inputs=self.inputs,
                           normalization=self.normalization,
                           standardization=self.standardization,
                           derived=self.derived, branches=self.branches)

    def train_settings(self, params):
        original = "l0" in params
        return TrainSettings(optimizer=params.get("optimizer", "adamw"),
                             lr=float(params["lr"]), batch=int(params.get("batch", self.batch)),
                             epochs=self.epochs, seed=self.seed,
                             weight_decay=float(params.get("weight_decay", 0.0)),
                             schedule="constant" if original else self.schedule)


def train_trial(params, setup, data):
    """One Ray Tune trial of the hyperparameters `params`: train, report the
    validation metrics every epoch with a checkpoint, resume from the trial's last
    checkpoint when restored."""
    import torch
    from ray import tune

    from models import build_model
    torch.set_num_threads(1)  # one core per trial: tiny matrices, no thread overhead
    seed_everything(setup.seed)
    device = torch.device("cuda" if setup.use_gpu and torch.cuda.is_available() else "cpu")
    config, settings = setup.model_config(params), setup.train_settings(params)
    model = build_model(config).to(device)
    opt = make_optimizer(settings, model, device)
    raw = device.type == "cpu"  # CPU: the shared arrays, scaled batch by batch
    tensors = shared_tensors if raw else partial(to_tensors, model, device=device)
    x, y = tensors(data["train"])
    vx, vy = tensors(data["valid"])
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, CHECKPOINT), weights_only=True,
                               map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["epoch"])
    trainer = Trainer(model, opt, x, y, settings.batch, settings.seed + start,
                      settings=settings, start_epoch=start, weights=setup.weights, raw=raw)
    macs, params_count = config.cost()
    for epoch in range(start, settings.epochs):
        train_loss = trainer.epoch()
        metrics = evaluate(model, vx, vy, setup.threshold, setup.weights, raw=raw)
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "epoch": epoch + 1}, os.path.join(folder, CHECKPOINT))
            tune.report({**metrics, "train_loss": train_loss, "epoch": epoch + 1,
                         "macs": macs, "params": params_count},
                        checkpoint=tune.Checkpoint.from_directory(folder))


class Signals:
    """SIGINT and SIGTERM end the run with exit 128 + the signal (cli.Stopped).  During
    the search the first one asks Tune to stop and save its state (as Tune does on
    Ctrl-C: its SIGUSR1 handler), so that --resume continues it; elsewhere, or on a
    second one, Stopped is raised at once (and temporary outputs go, as on any
    error).  install() again after ray.init (its SIGTERM handler exits with a dump)
    and after ray.shutdown (it leaves the process's SIGTERM at the default behind
    Python's back: the run would die on the spot, its temporaries left behind)."""

    def __init__(self):
        self.signum, self.searching, self.started, self.done = None, False, False, False
        self.previous = {}

    def install(self):
        for signum in STOP_SIGNALS:
            self.previous.setdefault(signum, signal.getsignal(signum))
        listen(self.handler)
        return self

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False

    def handler(self, signum, frame):
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if self.searching and self.signum is None and callable(tune_stop):
            self.signum = signum
            tune_stop(signum, frame)
            return
        stop(signum, frame)

    def outcome(self, stopped, folder):
        """What a run ended by `stopped` leaves, in words."""
        if self.started and search_folder.is_search(folder):
            what = ("the finished search is kept in " if self.done else
                    "the search so far is kept in ")
            return (f"stopped by {stopped}; no model was written; {what}{folder}: "
                    "continue it with --resume")
        return f"stopped by {stopped}; nothing was written"

    @contextlib.contextmanager
    def search(self):
        """Around Tuner.fit: a signal received meanwhile is raised when it returns."""
        self.searching = self.started = True
        try:
            yield
        finally:
            self.searching = False
        if self.signum is not None:
            raise Stopped(self.signum)
        self.done = True


def check_machines(args):
    """Before any folder is made: the cluster at --address answers; --gpu needs CUDA
    here (unless that cluster has it); --cuda K must name a device (torch is
    imported only when a GPU flag is given)."""
    if args.address:
        check_reachable(args.address)
    if not (args.gpu or args.cuda is not None):
        return
    import torch
    if args.gpu and not args.address and not torch.cuda.is_available():
        raise GhostError(f"--gpu {args.gpu} asked, but CUDA is not available here")
    pick_device(args.nocuda, args.cuda)


def check_reachable(address, timeout=3.0):
    """Fail fast on an unreachable Ray address (ray.init would retry for minutes)."""
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


# what stays behind when the toolkit's code travels to a cluster's nodes
RUNTIME_EXCLUDES = [".git", ".venv", "demo", "bench/.cache", "ray_results", "docs", "tests",
                    "*.root", "*.npy", "*.onnx", "*.pth"]


def join_ray(address, **local):
    """ray.init: join the cluster at `address` (with its token where `ray start`
    left one; the toolkit's code travels to every node as the job's working_dir:
    the nodes need the same Python packages, not a checkout), or, for address None,
    start a local Ray (`local`: num_cpus, num_gpus).  Returns the ray module."""
    if address and "RAY_AUTH_MODE" not in os.environ and has_ray_token():
        # clusters started by `ray start` (Ray >= 2.52) want their token; Ray reads
        # this before it is imported
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kw = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
    try:
        if address:
            ray.init(address=address, runtime_env={"working_dir": TOOLKIT_DIR,
                                                   "excludes": RUNTIME_EXCLUDES}, **kw)
        else:
            ray.init(address="local", **local, **kw)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise GhostError(f"cannot start or reach {where}: {one_line(e, last=False)}")
    return ray


def init_ray(args):
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # SIGINT and SIGTERM go to Signals, which asks Tune to stop (Tune's SIGUSR1)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # JSON and CSV metrics only (added in run_search): Ray's TensorBoard logger would
    # import torch into the driver (+700 MB) and write event files nobody asked for
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    ray = join_ray(args.address, num_cpus=args.cpu, num_gpus=args.gpu)
    # a failed trial is one line of TrialLine; Tune's traceback stays in its log
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    have = ray.cluster_resources().get("GPU", 0)
    if args.gpu and have < args.gpu:
        raise GhostError(f"--gpu {args.gpu} asked, but the Ray cluster has {have:g} GPU(s)")


def run_search(args, data, setup, record):
    """Run (or resume) the ASHA search in --path/--name, a folder that
    search_folder.start marks with `record` (its manifest); returns Ray's
    ResultGrid."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    resources = {"cpu": 1}
    if args.gpu:
        resources["gpu"] = 1.0 / args.trials_per_gpu
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, setup=setup, data=data), resources)
    folder = search_folder.folder_of(args)
    storage = os.path.dirname(folder)
    if args.resume:
        if not tune.Tuner.can_restore(folder):
            raise GhostError(f"no search to resume in {folder}")
        log(f"resuming the search in {folder}")
        try:
            tuner = tune.Tuner.restore(folder, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        except Exception as e:  # Ray's restore reads the stored state: any failure
            raise GhostError(f"--resume: cannot restore the search in {folder} "
                             f"({one_line(e)}); {search_folder.NEW_SEARCH}")
    else:
        search_folder.start(folder, record)  # replaces only a search of this toolkit
        metric, mode = setup.select, SELECT[setup.select]
        grace = min(3, args.epochs)
        scheduler = ASHAScheduler(max_t=args.epochs, grace_period=grace, reduction_factor=2)
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(args.space, setup.n_inputs(), args.max_macs,
                                     args.batch),
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, scheduler=scheduler,
                # a trial's worker process runs the next trial: one start (and one
                # torch import, seconds) per core, not per trial; every trial seeds itself
                num_samples=args.num_samples, reuse_actors=True,
                search_alg=BasicVariantGenerator(random_state=args.seed)),
            run_config=tune.RunConfig(
                name=args.name, storage_path=storage, verbose=0,
                callbacks=[*search_callbacks(args.num_samples, setup, grace),
                           JsonLoggerCallback(), CSVLoggerCallback()],
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=2, checkpoint_score_attribute=metric,
                    checkpoint_score_order=mode)))
    try:
        return tuner.fit()
    except (OSError, EOFError) as e:  # Ray's storage: a full disk, mostly
        free = 2**20
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(storage).free
        why = f"its disk is full ({free:,} bytes free)" if free < 2**20 else one_line(e)
        raise GhostError(f"the search could not write or read its files in {folder}: "
                         f"{why}; free some space or choose another --path")


def best_trial(results, select="loss"):
    """The best trial by the `select` metric: its hyperparameters, its best
    checkpoint's weights and epoch; a clear error if all failed."""
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
    mode = SELECT[select]
    best = results.get_best_result(metric=select, mode=mode, scope="all",
                                   filter_nan_and_inf=True)
    checkpoint = best.get_best_checkpoint(metric=select, mode=mode)
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, CHECKPOINT), weights_only=True,
                           map_location="cpu")
    return dict(best.config), state["model"], int(state["epoch"])


def trial_table(results, select="loss"):
    """Every trial's hyperparameters, its best validation metrics (by its own
    history) and its history per epoch (training and validation loss, AUC and the
    `select` metric; `best_epoch`: the epoch best by it), for the quality-vs-cost
    front and the history figure: a list of dicts."""
    rows = []
    for r in results:
        history = r.metrics_dataframe
        if r.error is not None or history is None or history.empty:
            continue
        keys = dict.fromkeys(("epoch", "loss", "train_loss", "auc", select))
        pick = history[select].idxmin() if SELECT[select] == "min" else history[select].idxmax()
        rows.append({"params": dict(r.config), "epochs": int(history["epoch"].max()),
                     "history": {k: history[k].tolist() for k in keys if k in history},
                     "select": select, "best_epoch": int(history["epoch"][pick]),
                     "macs": int(history["macs"].iloc[-1]),
                     "params_count": int(history["params"].iloc[-1]),
                     "loss": float(history["loss"].min()), "auc": float(history["auc"].max()),
                     **{k: float(history[k].max()) for k in history.columns
                        if k.startswith("rejection@")}})
    return rows
