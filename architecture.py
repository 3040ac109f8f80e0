"""What a network is made of, without torch: the ModelConfig record that
models.build_model builds from, and the rule that ties a network to its inputs.
"""
from dataclasses import dataclass

from features import MinMax

ACTIVATIONS = ("relu", "leaky_relu", "elu", "tanh", "sigmoid")
NETWORKS = (0, 1)


def normalizes_inside(network):
    """The rule behind the two networks: network 1 takes raw branch values and
    normalizes them in its first layer; network 0 takes inputs normalized beforehand."""
    return network == 1


def default_network(normalized_data):
    """The network for a dataset: 0 for normalized arrays, 1 for raw branch values."""
    return 0 if normalized_data else 1


@dataclass(frozen=True)
class ModelConfig:
    """The architecture, all build_model needs.  Saved as plain data (to_dict) in a
    flat record beside the training settings and provenance, which it ignores."""
    network: int
    n_features: int
    l0: int
    activation: str = "relu"
    normalization: MinMax = None  # embedded by network 1; applied beforehand for network 0
    int8: bool = False

    def __post_init__(self):
        if self.network not in NETWORKS:
            raise ValueError(f"unknown network {self.network}: valid are {list(NETWORKS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}: valid are "
                             f"{', '.join(ACTIVATIONS)}")
        if normalizes_inside(self.network) and self.normalization is None:
            raise ValueError("network 1 needs the normalization offsets and scales")
        if self.normalization is not None and len(self.normalization) != self.n_features:
            raise ValueError("normalization offsets/scales do not match n_features")

    @classmethod
    def from_dict(cls, d):
        """From a saved config record; ValueError/KeyError/TypeError if it holds none."""
        norm = d.get("normalization")
        return cls(network=int(d.get("network", 0)), n_features=int(d["n_features"]),
                   l0=int(d["l0"]), activation=d.get("activation", "relu"),
                   normalization=MinMax.from_dict(norm) if norm else None,
                   int8=bool(d.get("int8", False)))

    def to_dict(self):
        return {"network": self.network, "n_features": self.n_features, "l0": self.l0,
                "activation": self.activation, "int8": self.int8,
                "normalization": self.normalization.to_dict() if self.normalization else None}
