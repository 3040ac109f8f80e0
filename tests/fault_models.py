"""The fault corpus' models (test_faults.py runs them): corrupted model configs,
.pth state dicts and .onnx models, each case a builder build(base, workdir) -> the
path to give inference.py, and what the error must name."""
import json
import os
import pickle

import numpy as np

from fault_inputs import DERIVED_RECORD_CASES, N_INPUTS, dump, put, put_derived, put_in
from faultlib import flipped, truncated

# ---------------------------------------------------------------------------
# model configs, .pth state dicts, .onnx models
# ---------------------------------------------------------------------------

def _config(change, suffix=".pkl"):
    def build(b, w):
        with open(b.pkl, "rb") as f:
            config = pickle.load(f)
        config = change(config) or config
        path = f"{w}/bad{suffix}"
        if suffix == ".pkl":
            with open(path, "wb") as f:
                pickle.dump(config, f)
        else:
            with open(path, "w") as f:
                json.dump(config, f)
        return path
    return build


def _config_bytes(fn, suffix=".pkl"):
    def build(b, w):
        src = b.pkl if suffix == ".pkl" else b.config_json
        return fn(src, f"{w}/bad{suffix}")
    return build


def _evil(b, w):
    with open(f"{w}/bad.pkl", "wb") as f:
        f.write(b"cos\nsystem\n(S'touch pwned'\ntR.")
    return f"{w}/bad.pkl"


def _norm_short(c):
    c["normalization"]["offsets"] = c["normalization"]["offsets"][:12]


CONFIG_CASES = {  # name: (build(b, w) -> config path, needles)
    "pkl_empty": (_config_bytes(lambda s, d: truncated(s, d, 0)), []),
    "pkl_truncated": (_config_bytes(lambda s, d: truncated(s, d, os.path.getsize(s) // 2)),
                      []),
    "pkl_flipped": (_config_bytes(lambda s, d: flipped(s, d, 0, 8)), []),
    "pkl_code": (_evil, ["unpickle"]),
    "pkl_a_list": (_config(lambda c: [c]), ["dict"]),
    "json_truncated": (_config_bytes(lambda s, d: truncated(s, d, os.path.getsize(s) // 2),
                                     ".json"), []),
    "json_flipped": (_config_bytes(lambda s, d: flipped(s, d, 0, 8), ".json"), []),
    "json_a_string": (_config(lambda c: "ghost_model", ".json"), ["dict"]),
    "n_features_a_string": (_config(put("n_features", "thirteen")), ["n_features"]),
    "n_features_12": (_config(put("n_features", 12)), []),
    "n_features_float": (_config(put("n_features", 13.5)), ["n_features"]),
    "hidden_zero": (_config(put("hidden", [0])), ["hidden"]),
    "hidden_a_string": (_config(put("hidden", "8")), ["hidden"]),
    "hidden_float": (_config(put("hidden", [8.5])), ["hidden"]),
    "activation_unknown": (_config(put("activation", "swish")), ["activation"]),
    "activation_a_number": (_config(put("activation", 3)), ["activation"]),
    "network_5": (_config(put("network", 5)), ["network"]),
    "network_a_string": (_config(put("network", "1")), ["network"]),
    "int8_a_string": (_config(put("int8", "no")), ["int8"]),
    "inputs_unknown": (_config(put("inputs", "zscore")), ["inputs"]),
    "normalization_short": (_config(_norm_short), ["normalization"]),
    "standardization_negative_std": (_config(put_in("standardization", "stds", [-1.0] * 13)),
                                     ["standardization"]),
    "normalization_infinite_json": (_config(put_in("normalization", "offsets",
                                                    [float("inf")] * 13), ".json"),
                                    ["normalization"]),
    "normalization_scale_1e39": (_config(put_in("normalization", "scales", [1e39] * 13)),
                                 ["normalization"]),
    "threshold_nan_json": (_config(put("threshold", float("nan")), ".json"), ["threshold"]),
    "features_a_string": (_config(put("features", "best_pt")), ["features"]),
    "track_a_number": (_config(put("track", 7)), ["track"]),
    "threshold_a_string": (_config(put("threshold", "0.5")), ["threshold"]),
    "threshold_2": (_config(put("threshold", 2.0)), ["threshold"]),
    "working_point_a_list": (_config(put("working_point", [0.99])), ["working_point"]),
    "training_prior_1": (_config(put("training_prior", 1.0)), ["training_prior"]),
    "training_ranges_a_list": (_config(put("training_ranges", [0, 1])), ["training_ranges"]),
}


CONFIG_CASES.update({
    **{name: (_config(change), needles) for name, (change, needles) in
       DERIVED_RECORD_CASES.items()},
    "derived_unknown_branch_json": (_config(put_derived("chi2_ndof", "expression",
                                                        "chi3 / ndof"), ".json"), ["chi3"]),
    "derived_on_network_0": (_config(put("network", 0)), ["derived", "network 1"]),
    "derived_without_features": (_config(put("features", None)), ["derived", "features"]),
    "derived_dropped": (_config(put("derived", [])),
                        ["normalization", f"{N_INPUTS} offsets for 13 inputs"]),
})


def _state(change):
    def build(b, w):
        import torch
        state = torch.load(b.pth, weights_only=True)
        state = change(state) or state
        torch.save(state, f"{w}/bad.pth")
        return f"{w}/bad.pth"
    return build


def _pth_bytes(fn):
    return lambda b, w: fn(b.pth, f"{w}/bad.pth")


def _first_weight(state):
    return next(k for k, v in state.items() if v.dim() == 2)


def _drop_weight(state):
    del state[_first_weight(state)]


def _transpose_weight(state):
    key = _first_weight(state)
    state[key] = state[key].t().contiguous()


def _nan_weight(state):
    state[_first_weight(state)][0, 0] = float("nan")


def _inf_weight(state):
    state[_first_weight(state)][0, 0] = float("-inf")


def _int_weights(state):
    key = _first_weight(state)
    state[key] = state[key].to(dtype=__import__("torch").int64)


def _module(b, w):
    import torch
    torch.save(torch.nn.Linear(13, 1), f"{w}/bad.pth")
    return f"{w}/bad.pth"


PTH_CASES = {  # name: (build(b, w) -> .pth path, needles)
    "empty": (_pth_bytes(lambda s, d: truncated(s, d, 0)), []),
    "truncated_10": (_pth_bytes(lambda s, d: truncated(s, d, 10)), []),
    "truncated_half": (_pth_bytes(lambda s, d: truncated(s, d, os.path.getsize(s) // 2)), []),
    "truncated_end": (_pth_bytes(lambda s, d: truncated(s, d, -10)), []),
    "flipped_start": (_pth_bytes(lambda s, d: flipped(s, d, 0, 8)), []),
    "flipped_weights": (_pth_bytes(lambda s, d: flipped(s, d, os.path.getsize(s) // 2)),
                        ["CRC"]),
    "flipped_directory": (_pth_bytes(lambda s, d: flipped(s, d, -60, 30)), []),
    "text_file": (_pth_bytes(lambda s, d: dump("weights\n")(s, d) or d), []),
    "a_module": (_module, []),
    "a_list": (_state(lambda s: list(s.values())), ["state dict"]),
    "missing_key": (_state(_drop_weight), []),
    "extra_key": (_state(lambda s: s.update({"extra.weight": s[_first_weight(s)]})), []),
    "wrong_shape": (_state(_transpose_weight), []),
    "nan_weight": (_state(_nan_weight), ["finite"]),
    "inf_weight": (_state(_inf_weight), ["finite"]),
    "integer_weights": (_state(_int_weights), []),
}


def _proto(change):
    def build(b, w):
        import onnx
        proto = onnx.load(b.onnx)
        change(proto)
        with open(f"{w}/bad.onnx", "wb") as f:
            f.write(proto.SerializeToString())
        return f"{w}/bad.onnx"
    return build


def _onnx_bytes(fn):
    return lambda b, w: fn(b.onnx, f"{w}/bad.onnx")


def _record(change):
    def edit(proto):
        from artifacts import METADATA_KEY
        for prop in proto.metadata_props:
            if prop.key == METADATA_KEY:
                prop.value = change(json.loads(prop.value))
    return edit


def _second_input(proto):
    import onnx
    proto.graph.input.append(onnx.helper.make_tensor_value_info("extra", 1, ["batch", 2]))


def _input_type(elem):
    def edit(proto):
        proto.graph.input[0].type.tensor_type.elem_type = elem
    return edit


def _input_rank3(proto):
    proto.graph.input[0].type.tensor_type.shape.dim.add().dim_value = 1


def _output_width(proto):
    proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value = 2


def _input_width(proto):
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 12


def _nan_initializer(proto):
    import onnx
    from onnx import numpy_helper
    t = next(t for t in proto.graph.initializer if len(t.dims) == 2)
    array = numpy_helper.to_array(t).copy()
    array.flat[0] = np.nan
    t.CopyFrom(numpy_helper.from_array(array, t.name))
    assert onnx


def _dangling(proto):
    proto.graph.node[0].input[0] = "nowhere"


def _no_output(proto):
    del proto.graph.output[:]


ONNX_CASES = {  # name: (build(b, w) -> .onnx path, needles)
    "empty": (_onnx_bytes(lambda s, d: truncated(s, d, 0)), []),
    "truncated_10": (_onnx_bytes(lambda s, d: truncated(s, d, 10)), []),
    "truncated_half": (_onnx_bytes(lambda s, d: truncated(s, d, os.path.getsize(s) // 2)), []),
    "truncated_end": (_onnx_bytes(lambda s, d: truncated(s, d, -10)), []),
    "flipped_start": (_onnx_bytes(lambda s, d: flipped(s, d, 0, 8)), []),
    "text_file": (_onnx_bytes(lambda s, d: dump("not a model\n")(s, d) or d), []),
    "second_input": (_proto(_second_input), ["input"]),
    "input_int64": (_proto(_input_type(7)), ["float"]),
    "input_rank_3": (_proto(_input_rank3), ["dimensions"]),
    "input_12_wide": (_proto(_input_width), ["12"]),
    "output_2_wide": (_proto(_output_width), ["output"]),
    "no_output": (_proto(_no_output), []),
    "dangling_node_input": (_proto(_dangling), []),
    "nan_weight": (_proto(_nan_initializer), ["finite"]),
    "record_not_json": (_proto(_record(lambda r: "{not json")), ["metadata"]),
    "record_a_list": (_proto(_record(lambda r: json.dumps([r]))), ["metadata"]),
    "record_hidden_a_string": (_proto(_record(lambda r: json.dumps({**r, "hidden": "x"}))),
                               ["hidden"]),
    "record_n_features_12": (_proto(_record(lambda r: json.dumps({**r, "n_features": 12}))),
                             ["12"]),
    "record_features_numbers": (_proto(_record(lambda r: json.dumps(
        {**r, "features": list(range(13))}))), ["features"]),
    "record_threshold_a_string": (_proto(_record(lambda r: json.dumps(
        {**r, "threshold": "high"}))), ["threshold"]),
}
