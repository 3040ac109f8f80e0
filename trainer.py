"""Training a ghost classifier with torch: the optimizer, the epoch loop over
batches sliced from tensors already on the device (a CUDA graph on GPUs),
evaluation and INT8 quantization-aware fine-tuning.  No Ray here: search.py runs
this inside each trial, training.py after the search.
"""
import copy
import math
import warnings
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from metrics import MODEL_WORKING_POINT, quality, threshold_at
from records import check_fields, in_range, is_int, is_text
from utils import GhostError, log

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")

# What each training setting of a saved record must hold (null: not recorded).
FIELD_TYPES = {
    "optimizer": (is_text, "a string"),
    "lr": (in_range(0, math.inf, open_lo=True, open_hi=True), "a positive number"),
    "batch": (lambda v: is_int(v) and v >= 1, "a whole number >= 1"),
    "epochs": (lambda v: is_int(v) and v >= 1, "a whole number >= 1"),
    "seed": (is_int, "a whole number"),
    "weight_decay": (in_range(0, math.inf, open_hi=True), "a number >= 0"),
    "schedule": (is_text, "a string"),
}


@dataclass(frozen=True)
class TrainSettings:
    """How a model is trained (saved beside its ModelConfig, never inside it, as
    flat plain data).  A record of an older toolkit or written by hand may lack
    settings: None where it does (weight decay and schedule: what the older toolkit
    trained with, none and constant)."""
    optimizer: str = None
    lr: float = None           # the peak learning rate of the schedule
    batch: int = None
    epochs: int = None
    seed: int = None
    weight_decay: float = 0.0  # decoupled (AdamW); L2 for Adam and SGD
    schedule: str = "constant"

    @classmethod
    def from_dict(cls, d):
        """The settings a saved record holds (other keys ignored); ValueError naming a
        malformed one."""
        check_fields(d, FIELD_TYPES)
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def to_dict(self):
        """The settings recorded (None: not recorded, left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def lr_at(settings, step, total):
    """The learning rate at `step` of `total`: constant; one-cycle (cosine warm-up
    from lr/25 over the first 30 %, then cosine decay to lr/1e4, as torch's
    OneCycleLR); or cosine (5 % linear warm-up, then cosine decay to 0)."""
    lr, f = settings.lr, min(step / max(total, 1), 1.0)
    if settings.schedule == "onecycle":
        if f < 0.3:
            start, end, g = lr / 25, lr, f / 0.3
        else:
            start, end, g = lr, lr / 1e4, (f - 0.3) / 0.7
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * g))
    if settings.schedule == "cosine":
        return lr * f / 0.05 if f < 0.05 else lr * 0.5 * (1 + math.cos(math.pi * (f - 0.05) / 0.95))
    return lr


def loss_weights(y, weights):
    """The one class weighting of the loss: each track's weight by its label y (1 =
    ghost), `weights` = (real, ghost); None without weights (every track weighs 1).
    A torch tensor as the training loss computes it, real + (ghost - real) * y on
    the device; a numpy array (the baseline, the reference rows) exactly real or
    ghost, in float64."""
    if weights is None:
        return None
    real, ghost = weights
    if isinstance(y, np.ndarray):
        return np.where(y > 0.5, ghost, real)
    return real + (ghost - real) * y


def log_loss(p, y, weights=None):
    """The class-weighted binary cross-entropy of probabilities p (numpy) against
    labels y, as the training loss on logits: the mean of loss_weights x the
    per-track loss, p kept within [1e-7, 1 - 1e-7]."""
    q = np.clip(p, 1e-7, 1 - 1e-7)
    terms = y * np.log(q) + (1 - y) * np.log(1 - q)
    w = loss_weights(y, weights)
    return float(-np.mean(terms if w is None else w * terms))


def seed_everything(seed):
    import torch
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def make_optimizer(settings, model, device):
    """The optimizer; on CUDA Adam(W) keeps its learning rate in a device tensor, so
    that a captured CUDA graph follows the schedule (Trainer.set_lr fills it)."""
    import torch
    params = list(model.parameters())
    cuda = device.type == "cuda"
    lr = torch.tensor(settings.lr, device=device) if cuda else settings.lr
    wd = settings.weight_decay
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=True, capturable=cuda)
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=True, capturable=cuda)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=0.9, nesterov=True,
                               weight_decay=wd)
    raise GhostError(f"unknown optimizer {settings.optimizer!r}: valid are "
                     f"{', '.join(OPTIMIZERS)}")


def to_tensors(model, data, device):
    """(x, y) on the device, x normalized once by the model's own layer, so that
    training runs model.core on it (identical to model.logits on raw x)."""
    import torch
    x = torch.as_tensor(data[0], device=device)
    y = torch.as_tensor(data[1], device=device)
    with torch.no_grad():
        x = model.scaled(x).contiguous()
    return x, y


def shared_tensors(data):
    """(x, y) as CPU tensors over the arrays themselves, no copy: in a Ray trial they
    are the object store's read-only pages, shared by every trial (nothing writes
    to them; torch warns about read-only arrays, so the warning is silenced)."""
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(data[0])), torch.from_numpy(np.asarray(data[1]))


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
    replayed, which removes Python and kernel-launch overhead.

    `settings` (TrainSettings) gives the learning-rate schedule, which restarts
    where `start_epoch` says (a resumed trial); `weights` = (real, ghost) weights
    the loss per class (a dataset made with --balance weights)."""

    def __init__(self, model, optimizer, x, y, batch, seed, use_graph=None, settings=None,
                 start_epoch=0, weights=None, raw=False):
        import torch
        self.model, self.opt, self.x, self.y, self.batch = model, optimizer, x, y, batch
        self.raw = raw  # x holds raw branch values: each batch goes through model.scaled
        self.device = x.device
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.settings, self.weights = settings, weights
        self.steps = len(x) // batch  # per epoch; the last partial batch is dropped
        self.step = start_epoch * self.steps
        if use_graph is None:
            use_graph = self.device.type == "cuda" and not any(
                m.enabled for m in model.fake_quants()) and torch.is_tensor(
                optimizer.param_groups[0]["lr"])
        self.graph = None
        if use_graph and raw:
            raise ValueError("a CUDA graph trains on inputs scaled once (to_tensors)")
        if use_graph:
            try:
                self._capture()
            except RuntimeError as e:  # fall back to eager mode, say why
                log(f"CUDA graph capture failed ({e}); training in eager mode")
                self.graph = None

    def _loss(self, x, y):
        import torch.nn.functional as F
        return F.binary_cross_entropy_with_logits(self.model.core(x), y,
                                                  weight=loss_weights(y, self.weights))

    def set_lr(self):
        """The schedule's learning rate for the next step."""
        if self.settings is None or self.settings.schedule == "constant":
            return
        lr = lr_at(self.settings, self.step, self.steps * self.settings.epochs)
        for group in self.opt.param_groups:
            if hasattr(group["lr"], "fill_"):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self.step += 1

    def _step(self, x, y):
        self.set_lr()
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
        self.step -= 3
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
        steps = self.steps
        if self.raw:  # batches gathered from the shared raw rows, scaled one by one
            losses = []
            for i in range(0, steps * self.batch, self.batch):
                rows = perm[i:i + self.batch]
                with torch.no_grad():
                    xb = self.model.scaled(gather_rows(self.x, rows))
                losses.append(self._step(xb, gather_rows(self.y, rows)))
            return float(torch.stack(losses).mean())
        xs, ys = gather_rows(self.x, perm), gather_rows(self.y, perm)
        if self.graph is not None:
            self.loss_sum.zero_()
            for i in range(0, steps * self.batch, self.batch):
                self.set_lr()
                self.static_x.copy_(xs[i:i + self.batch])
                self.static_y.copy_(ys[i:i + self.batch])
                self.graph.replay()
            return float(self.loss_sum) / steps
        losses = [self._step(xs[i:i + self.batch], ys[i:i + self.batch])
                  for i in range(0, steps * self.batch, self.batch)]
        return float(torch.stack(losses).mean())


def evaluate(model, x, y, threshold, weights=None, chunk=1 << 16, raw=False,
             efficiency=MODEL_WORKING_POINT):
    """Loss (class-weighted with `weights`, as in training), accuracy at `threshold`
    (None: at the threshold keeping `efficiency` of these real tracks), ROC AUC and
    ghost rejection at the EFFICIENCIES of a model on (x, y), in large no-grad
    chunks; x is already scaled by the model's layer (to_tensors), or `raw`
    branch values scaled chunk by chunk."""
    import torch
    import torch.nn.functional as F
    model.eval()
    forward = model.logits if raw else model.core
    with torch.inference_mode():
        logits = torch.cat([forward(x[i:i + chunk]) for i in range(0, len(x), chunk)])
        loss = float(F.binary_cross_entropy_with_logits(logits, y,
                                                        weight=loss_weights(y, weights)))
        prob = torch.sigmoid(logits)
        p, labels = prob.cpu().numpy().ravel(), y.cpu().numpy().ravel()
        if threshold is None:
            threshold = threshold_at(p, labels > 0.5, efficiency)
        accuracy = float(((prob > threshold).float() == y).float().mean())
    return {"loss": loss, "accuracy": accuracy, **quality(p, labels)}


def predict(model, data, device=None, chunk=1 << 18, inputs=False):
    """Ghost probabilities (numpy float32) of raw branch values `data` (numpy), the
    model's input layer included; with `inputs`, of the columns [raw | derived]
    (GhostNet.from_inputs: the derived inputs given, not computed)."""
    import torch
    device = device or next(model.parameters()).device
    model.eval()
    score = model.from_inputs if inputs else model
    with torch.inference_mode():
        return np.concatenate([
            score(torch.as_tensor(data[i:i + chunk], device=device)).cpu().numpy().ravel()
            for i in range(0, len(data), chunk)]) if len(data) else np.zeros(0, np.float32)


def quantize(model, settings, train, device, epochs, weights=None):
    """Quantization-aware fine-tuning on the train split: observe ranges for one
    epoch, then fine-tune with the ranges frozen (constant, a tenth of the peak
    learning rate); returns the INT8 model (fake-quantized)."""
    qmodel = copy.deepcopy(model).to(device).set_int8(True, observing=True)
    fine = replace(settings, lr=settings.lr * 0.1, schedule="constant")
    opt = make_optimizer(fine, qmodel, device)
    x, y = to_tensors(qmodel, train, device)
    trainer = Trainer(qmodel, opt, x, y, settings.batch, settings.seed, use_graph=False,
                      settings=fine, weights=weights)
    for epoch in range(epochs):
        trainer.epoch()
        if epoch == 0:
            qmodel.set_int8(True, observing=False)
    return qmodel.set_int8(True, observing=False).eval()
