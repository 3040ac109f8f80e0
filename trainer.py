"""Training a ghost classifier with torch: the optimizer, the epoch loop over
batches sliced from tensors already on the device (a CUDA graph on GPUs),
evaluation and INT8 quantization-aware fine-tuning.  No Ray here: search.py runs
this inside each trial, training.py after the search.
"""
import copy
from dataclasses import asdict, dataclass, replace

import numpy as np

from metrics import roc_auc
from utils import GhostError, log


@dataclass(frozen=True)
class TrainSettings:
    """How a model is trained (saved beside its ModelConfig, never inside it)."""
    optimizer: str
    lr: float
    batch: int
    epochs: int
    seed: int

    def to_dict(self):
        return asdict(self)


def seed_everything(seed):
    import torch
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def make_optimizer(settings, model, device):
    import torch
    params = list(model.parameters())
    cuda = device.type == "cuda"
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, fused=True, capturable=cuda)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=0.9)
    raise GhostError(f"unknown optimizer {settings.optimizer!r}: valid are adam, sgd")


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


def evaluate(model, x, y, threshold, chunk=1 << 20):
    """Loss, accuracy and ROC AUC of a model on (x, y) in large no-grad chunks; x is
    already normalized by the model's layer (to_tensors)."""
    import torch
    import torch.nn.functional as F
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model.core(x[i:i + chunk]) for i in range(0, len(x), chunk)])
        loss = float(F.binary_cross_entropy_with_logits(logits, y))
        prob = torch.sigmoid(logits)
        accuracy = float(((prob > threshold).float() == y).float().mean())
    return {"loss": loss, "accuracy": accuracy,
            "auc": roc_auc(prob.cpu().numpy(), y.cpu().numpy())}


def quantize(model, settings, train, device, epochs):
    """Quantization-aware fine-tuning on the train split: observe ranges for one
    epoch, then fine-tune with the ranges frozen (at a tenth of the learning rate);
    returns the INT8 model (fake-quantized)."""
    qmodel = copy.deepcopy(model).to(device).set_int8(True, observing=True)
    opt = make_optimizer(replace(settings, lr=settings.lr * 0.1), qmodel, device)
    x, y = to_tensors(qmodel, train, device)
    trainer = Trainer(qmodel, opt, x, y, settings.batch, settings.seed, use_graph=False)
    for epoch in range(epochs):
        trainer.epoch()
        if epoch == 0:
            qmodel.set_int8(True, observing=False)
    return qmodel.set_int8(True, observing=False).eval()
