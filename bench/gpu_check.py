"""GPU checks (torch only; no ROOT or Ray): CUDA-graph training equals eager
training, evaluation, INT8 fine-tuning and ONNX export of a CUDA-trained model.

    python3 -m bench.gpu_check      (from the repository root)
"""
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import torch

from architecture import ModelConfig
from artifacts import SavedConfig, onnx_bytes
from features import MinMax
from models import build_model
from trainer import Trainer, TrainSettings, evaluate, lr_at, make_optimizer, quantize, to_tensors

dev = torch.device("cuda")
print(torch.__version__, torch.cuda.get_device_name(dev))
rng = np.random.default_rng(0)
x = rng.random((40_000, 13), dtype=np.float32) * 10
y = (x[:, :1] + x[:, 1:2] + rng.normal(0, 2, (len(x), 1)) > 10).astype(np.float32)
cfg = ModelConfig(network=1, n_features=13, hidden=(32,), activation="relu",
                  normalization=MinMax((0.0,) * 13, (10.0,) * 13))
adam = TrainSettings(optimizer="adam", lr=3e-3, batch=2048, epochs=5, seed=0)
losses = {}
for graph in (True, False):
    torch.manual_seed(0)
    model = build_model(cfg).to(dev)
    opt = make_optimizer(adam, model, dev)
    tx, ty = to_tensors(model, (x, y), dev)
    tr = Trainer(model, opt, tx, ty, 2048, seed=0, use_graph=graph)
    losses[graph] = [tr.epoch() for _ in range(5)]
    print(f"graph={graph} captured={tr.graph is not None} losses", np.round(losses[graph], 5))
    m = evaluate(model, tx, ty, 0.5)
    print("  eval", {k: round(v, 4) for k, v in m.items()})
# the graph's 3 warm-up steps are real steps on batch 0, so trajectories differ slightly
assert abs(losses[True][-1] - losses[False][-1]) < 0.02, losses
# the default training: AdamW and a one-cycle schedule; on CUDA the learning rate lives in
# a device tensor that the captured graph reads, so the graph must follow the schedule too
onecycle = TrainSettings(optimizer="adamw", lr=5e-3, batch=2048, epochs=5, seed=0,
                         weight_decay=1e-4, schedule="onecycle")
ends = {}
for graph in (True, False):
    torch.manual_seed(0)
    m = build_model(cfg).to(dev)
    opt = make_optimizer(onecycle, m, dev)
    tr = Trainer(m, opt, tx, ty, 2048, seed=0, use_graph=graph, settings=onecycle)
    losses = [tr.epoch() for _ in range(5)]
    ends[graph] = (float(opt.param_groups[0]["lr"]), losses[-1])
    print(f"onecycle graph={graph} captured={tr.graph is not None} final lr "
          f"{ends[graph][0]:.2e} losses", np.round(losses, 5))
last = lr_at(onecycle, tr.steps * 5 - 1, tr.steps * 5)  # the schedule's last step
assert all(abs(lr - last) < 1e-9 for lr, _ in ends.values()), (ends, last)
assert abs(ends[True][1] - ends[False][1]) < 0.02, ends
sgd_model = build_model(cfg).to(dev)
sgd = replace(adam, optimizer="sgd")
tr = Trainer(sgd_model, make_optimizer(sgd, sgd_model, dev), tx, ty, 2048, seed=0)
print("sgd captured", tr.graph is not None, "loss", round(tr.epoch(), 5))
q = quantize(model, adam, (x, y), dev, 2)  # the Adam model trained above
metrics = evaluate(q, *to_tensors(q, (x, y), dev), 0.5)
print("int8 on cuda", {k: round(v, 4) for k, v in metrics.items()})

for mdl, c in ((model, cfg), (q, replace(cfg, int8=True))):
    blob = onnx_bytes(mdl, SavedConfig(model=c))
    s = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    got = s.run(None, {"features": x[:1000]})[0]
    with torch.inference_mode():
        want = mdl.cpu()(torch.from_numpy(x[:1000])).numpy()
    print("onnx int8" if c.int8 else "onnx float", "max abs diff",
          float(np.abs(got - want).max()))
# scoring on the GPU: the seed-size network, one transfer in and one out per pass
import time  # noqa: E402

from scoring import resident  # noqa: E402

seed_size = build_model(cfg).to(dev).eval()
big = torch.rand((100_000_000, 13)).numpy() * 10
score = resident(seed_size, dev, 10_000_000)
score(big[:1_000_000])
torch.cuda.synchronize()
best = float("inf")
for _ in range(3):
    t = time.perf_counter()
    p = score(big)
    best = min(best, time.perf_counter() - t)
print(f"GPU scoring, 13-32-1 network: {len(big) / best / 1e9:.2f} G tracks/s with the "
      f"transfers ({len(big):,} tracks in {best:.3f} s; target >= 1e9/s)")
with torch.inference_mode():
    on_gpu = seed_size(torch.from_numpy(big[:1000]).to(dev)).cpu().numpy().ravel()
assert np.allclose(p[:1000], on_gpu, atol=1e-6)
print("GPU CHECK OK")
