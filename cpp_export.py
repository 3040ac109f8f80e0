"""The model as C++ source: one header-only file that a trigger developer compiles
in (Allen evaluates networks this small as plain arithmetic with the weights
compiled in).  It holds the input transform and scaling constants, the weights and
biases as constexpr arrays, the feature names in order, and one inline function
`float ghost_probability(const float* features)`, __host__ __device__ under CUDA.
The derived inputs (derived.py) it computes from the raw features first, in float32
in the order written, as the ONNX graph does (measured: the same agreement with
onnxruntime as computing them in the float header's double), and appends them.

The float header computes what the ONNX graph computes (to float rounding).  The
INT8 header follows the quantized arithmetic as onnxruntime runs the INT8 ONNX file:
inputs quantized as QuantizeLinear does (x / scale, clamp, round half to even), the
layers as _int8_layers says, and the last layer's logit as a float.  Its integer
codes are onnxruntime's but where onnxruntime's vectorized log (network 1's
standardized inputs) or activation differs from the C library's in the last bit and
that moves x / scale across a rounding boundary: about 1 track in 10^5, one code of
one input (README, "What the headers compute"; tests/test_cpp_export.py measures it).
"""
import datetime
import re

import numpy as np

from architecture import ACTIVATIONS
from derived import walk
from features import Standardize
from provenance import comment_lines


def _f(v):
    """A float32 as a C++ literal that parses back to the same float."""
    v = np.float32(v)
    if not np.isfinite(v):
        raise ValueError(f"non-finite constant {v}")
    return f"{float(v)!r}f".replace("inf", "INFINITY")


def _array(name, values, ctype="float"):
    values = np.asarray(values)
    fmt = _f if ctype == "float" else (lambda v: str(int(v)))
    if values.ndim == 1:
        body = ", ".join(fmt(v) for v in values)
        return f"    static constexpr {ctype} {name}[{len(values)}] = {{{body}}};"
    rows = ",\n        ".join("{" + ", ".join(fmt(v) for v in row) + "}" for row in values)
    return (f"    static constexpr {ctype} {name}[{values.shape[0]}][{values.shape[1]}] = {{\n"
            f"        {rows}}};")


class _CppOps:
    """derived.walk's meaning as C++ float expressions over `features` (branch name
    -> index): every operation in float32, in the order written, as the ONNX graph
    (fully parenthesized; min/max NaN when either side is NaN or infinite, as
    derived.ArrayOps; products through detail::mul, which CUDA may not contract into
    a fused multiply-add)."""

    def __init__(self, index):
        self.index = index

    def num(self, v):
        return f"({_f(v)})"

    def var(self, name):
        return f"features[{self.index[name]}]"

    def neg(self, a):
        return f"(-{a})"

    def __getattr__(self, kind):
        symbol = {"add": "+", "sub": "-", "div": "/"}.get(kind)
        if symbol:
            return lambda a, b: f"({a} {symbol} {b})"
        call = {"mul": "detail::mul", "abs": "fabsf", "log": "logf", "sqrt": "sqrtf",
                "min": "detail::minimum", "max": "detail::maximum"}.get(kind)
        if call:
            return lambda *args: f"{call}({', '.join(args)})"
        raise AttributeError(kind)


def _derived_code(config):
    """C++ lines filling `in[n_inputs]` with the raw features, then each derived
    input (architecture.ModelConfig.derived, fitted) computed from them."""
    lines = ["    float in[n_inputs];  // the raw features, then the derived inputs",
             "    for (int i = 0; i < n_features; ++i) in[i] = features[i];"]
    ops = _CppOps({name: i for i, name in enumerate(config.branches or ())})
    for j, d in enumerate(config.derived):
        lines += [f"    in[{config.n_features + j}] = "
                  f"{walk(d.tree(list(config.branches)), ops)};  // {d.name}"]
    return lines


def _scaling_code(scaling, t):
    """C++ lines turning the raw and derived inputs `in` into the network's inputs
    `x0` of type t, as the ONNX graph does: Standardize (Sign x Log(1 + Abs), Where,
    Sub, Mul) or MinMax (Sub, Mul, Clip to [0, 1])."""
    if scaling is None:
        return [f"    {t} x0[n_inputs];",
                "    for (int i = 0; i < n_inputs; ++i) x0[i] = in[i];"]
    shift, inv = scaling.float32_arrays()
    lines = [_array("shift", shift), _array("inv_scale", inv), f"    {t} x0[n_inputs];",
             "    for (int i = 0; i < n_inputs; ++i) {", f"        {t} v = in[i];"]
    if isinstance(scaling, Standardize):
        lines[:0] = [_array("take_log", [int(v) for v in scaling.log_mask()], "int")]
        return lines + [
            "        if (take_log[i]) {  // sign(v) * log(1 + |v|), as the ONNX graph",
            f"            {t} s = v > 0 ? {t}(1) : (v < 0 ? {t}(-1) : {t}(0));",
            f"            v = s * log({t}(1) + fabs(v));",
            "        }",
            "        x0[i] = (v - shift[i]) * inv_scale[i];",
            "    }"]
    return lines + [
        "        v = (v - shift[i]) * inv_scale[i];",
        f"        x0[i] = v < 0 ? {t}(0) : (v > 1 ? {t}(1) : v);",
        "    }"]


def _float_layers(model):
    lines = []
    for k, fc in enumerate(model.linears):
        w = fc.weight.detach().cpu().numpy()
        b = fc.bias.detach().cpu().numpy()
        last = k == len(model.linears) - 1
        lines += [f"    // layer {k}: {w.shape[1]} -> {w.shape[0]}", _array(f"w{k}", w),
                  _array(f"b{k}", b),
                  f"    detail::sum_t x{k + 1}[{w.shape[0]}];",
                  f"    for (int j = 0; j < {w.shape[0]}; ++j) {{",
                  f"        detail::sum_t acc = b{k}[j];",
                  f"        for (int i = 0; i < {w.shape[1]}; ++i)",
                  f"            acc += (detail::sum_t)w{k}[j][i] * x{k}[i];",
                  f"        x{k + 1}[j] = {'acc' if last else 'detail::activation(acc)'};",
                  "    }"]
    return lines, f"(float)x{len(model.linears)}[0]"


def _int8_layers(model):
    """The layers on the codes: the input of layer k quantized with its FakeQuant's
    (scale, zero point), weights w_q = round(w / w_scale) in [-63, 63].  With ReLU,
    onnxruntime fuses each hidden layer into an integer kernel (QGemm): integer sums
    with int32 biases b_q = round(b / (in_scale x w_scale)), requantized as
    sum x (in_scale x w_scale / out_scale).  Other activations it runs in float
    (FusedGemm on the dequantized codes: one fused multiply-add per input, in
    order, then the float bias, the activation, QuantizeLinear), and so does the
    header.  The last layer's logit is float: the integer sum times both scales."""
    lines = []
    n = len(model.linears)
    for k, (fc, quant) in enumerate(zip(model.linears, model.quants)):
        s_in, zp_in = quant.frozen[0], quant.frozen[1]
        w_scale, bias = fc.frozen
        wq = np.round(fc.weight.detach().cpu().numpy() / np.float32(w_scale)).astype(np.int32)
        grid = np.float32(s_in) * np.float32(w_scale)
        bq = np.round(bias.detach().cpu().numpy() / grid).astype(np.int64)
        n_out, n_in = wq.shape
        lines += [f"    // layer {k}: {n_in} -> {n_out}, input scale {s_in!r}, zero point "
                  f"{zp_in}, weight scale {w_scale!r}", _array(f"w{k}", wq, "int")]
        integer = k == n - 1 or model.act_name == "relu"
        lines += ([_array(f"b{k}", bq, "int"),
                   f"    std::int32_t acc{k}[{n_out}];",
                   f"    for (int j = 0; j < {n_out}; ++j) {{",
                   f"        std::int32_t acc = b{k}[j];",
                   f"        for (int i = 0; i < {n_in}; ++i)",
                   f"            acc += (q{k}[i] - {zp_in}) * w{k}[j][i];",
                   f"        acc{k}[j] = acc;",
                   "    }"] if integer else [_array(f"b{k}", bias.detach().cpu().numpy())])
        if k == n - 1:  # the logit stays float: the integer sum times both scales plus 0
            scale = f"({_f(s_in)} * {_f(w_scale)})"
            lines += [f"    const float logit = (float)acc{k}[0] * {scale};"]
            continue
        s_out, zp_out = model.quants[k + 1].frozen[0], model.quants[k + 1].frozen[1]
        lines += [f"    std::int32_t q{k + 1}[{n_out}];",
                  f"    for (int j = 0; j < {n_out}; ++j) {{"]
        if integer:
            # onnxruntime's requantization scale: (1 x in_scale x weight_scale) / out_scale
            multiplier = (np.float32(1.0) * np.float32(s_in) * np.float32(w_scale)
                          ) / np.float32(s_out)
            lines += [f"        float v = (float)acc{k}[j] * {_f(multiplier)};"]
        else:
            lines += ["        float s = 0.0f;",
                      f"        for (int i = 0; i < {n_in}; ++i)",
                      f"            s = fmaf((float)(q{k}[i] - {zp_in}) * {_f(s_in)}, "
                      f"(float)w{k}[j][i] * {_f(w_scale)}, s);",
                      f"        float v = detail::activation(s + b{k}[j]) / {_f(s_out)};"]
        lines += [f"        q{k + 1}[j] = detail::quantize(v, {zp_out});", "    }"]
    return lines, "logit"


# C++ keywords (to C++23), and names a namespace at file scope must not take: std,
# the macros GNU compilers predefine outside strict modes, and the functions <cmath>
# declares at file scope
CPP_RESERVED = frozenset("""
    alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t
    char16_t char32_t class compl concept const consteval constexpr constinit const_cast
    continue co_await co_return co_yield decltype default delete do double dynamic_cast
    else enum explicit export extern false float for friend goto if inline int long
    mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected
    public register reinterpret_cast requires return short signed sizeof static
    static_assert static_cast struct switch template this thread_local throw true try
    typedef typeid typename union unsigned using virtual void volatile wchar_t while xor
    xor_eq std linux unix i386
    abs acos acosh asin asinh atan atan2 atanh cbrt ceil copysign cos cosh erf erfc exp
    exp2 expf expm1 fabs fdim floor fma fmax fmin fmod frexp hypot ilogb ldexp lgamma
    llrint llround log log10 log1p log2 logb lrint lround modf nan nearbyint nearbyintf
    nextafter pow remainder remquo rint round scalbn sin sinh sqrt tan tanh tgamma trunc
    j0 j1 jn y0 y1 yn gamma signbit isnan isinf isfinite""".split())


def cpp_identifier(name):
    """`name` (a file stem) as a C++ namespace name: letters, digits and single
    underscores, starting with a letter, no keyword; "ghost_" put in front where
    the name would not be one (1model -> ghost_1model, class -> ghost_class)."""
    ident = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_]", "_", name)).strip("_")
    if not ident:
        return "ghost_model"
    if not ident[0].isalpha() or ident in CPP_RESERVED:
        return f"ghost_{ident}"
    return ident


def _threshold_lines(saved):
    """The model's one threshold (SavedConfig.cut) and the real-track efficiency it
    keeps; no constant where the record holds no threshold (code using it then does
    not compile, rather than cut at a made-up value)."""
    threshold, efficiency = saved.cut()
    if threshold is None:
        return ["// (no threshold recorded: choose one on your own sample)"]
    if efficiency is None:
        return ["// the threshold recorded with the model (no working point recorded)",
                f"constexpr float threshold = {_f(threshold)};"]
    return [f"// the working point: the threshold keeping {efficiency:.1%} of the validation "
            "split's real tracks",
            f"constexpr float threshold = {_f(threshold)};",
            f"constexpr float working_point_efficiency = {efficiency!r}f;"]


def export_header(model, saved, namespace="ghost_model"):
    """The C++ header of a models.GhostNet in eval mode (frozen if INT8) and its
    artifacts.SavedConfig, in the C++ namespace made of `namespace`
    (cpp_identifier)."""
    namespace = cpp_identifier(namespace)
    config = saved.model
    names = saved.features or [f"f{i}" for i in range(config.n_features)]
    scaling = config.input_layer() or config.normalization
    int8 = bool(model.int8)
    macs, params = config.cost()
    head = [f"// {namespace}.hpp: the ghost-track classifier of LHCb's HLT1, as C++ "
            f"({'INT8' if int8 else 'float'}).",
            "// Generated by ghost-tracks (training.py --save or inference.py --export-cpp) on "
            f"{datetime.date.today().isoformat()}.",
            f"// Network {config.network}, hidden layers {list(config.hidden)}, activation "
            f"{config.activation}, {config.inputs} inputs; {macs:,} multiply-adds and "
            f"{params:,} parameters per track.",
            "// Usage: float p = " + namespace + "::ghost_probability(features);",
            "//   features: the raw branch values of one track, in feature_names order;",
            "//   p: the ghost probability (a track is a ghost when p > threshold);",
            "//   a NaN or infinite feature or derived input gives a NaN probability (drop",
            "//   such tracks, as the toolkit does)."]
    if config.derived:
        head += ["// Derived inputs, computed from the features inside ghost_probability as the "
                 "ONNX graph", "// computes them (float32, in the order written), then "
                 "scaled with the features:"]
        head += [f"//   {d.name} := {d.fit or d.expression}" for d in config.derived]
    head += [f"// {line}" for line in comment_lines(saved.provenance or {})]
    lines = [*head, "#pragma once", "#include <cmath>", "#include <cstdint>", "",
             "#if defined(__CUDACC__)", "#define GHOST_HD __host__ __device__", "#else",
             "#define GHOST_HD", "#endif", "", f"namespace {namespace} {{", "",
             f"constexpr int n_features = {config.n_features};  // the raw inputs",
             f"constexpr int n_derived = {len(config.derived)};  // computed from them",
             "constexpr int n_inputs = n_features + n_derived;",
             f"constexpr bool int8 = {'true' if int8 else 'false'};",
             *_threshold_lines(saved),
             "inline constexpr const char* feature_names[n_features] = {"
             + ", ".join(f'"{n}"' for n in names) + "};",
             *(["inline constexpr const char* derived_names[n_derived] = {"
                + ", ".join(f'"{d.name}"' for d in config.derived) + "};"]
               if config.derived else []), "",
             "namespace detail {",
             "template <class T> GHOST_HD inline T activation(T x) {",
             f"    return {ACTIVATIONS[config.activation].cpp};",
             "}",
             "// the float model's arithmetic: double on the host (closer to the exact network",
             "// than onnxruntime's float32 by half its rounding), float on the GPU",
             "#if defined(__CUDA_ARCH__)",
             "using sum_t = float;",
             "#else",
             "using sum_t = double;",
             "#endif",
             "// QuantizeLinear: round half to even of v (already divided by the scale), shifted",
             "// by the zero point and saturated to uint8",
             "GHOST_HD inline std::int32_t quantize(float v, std::int32_t zero_point) {",
             "    const float lo = 0.0f - zero_point, hi = 255.0f - zero_point;",
             "    v = v < lo ? lo : (v > hi ? hi : v);",
             "    return (std::int32_t)nearbyintf(v) + zero_point;",
             "}",
             "// the derived inputs' float32 arithmetic: a product rounded on its own (CUDA",
             "// would fuse it with an addition); min and max NaN where either side is NaN or",
             "// infinite, as the ONNX graph's Where(a < b, a, b) + (a - a) + (b - b)",
             "GHOST_HD inline float mul(float a, float b) {",
             "#if defined(__CUDA_ARCH__)",
             "    return __fmul_rn(a, b);",
             "#else",
             "    return a * b;",
             "#endif",
             "}",
             "GHOST_HD inline float minimum(float a, float b) {",
             "    return (a < b ? a : b) + (a - a) + (b - b);",
             "}",
             "GHOST_HD inline float maximum(float a, float b) {",
             "    return (a > b ? a : b) + (a - a) + (b - b);",
             "}",
             "}  // namespace detail", "",
             "GHOST_HD inline float ghost_probability(const float* features) {",
             *_derived_code(config),
             "    for (int i = 0; i < n_inputs; ++i)  // NaN or +-inf in, NaN out: x - x is",
             "        if (!(in[i] - in[i] == 0.0f)) return NAN;  // NaN just then"]
    # INT8: float32 scaling, exactly as the ONNX graph feeds its first QuantizeLinear
    lines += _scaling_code(scaling, "float" if int8 else "detail::sum_t")
    if int8:
        s0, zp0 = model.quants[0].frozen[0], model.quants[0].frozen[1]
        lines += ["    std::int32_t q0[n_inputs];",
                  "    for (int i = 0; i < n_inputs; ++i)",
                  f"        q0[i] = detail::quantize(x0[i] / {_f(s0)}, {zp0});"]
        body, out = _int8_layers(model)
    else:
        body, out = _float_layers(model)
    lines += body
    lines += [f"    return 1.0f / (1.0f + expf(-{out}));", "}", "",
              f"}}  // namespace {namespace}", ""]
    return "\n".join(lines)
