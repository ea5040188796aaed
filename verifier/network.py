"""Networks: an immutable sequence of affine maps and ReLUs, evaluated in numpy (float64) or torch.

Canonical form (enforced by `Network`): layers alternate ``Affine, ReLU, Affine, ReLU, ..., Affine`` and may end
with a ``ReLU`` (some public nets clip their outputs at 0). Loaders fold consecutive affine operations into one
`Affine` and insert an identity `Affine` in front of a leading ReLU, so every bound method can walk the network as
"affine i, then a ReLU if ``i < len(affines) - 1`` or the network ends with one".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np


@dataclass(frozen=True, eq=False)
class Affine:
    """``z = weight @ x + bias``; weight (out, in) float64, bias (out,) float64."""

    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        weight = np.array(self.weight, dtype=np.float64)
        bias = np.array(self.bias, dtype=np.float64).reshape(-1)
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(f"Affine: weight {weight.shape} and bias {bias.shape} do not match")
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise ValueError("Affine: weight or bias contains NaN or Inf")
        weight.setflags(write=False)
        bias.setflags(write=False)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, n_in) -> (N, n_out)."""
        return x @ self.weight.T + self.bias

    def then(self, other: "Affine") -> "Affine":
        """The composition ``other(self(x))`` as one affine map."""
        return Affine(other.weight @ self.weight, other.weight @ self.bias + other.bias)


@dataclass(frozen=True)
class ReLU:
    """Elementwise max(x, 0)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0.0)


Layer = Union[Affine, ReLU]


@dataclass(frozen=True, eq=False)
class Network:
    """A feed-forward ReLU network on flat inputs.

    layers: the canonical sequence (module docstring). input_shape: the shape the model's ONNX input declares
    (may include a batch axis of 1, e.g. (1, 1, 1, 5)); the network itself works on flat vectors of
    ``n_inputs = prod(input_shape)`` entries. source: path of the ONNX file it came from ("" if none).
    """

    layers: tuple
    input_shape: tuple = field(default=())
    source: str = ""  # the ONNX file it was loaded from, if any (counterexamples are re-checked on it)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers or not isinstance(layers[0], Affine):
            raise ValueError("Network must start with an Affine layer")
        for prev, nxt in zip(layers, layers[1:]):
            if type(prev) is type(nxt):
                raise ValueError("Network layers must alternate Affine and ReLU")
        affines = [layer for layer in layers if isinstance(layer, Affine)]
        for a, b in zip(affines, affines[1:]):
            if a.n_out != b.n_in:
                raise ValueError(f"layer sizes do not chain: {a.n_out} outputs feed {b.n_in} inputs")
        shape = tuple(int(s) for s in self.input_shape) or (affines[0].n_in,)
        if int(np.prod(shape)) != affines[0].n_in:
            raise ValueError(f"input shape {shape} does not match {affines[0].n_in} inputs")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "input_shape", shape)

    # --- structure -------------------------------------------------------------------------------------
    @property
    def affines(self) -> list[Affine]:
        """The affine layers in order."""
        return [layer for layer in self.layers if isinstance(layer, Affine)]

    @property
    def relu_after(self) -> list[bool]:
        """For each affine layer, whether a ReLU follows it."""
        return [i + 1 < len(self.layers) and isinstance(self.layers[i + 1], ReLU)
                for i, layer in enumerate(self.layers) if isinstance(layer, Affine)]

    @property
    def n_inputs(self) -> int:
        return self.affines[0].n_in

    @property
    def n_outputs(self) -> int:
        return self.affines[-1].n_out

    @property
    def widths(self) -> list[int]:
        """Sizes of the ReLU layers (hidden widths, plus the output if it ends with a ReLU)."""
        return [a.n_out for a, relu in zip(self.affines, self.relu_after) if relu]

    @property
    def n_relus(self) -> int:
        return int(sum(self.widths))

    def summary(self) -> str:
        """One line: inputs -> widths -> outputs, ReLU count."""
        sizes = " -> ".join(str(s) for s in [self.n_inputs, *[a.n_out for a in self.affines]])
        tail = " (ReLU on outputs)" if self.relu_after[-1] else ""
        return f"{sizes}, {self.n_relus} ReLUs{tail}"

    # --- evaluation ------------------------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Outputs for x of shape (n_inputs,) or input_shape -> (n_outputs,); (N, ...) -> (N, n_outputs); float64."""
        x = np.asarray(x, dtype=np.float64)
        # one sample: a flat vector, or exactly the declared shape when that has extra axes ((1,1,1,5), not (1,n))
        single = x.size == self.n_inputs and (x.ndim <= 1 or (x.ndim > 2 and x.shape == self.input_shape))
        h = x.reshape(1 if single else x.shape[0], self.n_inputs)
        for layer in self.layers:
            h = layer.forward(h)
        return h[0] if single else h

    def torch(self, device="cpu", dtype=None):
        """A `torch.nn.Sequential` computing the same function on flat inputs (N, n_inputs)."""
        import torch

        dtype = dtype or torch.float64
        modules = []
        for layer in self.layers:
            if isinstance(layer, Affine):
                linear = torch.nn.Linear(layer.n_in, layer.n_out, dtype=dtype)
                with torch.no_grad():
                    linear.weight.copy_(torch.from_numpy(layer.weight.copy()))
                    linear.bias.copy_(torch.from_numpy(layer.bias.copy()))
                modules.append(linear)
            else:
                modules.append(torch.nn.ReLU())
        return torch.nn.Sequential(*modules).to(device=device)


def from_torch(module, input_shape: tuple = ()) -> Network:
    """A `Network` from a torch ``nn.Sequential`` of Flatten / Linear / ReLU modules (weights copied, float64)."""
    import torch

    layers: list = []
    for m in module:
        if isinstance(m, torch.nn.Linear):
            bias = m.bias.detach().cpu().double().numpy() if m.bias is not None else np.zeros(m.out_features)
            layers.append(Affine(m.weight.detach().cpu().double().numpy(), bias))
        elif isinstance(m, torch.nn.ReLU):
            layers.append(ReLU())
        elif not isinstance(m, (torch.nn.Flatten, torch.nn.Identity)):
            raise ValueError(f"from_torch: unsupported module {type(m).__name__}")
    return Network(tuple(layers), input_shape)


def random_network(sizes: list[int], rng: np.random.Generator, relu_on_output: bool = False,
                   scale: float = 1.0) -> Network:
    """A random fully connected ReLU net with the given layer sizes [n_in, h1, ..., n_out] (for tests)."""
    layers: list = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(Affine(rng.normal(size=(n_out, n_in)) * scale / np.sqrt(n_in), rng.normal(size=n_out) * 0.1))
        if i < len(sizes) - 2 or relu_on_output:
            layers.append(ReLU())
    return Network(tuple(layers))
