"""Interval bound propagation (IBP): the loosest and cheapest certified bound.

Dense chains use numpy layer by layer (`interval_layer_bounds`); any other graph uses the operators' own maps in
torch (`node_bounds`): a linear node maps the inputs' centres with `forward` and their radii with `forward_abs`
(|W|), a ReLU clips its interval. Layer bounds of a graph are those of the ReLU nodes' inputs, in order, then
the outputs' bounds (for a chain: per affine layer, the last being the outputs).

L2/L1 balls (`spec.InputBall`): the nodes that are linear maps of the input alone (before any ReLU: the first
layer) take ``W_i x0 + b_i -+ eps ||W_i||_*`` per entry (the exact range over the ball, dual norm of the row of
the composed map), intersected with the interval of the bounding box; later nodes propagate intervals as usual.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch

from .. import ops

from ..network import Network
from ..norms import dual_norm_np
from ..spec import InputBall, InputBox
from .base import BoundResult, check_problem


def interval_layer_bounds(network: Network, lo: np.ndarray, hi: np.ndarray, first: tuple | None = None
                          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-activation bounds [(l, u)] of every affine layer for inputs in [lo, hi] (each (width,) float64);
    first: bounds (l, u) of the first layer intersected with its interval (a ball's, `ball_ranges`)."""
    bounds = []
    for affine, relu in zip(network.affines, network.relu_after):
        center, radius = (lo + hi) / 2, (hi - lo) / 2
        mid = affine.weight @ center + affine.bias
        rad = np.abs(affine.weight) @ radius
        l, u = mid - rad, mid + rad
        if first is not None and not bounds:
            l, u = np.maximum(l, first[0]), np.minimum(u, first[1])
        bounds.append((l, u))
        lo, hi = (np.maximum(l, 0.0), np.maximum(u, 0.0)) if relu else (l, u)
    return bounds


Tensor = torch.Tensor


def node_bounds(network: Network, lo: Tensor, hi: Tensor, given: dict | None = None) -> list[tuple[Tensor, Tensor]]:
    """Interval bounds [(l, u)] of every node's output, tensors (B, *shape), for B boxes lo, hi (B, n_inputs).

    given: {node id: (l, u)} bounds (broadcastable to (B, *shape)) intersected with that node's computed ones.
    """
    given = given or {}
    bounds = [(lo.reshape(lo.shape[0], *network.input_shape), hi.reshape(hi.shape[0], *network.input_shape))]
    for k in range(1, len(network.nodes)):
        l, u = interval_step(network, k, bounds)
        if k in given:
            l, u = torch.maximum(l, given[k][0]), torch.minimum(u, given[k][1])
        bounds.append((l, u))
    return bounds


def interval_step(network: Network, k: int, bounds) -> tuple[Tensor, Tensor]:
    """Interval (l, u) of node k from its inputs' bounds (``bounds[i]`` = (l_i, u_i), a list or a dict): a linear
    node maps the centres with `forward` and the radii with `forward_abs`, a ReLU clips."""
    node = network.nodes[k]
    args = [bounds[i] for i in node.inputs]
    if isinstance(node.op, ops.ReLU):
        return args[0][0].clamp(min=0), args[0][1].clamp(min=0)
    mid = node.op.forward(*[(a + b) / 2 for a, b in args])
    rad = node.op.forward_abs(*[(b - a) / 2 for a, b in args])
    l, u = mid - rad, mid + rad
    pair = max_operands(network, k)
    if pair is not None:  # max(a, b) lies in [max(l_a, l_b), max(u_a, u_b)]: tighter than b + relu(a - b)'s sum
        (la, ua), (lb, ub) = bounds[pair[0]], bounds[pair[1]]
        l, u = torch.maximum(l, torch.maximum(la, lb)), torch.minimum(u, torch.maximum(ua, ub))
    return l, u


def max_operands(network: Network, k: int) -> tuple[int, int] | None:
    """(a, b) when node k computes max(a, b) as ``relu(a - b) + b`` (how MaxPool is rewritten at load:
    onnx_handlers._max_pool), else None."""
    node = network.nodes[k]
    if not (isinstance(node.op, ops.Sum) and node.op.coefficients == (1.0, 1.0)):
        return None
    relu, b = node.inputs
    if not isinstance(network.nodes[relu].op, ops.ReLU):
        return None
    diff = network.nodes[network.nodes[relu].inputs[0]]
    if isinstance(diff.op, ops.Sum) and diff.op.coefficients == (1.0, -1.0) and diff.inputs[1] == b:
        return diff.inputs[0], b
    return None


def relu_inputs(network: Network) -> list[int]:
    """What the layer bounds of a graph describe: the ids of the nodes feeding a ReLU node (in order), then the
    output node unless it is a ReLU (as a chain's layer bounds: per affine layer, ReLU or not)."""
    ids = [network.nodes[k].inputs[0] for k in network.relu_nodes]
    return ids if isinstance(network.nodes[network.output].op, ops.ReLU) else ids + [network.output]


def by_node(network: Network, layer_bounds: list, dtype: torch.dtype = torch.float64, device="cpu") -> dict:
    """Layer bounds [(l, u) flat numpy or None] per `relu_inputs` node -> {node id: (l, u) tensors (1, *shape)}."""
    described = relu_inputs(network)
    if len(layer_bounds) != len(described):
        raise ValueError(f"layer_bounds has {len(layer_bounds)} entries, the network describes {len(described)}")
    return {k: tuple(torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype, device=device)
                     .reshape(1, *network.nodes[k].op.out_shape) for x in lu)
            for k, lu in zip(described, layer_bounds) if lu is not None}


def ball_ranges(network: Network, ball: InputBall) -> dict:
    """{node id: (l, u) flat float64}: the exact ranges over the ball (its box ignored) of the non-ReLU nodes that
    are linear maps of the input alone (the operators' sparse maps composed from the input; those are sparse even
    for convolutions): ``M x0 + c -+ eps ||M_i||_*`` per entry."""
    maps = {0: (sp.identity(network.n_inputs, format="csr"), np.zeros(network.n_inputs))}
    ranges = {}
    for k in range(1, len(network.nodes)):
        node = network.nodes[k]
        if isinstance(node.op, ops.ReLU) or not all(i in maps for i in node.inputs):
            continue
        A, offset = node.op.sparse()
        parts = [maps[i] for i in node.inputs]
        M = sp.vstack([m for m, _ in parts], format="csr")
        maps[k] = ((A @ M).tocsr(), A @ np.concatenate([c for _, c in parts]) + offset)
        centre = maps[k][0] @ ball.x0 + maps[k][1]
        radius = ball.eps * dual_norm_np(maps[k][0], ball.norm)
        ranges[k] = (centre - radius, centre + radius)
    return ranges


def _graph_bound(network: Network, box: InputBox | InputBall, C: np.ndarray, d: np.ndarray,
                 layer_bounds: list | None) -> tuple[np.ndarray, list]:
    """IBP on a graph: lower bounds (k,) and layer bounds (module docstring), numpy float64."""
    described = relu_inputs(network)
    given = {} if layer_bounds is None else by_node(network, layer_bounds)
    if isinstance(box, InputBall):
        for k, (l, u) in ball_ranges(network, box).items():
            shape = network.nodes[k].op.out_shape
            l, u = (torch.tensor(x, device="cpu").reshape(1, *shape) for x in (l, u))
            if k in given:
                l, u = torch.maximum(l, given[k][0]), torch.minimum(u, given[k][1])
            given[k] = (l, u)
        box = box.box
    lo, hi = (torch.tensor(x, dtype=torch.float64, device="cpu")[None] for x in (box.lo, box.hi))
    with torch.no_grad():
        bounds = node_bounds(network, lo, hi, given)
        flat = [(bounds[k][0].reshape(-1).numpy(), bounds[k][1].reshape(-1).numpy()) for k in described]
        l, u = (x.reshape(-1).numpy() for x in bounds[network.output])
        lower = np.clip(C, 0, None) @ l + np.clip(C, None, 0) @ u + d
        last = network.nodes[network.output]
        if isinstance(last.op, ops.Dense):  # push the last dense map through C first: tighter
            a, b = (x.reshape(-1).numpy() for x in bounds[last.inputs[0]])
            weight = C @ last.op.weight.numpy()
            offset = d if last.op.bias is None else C @ last.op.bias.numpy() + d
            lower = np.maximum(lower, np.clip(weight, 0, None) @ a + np.clip(weight, None, 0) @ b + offset)
    return lower, flat


def bound(network: Network, box: InputBox | InputBall, C: np.ndarray, d: np.ndarray | None = None, *,
          layer_bounds: list | None = None) -> BoundResult:
    """IBP lower bounds of ``C @ f(x) + d`` over the box or the L2/L1 ball ∩ box (module docstring); C (k,
    n_outputs), d (k,).

    The last layer's interval is pushed through C directly (tighter than bounding f first).
    Given layer_bounds are intersected with the computed ones.
    """
    start = time.perf_counter()
    C, d = check_problem(network, box, C, d)
    if not network.is_chain:
        lower, bounds = _graph_bound(network, box, C, d, layer_bounds)
        return BoundResult(lower, bounds, "ibp", time.perf_counter() - start)
    first, ball = None, box if isinstance(box, InputBall) else None
    if ball is not None:  # a chain's node 1 is its first Dense layer
        first, box = ball_ranges(network, ball)[1], box.box
    bounds = interval_layer_bounds(network, box.lo, box.hi, first)
    if layer_bounds is not None:
        bounds = [(np.maximum(l, gl), np.minimum(u, gu)) for (l, u), (gl, gu) in zip(bounds, layer_bounds)]
    if network.relu_after[-1]:  # outputs are clipped at 0: bound C y over the outputs' own interval
        lo, hi = np.maximum(bounds[-1][0], 0.0), np.maximum(bounds[-1][1], 0.0)
        weight, offset = C, d
    else:  # push the last affine map through C first: tighter than bounding the outputs
        lo, hi = (box.lo, box.hi) if len(bounds) == 1 else (np.maximum(bounds[-2][0], 0.0),
                                                            np.maximum(bounds[-2][1], 0.0))
        last = network.affines[-1]
        weight, offset = C @ last.weight, C @ last.bias + d
    lower = weight.clip(min=0) @ lo + weight.clip(max=0) @ hi + offset
    if ball is not None and len(bounds) == 1 and not network.relu_after[-1]:  # a linear model: Hölder on the rows
        lower = np.maximum(lower, weight @ ball.x0 + offset - ball.eps * dual_norm_np(weight, ball.norm))
    return BoundResult(lower, bounds, "ibp", time.perf_counter() - start)
