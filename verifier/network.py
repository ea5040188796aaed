"""Networks: an immutable DAG of operators (verifier/ops/) over N-d tensors, evaluated in torch (float64).

A `Network` holds nodes in topological order; node 0 is the `Input`, every other node an operator with the ids of
its input nodes, and one node is the output. There is one forward, in torch (`forward_torch`); the numpy
`forward` and the torch module view (`torch()`) are derived from it.

Dense chains. Most methods still walk a network as a chain of affine layers and ReLUs: layers alternate
``Affine, ReLU, Affine, ReLU, ..., Affine`` and may end with a ``ReLU`` (some public nets clip their outputs at 0).
A network built from such `layers` (or loaded from a file whose affine operations all fold into dense matrices)
is a *dense chain*: `layers`, `affines` and `relu_after` describe it, and its graph is Dense and ReLU nodes
alternating. On any other graph (convolutions, pooling, branches) these raise `UnsupportedNetwork`, and the methods
that need them say so (`require_chain`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import ops
from .errors import UnsupportedNetwork


@dataclass(frozen=True, eq=False)
class Affine:
    """``z = weight @ x + bias``; weight (out, in) float64, bias (out,) float64: a layer of a dense chain."""

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
    """Elementwise max(x, 0): a layer of a dense chain."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0.0)


Layer = Affine | ReLU


@dataclass(frozen=True, eq=False)
class Node:
    """An operator applied to the outputs of the nodes `inputs` (ids of earlier nodes)."""

    op: object
    inputs: tuple


def _check_chain(layers: tuple, shape: tuple) -> tuple:
    if not layers or not isinstance(layers[0], Affine):
        raise ValueError("Network must start with an Affine layer")
    for prev, nxt in zip(layers, layers[1:]):
        if type(prev) is type(nxt):
            raise ValueError("Network layers must alternate Affine and ReLU")
    affines = [layer for layer in layers if isinstance(layer, Affine)]
    for a, b in zip(affines, affines[1:]):
        if a.n_out != b.n_in:
            raise ValueError(f"layer sizes do not chain: {a.n_out} outputs feed {b.n_in} inputs")
    shape = tuple(int(s) for s in shape) or (affines[0].n_in,)
    if int(np.prod(shape)) != affines[0].n_in:
        raise ValueError(f"input shape {shape} does not match {affines[0].n_in} inputs")
    return shape


def _chain_nodes(layers: tuple, shape: tuple) -> tuple:
    nodes, current = [Node(ops.Input(shape), ())], shape
    for layer in layers:
        if isinstance(layer, Affine):
            op = ops.Dense(torch.tensor(layer.weight), torch.tensor(layer.bias), (current,), (layer.n_out,))
        else:
            op = ops.ReLU(current)
        nodes.append(Node(op, (len(nodes) - 1,)))
        current = op.out_shape
    return tuple(nodes)


def _check_graph(nodes: tuple, output: int) -> None:
    if not nodes or not isinstance(nodes[0].op, ops.Input) or nodes[0].inputs:
        raise ValueError("a network graph starts with its Input node")
    for k, node in enumerate(nodes[1:], 1):
        if isinstance(node.op, ops.Input) or not node.inputs or any(not 0 <= i < k for i in node.inputs):
            raise ValueError(f"node {k} ({type(node.op).__name__}) takes inputs {node.inputs}: need earlier nodes")
        given = tuple(tuple(nodes[i].op.out_shape) for i in node.inputs)
        if given != tuple(tuple(s) for s in node.op.in_shapes):
            raise ValueError(f"node {k} ({type(node.op).__name__}) expects inputs of shapes {node.op.in_shapes}, "
                             f"gets {given}")
    if not 0 <= output < len(nodes):
        raise ValueError(f"output node {output} is not a node")


class Network:
    """A ReLU network: an immutable graph of operators; see the module docstring.

    ``Network(layers, input_shape=(), source="")`` builds a dense chain from Affine/ReLU layers;
    ``Network(nodes, input_shape, source, output=k)`` a graph from `Node`s (node 0: `ops.Input(input_shape)`;
    output: default the last node). input_shape: the shape the model's ONNX input declares (may include a batch
    axis of 1, e.g. (1, 1, 1, 5)); inputs and outputs are also read as flat C-order vectors of ``n_inputs =
    prod(input_shape)`` and ``n_outputs`` entries (VNN-LIB's X_i and Y_j). source: the ONNX file it came from.
    """

    def __init__(self, nodes, input_shape: tuple = (), source: str = "", output: int | None = None) -> None:
        items = tuple(nodes)
        if items and all(isinstance(x, (Affine, ReLU)) for x in items) or not items:
            shape = _check_chain(items, input_shape)
            self._layers, self._nodes = items, _chain_nodes(items, shape)
        else:
            if not isinstance(items[0], Node) or not isinstance(items[0].op, ops.Input):
                raise ValueError("a network graph starts with its Input node")
            shape = tuple(int(s) for s in input_shape) or tuple(items[0].op.shape)
            if tuple(items[0].op.shape) != shape:
                raise ValueError(f"input shape {shape} differs from the Input node's {items[0].op.shape}")
            self._layers, self._nodes = None, items
        self._output = len(self._nodes) - 1 if output is None else int(output)
        _check_graph(self._nodes, self._output)
        self._input_shape, self._source = shape, str(source)

    # --- the graph -------------------------------------------------------------------------------------
    def upto(self, k: int) -> "Network":
        """The network whose output is node k (its nodes up to k)."""
        return Network(self._nodes[:k + 1], self._input_shape, self._source, output=k)

    @property
    def nodes(self) -> tuple:
        return self._nodes

    @property
    def output(self) -> int:
        return self._output

    @property
    def input_shape(self) -> tuple:
        return self._input_shape

    @property
    def source(self) -> str:
        return self._source

    @property
    def output_shape(self) -> tuple:
        return tuple(self._nodes[self._output].op.out_shape)

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self._input_shape))

    @property
    def n_outputs(self) -> int:
        return int(np.prod(self.output_shape))

    @property
    def relu_nodes(self) -> list[int]:
        """Ids of the ReLU nodes, in order."""
        return [k for k, node in enumerate(self._nodes) if isinstance(node.op, ops.ReLU)]

    def multiply_adds(self) -> int:
        """Multiply-adds of the dense and convolution operators in one forward pass of one sample."""
        total = 0
        for node in self._nodes[1:]:
            if isinstance(node.op, ops.Conv2d):
                total += node.op.weight.numel() * int(np.prod(node.op.out_shape[-2:]))
            elif isinstance(node.op, ops.Dense):
                total += node.op.weight.numel()
        return total

    def op_names(self) -> list[str]:
        """The operator kinds in the graph (besides Input), sorted."""
        return sorted({type(node.op).__name__ for node in self._nodes[1:]})

    # --- dense chains ----------------------------------------------------------------------------------
    @property
    def is_chain(self) -> bool:
        return self._layers is not None

    def _not_a_chain(self) -> str:
        return ", ".join([name for name in self.op_names() if name not in ("Dense", "ReLU")] or ["branches"])

    def require_chain(self, method: str) -> None:
        """Raise UnsupportedNetwork unless the network is a dense chain (Dense and ReLU layers alternating)."""
        if self._layers is None:
            raise UnsupportedNetwork(f"method {method} does not support {self._not_a_chain()} yet: it needs a "
                                     "dense chain (Dense and ReLU layers alternating)")

    @property
    def layers(self) -> tuple:
        """The Affine/ReLU layers of a dense chain (module docstring)."""
        if self._layers is None:
            raise UnsupportedNetwork(f"a network with {self._not_a_chain()} has no dense layers: the method asked "
                                     "for supports dense chains (Dense and ReLU layers alternating) only so far")
        return self._layers

    @property
    def affines(self) -> list[Affine]:
        """The affine layers of a dense chain, in order."""
        return [layer for layer in self.layers if isinstance(layer, Affine)]

    @property
    def relu_after(self) -> list[bool]:
        """For each affine layer of a dense chain, whether a ReLU follows it."""
        layers = self.layers
        return [i + 1 < len(layers) and isinstance(layers[i + 1], ReLU)
                for i, layer in enumerate(layers) if isinstance(layer, Affine)]

    @property
    def widths(self) -> list[int]:
        """Sizes of the ReLU layers (nodes), in order (hidden widths, plus the outputs if clipped at 0)."""
        return [int(np.prod(self._nodes[k].op.shape)) for k in self.relu_nodes]

    @property
    def n_relus(self) -> int:
        return int(sum(self.widths))

    def summary(self) -> str:
        """One line: inputs -> widths -> outputs, ReLU count (a graph: its operator kinds instead of widths)."""
        if self._layers is None:
            return (f"{self.n_inputs} -> graph of {len(self._nodes) - 1} nodes ({', '.join(self.op_names())}) -> "
                    f"{self.n_outputs}, {self.n_relus} ReLUs")
        sizes = " -> ".join(str(s) for s in [self.n_inputs, *[a.n_out for a in self.affines]])
        tail = " (ReLU on outputs)" if self.relu_after[-1] else ""
        return f"{sizes}, {self.n_relus} ReLUs{tail}"

    # --- evaluation ------------------------------------------------------------------------------------
    def to(self, device=None, dtype=None) -> "Network":
        """The same network with its operators' tensors on `device` in `dtype` (for forward_torch)."""
        moved = object.__new__(Network)
        moved.__dict__.update(self.__dict__)
        moved._nodes = tuple(Node(node.op.to(device, dtype), node.inputs) for node in self._nodes)
        return moved

    def forward_torch(self, x: torch.Tensor, activation: Callable | None = None) -> torch.Tensor:
        """Outputs (N, n_outputs) for inputs (N, n_inputs) or (N, *input_shape), in the operators' dtype.

        activation(h, is_output): replaces torch.relu at the ReLU nodes (e.g. leaky gradients for attacks); it
        must compute max(h, 0) in value.
        """
        values = [x.reshape(x.shape[0], *self._input_shape)]
        for k, node in enumerate(self._nodes[1:], 1):
            args = [values[i] for i in node.inputs]
            if isinstance(node.op, ops.ReLU) and activation is not None:
                values.append(activation(args[0], k == self._output))
            else:
                values.append(node.op.forward(*args))
        return values[self._output].reshape(x.shape[0], -1)

    def relu_inputs_torch(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The inputs of every ReLU node (`relu_nodes` order) at inputs x (N, n_inputs): [(N, w_i)], differentiable."""
        values = []

        def record(h: torch.Tensor, _is_output: bool) -> torch.Tensor:
            values.append(h.reshape(h.shape[0], -1))
            return torch.relu(h)

        self.forward_torch(x, record)
        return values

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Outputs for x of shape (n_inputs,) or input_shape -> (n_outputs,); (N, ...) -> (N, n_outputs); float64."""
        x = np.asarray(x, dtype=np.float64)
        # one sample: a flat vector, or exactly the declared shape when that has extra axes ((1,1,1,5), not (1,n))
        single = x.size == self.n_inputs and (x.ndim <= 1 or (x.ndim > 2 and x.shape == self._input_shape))
        h = torch.from_numpy(x.reshape(1 if single else x.shape[0], self.n_inputs).copy())  # x may be read-only
        with torch.no_grad():
            out = self.forward_torch(h).numpy()
        return out[0] if single else out

    def torch(self, device="cpu", dtype=None) -> torch.nn.Module:
        """A torch module computing the same function on flat inputs (N, n_inputs) -> (N, n_outputs): an
        ``nn.Sequential`` of Linear/ReLU for a dense chain, else a module running `forward_torch`."""
        dtype = dtype or torch.float64
        if self._layers is None:
            return _GraphModule(self.to(device, dtype))
        modules = []
        for layer in self._layers:
            if isinstance(layer, Affine):
                linear = torch.nn.Linear(layer.n_in, layer.n_out, dtype=dtype)
                with torch.no_grad():
                    linear.weight.copy_(torch.from_numpy(layer.weight.copy()))
                    linear.bias.copy_(torch.from_numpy(layer.bias.copy()))
                modules.append(linear)
            else:
                modules.append(torch.nn.ReLU())
        return torch.nn.Sequential(*modules).to(device=device)


class _GraphModule(torch.nn.Module):
    """`Network.forward_torch` as a module (the operators' tensors are constants, not parameters)."""

    def __init__(self, network: Network) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_torch(x)


def from_torch(module, input_shape: tuple = ()) -> Network:
    """A `Network` from a torch ``nn.Sequential`` of Flatten / Linear / ReLU modules (weights copied, float64)."""
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


def dense_graph(weights: list, relu_after: list[bool]) -> Network:
    """A dense chain as a graph over the given torch tensors, not copied (bounds through it stay differentiable
    w.r.t. them): weights [(W (out, in), b (out,))], relu_after[i] whether a ReLU follows affine i."""
    n_inputs = int(weights[0][0].shape[1])
    shape = (n_inputs,)
    nodes = [Node(ops.Input(shape), ())]
    for (W, b), relu in zip(weights, relu_after):
        nodes.append(Node(ops.Dense(W, b, (shape,), (int(W.shape[0]),)), (len(nodes) - 1,)))
        shape = (int(W.shape[0]),)
        if relu:
            nodes.append(Node(ops.ReLU(shape), (len(nodes) - 1,)))
    return Network(tuple(nodes), (n_inputs,))


def random_network(sizes: list[int], rng: np.random.Generator, relu_on_output: bool = False,
                   scale: float = 1.0) -> Network:
    """A random fully connected ReLU net with the given layer sizes [n_in, h1, ..., n_out] (for tests)."""
    layers: list = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(Affine(rng.normal(size=(n_out, n_in)) * scale / np.sqrt(n_in), rng.normal(size=n_out) * 0.1))
        if i < len(sizes) - 2 or relu_on_output:
            layers.append(ReLU())
    return Network(tuple(layers))
