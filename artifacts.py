"""The model files that training.py writes and inference.py reads.

    ghost_model.pth              the state dict (torch.load(..., weights_only=True))
    ghost_model_config.pkl/.json the SavedConfig record, plain data only
    ghost_model.onnx             one self-contained file; the record in its metadata
    ghost_model.hpp              the C++ header (cpp_export.py)

torch and onnx (and models.py, which imports torch) are imported inside the
functions that need them.
"""
import contextlib
import io
import json
import os
import pickle
import warnings
from dataclasses import dataclass, field, fields, replace

import numpy as np

from architecture import ModelConfig
from cpp_export import cpp_identifier, export_header
from derived import extend
from metrics import threshold_at
from records import check_fields, in_range, is_distinct_names, is_real, is_text
from trainer import FIELD_TYPES as TRAINING_FIELD_TYPES
from trainer import TrainSettings
from utils import GhostError, one_line, plain

ARTIFACT = "ghost_model"
# A model's files, {stem}{suffix} -> what each holds: what save_model_files writes and
# training.py's --help lists
MODEL_FILES = {
    ".pth": "the state_dict (torch.load(..., weights_only=True))",
    "_config.pkl": "the configuration as plain data: architecture, training, working point, "
                   "metrics, provenance",
    "_config.json": "the same record as JSON",
    ".onnx": "the model in one file, input `features`, output `probabilities`; its "
             "metadata describes it",
    ".hpp": "the model as header-only C++ (ghost_probability(const float* features))",
}
INPUT_NAME, OUTPUT_NAME = "features", "probabilities"
METADATA_KEY = "ghost_tracks_config"  # the whole record, as JSON: what the toolkit reads
TRAINING_KEYS = tuple(f.name for f in fields(TrainSettings))  # stored flat in the record


def _ranges(v):
    return isinstance(v, dict) and all(
        isinstance(r, list) and len(r) == 2 and all(map(is_real, r)) and r[0] <= r[1]
        for r in v.values())


def _working_point(v):
    return isinstance(v, dict) and in_range(0, 1, True, True)(v.get("efficiency")) and \
        in_range(0, 1)(v.get("threshold"))


# What each field of a saved record must hold beside the architecture (null: not
# recorded); architecture.FIELD_TYPES checks the architecture's own, and
# trainer.FIELD_TYPES the training settings'.
FIELD_TYPES = {
    "track": (is_text, "a string"),
    "features": (is_distinct_names, "a list of distinct branch names"),
    "threshold": (in_range(0, 1), "a number in [0, 1]"),
    **TRAINING_FIELD_TYPES,
    "metrics": (lambda v: isinstance(v, dict), "an object"),
    "working_point": (_working_point, '{"efficiency": e in (0, 1), "threshold": t in [0, 1]}'),
    "training_prior": (in_range(0, 1, True, True), "a number in (0, 1)"),
    "ghost_fraction": (in_range(0, 1), "a number in [0, 1]"),
    "training_ranges": (_ranges, "an object {feature: [min, max]}"),
    "provenance": (lambda v: isinstance(v, dict), "an object"),
}


@dataclass
class SavedConfig:
    """A trained model's record: its architecture (ModelConfig) and, beside it, the
    features it reads, its threshold, the training settings and test metrics.
    Stored flat, as plain data, so configs of every version of the toolkit read back.
    Any part may be missing in a config written by hand or another tool."""
    model: ModelConfig = None
    track: str = None
    features: list = None
    threshold: float = None
    training: TrainSettings = None  # None: the record holds no training setting
    metrics: dict = field(default_factory=dict)
    # the model's own working point: {"efficiency": 0.99, "threshold": t}, t found on
    # the validation split (the efficiency of real tracks it keeps there); training.py
    # writes the same t as `threshold`
    working_point: dict = None
    # the class mix the raw output is calibrated to (0.5: both classes weighed the
    # same in training) and the training input's own ghost fraction
    training_prior: float = None
    ghost_fraction: float = None
    # {feature: [min, max]} of the raw train split, for inference's guard rails
    training_ranges: dict = None
    provenance: dict = None  # provenance.record: toolkit, libraries, date, dataset, search

    EXTRA = ("working_point", "training_prior", "ghost_fraction", "training_ranges",
             "provenance")

    def cut(self):
        """(the model's threshold, the real-track efficiency it keeps on the validation
        split or None): the working point's where one is recorded (configs of older
        toolkits carry a `threshold` of 0.5 beside it, which it replaces), else the
        recorded threshold; (None, None) where neither is."""
        if self.working_point:
            return float(self.working_point["threshold"]), float(self.working_point["efficiency"])
        return (None if self.threshold is None else float(self.threshold)), None

    def to_dict(self):
        d = {**(self.model.to_dict() if self.model else {}),
             **(self.training.to_dict() if self.training else {}),
             "track": self.track, "features": self.features, "threshold": self.threshold,
             **{k: getattr(self, k) for k in self.EXTRA if getattr(self, k) is not None}}
        if self.metrics:
            d["metrics"] = self.metrics
        return plain(d)

    @classmethod
    def from_dict(cls, d):
        """Every field's type checked: ValueError naming the field that is malformed
        (the architecture part too, where it is present)."""
        check_fields(d, FIELD_TYPES)
        has_model = "n_features" in d and ("hidden" in d or "l0" in d)
        model = ModelConfig.from_dict(d) if has_model else None
        features = d.get("features") or None
        if model is not None and features is not None and len(features) != model.n_features:
            raise ValueError(f"the record lists {len(features)} features for a network of "
                             f"{model.n_features} inputs")
        return cls(model=model, track=d.get("track") or None, features=features,
                   threshold=d.get("threshold"),
                   training=(TrainSettings.from_dict(d)
                             if any(k in d for k in TRAINING_KEYS) else None),
                   metrics=d.get("metrics") or {},
                   **{k: d.get(k) for k in cls.EXTRA})


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings and numbers; refuses any class."""

    def find_class(self, module, name):
        raise GhostError(f"refusing to unpickle {module}.{name}: configs must be plain data")


def load_config(path):
    """A saved config from .pkl (plain data only) or .json -> dict."""
    if not os.path.isfile(path):
        raise GhostError(f"config file {path} does not exist")
    try:
        with open(path, "rb") as f:
            if path.endswith(".json"):
                config = json.load(f)
            else:
                config = _PlainUnpickler(f).load()
    except GhostError as e:
        raise GhostError(f"config {path}: {e}")
    except Exception as e:
        raise GhostError(f"cannot read config {path}: {one_line(e)}")
    if not isinstance(config, dict):
        raise GhostError(f"config {path} is a {type(config).__name__}, not a dict")
    return config


def state_problem(expected, state):
    """What keeps `state` (a .pth state dict) from loading into a model whose own
    state dict is `expected`, in words, or None: missing or unexpected names,
    shapes, integer tensors where weights are floats."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        return "; ".join(f"{what} {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                         for what, keys in (("missing", missing), ("unexpected", extra)) if keys)
    for key, want in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            return f"{key} has shape {list(got.shape)} where the model needs {list(want.shape)}"
        if got.is_floating_point() != want.is_floating_point() or (
                not want.is_floating_point() and got.dtype != want.dtype):
            return f"{key} holds {got.dtype} where the model needs {want.dtype}"
    return None


def save_model_files(out, folder, stem, model, saved):
    """Every file of MODEL_FILES, {stem}.pth, {stem}_config.pkl/.json, {stem}.onnx and
    the C++ header {stem}.hpp, through `out` (outputs.AtomicOutputs)."""
    import torch
    record = saved.to_dict()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    writers = {
        ".pth": lambda path: out.save_bytes(path, buffer.getvalue()),
        "_config.pkl": lambda path: out.save_bytes(path, pickle.dumps(record, protocol=4)),
        "_config.json": lambda path: out.save_json(path, record),
        ".onnx": lambda path: out.save_bytes(path, onnx_bytes(model, saved)),
        ".hpp": lambda path: out.save_bytes(
            path, export_header(model, saved, namespace=stem).encode()),
    }
    for suffix in MODEL_FILES:
        writers[suffix](os.path.join(folder, f"{stem}{suffix}"))


def onnx_bytes(model, saved):
    """The model as ONNX bytes: input `features` [batch, n_features] float32, output
    `probabilities` [batch, 1], dynamic batch axis, weights inside the file, and the
    record in the metadata.

    Both through the TorchScript exporter: the same nodes (Gemm, the activations,
    the normalization's and derived inputs' arithmetic) as torch.export's, in 0.06 s
    instead of torch.export's 3.6 s the first time in a process (when the float
    models moved to it, their outputs were checked equal to torch.export's files,
    bit for bit, for networks 0 and 1, with and without derived inputs).  Float
    models at opset 20, their constants as initializers (as torch.export writes
    them); INT8 models at opset 17, where fake quantization becomes
    QuantizeLinear/DequantizeLinear pairs (torch.export has no kernel for it)."""
    import onnx
    import torch

    from models import n_inputs
    model = model.cpu().eval()
    example = torch.zeros(2, n_inputs(model))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, dynamo=False,
                          opset_version=17 if model.int8 else 20,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    if not model.int8:
        constants_as_initializers(proto.graph)
    del proto.metadata_props[:]
    for node in proto.graph.node:  # the exporter's stack traces hold this machine's paths
        del node.metadata_props[:]
        node.doc_string = ""
    for key, value in onnx_metadata(saved).items():
        proto.metadata_props.add(key=key, value=value)
    prov = saved.provenance or {}
    proto.producer_name = "ghost-tracks"
    proto.producer_version = " ".join(
        str(prov[k]) for k in ("toolkit", "commit") if k in prov) or "unknown"
    proto.doc_string = (f"Ghost-track classifier ({saved.track or '?'} tracks), created "
                        f"{prov.get('created', '?')}; the whole record is in the metadata "
                        f"key {METADATA_KEY}")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def constants_as_initializers(graph):
    """The graph's Constant nodes as initializers of the same name, as torch.export
    writes them: onnx2torch reads no opset-19 Constant."""
    from onnx import TensorProto
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            tensor = TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def onnx_metadata(saved):
    """METADATA_KEY holds the whole record, which is what this toolkit reads back.
    The loose keys beside it are for C++ deployments, which read a feature list or the
    threshold from an InferenceSession's metadata without a JSON parser: `threshold`
    is the model's one threshold (SavedConfig.cut: its working point's), and
    `working_point_efficiency` the fraction of the validation split's real tracks it
    keeps; `derived` the derived inputs the graph computes from the features and
    appends to them, one 'name := expression' (fitted) a line."""
    record = saved.to_dict()
    model = saved.model
    threshold, efficiency = saved.cut()
    return {
        METADATA_KEY: json.dumps(record),
        "track": str(saved.track or ""),
        "features": ",".join(saved.features or []),
        "derived": "\n".join(f"{d.name} := {d.fit or d.expression}"
                             for d in (model.derived if model else ())),
        "network": str(model.network if model else ""),
        "threshold": "" if threshold is None else repr(threshold),
        "working_point_efficiency": "" if efficiency is None else repr(efficiency),
        "int8": str(bool(model and model.int8)).lower(),
        "normalization": json.dumps(record.get("normalization")),
        "producer": "ghost-tracks",
        "provenance": json.dumps(saved.provenance),
    }


def onnx_record(proto):
    """The record stored in an ONNX model's metadata by onnx_bytes, or {} where
    there is none; ValueError where it is there but no JSON object."""
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        return {}
    try:
        record = json.loads(props[METADATA_KEY])
    except (ValueError, RecursionError) as e:
        raise ValueError(f"its metadata {METADATA_KEY} is not JSON ({one_line(e)})")
    if not isinstance(record, dict):
        raise ValueError(f"its metadata {METADATA_KEY} holds a JSON "
                         f"{type(record).__name__}, not an object")
    return record


def model_from_onnx(proto, saved):
    """The models.GhostNet an ONNX file of this toolkit holds (eval mode; INT8 frozen
    at the scales and zero points of its QuantizeLinear nodes), from its initializers
    and constants.  ValueError if the file is not one of this toolkit's."""
    import torch
    from onnx import numpy_helper

    from models import build_model, quant_name
    if saved.model is None:
        raise ValueError("its metadata records no architecture of this toolkit")
    config = saved.model
    model = build_model(replace(config, int8=False))
    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t)
                   for n in proto.graph.node if n.op_type == "Constant"})
    nodes = {n.name: n for n in proto.graph.node}
    state = model.state_dict()
    for key in state:
        if key in values:
            state[key] = torch.from_numpy(np.array(values[key]))
    if config.int8:
        for k in range(len(model.linears)):  # the bias: a constant on the quantized grid
            gemm = nodes.get(f"/fc{k}/Gemm")
            if gemm is None or len(gemm.input) < 3 or gemm.input[2] not in values:
                raise ValueError(f"no Gemm /fc{k}/Gemm with a constant bias")
            state[f"fc{k}.bias"] = torch.from_numpy(np.array(values[gemm.input[2]]))
    missing = [k for k in state if k.startswith(("fc", "norm.")) and
               k not in values and not k.endswith(".bias")]
    if missing:
        raise ValueError(f"it lacks the weights {', '.join(missing)}")
    model.load_state_dict(state)
    if not config.int8:
        return model.eval()
    model.set_int8(True).eval()
    for k, (fc, quant) in enumerate(zip(model.linears, model.quants)):
        node, weight = nodes.get(f"/{quant_name(k)}/QuantizeLinear"), nodes.get(
            f"/fc{k}/QuantizeLinear")
        if node is None or weight is None:
            raise ValueError(f"no QuantizeLinear for layer {k}'s input or weight")
        quant.frozen = (float(values[node.input[1]]), int(values[node.input[2]]), 0, 255)
        fc.frozen = (float(values[weight.input[1]]), state[f"fc{k}.bias"].clone())
    return model


def ghost_net(model, what):
    """The models.GhostNet of a loaded .pth or .onnx file of this toolkit
    (scoring.LoadedModel); a one-line error naming the option `what` for any other."""
    if model.saved.model is None:
        raise GhostError(f"{what}: {model.path} records no architecture of this toolkit")
    try:
        return model.module if model.kind == "pth" else model_from_onnx(model.proto,
                                                                        model.saved)
    except ValueError as e:
        raise GhostError(f"{what}: {model.path} is not a model this toolkit wrote: {e}")


def model_header(model, path):
    """inference.py --export-cpp: (the header training.py --save writes, as bytes, and
    its C++ namespace, from the file name `path`) of a loaded .pth or .onnx file of
    this toolkit (scoring.LoadedModel); a one-line error for any other model."""
    module = ghost_net(model, "--export-cpp")
    namespace = cpp_identifier(os.path.splitext(os.path.basename(path))[0])
    return export_header(module, model.saved, namespace).encode(), namespace


def inference_record(meta, splits, scores, efficiency):
    """What a model records beside its architecture for inference: its threshold, the
    working point's (the threshold keeping `efficiency` of the validation split's real
    tracks: the model's one threshold, in every file), the class mix its output is
    calibrated to, and the training ranges of the raw features and the derived inputs
    (none for a normalized dataset)."""
    threshold = threshold_at(scores["valid"], splits["valid"][1].ravel() > 0.5, efficiency)
    train = extend(splits["train"][0], meta.derived, meta.features)
    ranges = None if meta.normalized else {
        name: [float(train[:, j].min()), float(train[:, j].max())]
        for j, name in enumerate(meta.inputs())}
    return {"threshold": threshold,
            "working_point": {"efficiency": efficiency, "threshold": threshold},
            "training_prior": 0.5, "ghost_fraction": meta.ghost_fraction,
            "training_ranges": ranges}
