"""Score tracks with a trained ghost classifier and analyse the result.

    python inference.py -f ../data/Data.root --model ghost_model.onnx --track matching
    python inference.py -f ../data/dataset --model ghost_model.pth --config ghost_model_config.pkl

-f is a .root file (every entry of the tree, in entry order) or a dataset prefix written
by make_dataset.py (its test split; its train split too, for the overtraining check).
The model's ONNX metadata or config tells the track type, features, network and the
normalization recorded at training time; flags override them.

One scoring pass, then for every threshold (ghost when probability > threshold):
accuracy, TP/TN/FP/FN fractions, sensitivity, specificity, FPR, FNR, precision, F1,
predicted and true ghost/real fractions; ROC AUC, the full ROC, ghost rejection at
90/95/99/99.5 % real-track efficiency.  Writes to --plots-dir: thresholds.csv,
metrics.json, accuracy.png, ghost_real.png, confusion.png, ssfnfp.png, roc.png,
scores.png, rejection.png (and overtraining.png on a dataset prefix).
--output FILE.npy|FILE.root: the ghost probability of every input track (NaN where a
track has a non-finite feature); the .root tree `ghost_probability` (branch
`ghost_prob`) can be a friend of the input tree.
"""
import argparse
import contextlib
import io
import math
import os
import warnings

import numpy as np

from features import (DEFAULT_TREE, LABEL, TRACK_TYPES, features_for, other_track_branches,
                      track_mismatch, unfilled)
from utils import (AtomicOutputs, GhostError, Stopwatch, check_output_dir, load_config,
                   load_dataset_meta, load_split, log, normalize, one_line, prepare_folder,
                   read_root, roc_auc, run_cli, stack_columns, warn, write_root)

# The original study's 26 thresholds: 0.10-0.80 by 0.05, 0.81-0.89 by 0.01, 0.90, 0.95.
DEFAULT_THRESHOLDS = tuple(round(t, 2) for t in (
    [0.10 + 0.05 * i for i in range(15)] + [0.81 + 0.01 * i for i in range(9)] + [0.90, 0.95]))
# Real-track efficiencies at which the ghost rejection is quoted.
EFFICIENCIES = (0.90, 0.95, 0.99, 0.995)
CPU_BATCH, GPU_BATCH = 32768, 1_000_000  # CPU: intermediates stay in cache
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
             "QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger"}
PLOTS = ("accuracy.png", "ghost_real.png", "confusion.png", "ssfnfp.png", "roc.png",
         "scores.png", "rejection.png")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--filename", required=True,
                   help="a .root file, or a dataset prefix from make_dataset.py")
    p.add_argument("--model", default="ghost_model.onnx",
                   help="an .onnx model, or a .pth state dict with --config "
                        "(default ghost_model.onnx)")
    p.add_argument("--config", help="model config (.pkl or .json); needed for a .pth model")
    p.add_argument("--track", choices=TRACK_TYPES,
                   help="track type: its default features (default: from the model)")
    p.add_argument("--features",
                   help="comma-separated feature branches in the model's column order "
                        "(for a model without metadata)")
    p.add_argument("--network", type=int, choices=(0, 1),
                   help="0: model expects normalized inputs; 1: normalization inside "
                        "(default: from the model)")
    p.add_argument("--normalize", action="store_true",
                   help="normalize the inputs with the offsets and scales recorded at "
                        "training time (automatic for network 0 on raw inputs)")
    p.add_argument("--int8", action="store_true",
                   help="the model is INT8-quantized (.pth: config with int8; .onnx: "
                        "QuantizeLinear/DequantizeLinear, run with onnxruntime)")
    p.add_argument("--nocuda", action="store_true", help="do not use CUDA")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="scoring engine (default torch; onnxruntime as a cross-check)")
    p.add_argument("--output", help="write every track's ghost probability to FILE.npy "
                                    "or FILE.root (NaN for non-finite tracks)")
    p.add_argument("--plots-dir", default="plots",
                   help="folder for plots, thresholds.csv and metrics.json (default plots)")
    p.add_argument("--show", action="store_true", help="also open the plots in windows")
    p.add_argument("--no-plots", action="store_true",
                   help="write thresholds.csv and metrics.json but no plots")
    p.add_argument("--thresholds",
                   help="comma-separated thresholds in [0, 1] (default: the original 26)")
    p.add_argument("--batch", type=int,
                   help=f"tracks per scoring batch (default {CPU_BATCH} on CPU, "
                        f"{GPU_BATCH:,} on GPU)")
    p.add_argument("--tree", default=DEFAULT_TREE, help=f"tree path (default {DEFAULT_TREE})")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    return p.parse_args(argv)


def check_args(args):
    """Argument problems that need no file: reported before any work."""
    if args.batch is not None and args.batch < 1:
        raise GhostError(f"--batch must be at least 1, got {args.batch}")
    if args.thresholds is not None:
        try:
            values = [float(t) for t in args.thresholds.split(",") if t.strip()]
        except ValueError:
            raise GhostError(f"--thresholds must be comma-separated numbers, "
                             f"got {args.thresholds!r}")
        if not values or not all(0.0 <= t <= 1.0 for t in values):
            raise GhostError(f"--thresholds must be numbers in [0, 1], got {args.thresholds!r}")
        args.thresholds = sorted(set(values))
    else:
        args.thresholds = list(DEFAULT_THRESHOLDS)
    if args.features is not None:
        args.features = [f.strip() for f in args.features.split(",") if f.strip()]
        if not args.features:
            raise GhostError("--features is empty")
        if len(set(args.features)) != len(args.features):
            raise GhostError(f"--features repeats a name: {','.join(args.features)}")
    if args.output is not None:
        ext = os.path.splitext(args.output)[1].lower()
        if ext not in (".npy", ".root"):
            raise GhostError(f"--output {args.output}: the extension must be .npy or .root")
        check_output_dir(args.output)
    prepare_folder(args.plots_dir, "--plots-dir", create=False)  # made once there are metrics
    if not os.path.isfile(args.model):
        raise GhostError(f"model file {args.model} does not exist")
    if args.model.endswith((".pth", ".pt")) and not args.config:
        raise GhostError(f"a .pth model needs --config (the ghost_model_config.pkl or "
                         f".json saved with {args.model})")


# ---------------------------------------------------------------------------
# the model: ONNX (metadata inside) or .pth + config
# ---------------------------------------------------------------------------

def load_model_file(args):
    """{kind, config, n_in, int8, ...} for an ONNX file or a .pth with its config."""
    config = load_config(args.config) if args.config else {}
    if args.model.endswith((".pth", ".pt")):
        return load_pth(args.model, config, args)
    return load_onnx(args.model, config, args)


def load_onnx(path, file_config, args):
    import onnx
    try:
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
    except Exception as e:  # protobuf DecodeError, ValidationError, OSError...
        raise GhostError(f"{path} is not a readable ONNX model: {one_line(e, last=False)}")
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if not graph.node or len(inputs) != 1 or not graph.output:
        raise GhostError(f"{path} is not a classifier with one input and one output "
                         f"({len(inputs)} inputs, {len(graph.output)} outputs)")
    inp = inputs[0]
    tensor = inp.type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise GhostError(f"{path}: input {inp.name!r} is not float32")
    dims = list(tensor.shape.dim)
    if len(dims) != 2:
        raise GhostError(f"{path}: input {inp.name!r} has {len(dims)} dimensions; "
                         "expected [batch, features]")
    width = dims[1].dim_value if dims[1].HasField("dim_value") else None
    out = graph.output[0]
    out_dims = list(out.type.tensor_type.shape.dim)
    if len(out_dims) > 2 or (len(out_dims) == 2 and out_dims[1].HasField("dim_value")
                             and out_dims[1].dim_value != 1):
        raise GhostError(f"{path}: output {out.name!r} has shape "
                         f"{[d.dim_value or d.dim_param for d in out_dims]}; "
                         "expected one probability per track")
    from models import onnx_config
    meta = onnx_config(proto)
    config = {**file_config, **meta}  # the model's own metadata wins over a config file
    int8 = any(n.op_type in QUANT_OPS for n in graph.node)
    if args.int8 and not int8:
        raise GhostError(f"--int8: {path} has no QuantizeLinear/DequantizeLinear nodes "
                         "(a float model); drop --int8 or pass the _int8.onnx model")
    return {"kind": "onnx", "path": path, "proto": proto, "config": config,
            "has_metadata": bool(meta), "n_in": width, "input_name": inp.name,
            "output_name": out.name, "int8": int8}


def load_pth(path, config, args):
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GhostError(f"{path} is not a readable PyTorch state dict: {one_line(e, last=False)}")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise GhostError(f"{path} is not a state dict of tensors")
    config = dict(config)
    if args.network is not None:
        config["network"] = args.network
    if args.int8:
        config["int8"] = True
    if config.get("int8"):
        seen = [k for k in state if k.endswith(".seen")]
        if seen and not any(int(state[k]) > 0 for k in seen):
            raise GhostError(f"{path} was not trained with INT8 quantization "
                             "(its quantization ranges are unset); drop --int8")
    from models import load_model, n_inputs
    try:
        model = load_model(config, state)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = " ".join(lines[:2])
        raise GhostError(f"config {args.config} does not describe the weights in {path}: "
                         f"{detail[:300] or type(e).__name__}")
    return {"kind": "pth", "path": path, "module": model, "config": config,
            "has_metadata": True, "n_in": n_inputs(model), "int8": bool(config.get("int8"))}


# ---------------------------------------------------------------------------
# what to feed the model: features, network, normalization
# ---------------------------------------------------------------------------

def resolve_settings(args, model, source):
    """Track, features, network and preprocessing, from the model and the input;
    flags override the model's own record."""
    cfg = model["config"]
    track = args.track or cfg.get("track") or source["meta"].get("track") or None
    if args.features:
        names = args.features
    elif args.track and args.track != cfg.get("track"):
        names = features_for(args.track)
    elif cfg.get("features"):
        names = list(cfg["features"])
    elif track:
        try:
            names = features_for(track)
        except ValueError as e:
            raise GhostError(f"{e} (from the model's metadata/config); pass --track")
    elif source["meta"].get("features"):
        names = list(source["meta"]["features"])
    else:
        raise GhostError(f"{model['path']} does not record its features (no metadata): "
                         "pass --features a,b,c (the model's column order) or --track")
    n_in = model["n_in"]
    if n_in is not None and n_in != len(names):
        raise GhostError(f"{model['path']} takes {n_in} input features, but {len(names)} "
                         f"features are selected ({','.join(names)})")
    network = args.network if args.network is not None else cfg.get("network")
    network = None if network in (None, "") else int(network)

    # the transform recorded at training time: the model's, else the dataset's
    recorded, origin = cfg.get("normalization"), "the model's metadata/config"
    if not recorded and source["meta"].get("normalization") and \
            list(source["meta"].get("features", [])) == names:
        recorded, origin = source["meta"]["normalization"], f"{source['path']}_features.json"
    already = bool(source["meta"].get("normalized"))
    normalize_now = False
    if already:
        if network == 1:
            raise GhostError(f"{source['path']} holds normalized features "
                             "(normalized: true in its _features.json), but the model is "
                             "network 1, which normalizes inside: use a dataset made "
                             "without --normalize")
        if args.normalize:
            log(f"note: {source['path']} is already normalized; not normalizing again")
    elif args.normalize or network == 0:
        if network == 1:
            raise GhostError("--normalize with a network 1 model would normalize twice: "
                             "network 1 normalizes inside the model")
        normalize_now = True
    if normalize_now:
        if not recorded or not recorded.get("offsets") or not recorded.get("scales"):
            raise GhostError("normalization needs the offsets and scales recorded at "
                             f"training time, but {model['path']} records none: pass "
                             "--config with a 'normalization' entry")
        if len(recorded["offsets"]) != len(names) or len(recorded["scales"]) != len(names):
            raise GhostError(f"the recorded normalization has {len(recorded['offsets'])} "
                             f"offsets, but {len(names)} features are selected")
    return {"track": track, "features": names, "network": network,
            "normalize": normalize_now, "normalization": recorded if normalize_now else None,
            "normalization_origin": origin if normalize_now else None}


# ---------------------------------------------------------------------------
# the input: .root file or dataset prefix
# ---------------------------------------------------------------------------

def describe_source(path):
    """{'kind': 'root'|'dataset', 'path', 'meta'} without reading the data."""
    if path.endswith(".root"):
        if not os.path.isfile(path):
            raise GhostError(f"input file {path} does not exist")
        return {"kind": "root", "path": path, "meta": {}}
    if os.path.isfile(f"{path}_test_data.npy"):
        return {"kind": "dataset", "path": path, "meta": load_dataset_meta(path)}
    if os.path.isfile(path):
        raise GhostError(f"{path} is neither a .root file nor a dataset prefix")
    raise GhostError(f"no input {path}: neither a .root file nor a dataset prefix "
                     f"({path}_test_data.npy is missing)")


def read_input(args, source, names):
    """data [n, f] float32 (C order), labels bool [n] or None, and the train split
    (data, labels) on a dataset prefix for the overtraining check."""
    if source["kind"] == "root":
        columns = read_root([source["path"]], args.tree, names, optional=(LABEL,))
        data = stack_columns(columns, names)
        labels = columns.get(LABEL)
        if labels is not None:
            bad = ~np.isin(labels, (0.0, 1.0))
            if bad.any():
                raise GhostError(f"branch {LABEL!r} holds {int(bad.sum())} values other "
                                 "than 0 and 1")
            labels = labels == 1.0
        return data, labels, None
    splits = {}
    stored = source["meta"].get("features")
    for split in ("test", "train"):
        if split == "train" and not os.path.isfile(f"{source['path']}_train_data.npy"):
            continue
        data, labels = load_split(source["path"], split)
        if stored:
            missing = [n for n in names if n not in stored]
            if missing:
                raise GhostError(f"dataset {source['path']} lacks features "
                                 f"{', '.join(missing)} (it holds {', '.join(stored)})")
            if list(stored) != names:
                data = np.ascontiguousarray(data[:, [stored.index(n) for n in names]])
        elif data.shape[1] != len(names):
            raise GhostError(f"dataset {source['path']} has {data.shape[1]} features, "
                             f"but {len(names)} are selected")
        splits[split] = (data, labels.ravel() == 1.0)
    return splits["test"][0], splits["test"][1], splits.get("train")


def warn_unfilled(args, source, settings, data):
    """A loud warning when features are 0 for every track: the input is of another
    track type than the model (its scores mean little), or a branch is empty."""
    names = settings["features"]
    zero = unfilled({n: data[:, j] for j, n in enumerate(names)}, names)
    if not zero:
        return
    track = settings["track"]
    others = {}
    if source["kind"] == "root" and track in TRACK_TYPES:
        others = read_root([source["path"]], args.tree, [],
                           optional=other_track_branches(track))
    warn(f"{track_mismatch(track, zero, others, fix='score it with a {} model')}; the model sees "
         "constant inputs it was not trained on, so its scores and metrics are not "
         "meaningful")


# ---------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------

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


def make_scorer(args, model):
    """(score(x: float32 [n, f]) -> float32 [n], description).  Batches of --batch
    tracks; on the CPU a few tens of thousands keep the hidden layer in cache."""
    if model["kind"] == "onnx" and model["int8"] and args.backend == "torch":
        log("note: INT8 ONNX model (QuantizeLinear/DequantizeLinear): onnx2torch cannot "
            "convert these, so it runs with onnxruntime")
        args.backend = "onnxruntime"
    if args.backend == "onnxruntime":
        if model["kind"] == "onnx":
            blob, names = model["proto"].SerializeToString(), (model["input_name"],
                                                              model["output_name"])
        else:
            from models import INPUT_NAME, OUTPUT_NAME, onnx_bytes
            blob, names = onnx_bytes(model["module"], model["config"]), (INPUT_NAME,
                                                                         OUTPUT_NAME)
        session, batch = onnx_session(blob), args.batch or CPU_BATCH

        def run(xb):
            return session.run([names[1]], {names[0]: xb})[0]
        return batched(run, batch), "onnxruntime, cpu"

    import torch
    from utils import pick_device
    device = pick_device(args.nocuda)
    batch = args.batch or (GPU_BATCH if device.type == "cuda" else CPU_BATCH)
    module = model["module"] if model["kind"] == "pth" else convert_onnx(model)
    module = module.to(device).eval()

    def run(xb):
        with torch.inference_mode():
            return module(torch.from_numpy(xb).to(device)).cpu().numpy()
    how = "load_model" if model["kind"] == "pth" else "onnx2torch"
    return batched(run, batch), f"torch ({how}), {device}"


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
    return score


def convert_onnx(model):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        from onnx2torch import convert
        try:
            return convert(model["proto"])
        except Exception as e:
            raise GhostError(f"onnx2torch cannot convert {model['path']}: {one_line(e, last=False)}; "
                             "try --backend onnxruntime")


def score_tracks(score, data, finite, batch_desc):
    """One pass: probabilities float32 [n], NaN where `finite` (the raw features, before
    any normalization) is False."""
    if not finite.all():
        data = data if data.flags.writeable else data.copy()
        data[~finite] = 0.0  # scored, then replaced by NaN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score(data[:1024])  # warm-up (CUDA context, kernels): not part of the timed pass
        clock = Stopwatch()
        scores = score(data)
    seconds = clock()
    scores[~finite] = np.nan
    ok = scores[finite]
    if ok.size and not (np.isfinite(ok).all() and ok.min() >= -1e-6 and ok.max() <= 1 + 1e-6):
        raise GhostError(f"the model's output is not a probability (min {np.nanmin(ok):.4g}, "
                         f"max {np.nanmax(ok):.4g}, {int((~np.isfinite(ok)).sum())} non-finite)")
    rate = len(data) / seconds if seconds > 0 else float("inf")
    log(f"scored {len(data):,} tracks in {seconds:.3f} s: {rate / 1e6:,.1f} M tracks/s "
        f"({batch_desc})")
    return scores, seconds


# ---------------------------------------------------------------------------
# analysis: numpy, every threshold from the one set of sorted scores
# ---------------------------------------------------------------------------

def _ratio(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def threshold_metrics(scores, labels, thresholds):
    """Per threshold (ghost when score > threshold; ghost = positive): counts, their
    fractions of all tracks, and the rates derived from them.  Dict of arrays."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    t = np.asarray(thresholds, dtype=np.float64)
    ghosts, reals = np.sort(scores[labels]), np.sort(scores[~labels])
    return _from_sorted(ghosts, reals, t)


def _from_sorted(ghosts, reals, t):
    n_g, n_r = len(ghosts), len(reals)
    n = n_g + n_r
    tp = n_g - np.searchsorted(ghosts, t, side="right")
    fp = n_r - np.searchsorted(reals, t, side="right")
    fn, tn = n_g - tp, n_r - fp
    m = {"threshold": t, "n_tp": tp, "n_tn": tn, "n_fp": fp, "n_fn": fn,
         "accuracy": _ratio(tp + tn, n),
         "tp": _ratio(tp, n), "tn": _ratio(tn, n), "fp": _ratio(fp, n), "fn": _ratio(fn, n),
         "sensitivity": _ratio(tp, n_g), "specificity": _ratio(tn, n_r),
         "fpr": _ratio(fp, n_r), "fnr": _ratio(fn, n_g),
         "precision": _ratio(tp, tp + fp), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
         "pred_ghost": _ratio(tp + fp, n), "pred_real": _ratio(tn + fn, n),
         "true_ghost": np.full(len(t), _ratio(n_g, n)[()]),
         "true_real": np.full(len(t), _ratio(n_r, n)[()])}
    m["youden_j"] = m["sensitivity"] + m["specificity"] - 1.0
    return m


def roc_curve(ghosts, reals):
    """Full ROC from sorted ghost and real scores, one point per distinct score:
    fpr, tpr ascending and the threshold t of each point (ghost when score > t;
    the last point, everything a ghost, has t = -inf)."""
    n_g, n_r = len(ghosts), len(reals)
    values = np.unique(np.concatenate([ghosts, reals]))[::-1]  # descending
    tpr = (n_g - np.searchsorted(ghosts, values, side="right")) / max(n_g, 1)
    fpr = (n_r - np.searchsorted(reals, values, side="right")) / max(n_r, 1)
    return (np.r_[fpr, 1.0], np.r_[tpr, 1.0], np.r_[values, -np.inf])


def rejection_at(ghosts, reals, efficiencies=EFFICIENCIES):
    """Ghost rejection (fraction of ghosts called ghost) at each real-track efficiency
    (fraction of real tracks kept, score <= t): the lowest t keeping at least that
    fraction of real tracks."""
    n_g, n_r = len(ghosts), len(reals)
    out = []
    for eff in efficiencies:
        if n_r == 0 or n_g == 0:
            out.append({"target_efficiency": eff, "threshold": math.nan,
                        "real_efficiency": math.nan, "ghost_rejection": math.nan})
            continue
        k = min(max(int(math.ceil(eff * n_r - 1e-9)), 1), n_r)
        t = float(reals[k - 1])
        kept = int(np.searchsorted(reals, t, side="right"))
        rejected = n_g - int(np.searchsorted(ghosts, t, side="right"))
        out.append({"target_efficiency": eff, "threshold": t,
                    "real_efficiency": kept / n_r, "ghost_rejection": rejected / n_g})
    return out


def analyse(scores, labels, thresholds, model_threshold=None):
    """Everything computed from the finite, labelled scores."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order]
    ghosts, reals = s[y], s[~y]
    table = _from_sorted(ghosts, reals, np.asarray(thresholds, dtype=np.float64))
    fpr, tpr, roc_t = roc_curve(ghosts, reals)
    res = {"n": len(s), "n_ghost": len(ghosts), "n_real": len(reals),
           "true_ghost": float(_ratio(len(ghosts), len(s))),
           "true_real": float(_ratio(len(reals), len(s))),
           "table": table, "roc": (fpr, tpr, roc_t), "auc": roc_auc(scores, labels),
           "rejection": rejection_at(ghosts, reals), "ghosts": ghosts, "reals": reals}
    for key in ("youden_j", "f1"):
        v = table[key]
        res[f"best_{key}"] = (_row(table, int(np.nanargmax(v)))
                              if np.isfinite(v).any() else None)
    j = tpr - fpr
    best = int(np.argmax(j))
    res["best_youden_j_any_cut"] = {"threshold": float(roc_t[best]), "youden_j": float(j[best]),
                                    "sensitivity": float(tpr[best]),
                                    "specificity": float(1 - fpr[best])}
    if model_threshold is not None:
        one = _from_sorted(ghosts, reals, np.asarray([float(model_threshold)]))
        res["model_threshold"] = _row(one, 0)
    return res


def _row(table, i):
    return {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in table.items()}


def overtraining(train_scores, train_labels, test_scores, test_labels):
    """Train vs test score distributions per class: two-sample KS test."""
    from scipy.stats import ks_2samp
    out = {}
    for name, want in (("ghost", True), ("real", False)):
        a = train_scores[train_labels == want]
        b = test_scores[test_labels == want]
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if len(a) and len(b):
            ks = ks_2samp(a, b)
            out[name] = {"ks_statistic": float(ks.statistic), "p_value": float(ks.pvalue),
                         "n_train": len(a), "n_test": len(b)}
        else:
            out[name] = {"ks_statistic": math.nan, "p_value": math.nan,
                         "n_train": len(a), "n_test": len(b)}
    return out


# ---------------------------------------------------------------------------
# report: table, csv, json
# ---------------------------------------------------------------------------

COLUMNS = [("threshold", "thresh"), ("accuracy", "acc"), ("tp", "TP"), ("tn", "TN"),
           ("fp", "FP"), ("fn", "FN"), ("sensitivity", "sens"), ("specificity", "spec"),
           ("fpr", "FPR"), ("fnr", "FNR"), ("precision", "prec"), ("f1", "F1"),
           ("youden_j", "J"), ("pred_ghost", "pred_g"), ("pred_real", "pred_r")]
CSV_COLUMNS = [k for k, _ in COLUMNS] + ["true_ghost", "true_real",
                                         "n_tp", "n_tn", "n_fp", "n_fn"]


def _fmt(v, width=7):
    if isinstance(v, (int, np.integer)):
        return f"{v:>{width}d}"
    return f"{'nan':>{width}}" if not np.isfinite(v) else f"{v:>{width}.4f}"


def format_table(table):
    lines = [" ".join(f"{h:>7}" for _, h in COLUMNS)]
    for i in range(len(table["threshold"])):
        lines.append(" ".join(_fmt(table[k][i]) for k, _ in COLUMNS))
    return "\n".join(lines)


def table_csv(table):
    lines = [",".join(CSV_COLUMNS)]
    for i in range(len(table["threshold"])):
        cells = []
        for k in CSV_COLUMNS:
            v = table[k][i]
            cells.append(str(int(v)) if isinstance(v, (int, np.integer))
                         else "nan" if not np.isfinite(v) else f"{float(v):.6g}")
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def json_clean(obj):
    """Plain JSON: numpy -> Python, NaN/inf -> null."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def print_summary(res, over):
    ng, nr = res["n_ghost"], res["n_real"]
    log(f"{res['n']:,} labelled tracks: {ng:,} ghosts ({res['true_ghost']:.2%}), "
        f"{nr:,} real ({res['true_real']:.2%}); ROC AUC {res['auc']:.4f}")
    log(format_table(res["table"]))
    for key, name in (("youden_j", "Youden's J"), ("f1", "F1")):
        b = res[f"best_{key}"]
        if b:
            log(f"best threshold by {name}: {b['threshold']:.2f} ({name} {b[key]:.4f}, "
                f"sensitivity {b['sensitivity']:.4f}, specificity {b['specificity']:.4f})")
    if "model_threshold" in res:
        b = res["model_threshold"]
        log(f"at the model's own threshold {b['threshold']:.3f}: accuracy "
            f"{b['accuracy']:.4f}, sensitivity {b['sensitivity']:.4f}, "
            f"specificity {b['specificity']:.4f}")
    for r in res["rejection"]:
        log(f"ghost rejection at {r['target_efficiency']:.1%} real-track efficiency: "
            f"{r['ghost_rejection']:.4f} (threshold {r['threshold']:.4f}, "
            f"efficiency {r['real_efficiency']:.4f})")
    if over:
        log("overtraining check (train vs test scores, KS test): " + ", ".join(
            f"{k} p = {v['p_value']:.3g}" for k, v in over.items()))


# ---------------------------------------------------------------------------
# plots: one figure each, files by default
# ---------------------------------------------------------------------------

THRESHOLD_AXIS = "threshold (ghost when probability > threshold)"
SCORE_AXIS = "ghost probability (model output)"
PER_BIN_AXIS = "fraction of the class per bin (0.01 wide)"


def _pyplot(show):
    import matplotlib
    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _downsample_roc(fpr, tpr, points=2000):
    """Indices of a few thousand ROC points, dense where either rate changes."""
    if len(fpr) <= 2 * points:
        return np.arange(len(fpr))
    grid = np.linspace(0.0, 1.0, points)
    idx = np.concatenate([np.searchsorted(fpr, grid), np.searchsorted(tpr, grid),
                          [0, len(fpr) - 1]])
    return np.unique(np.clip(idx, 0, len(fpr) - 1))


def make_plots(res, over, test_scores, test_labels, train, title, plots_dir, out, show):
    """Write every plot through `out` (AtomicOutputs); returns the figure names."""
    plt = _pyplot(show)
    with warnings.catch_warnings():  # e.g. a log axis over an empty class
        warnings.simplefilter("ignore")
        return _make_plots(plt, res, over, test_scores, test_labels, train, title,
                           plots_dir, out, show)


def _make_plots(plt, res, over, test_scores, test_labels, train, title, plots_dir, out,
                show):
    tab, thr = res["table"], res["table"]["threshold"]
    figures = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out.tmp(os.path.join(plots_dir, name)), dpi=100)
        figures.append(fig) if show else plt.close(fig)

    def decorate(ax, what, xlabel, ylabel, logy=False, loc="best"):
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{what}\n{title}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc=loc, fontsize=8)

    def vs_threshold(curves, name, what, ylabel, extra=None):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, label, style in curves:
            ax.plot(thr, tab[key], style, label=label, ms=4)
        if extra:
            extra(ax)
        decorate(ax, f"{what} vs threshold", THRESHOLD_AXIS, ylabel)
        save(fig, name)

    def mark_best(ax):
        for key, label, color in (("best_youden_j", "best Youden's J", "tab:green"),
                                  ("best_f1", "best F1", "tab:purple")):
            if res[key]:
                ax.axvline(res[key]["threshold"], color=color, ls=":",
                           label=f"{label} ({res[key]['threshold']:.2f})")

    vs_threshold([("accuracy", "accuracy", "o-")], "accuracy.png", "Accuracy",
                 "accuracy (fraction of tracks classified right)", mark_best)

    def true_lines(ax):
        ax.axhline(res["true_ghost"], color="tab:red", ls="--",
                   label=f"true ghost fraction ({res['true_ghost']:.3f})")
        ax.axhline(res["true_real"], color="tab:blue", ls="--",
                   label=f"true real fraction ({res['true_real']:.3f})")
    vs_threshold([("pred_ghost", "predicted ghost fraction", "o-r"),
                  ("pred_real", "predicted real fraction", "s-b")],
                 "ghost_real.png", "Predicted vs true ghost and real fractions",
                 "fraction of all tracks", true_lines)

    # confusion: fractions vs threshold, and the matrix at the best-J threshold
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5),
                                  gridspec_kw={"width_ratios": [1.6, 1]})
    for key, label, style in (("tp", "TP: ghost called ghost", "o-r"),
                              ("tn", "TN: real called real", "s-b"),
                              ("fp", "FP: real called ghost", "^-", ),
                              ("fn", "FN: ghost called real", "v-")):
        ax.plot(thr, tab[key], style, label=label, ms=4)
    ax.set_xlabel(THRESHOLD_AXIS)
    ax.set_ylabel("fraction of all tracks")
    ax.set_title("Confusion fractions vs threshold", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    best = res["best_youden_j"]
    if best:
        cells = np.array([[best["tp"], best["fn"]], [best["fp"], best["tn"]]])
        ax2.imshow(cells, cmap="Blues", vmin=0, vmax=1)
        for (i, k), v in np.ndenumerate(cells):
            ax2.text(k, i, f"{['TP', 'FN', 'FP', 'TN'][2 * i + k]}\n{v:.4f}", ha="center",
                     va="center", color="white" if v > 0.5 else "black")
        ax2.set_xticks([0, 1], ["called ghost", "called real"])
        ax2.set_yticks([0, 1], ["true ghost", "true real"])
        ax2.set_title(f"Confusion matrix at threshold {best['threshold']:.2f} "
                      "(best J)\nfractions of all tracks", fontsize=10)
    else:
        ax2.axis("off")
    fig.suptitle(title, fontsize=10)
    save(fig, "confusion.png")

    vs_threshold([("sensitivity", "sensitivity (TPR: ghosts called ghost)", "o-r"),
                  ("specificity", "specificity (TNR: real tracks kept)", "s-b"),
                  ("fnr", "false negative rate (ghosts kept)", "v--"),
                  ("fpr", "false positive rate (real tracks lost)", "^--")],
                 "ssfnfp.png", "Sensitivity, specificity, FNR and FPR", "rate")

    fpr, tpr, _ = res["roc"]
    keep = _downsample_roc(fpr, tpr)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot(fpr[keep], tpr[keep], "-", color="tab:blue",
            label=f"ROC, all {res['n']:,} tracks (AUC = {res['auc']:.4f})")
    ax.plot(tab["fpr"], tab["sensitivity"], "o", color="tab:orange", ms=4,
            label=f"the {len(thr)} thresholds")
    ax.plot([0, 1], [0, 1], ":", color="gray", label="random guess")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.005)
    decorate(ax, "ROC curve", "false positive rate (real tracks called ghost)",
             "true positive rate (ghosts called ghost)", loc="lower right")
    save(fig, "roc.png")

    bins = np.linspace(0.0, 1.0, 101)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arr, label, color in ((res["reals"], "real tracks", "tab:blue"),
                              (res["ghosts"], "ghosts", "tab:red")):
        counts, _ = np.histogram(arr, bins=bins)
        ax.stairs(counts / max(len(arr), 1), bins, color=color, lw=1.5,
                  label=f"{label} ({len(arr):,})")
    decorate(ax, "Score distributions", SCORE_AXIS, PER_BIN_AXIS, logy=True)
    save(fig, "scores.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot((1 - fpr)[keep], tpr[keep], "-", color="tab:blue", label="all cuts")
    for r in res["rejection"]:
        if np.isfinite(r["ghost_rejection"]):
            ax.plot(r["real_efficiency"], r["ghost_rejection"], "o", ms=6,
                    label=f"{r['target_efficiency']:.1%} efficiency: rejection "
                          f"{r['ghost_rejection']:.3f} (p > {r['threshold']:.3f})")
    ax.set_xlim(0.5, 1.002), ax.set_ylim(0, 1.005)
    decorate(ax, "Ghost rejection vs real-track efficiency",
             "real-track efficiency (fraction of real tracks kept)",
             "ghost rejection (fraction of ghosts removed)", loc="lower left")
    save(fig, "rejection.png")

    if over and train is not None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        centers = 0.5 * (bins[1:] + bins[:-1])
        train_scores, train_labels = train
        for name, want, color in (("real", False, "tab:blue"), ("ghost", True, "tab:red")):
            a = train_scores[(train_labels == want) & np.isfinite(train_scores)]
            b = test_scores[(test_labels == want) & np.isfinite(test_scores)]
            ca, _ = np.histogram(a, bins=bins)
            cb, _ = np.histogram(b, bins=bins)
            ax.stairs(ca / max(len(a), 1), bins, color=color, fill=True, alpha=0.25,
                      label=f"{name}, train ({len(a):,})")
            ax.errorbar(centers, cb / max(len(b), 1), yerr=np.sqrt(cb) / max(len(b), 1),
                        fmt="o", ms=3, color=color,
                        label=f"{name}, test ({len(b):,}); KS p = {over[name]['p_value']:.3g}")
        decorate(ax, "Overtraining check: train vs test scores", SCORE_AXIS, PER_BIN_AXIS,
                 logy=True)
        save(fig, "overtraining.png")
    return figures


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    clock = Stopwatch()
    np.random.seed(args.seed)

    model = load_model_file(args)
    source = describe_source(args.filename)
    settings = resolve_settings(args, model, source)
    names = settings["features"]
    log(f"model {args.model} ({model['kind']}"
        f"{', INT8' if model['int8'] else ''}"
        f"{', no metadata' if not model['has_metadata'] else ''}): "
        f"track {settings['track'] or '?'}, network "
        f"{'?' if settings['network'] is None else settings['network']}, "
        f"{len(names)} features {','.join(names)}")

    read_clock = Stopwatch()
    data, labels, train = read_input(args, source, names)
    if len(data) == 0:
        raise GhostError(f"{args.filename} holds no tracks")
    finite = np.isfinite(data).all(axis=1)  # before normalization clips inf into [0, 1]
    log(f"read {len(data):,} tracks from {args.filename} in {read_clock():.1f} s"
        + ("" if labels is not None else f" (no {LABEL!r} branch: unlabelled)"))
    warn_unfilled(args, source, settings, data)
    if settings["normalize"]:
        rec = settings["normalization"]
        data = normalize(data, rec["offsets"], rec["scales"])
        if train is not None:
            train = (normalize(train[0], rec["offsets"], rec["scales"]), train[1])
        log(f"normalized with the transform recorded in {settings['normalization_origin']}")

    score, desc = make_scorer(args, model)
    scores, seconds = score_tracks(score, data, finite, desc)
    n_bad = int((~finite).sum())
    if n_bad:
        log(f"{n_bad:,} tracks have a non-finite feature: their probability is NaN "
            f"and they are left out of the metrics")

    res = over = None
    if labels is None:
        log(f"metrics need labels: {args.filename} has no {LABEL!r} branch, so only the "
            "probabilities are written" + ("" if args.output else " (none asked: --output)"))
    elif not finite.any():
        log("no track has all its features finite: nothing to analyse")
    else:
        n_ghost = int(labels[finite].sum())
        if n_ghost in (0, int(finite.sum())):
            log(f"note: only {'real tracks' if n_ghost == 0 else 'ghosts'} among the scored "
                "tracks: the rates of the missing class, ROC AUC and ghost rejection are "
                "undefined (nan)")
        try:
            own = float(model["config"].get("threshold"))
        except (TypeError, ValueError):
            own = None
        res = analyse(scores[finite], labels[finite], args.thresholds,
                      own if own is not None and 0.0 <= own <= 1.0 else None)
        if train is not None:
            with contextlib.redirect_stdout(io.StringIO()):
                train_scores, _ = score_tracks(score, train[0],
                                               np.isfinite(train[0]).all(axis=1), desc)
            over = overtraining(train_scores, train[1], scores, labels)
            train = (train_scores, train[1])
        print_summary(res, over)

    with AtomicOutputs() as out:
        if args.output:
            if args.output.lower().endswith(".npy"):
                out.save_npy(args.output, scores.astype(np.float32))
            else:
                write_root(out.tmp(args.output), "ghost_probability",
                           {"ghost_prob": np.ascontiguousarray(scores, np.float32)},
                           shown=args.output)
        figures = []
        if res is not None:
            prepare_folder(args.plots_dir, "--plots-dir")
            metrics = {
                "input": os.path.abspath(args.filename), "input_kind": source["kind"],
                "model": os.path.abspath(args.model), "model_kind": model["kind"],
                "int8": model["int8"], "scoring": desc, "track": settings["track"],
                "features": names, "network": settings["network"],
                "normalized_by_inference": settings["normalize"],
                "normalization_origin": settings["normalization_origin"],
                "tracks": len(scores), "tracks_nonfinite": n_bad,
                "tracks_labelled": res["n"], "ghosts": res["n_ghost"], "reals": res["n_real"],
                "true_ghost_fraction": res["true_ghost"],
                "true_real_fraction": res["true_real"], "roc_auc": res["auc"],
                "classification": "ghost when probability > threshold",
                "thresholds": [_row(res["table"], i) for i in range(len(args.thresholds))],
                "best_youden_j": res["best_youden_j"], "best_f1": res["best_f1"],
                "best_youden_j_any_cut": res["best_youden_j_any_cut"],
                "model_threshold": res.get("model_threshold"),
                "ghost_rejection": res["rejection"], "overtraining": over,
                "scoring_seconds": seconds,
                "tracks_per_second": len(scores) / seconds if seconds > 0 else None,
            }
            out.save_json(os.path.join(args.plots_dir, "metrics.json"), json_clean(metrics))
            out.save_bytes(os.path.join(args.plots_dir, "thresholds.csv"),
                           table_csv(res["table"]).encode())
            title = (f"{os.path.basename(args.model)} on {os.path.basename(args.filename)}"
                     f" ({res['n']:,} tracks)")
            if not args.no_plots:
                figures = make_plots(res, over, scores, labels, train, title,
                                     args.plots_dir, out, args.show)
    n_plots = 0 if args.no_plots else len(PLOTS) + bool(over)
    written = ([args.output] if args.output else []) + (
        [f"{args.plots_dir}/ ({n_plots} plots, thresholds.csv, metrics.json)"]
        if res is not None else [])
    log(f"wrote {', '.join(written) if written else 'nothing'}; "
        f"total {clock():.1f} s")
    if figures:
        _pyplot(True).show()
    return 0


if __name__ == "__main__":
    run_cli(main)
