"""The ghost classifiers: an MLP with 1 to 3 hidden layers, with or without an
embedded input scaling, ready for INT8 quantization-aware training.

  network 0:           features (min-max normalized beforehand) -> MLP -> sigmoid
  network 1: raw branch values -> DerivedLayer (the derived inputs, if any, appended)
             -> StandardizeLayer (signed log1p where heavy-tailed, then standardized;
             or MinMaxNorm, the original) -> the same MLP

One function, build_model(ModelConfig), builds either (architecture.py describes
them without torch).
"""
import torch
from torch import nn

from architecture import ACTIVATIONS
from derived import ArrayOps, walk
from features import Standardize


def activation_layer(name):
    """The torch module of an activation of architecture.ACTIVATIONS."""
    act = ACTIVATIONS[name]
    layer = getattr(nn, act.torch)
    return layer(inplace=True) if act.inplace else layer()


def quant_name(i):
    """The name of the quantizer of layer i's input: `quant` for the network's input,
    then `act_quant`, `act_quant1`, ... for the hidden layers' outputs (the names of
    the one-hidden-layer toolkit, and of the QuantizeLinear nodes of an INT8 ONNX)."""
    return "quant" if i == 0 else "act_quant" if i == 1 else f"act_quant{i - 1}"


class DerivedLayer(nn.Module):
    """The derived inputs (derived.Derived, fitted), computed from the raw branches
    and appended to them: [tracks, branches] -> [tracks, branches + derived].  No
    parameters: the fitted constants are part of the expressions."""

    def __init__(self, derived, branches):
        super().__init__()
        self.trees = [d.tree(list(branches)) for d in derived]
        self.index = {name: i for i, name in enumerate(branches)}

    def forward(self, x):
        ops = ArrayOps(torch, lambda name: x[:, self.index[name]], x.new_tensor)
        columns = [walk(tree, ops) for tree in self.trees]  # a constant one: a scalar
        columns = [(c if c.dim() else c.expand(x.shape[0])).unsqueeze(1) for c in columns]
        return torch.cat([x, *columns], dim=1)


class MinMaxNorm(nn.Module):
    """features.MinMax as the model's first layer, with the same float32 constants,
    so raw branch values can go in."""

    def __init__(self, minmax):
        super().__init__()
        offsets, inv_scales = minmax.float32_arrays()
        self.register_buffer("offset", torch.from_numpy(offsets))
        self.register_buffer("inv_scale", torch.from_numpy(inv_scales))

    def forward(self, x):
        return torch.clamp((x - self.offset) * self.inv_scale, 0.0, 1.0)


class StandardizeLayer(nn.Module):
    """features.Standardize as the model's first layer, with the same float32
    constants: a signed log1p on the heavy-tailed features, then (t - mean) * inv_std."""

    def __init__(self, standardize):
        super().__init__()
        means, inv_stds = standardize.float32_arrays()
        self.register_buffer("log_mask", torch.from_numpy(standardize.log_mask()))
        self.register_buffer("mean", torch.from_numpy(means))
        self.register_buffer("inv_std", torch.from_numpy(inv_stds))

    def forward(self, x):
        logged = torch.sign(x) * torch.log1p(torch.abs(x))
        return (torch.where(self.log_mask, logged, x) - self.mean) * self.inv_std


OUTLIER_FRACTION = 0.001  # of each end of an activation's range, left to saturate


class FakeQuant(nn.Module):
    """INT8 quantize-dequantize of activations (the QuantStub role) for
    quantization-aware training.  Off by default; when on, it tracks the range of
    what passes (running min/max while observing) and rounds to 256 uint8 levels.
    Exports to ONNX as a QuantizeLinear/DequantizeLinear pair."""

    def __init__(self, momentum=0.05):
        super().__init__()
        self.momentum = momentum
        self.enabled, self.observing, self.frozen = False, False, None
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(0))

    def observe(self, x):
        """Track the range of what passes: the 0.1 and 99.9 percentiles of each
        batch, as a running average.  A few outliers then saturate instead of
        stretching the 256 levels (measured on forward tracks: INT8 AUC 0.0019 below
        the float model's, against 0.0042 with the batches' min and max)."""
        with torch.no_grad():
            flat = x.detach().flatten()
            k = max(1, int(flat.numel() * OUTLIER_FRACTION))
            lo, hi = flat.kthvalue(k).values, flat.kthvalue(flat.numel() - k + 1).values
            if int(self.seen) == 0:
                self.lo.copy_(lo), self.hi.copy_(hi)
            else:
                self.lo.lerp_(lo, self.momentum), self.hi.lerp_(hi, self.momentum)
            self.seen += 1

    def qparams(self):
        """Scale and zero point as tensors (export-friendly, no Python branches)."""
        lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)  # 0 exact
        scale = torch.clamp(hi - lo, min=1e-8) / 255.0
        zero_point = torch.round(-lo / scale).to(torch.int32)
        return scale, zero_point, 0, 255

    def freeze(self):
        """Fix the quantization parameters as constants (after training or
        loading), so inference and ONNX export see plain numbers."""
        scale, zero_point, qmin, qmax = self.qparams()
        self.frozen = (float(scale), int(zero_point), qmin, qmax)

    def scale(self):
        """The step between two levels: a float once frozen, else a tensor."""
        return self.frozen[0] if self.frozen is not None else self.qparams()[0]

    def forward(self, x):
        if not self.enabled:
            return x
        if self.observing and self.training:
            self.observe(x)
        if self.frozen is not None and not self.observing:
            return torch.fake_quantize_per_tensor_affine(x, *self.frozen)
        scale, zero_point, qmin, qmax = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)


# 7-bit weights: the integers of a quantized weight lie in [-63, 63].  onnxruntime
# fuses Q/DQ pairs into u8 x s8 integer kernels; on x86 CPUs without VNNI (AVX2 only)
# those add pairs of products in 16-bit registers with saturation, and 2 * 255 * 127
# overflows there while 2 * 255 * 63 = 32130 does not.  So the deployed INT8 model
# computes the same numbers on every CPU (onnxruntime's own remedy, "reduce range").
WEIGHT_LEVELS = 63


def weight_scale(weight):
    """Symmetric per-tensor scale of a weight: max|w| maps to WEIGHT_LEVELS."""
    return weight.detach().abs().max().clamp(min=1e-8) / WEIGHT_LEVELS


def quantize_bias(bias, scale):
    """The bias as an integer runtime holds it: int32 in units of input scale x
    weight scale (onnxruntime quantizes a float bias so when it fuses the layer).
    Straight-through gradient."""
    return bias + (torch.round(bias.detach() / scale) * scale - bias.detach())


class QuantLinear(nn.Linear):
    """nn.Linear with INT8 fake quantization: weights symmetric 7-bit (zero point 0,
    scale from the weight itself), bias int32 in units of input x weight scale, so
    the fake-quantized model computes what an integer runtime computes.  In training
    mode the scales follow the current weights at every step; in eval mode they are
    the constants fixed by freeze() (exported to ONNX as a QuantizeLinear/
    DequantizeLinear pair on the weight and a float bias on the integer grid)."""

    def __init__(self, n_in, n_out):
        super().__init__(n_in, n_out)
        self.int8, self.frozen = False, None  # frozen: (weight scale, bias)

    def freeze(self, input_scale):
        """Fix the weight scale and the quantized bias from the current weights and
        the (frozen) scale of this layer's input."""
        w_scale = float(weight_scale(self.weight))
        grid = (torch.tensor(input_scale, dtype=torch.float32)
                * torch.tensor(w_scale, dtype=torch.float32))
        self.frozen = (w_scale, quantize_bias(self.bias, grid.to(self.bias.device)).detach())

    def use_frozen(self):
        return self.frozen is not None and not self.training

    def quantized_weight(self):
        if self.use_frozen():
            return torch.fake_quantize_per_tensor_affine(self.weight, self.frozen[0], 0,
                                                         -128, 127)
        zero = torch.zeros((), dtype=torch.int32, device=self.weight.device)
        return torch.fake_quantize_per_tensor_affine(self.weight, weight_scale(self.weight),
                                                     zero, -128, 127)

    def forward(self, x, input_scale=None):
        if not self.int8:
            return super().forward(x)
        bias = (self.frozen[1] if self.use_frozen()
                else quantize_bias(self.bias, input_scale * weight_scale(self.weight)))
        return nn.functional.linear(x, self.quantized_weight(), bias)


class GhostNet(nn.Module):
    """input scaling -> [linear -> activation] x len(hidden) -> linear -> sigmoid.

    Module names keep the one-hidden-layer toolkit's state dicts loadable: linear
    layers fc0, fc1, ...; the quantizers as quant_name says."""

    def __init__(self, n_features, hidden, activation, scaling=None, derive=None):
        super().__init__()
        self.n_features = n_features  # the raw inputs; derive appends the derived ones
        self.derive = derive if derive is not None else nn.Identity()
        self.norm = scaling if scaling is not None else nn.Identity()
        self.act, self.act_name = activation_layer(activation), activation
        n_derived = len(derive.trees) if derive is not None else 0
        widths = (n_features + n_derived, *hidden, 1)
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            setattr(self, f"fc{i}", QuantLinear(n_in, n_out))
            setattr(self, quant_name(i), FakeQuant())  # the INT8 domain of layer i's input
        self.linears = [getattr(self, f"fc{i}") for i in range(len(widths) - 1)]
        self.quants = [getattr(self, quant_name(i)) for i in range(len(widths) - 1)]
        # the logit stays float (integer sum x scales + bias): rounding it to 256
        # levels would only comb the scores, and costs nothing to avoid
        self.int8 = False

    def core(self, x):
        """Scaled inputs -> logit: the trainable part (training feeds it inputs
        scaled once up front, which is the same as logits())."""
        *hidden, out = self.linears
        if not self.int8:  # the hot path of float training: no quantization calls
            for fc in hidden:
                x = self.act(fc(x))
            return out(x)
        for fc, quant in zip(self.linears, self.quants):
            x = quant(x)
            x = fc(x, quant.scale())
            if fc is not out:
                x = self.act(x)
        return x

    def scaled(self, x):
        """Raw branch values -> the inputs of the first hidden layer: the derived
        inputs appended, then the input scaling."""
        return self.norm(self.derive(x))

    def logits(self, x):
        return self.core(self.scaled(x))

    def forward(self, x):
        """Ghost probabilities; NaN for a track with a NaN or infinite feature or
        derived input, here, in the ONNX graph (float and INT8) and in the C++ header
        alike: x - x is 0 for a finite value and NaN for NaN and +-inf, and p + 0 is
        p exactly."""
        return self.from_inputs(self.derive(x))

    def from_inputs(self, x):
        """Ghost probabilities from the columns [raw | derived] (the derived inputs
        given, not computed; what the permutation ranking shuffles one by one)."""
        return torch.sigmoid(self.core(self.norm(x))) + (x - x).sum(dim=1, keepdim=True)

    def fake_quants(self):
        return [m for m in self.modules() if isinstance(m, FakeQuant)]

    def set_int8(self, enabled=True, observing=False):
        """Switch INT8 fake quantization on/off and range observation on/off.  Off
        observation, every range is frozen: activations at what was observed,
        weights at their current values (call again after the weights change)."""
        self.int8 = enabled
        for m in self.fake_quants():
            m.enabled, m.observing, m.frozen = enabled, observing, None
            if enabled and not observing:
                m.freeze()
        for quant, linear in zip(self.quants, self.linears):
            linear.int8, linear.frozen = enabled, None
            if enabled and not observing:
                linear.freeze(quant.scale())
        return self


def input_layer(scaling):
    """features.MinMax or features.Standardize as a torch layer."""
    return StandardizeLayer(scaling) if isinstance(scaling, Standardize) else MinMaxNorm(scaling)


def build_model(config):
    """The network a ModelConfig describes, INT8 fake quantization on if it says so."""
    scaling = config.input_layer()
    model = GhostNet(config.n_features, config.hidden, config.activation,
                     input_layer(scaling) if scaling is not None else None,
                     DerivedLayer(config.derived, config.branches) if config.derived else None)
    return model.set_int8(config.int8)


def load_model(config, state_dict):
    """build_model(config) with trained weights loaded, ready for inference."""
    model = build_model(config)
    model.load_state_dict(state_dict)
    return model.set_int8(config.int8).eval()


def n_inputs(model):
    """The raw branches a model reads (its derived inputs it computes itself)."""
    return getattr(model, "n_features", model.fc0.in_features)
