"""Model files in, probabilities out: load an .onnx (with its metadata) or a .pth
with its config as a LoadedModel, build a scorer (torch, through onnx2torch for
ONNX, or onnxruntime), and score every track in one batched pass.
"""
import contextlib
import io
import os
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np

from artifacts import (
    INPUT_NAME,
    OUTPUT_NAME,
    SavedConfig,
    load_config,
    onnx_bytes,
    onnx_record,
    state_problem,
)
from features import overflowing
from utils import GhostError, Stopwatch, one_line, pick_device

GPU_BATCH = 1_000_000
# CPU batches: about 2^28 / (multiply-adds per track) tracks, at most 65,536, so a
# batch's hidden activations stay near the caches.  Measured on 2 cores (bench/
# bench_inference.py): the 18k-MAC 13-128-128-1 network 2.8 M tracks/s at 16,384
# (onnxruntime; 1.9 M at 65,536), the 450-MAC 13-32-1 one 25-27 M/s at 65,536-131,072
# (torch drops to 10 M/s at 131,072).
CPU_BATCH_RANGE = (4096, 65536)
BACKENDS = ("auto", "torch", "onnxruntime")
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
             "QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger"}


@dataclass
class LoadedModel:
    """A model file and what it records about itself."""
    kind: str               # "onnx" or "pth"
    path: str
    saved: SavedConfig      # from the ONNX metadata and/or --config
    has_metadata: bool
    n_in: int               # input width, None if the file leaves it open
    int8: bool
    proto: object = None    # ONNX: the ModelProto and its input/output names
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    module: object = None   # .pth: the torch module


def load_model_file(path, config_path=None, network=None, int8=False):
    """An .onnx file, or a .pth state dict with its config; `network` and `int8`
    override what the config says.  Each file is validated where it is read: one
    line naming the file and what is wrong with it."""
    if not os.path.isfile(path):
        raise GhostError(f"model file {path} does not exist")
    config = load_config(config_path) if config_path else {}
    if path.endswith((".pth", ".pt")):
        if not config_path:
            raise GhostError(f"a .pth model needs --config (the ghost_model_config.pkl or "
                             f".json saved with {path})")
        return _load_pth(path, config, config_path, network, int8)
    return _load_onnx(path, config, int8)


def _saved_config(d, where):
    try:
        return SavedConfig.from_dict(d)
    except (KeyError, ValueError, TypeError) as e:
        raise GhostError(f"{where} does not describe a model of this toolkit: {e}")


def _load_onnx(path, file_config, int8_asked):
    import onnx
    try:
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
    except Exception as e:  # protobuf DecodeError, ValidationError, OSError...
        raise GhostError(f"{path} is not a readable ONNX model: {one_line(e, last=False)}")
    inp, out = _classifier_io(proto, path)
    dims = list(inp.type.tensor_type.shape.dim)
    width = dims[1].dim_value if dims[1].HasField("dim_value") else None
    try:
        meta = onnx_record(proto)
    except ValueError as e:
        raise GhostError(f"{path}: {e}")
    saved = _saved_config({**file_config, **meta}, path)  # the model's own record wins
    recorded = {"n_features": saved.model.n_features if saved.model else None,
                "features": len(saved.features) if saved.features else None}
    for key, n in recorded.items():
        if width is not None and n is not None and n != width:
            raise GhostError(f"{path}: its record's {key} gives {n} inputs, but the graph "
                             f"takes {width} features")
    int8 = any(n.op_type in QUANT_OPS for n in proto.graph.node)
    if int8_asked and not int8:
        raise GhostError(f"--int8: {path} has no QuantizeLinear/DequantizeLinear nodes "
                         "(a float model); drop --int8 or pass the _int8.onnx model")
    return LoadedModel("onnx", path, saved, bool(meta), width, int8, proto=proto,
                       input_name=inp.name, output_name=out.name)


def _classifier_io(proto, path):
    """The graph's input and output, checked: one float input [batch, features],
    one float output [batch, 1] (or [batch]), finite weights."""
    import onnx
    from onnx import numpy_helper
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if not graph.node or len(inputs) != 1 or len(graph.output) != 1:
        raise GhostError(f"{path} is not a classifier with one input and one output "
                         f"({len(inputs)} inputs, {len(graph.output)} outputs)")
    inp, out = inputs[0], graph.output[0]
    for value, what in ((inp, "input"), (out, "output")):
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise GhostError(f"{path}: {what} {value.name!r} is not float32")
    dims = list(inp.type.tensor_type.shape.dim)
    if len(dims) != 2:
        raise GhostError(f"{path}: input {inp.name!r} has {len(dims)} dimensions; "
                         "expected [batch, features]")
    out_dims = list(out.type.tensor_type.shape.dim)
    if len(out_dims) > 2 or (len(out_dims) == 2 and out_dims[1].HasField("dim_value")
                             and out_dims[1].dim_value != 1):
        raise GhostError(f"{path}: output {out.name!r} has shape "
                         f"{[d.dim_value or d.dim_param for d in out_dims]}; "
                         "expected one probability per track")
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    for tensor in graph.initializer:
        if tensor.data_type in floats and not np.isfinite(numpy_helper.to_array(tensor)).all():
            raise GhostError(f"{path}: the weights {tensor.name!r} hold non-finite values "
                             "(NaN or inf)")
    return inp, out


def _load_pth(path, config, config_path, network, int8):
    import torch

    from models import build_model, load_model, n_inputs
    try:
        _check_archive(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GhostError(f"{path} is not a readable PyTorch state dict: {one_line(e, last=False)}")
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise GhostError(f"{path} is not a state dict of tensors (names to tensors)")
    overrides = {"network": network} if network is not None else {}
    if int8:
        overrides["int8"] = True
    saved = _saved_config({**config, **overrides}, f"config {config_path}")
    if saved.model is None:
        raise GhostError(f"config {config_path} does not describe the weights in {path}: "
                         "it records no architecture (n_features, hidden)")
    problem = state_problem(build_model(saved.model).state_dict(), state)
    if problem:
        raise GhostError(f"config {config_path} does not describe the weights in {path}: "
                         f"{problem}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise GhostError(f"{path}: the weights {', '.join(bad)} hold non-finite values "
                         "(NaN or inf)")
    if saved.model.int8:
        seen = [k for k in state if k.endswith(".seen")]
        if seen and not any(int(state[k]) > 0 for k in seen):
            raise GhostError(f"{path} was not trained with INT8 quantization "
                             "(its quantization ranges are unset); drop --int8")
    try:
        module = load_model(saved.model, state)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise GhostError(f"config {config_path} does not describe the weights in {path}: "
                         f"{one_line(e, last=False, count=2)[:300]}")
    return LoadedModel("pth", path, saved, True, n_inputs(module),
                       saved.model.int8, module=module)


def _check_archive(path):
    """A .pth of torch's zip format has a CRC-32 per member, which torch.load does
    not check: a flipped byte in the weights would load silently."""
    if zipfile.is_zipfile(path):  # else torch's legacy format: torch.load reads it
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise ValueError(f"its member {bad} fails its CRC-32 check (the file is corrupt)")


def cuda_present():
    """Whether this machine has an NVIDIA driver loaded, without importing torch."""
    return os.path.exists("/proc/driver/nvidia/version")


def choose_backend(model, requested, nocuda=False):
    """The scoring runtime and, if it is not the one asked for, why.  "auto": an
    .onnx model on the CPU runs with onnxruntime where it is installed (measured as
    fast as torch or faster, and it spares importing torch and onnx2torch, 2-4 s), on
    a GPU with torch; a .pth model with torch."""
    if model.kind == "onnx" and model.int8 and requested != "onnxruntime":
        why = None if requested == "auto" else (
            "INT8 ONNX model (QuantizeLinear/DequantizeLinear): onnx2torch cannot "
            "convert these, so it runs with onnxruntime")
        return "onnxruntime", why
    if requested != "auto":
        return requested, None
    if model.kind == "onnx" and (nocuda or not cuda_present()):
        try:
            import onnxruntime  # noqa: F401
            return "onnxruntime", None
        except ImportError:
            pass
    return "torch", None


def other_backend(model, backend):
    """The engine that cross-checks `backend` for this model, or None."""
    if model.kind == "onnx" and model.int8:
        return None
    return "torch" if backend == "onnxruntime" else "onnxruntime"


def model_macs(model):
    """Multiply-adds per track of a LoadedModel where its record has them (its
    architecture's cost), else None: the one count of a model's MACs."""
    arch = model.saved.model
    return arch.cost()[0] if arch is not None else None


def weight_macs(model):
    """An estimate of the multiply-adds per track of a model that records no
    architecture, from its weights (every 2-D weight matrix, as a dense layer costs)."""
    if model.proto is not None:
        return sum(int(np.prod(t.dims)) for t in model.proto.graph.initializer
                   if len(t.dims) == 2) or None
    if model.module is not None:
        return sum(p.numel() for p in model.module.parameters() if p.dim() == 2) or None
    return None


def cpu_batch(model):
    """Tracks per CPU batch for this model (CPU_BATCH_RANGE)."""
    macs = model_macs(model) or weight_macs(model) or 2048
    batch = 2 ** int(round(np.log2(2 ** 28 / macs)))
    return int(min(max(batch, CPU_BATCH_RANGE[0]), CPU_BATCH_RANGE[1]))


def onnx_session(model_bytes):
    """An onnxruntime CPU session using every core this process may use."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise GhostError(f"onnxruntime is needed here (pip install onnxruntime): {e}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = len(os.sched_getaffinity(0))
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise GhostError(f"onnxruntime cannot run the model: {one_line(e)}")


def make_scorer(model, backend, nocuda=False, batch=None):
    """(score(x: float32 [n, f]) -> float32 [n], description), batches of `batch`
    tracks (default: cpu_batch on the CPU, GPU_BATCH on a GPU)."""
    if backend == "onnxruntime":
        if model.kind == "onnx":
            blob, names = model.proto.SerializeToString(), (model.input_name,
                                                           model.output_name)
        else:
            blob, names = onnx_bytes(model.module, model.saved), (INPUT_NAME, OUTPUT_NAME)
        session = onnx_session(blob)

        def run(xb):
            return session.run([names[1]], {names[0]: xb})[0]
        batch = batch or cpu_batch(model)
        return batched(run, batch), f"onnxruntime, cpu, batch {batch:,}"

    import torch
    device = pick_device(nocuda)
    module = model.module if model.kind == "pth" else convert_onnx(model)
    module = module.to(device).eval()
    how = "load_model" if model.kind == "pth" else "onnx2torch"
    if device.type == "cuda":
        batch = batch or GPU_BATCH
        return resident(module, device, batch), f"torch ({how}), {device}, batch {batch:,}"

    def run(xb):
        with torch.inference_mode():
            return module(torch.from_numpy(xb)).numpy()
    batch = batch or cpu_batch(model)
    return batched(run, batch), f"torch ({how}), {device}, batch {batch:,}"


def resident(module, device, batch):
    """score(x) for an accelerator: every track goes to the device in one transfer,
    is scored there in batches into one device array, and comes back in one."""
    import torch

    def score(x):
        with torch.inference_mode():
            xd = torch.from_numpy(np.ascontiguousarray(x)).to(device)
            out = torch.empty(len(x), dtype=torch.float32, device=device)
            for lo in range(0, len(x), batch):
                y = module(xd[lo:lo + batch])
                if y.numel() != min(batch, len(x) - lo):
                    raise GhostError(f"model output has shape {tuple(y.shape)} for "
                                     f"{min(batch, len(x) - lo)} tracks; expected one "
                                     "probability per track")
                out[lo:lo + batch] = y.reshape(-1)
            return out.cpu().numpy()
    score.batch = batch
    return score


def batched(run, batch):
    """score(x) applying run() to consecutive batches, one probability per track."""
    def score(x):
        out = np.empty(len(x), dtype=np.float32)
        for lo in range(0, len(x), batch):
            y = run(x[lo:lo + batch])
            if y.size != min(batch, len(x) - lo):
                raise GhostError(f"model output has shape {tuple(y.shape)} for "
                                 f"{min(batch, len(x) - lo)} tracks; expected one "
                                 "probability per track")
            out[lo:lo + batch] = y.reshape(-1)
        return out
    score.batch = batch
    return score


def convert_onnx(model):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        from onnx2torch import convert
        try:
            return convert(model.proto)
        except Exception as e:
            raise GhostError(f"onnx2torch cannot convert {model.path}: "
                             f"{one_line(e, last=False)}; try --backend onnxruntime")


class ScoringPass:
    """One model scoring an input chunk after chunk (score_model: the whole input is
    one chunk): `scaling` (features.MinMax, for a network 0 model) applied first.
    Each chunk is scored in batches from its first track, so chunks of a multiple of
    `batch` tracks get the whole array's batches, and its numbers bit for bit."""

    def __init__(self, model, scaling=None, backend="auto", nocuda=False, batch=None):
        backend, self.note = choose_backend(model, backend, nocuda)  # why not the one asked
        self.score, self.desc = make_scorer(model, backend, nocuda, batch)
        self.batch = self.score.batch
        config = model.saved.model  # network 1's scaling covers its derived inputs too
        self.layer = (scaling if scaling is not None
                      else None if config is None else config.input_layer())
        self.extend, self.scaling = None if config is None else config.extend, scaling
        self.seconds, self.warm, self.lost, self.range = 0.0, False, 0, [np.inf, -np.inf, 0]

    def __call__(self, data, finite):
        """(probabilities float32 [n], NaN where `finite` is False, and the overflow:
        the finite tracks the model cannot compute in float32: inputs scaled beyond
        its range, or inf/NaN inside it).  `data` is not modified."""
        overflow = overflowing(data, finite, self.layer, self.extend)
        ok = finite & ~overflow
        x = data if self.scaling is None else self.scaling.apply(data)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            if not self.warm:  # CUDA context, kernels: not part of the timed pass
                self.score(x[:1024])
                self.warm = True
            clock = Stopwatch()
            scores = self.score(x)
            self.seconds += clock()
        scores[~ok] = np.nan
        lost = ok & ~np.isfinite(scores)
        seen = scores[ok & ~lost] if lost.any() else scores[ok]
        self.lost += int(lost.sum())
        if seen.size:
            lo, hi, n = self.range
            self.range = [min(lo, float(seen.min())), max(hi, float(seen.max())), n + seen.size]
        scores[lost] = np.nan
        return scores, overflow | lost

    def check(self):
        """The error where the model's output was not a probability on every chunk."""
        lo, hi, n = self.range
        if (self.lost and not n) or (n and not (lo >= -1e-6 and hi <= 1 + 1e-6)):
            raise GhostError(f"the model's output is not a probability (min "
                             f"{lo if n else np.nan:.4g}, max {hi if n else np.nan:.4g}, "
                             f"{self.lost} non-finite)")


def score_model(model, data, finite, scaling=None, backend="auto", nocuda=False,
                batch=None):
    """Scores of every track with one model (a ScoringPass of one chunk): (scores,
    description, seconds, note, overflow): the note says why the runtime is not the
    one asked for, or is None; `overflow`: ScoringPass's, NaN like the non-finite
    tracks."""
    scores, overflow = (run := ScoringPass(model, scaling, backend, nocuda, batch))(data, finite)
    run.check()
    return scores, run.desc, run.seconds, run.note, overflow


def calibration(model, fraction):
    """--calibrate: (the ghost fraction the model's output is calibrated to, the
    one asked for: a number, or "model", the training input's own fraction)."""
    prior = model.saved.training_prior or 0.5
    target = model.saved.ghost_fraction if fraction == "model" else fraction
    if target is None:
        raise GhostError(f"--calibrate: {model.path} records no ghost fraction of its "
                         "training input; give one, e.g. --calibrate 0.15")
    return prior, target


def calibrated(scores, prior, target):
    """The probabilities at another ghost fraction: the raw output is calibrated to
    the training mix (`prior`, 0.5 for a balanced or class-weighted training);
    shifting the logit by the log ratio of the two priors gives them at `target`."""
    with np.errstate(divide="ignore", over="ignore"):
        logit = np.log(scores) - np.log1p(-scores)
        shift = np.log(target / (1 - target)) - np.log(prior / (1 - prior))
        return (1 / (1 + np.exp(-(logit + shift)))).astype(np.float32)
