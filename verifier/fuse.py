"""Exact simplifications of a freshly loaded graph: dense chains, and fusions of adjacent affine operators.

`simplify(nodes, output)` returns either the Affine/ReLU layers of a dense chain or the simplified graph.

Dense chain: when the graph is a single path whose linear operators all have cheap dense matrices (Dense,
Elementwise, Reshape, Transpose, Pad), every run of them between ReLUs folds into one `Affine`, with the
arithmetic of the chain loader this replaces (so ACAS Xu and MNIST nets keep bit for bit the same weights): an
identity Affine in front of a leading ReLU, relu(relu(x)) = relu(x).

Other graphs keep their operators; these fusions apply (each exact up to rounding, and never growing a weight):
ReLU after ReLU is dropped; an Elementwise (batch norm, scaling) folds into a Dense or another Elementwise before
it, a per-channel one into a Conv2d before it; a Dense or Gather absorbs a Reshape before it, a Gather a Pad,
Transpose or Gather (index composition), a Dense a single-consumer Transpose/Elementwise/Pad (through the
operator's transpose) or a Dense when the product is not larger; a Conv2d without padding absorbs a per-channel
Elementwise before it (input normalisation). Nodes the output does not depend on are dropped.
"""
from __future__ import annotations

from dataclasses import replace as _replace

import numpy as np
import torch

from . import ops
from .network import Affine, Node, ReLU

_CHEAP = (ops.Dense, ops.Elementwise, ops.Reshape, ops.Transpose, ops.Pad)


# --- dense chains ----------------------------------------------------------------------------------------------
def _path(nodes: list[Node], output: int) -> list[int] | None:
    """The node ids from the input to the output when the graph is a single path of single-input nodes."""
    path, k = [], output
    while k != 0:
        if len(nodes[k].inputs) != 1:
            return None
        path.append(k)
        k = nodes[k].inputs[0]
    return path[::-1]


class _ChainFolder:
    """The layers built so far and the pending affine map (None: identity / zero) since the last ReLU."""

    def __init__(self, size: int) -> None:
        self.layers: list = []
        self.size = size
        self.weight: np.ndarray | None = None
        self.bias: np.ndarray | None = None

    def linear(self, matrix: np.ndarray, offset: np.ndarray | None) -> None:
        self.weight = matrix if self.weight is None else matrix @ self.weight
        self.bias = None if self.bias is None else matrix @ self.bias
        if offset is not None:
            self.bias = offset if self.bias is None else self.bias + offset
        self.size = matrix.shape[0]

    def elementwise(self, scale: np.ndarray | None, offset: np.ndarray | None) -> None:
        if scale is not None:
            self.weight = np.diag(scale) if self.weight is None else scale[:, None] * self.weight
            self.bias = None if self.bias is None else scale * self.bias
        if offset is not None:
            self.bias = offset if self.bias is None else self.bias + offset

    def flush(self) -> None:
        weight = np.eye(self.size) if self.weight is None else self.weight
        bias = np.zeros(weight.shape[0]) if self.bias is None else self.bias
        self.layers.append(Affine(weight, bias))
        self.weight = self.bias = None

    def relu(self) -> None:
        pending = self.weight is not None or self.bias is not None
        if pending or not self.layers or not isinstance(self.layers[-1], ReLU):  # relu(relu(x)) = relu(x)
            self.flush()
            self.layers.append(ReLU())

    def finish(self) -> list:
        if self.weight is not None or self.bias is not None or not self.layers:
            self.flush()
        return self.layers


def _flat(t: torch.Tensor | None, shape: tuple) -> np.ndarray | None:
    return None if t is None else np.broadcast_to(t.numpy(), shape).reshape(-1).copy()


def dense_chain(nodes: list[Node], output: int) -> list | None:
    """The Affine/ReLU layers of the graph when it is a dense chain (module docstring), else None."""
    path = _path(nodes, output)
    if path is None or not all(isinstance(nodes[k].op, (*_CHEAP, ops.ReLU)) for k in path):
        return None
    folder = _ChainFolder(int(np.prod(nodes[0].op.shape)))
    for k in path:
        op = nodes[k].op
        if isinstance(op, ops.ReLU):
            folder.relu()
        elif isinstance(op, ops.Dense):
            folder.linear(op.weight.numpy(), None if op.bias is None else op.bias.numpy())
        elif isinstance(op, ops.Elementwise):
            folder.elementwise(_flat(op.scale, op.in_shape), _flat(op.shift, op.in_shape))
        elif not isinstance(op, ops.Reshape):  # Transpose, Pad: 0/1 matrices
            folder.linear(op.sparse()[0].toarray(), None)
    return folder.finish()


# --- graph fusions ---------------------------------------------------------------------------------------------
def _per_channel(t: torch.Tensor | None, shape: tuple) -> torch.Tensor | None:
    """t broadcast to shape (.., C, H, W) as a (C,) vector when it is constant over H and W, else None."""
    if t is None:
        return torch.ones(shape[-3], dtype=torch.float64)
    full = torch.broadcast_to(t, shape).reshape(shape[-3], -1)
    return full[:, 0].clone() if bool((full == full[:, :1]).all()) else None


def _after(producer, op: ops.Elementwise):
    """producer followed by the Elementwise op, as one operator, or None."""
    if isinstance(producer, ops.Elementwise):
        scale = producer.scale if op.scale is None else (op.scale if producer.scale is None else
                                                         producer.scale * op.scale)
        shift = producer.shift if producer.shift is None or op.scale is None else producer.shift * op.scale
        shift = op.shift if shift is None else (shift if op.shift is None else shift + op.shift)
        return ops.Elementwise(scale, shift, producer.in_shapes)
    if isinstance(producer, ops.Dense):
        scale = _flat(op.scale, op.in_shape)
        scale = torch.ones(producer.weight.shape[0], dtype=torch.float64) if scale is None else torch.tensor(scale)
        bias = torch.zeros_like(scale) if producer.bias is None else producer.bias
        shift = 0.0 if op.shift is None else torch.tensor(_flat(op.shift, op.in_shape))
        return ops.Dense(producer.weight * scale[:, None], bias * scale + shift, producer.in_shapes,
                         producer.out_shape)
    if isinstance(producer, ops.Conv2d) and not isinstance(producer, ops.AvgPool2d):
        scale, shift = _per_channel(op.scale, op.in_shape), _per_channel(op.shift, op.in_shape)
        if scale is None or shift is None:
            return None
        shift = shift if op.shift is not None else torch.zeros_like(scale)
        bias = torch.zeros_like(scale) if producer.bias is None else producer.bias
        return ops.Conv2d(producer.weight * scale[:, None, None, None], bias * scale + shift, producer.in_shapes,
                          producer.stride, producer.padding, producer.dilation, producer.groups)
    return None


def _before(consumer, producer):
    """consumer applied after producer (a single-input linear op), as one operator, or None."""
    if isinstance(consumer, (ops.Dense, ops.Gather)) and isinstance(producer, ops.Reshape):  # same flat order
        return _replace(consumer, in_shapes=producer.in_shapes)
    if isinstance(consumer, ops.Gather) and isinstance(producer, (ops.Pad, ops.Transpose, ops.Gather)):
        matrix = producer.sparse()[0].tocsr()  # a selection: at most one 1 per row
        source = np.full(matrix.shape[0], -1, dtype=np.int64)
        source[np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))] = matrix.indices
        index = consumer.index.numpy()
        index = np.where(index >= 0, source[index], -1)
        return ops.Gather(torch.tensor(index), producer.in_shapes, consumer.out_shape)
    if isinstance(consumer, ops.Dense) and isinstance(producer, _CHEAP):
        if isinstance(producer, ops.Dense):
            n_out, n_mid = consumer.weight.shape
            if n_out * producer.weight.shape[1] > n_mid * (n_out + producer.weight.shape[1]):
                return None
        rows = consumer.weight.reshape(-1, *producer.out_shape)
        (weight,) = producer.backward(rows)
        zero = torch.zeros(1, *producer.in_shape, dtype=torch.float64)
        bias = consumer.forward(producer.forward(zero)).reshape(-1)
        bias = None if consumer.bias is None and producer.offset is None else bias
        return ops.Dense(weight.reshape(weight.shape[0], -1), bias, producer.in_shapes, consumer.out_shape)
    if (isinstance(consumer, ops.Conv2d) and not isinstance(consumer, ops.AvgPool2d)
            and isinstance(producer, ops.Elementwise) and consumer.padding == (0, 0) and consumer.groups == 1):
        scale, shift = _per_channel(producer.scale, producer.in_shape), _per_channel(producer.shift,
                                                                                     producer.in_shape)
        if scale is None or shift is None:
            return None
        shift = shift if producer.shift is not None else torch.zeros_like(scale)
        bias = torch.zeros(consumer.weight.shape[0], dtype=torch.float64) if consumer.bias is None else consumer.bias
        weight = consumer.weight * scale[None, :, None, None]
        return ops.Conv2d(weight, bias + (consumer.weight * shift[None, :, None, None]).sum((1, 2, 3)),
                          producer.in_shapes, consumer.stride, consumer.padding, consumer.dilation, consumer.groups)
    return None


def _prune(nodes: list[Node], output: int) -> tuple[list[Node], int]:
    """Drop the nodes the output does not depend on; renumber."""
    needed, stack = {0}, [output]
    while stack:
        k = stack.pop()
        if k not in needed:
            needed.add(k)
            stack.extend(nodes[k].inputs)
    keep = sorted(needed)
    new_id = {k: i for i, k in enumerate(keep)}
    return [Node(nodes[k].op, tuple(new_id[i] for i in nodes[k].inputs)) for k in keep], new_id[output]


def fuse(nodes: list[Node], output: int) -> tuple[list[Node], int]:
    """The graph with the fusions of the module docstring applied, pruned."""
    nodes, output = _prune(list(nodes), output)
    changed = True
    while changed:
        changed = False
        uses = np.bincount([i for node in nodes for i in node.inputs] + [output], minlength=len(nodes))
        for k, node in enumerate(nodes):
            if len(node.inputs) != 1 or node.inputs[0] == 0:
                continue
            (p,) = node.inputs
            producer = nodes[p]
            if isinstance(node.op, ops.ReLU) and isinstance(producer.op, ops.ReLU):
                nodes[k] = Node(node.op, producer.inputs)
            elif len(producer.inputs) != 1 or uses[p] != 1 and not isinstance(producer.op, ops.Reshape):
                continue  # a shared producer stays (a reshape costs nothing to keep for its other consumers)
            else:
                merged = _after(producer.op, node.op) if isinstance(node.op, ops.Elementwise) else \
                    _before(node.op, producer.op)
                if merged is None:
                    continue
                nodes[k] = Node(merged, producer.inputs)
            changed = True
            break
        nodes, output = _prune(nodes, output)
    return nodes, output


def simplify(nodes: list[Node], output: int) -> tuple[list | None, list[Node], int]:
    """(dense chain layers or None, fused graph nodes, output id)."""
    nodes, output = _prune(list(nodes), output)
    layers = dense_chain(nodes, output)
    if layers is not None:
        return layers, nodes, output
    nodes, output = fuse(nodes, output)
    return None, nodes, output
