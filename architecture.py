"""What a network is made of, without torch: the ModelConfig record that
models.build_model builds from, its cost per track, its activations, and the rule
that ties a network to its inputs.
"""
from dataclasses import dataclass

from derived import extend, from_dicts
from features import MinMax, Standardize, width_problem
from records import check_fields, is_int, is_text
from utils import GhostError


@dataclass(frozen=True)
class Activation:
    """One activation, everywhere it appears: the torch.nn module models.py builds,
    the C++ expression cpp_export.py writes (for any floating type T), and the
    search spaces (search.SPACES) that try it."""
    torch: str        # the torch.nn class
    inplace: bool     # built in place where torch can: one allocation less per step
    cpp: str
    spaces: tuple


# The one table of activations, in the order the search spaces list them.
ACTIVATIONS = {
    "relu": Activation("ReLU", True, "x > T(0) ? x : T(0)", ("default", "original")),
    "leaky_relu": Activation("LeakyReLU", True, "x > T(0) ? x : T(0.01) * x", ("original",)),
    "elu": Activation("ELU", True, "x > T(0) ? x : expm1(x)", ("default", "original")),
    "tanh": Activation("Tanh", False, "tanh(x)", ("original",)),
    "sigmoid": Activation("Sigmoid", False, "T(1) / (T(1) + exp(-x))", ()),
}
NETWORKS = (0, 1)
INPUT_LAYERS = ("standard", "minmax")  # network 1's first layer: Standardize or MinMax


def normalizes_inside(network):
    """The rule behind the two networks: network 1 takes raw branch values and
    scales them in its first layer; network 0 takes inputs normalized beforehand
    (min-max, make_dataset.py --normalize)."""
    return network == 1


def default_network(normalized_data):
    """The network for a dataset: 0 for normalized arrays, 1 for raw branch values."""
    return 0 if normalized_data else 1


def refuse_normalized(network, normalized, inputs, fix):
    """The one refusal of inputs normalized beforehand for network 1, which would
    normalize them twice: a GhostError saying what `inputs` are and what to do
    (`fix`) when `normalized` holds and the network normalizes inside."""
    if normalizes_inside(network) and normalized:
        raise GhostError(f"network 1 normalizes inside the model, but {inputs}: {fix}")


def hidden_widths(d):
    """The hidden layer widths a saved record or a trial's hyperparameters give:
    "hidden", or "l0" of the one-hidden-layer toolkit; None where neither."""
    return d.get("hidden") or ([d["l0"]] if d.get("l0") is not None else None)


def macs_and_params(n_features, hidden):
    """Multiply-adds per track and trainable parameters of an MLP with these hidden
    widths and one output (the input scaling, a few operations per feature, aside)."""
    widths = (n_features, *hidden, 1)
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return macs, macs + sum(widths[1:])


def _widths(v):
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(is_int(w) and w >= 1 for w in v)


# What each architecture field of a saved record must hold (null: the default).
FIELD_TYPES = {
    "network": (is_int, "a whole number"),  # the values: __post_init__
    "n_features": (lambda v: is_int(v) and v >= 1, "a whole number >= 1"),
    "hidden": (_widths, "a list of layer widths (whole numbers >= 1)"),
    "l0": (lambda v: is_int(v) and v >= 1, "a whole number >= 1"),
    "activation": (is_text, "a string"),
    "inputs": (is_text, "a string"),
    "int8": (lambda v: isinstance(v, bool), "true or false"),
    "normalization": (lambda v: isinstance(v, dict), "an object"),
    "standardization": (lambda v: isinstance(v, dict), "an object"),
    "derived": (lambda v: isinstance(v, list), "a list of derived inputs"),
}


@dataclass(frozen=True)
class ModelConfig:
    """The architecture, all build_model needs.  Saved as plain data (to_dict) in a
    flat record beside the training settings and provenance, which it ignores."""
    network: int
    n_features: int
    hidden: tuple                  # widths of the hidden layers, 1 to 3 of them
    activation: str = "relu"
    inputs: str = "minmax"         # network 1's first layer (INPUT_LAYERS)
    normalization: MinMax = None   # min-max: network 0's inputs, or network 1's layer
    standardization: Standardize = None  # network 1's layer with inputs "standard"
    int8: bool = False
    # derived.Derived inputs (fitted) the first layer computes from the raw branches,
    # named in `branches` (the features, in column order); the scaling covers both
    derived: tuple = ()
    branches: tuple = None

    def __post_init__(self):
        if self.network not in NETWORKS:
            raise ValueError(f"unknown network {self.network}: valid are {list(NETWORKS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}: valid are "
                             f"{', '.join(ACTIVATIONS)}")
        if not self.hidden or not all(int(w) >= 1 for w in self.hidden):
            raise ValueError(f"hidden layer widths must be positive, got {self.hidden}")
        if self.inputs not in INPUT_LAYERS:
            raise ValueError(f"unknown inputs {self.inputs!r}: valid are "
                             f"{', '.join(INPUT_LAYERS)}")
        if normalizes_inside(self.network):
            if self.inputs == "minmax" and self.normalization is None:
                raise ValueError("network 1 needs the normalization offsets and scales")
            if self.inputs == "standard" and self.standardization is None:
                raise ValueError("network 1 with standardized inputs needs the "
                                 "standardization (transforms, means, stds)")
        if self.derived:
            if not normalizes_inside(self.network):
                raise ValueError("derived inputs are computed in network 1's first layer; "
                                 "network 0 takes its inputs normalized beforehand")
            if self.branches is None or len(self.branches) != self.n_features:
                raise ValueError("derived inputs need the names of the network's "
                                 f"{self.n_features} input branches")
            pending = [d.name for d in self.derived if d.needs_fit()]
            if pending:
                raise ValueError(f"derived input(s) {', '.join(pending)} are not fitted")
        for key in ("normalization", "standardization"):
            scaling = getattr(self, key)
            problem = None if scaling is None else width_problem(
                scaling.to_dict(), self.n_inputs(), "inputs", key)
            if problem:
                raise ValueError(problem)

    def input_layer(self):
        """The scaling network 1 embeds (MinMax or Standardize), None for network 0."""
        if not normalizes_inside(self.network):
            return None
        return self.standardization if self.inputs == "standard" else self.normalization

    def n_inputs(self):
        """The width of the first hidden layer's input: the raw branches and the
        derived inputs."""
        return self.n_features + len(self.derived)

    def extend(self, data):
        """[raw branches | derived inputs] float32 (derived.extend): what the input
        scaling covers."""
        return extend(data, self.derived, list(self.branches or ()))

    def cost(self):
        """(multiply-adds per track, parameters)."""
        return macs_and_params(self.n_inputs(), self.hidden)

    @classmethod
    def from_dict(cls, d):
        """From a saved config record, every field's type checked; ValueError naming
        the field if it is malformed, or if the record holds no architecture.
        Records of the one-hidden-layer toolkit (l0, min-max) read back as such."""
        check_fields(d, FIELD_TYPES)
        hidden = hidden_widths(d)
        if d.get("n_features") is None or not hidden:
            raise ValueError("the record has no architecture (n_features and hidden)")
        scalings = {}
        for key, kind in (("normalization", MinMax), ("standardization", Standardize)):
            try:
                scalings[key] = kind.from_dict(d[key]) if d.get(key) else None
            except ValueError as e:
                raise ValueError(f"'{key}': {e}")
        derived, branches = (), None
        if d.get("derived"):
            branches = d.get("features")
            if not isinstance(branches, list) or not all(isinstance(b, str) for b in branches):
                raise ValueError("'derived': the record lists no 'features' they read")
            try:
                derived = tuple(from_dicts(d["derived"], branches))
            except ValueError as e:
                raise ValueError(f"'derived': {e}")
            branches = tuple(branches)
        return cls(network=d.get("network", 0), n_features=d["n_features"],
                   hidden=tuple(hidden), activation=d.get("activation", "relu"),
                   inputs=d.get("inputs", "minmax"), int8=d.get("int8", False),
                   derived=derived, branches=branches, **scalings)

    def to_dict(self):
        macs, params = self.cost()
        return {"network": self.network, "n_features": self.n_features,
                "hidden": list(self.hidden), "l0": self.hidden[0],
                "activation": self.activation, "inputs": self.inputs, "int8": self.int8,
                "macs": macs, "params": params,
                "normalization": self.normalization.to_dict() if self.normalization else None,
                "standardization": (self.standardization.to_dict()
                                    if self.standardization else None),
                "derived": [x.to_dict() for x in self.derived]}
