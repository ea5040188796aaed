"""Symbolic interval bounds for MANY small input boxes at once, on any network graph: the bounding engine of input
splitting.

For networks with few inputs (ACAS Xu has 5) a linear function of the input is a short vector, so every node's
lower and upper linear bounds in terms of x can be pushed FORWARD through the graph cheaply, in topological order.
A node's functions are tensors (B, n + 1, *shape) for B boxes and n inputs: slots 0..n-1 the coefficients on x,
slot n the constant. Through a linear operator, from its inputs' lower and upper functions a <= b:
``lower = W+ a + W- b = W (a + b)/2 - |W| (b - a)/2`` and ``upper = W (a + b)/2 + |W| (b - a)/2``, with the
operator's `linear` map on the mid and `forward_abs` on the radius (the n + 1 slots are extra batch), its offset
added to the constant. Through a ReLU: the engine's relaxation (`engine.relax`, adaptive slopes) of its input's
bounds, the lower slope times the lower function, the upper line on the upper function. Concretized over the box
the functions give each node's bounds, intersected with plain intervals (`interval.interval_step`).

That is loose deep in a network: each node's upper and lower functions are relaxed independently. So at each ReLU
input (and the output) the (box, entry) pairs the forward bounds leave unstable are re-bounded by the engine's
backward pass to the input (CROWN's back-substitution) through the relaxations fixed so far, each pair with its
own box's relaxations: only the unstable pairs pay for depth, and the tightened bounds feed the relaxations (and
the forward functions) of the nodes after. A node that is one linear operator on a linear function of the input,
or on a ReLU of one, skips it: there the forward functions already equal the backward pass.

The objective rows ``C f(x) + d`` get the engine's backward pass (`engine.linear_rows`); it also gives a linear
lower bound ``A x + c`` per row and box, which `clip` uses to cut the box down to where the rows can still be
<= 0, and the rows reaching each ReLU, which `split_scores` weighs.
Soundness: float64 throughout, no directed rounding (errors ~1e-16 relative, like every bound method here).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import ops
from ..network import Network
from ..spec import InputBox
from . import engine
from .base import BoundResult, check_problem
from .interval import interval_step, relu_inputs

Tensor = torch.Tensor
PASS_ENTRIES = 1 << 16  # row entries per refinement pass (pairs x 2 x node size): small passes stay in cache


@dataclass(frozen=True)
class Propagation:
    """The forward pass over B boxes: bounds {node id: (l, u) (B, *shape)} of every node, relaxations {ReLU node
    id: engine.Relaxation, tensors (B, 1, *shape)}, coef {ReLU input node id: the mean of the node's lower and upper
    functions' coefficients on x (B, n, *shape)} (for split scores)."""

    bounds: dict
    relaxations: dict
    coef: dict


def _with_offset(f: Tensor, offset: Tensor | None) -> Tensor:
    """Functions f (B, n + 1, *shape) plus a constant broadcastable to (B, 1, *shape) (a new tensor)."""
    if offset is None:
        return f
    return torch.cat([f[:, :-1], f[:, -1:] + offset], 1)


def _through(op, inputs: list) -> tuple[Tensor, Tensor]:
    """Lower and upper functions (B, n + 1, *out_shape) of a linear node from its inputs' [(lower, upper)]; when
    every input is exact (lower is upper) so is the output."""
    B, m = inputs[0][0].shape[:2]

    def batch(f: Tensor) -> Tensor:
        return f.reshape(B * m, *f.shape[2:])

    if all(low is up for low, up in inputs):
        out = _with_offset(op.linear(*(batch(low) for low, _ in inputs)).reshape(B, m, *op.out_shape), op.offset)
        return out, out
    mid = op.linear(*(batch((low + up) / 2) for low, up in inputs)).reshape(B, m, *op.out_shape)
    rad = op.forward_abs(*(batch((up - low) / 2) for low, up in inputs)).reshape(B, m, *op.out_shape)
    return _with_offset(mid - rad, op.offset), _with_offset(mid + rad, op.offset)


def _concretize(low: Tensor, up: Tensor, centre: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """The min of the lower functions and the max of the upper ones (B, n + 1, *shape) over each box; centre,
    radius (B, n) -> (B, *shape) each."""
    shape, centre, radius = (low.shape[0], *low.shape[2:]), centre.unsqueeze(1), radius.unsqueeze(1)

    def mid_spread(f: Tensor) -> tuple[Tensor, Tensor]:
        flat = f.reshape(*f.shape[:2], -1)
        A = flat[:, :-1]
        return (centre @ A).squeeze(1) + flat[:, -1], (radius @ A.abs()).squeeze(1)

    low_mid, low_spread = mid_spread(low)
    up_mid, up_spread = (low_mid, low_spread) if up is low else mid_spread(up)
    return (low_mid - low_spread).reshape(shape), (up_mid + up_spread).reshape(shape)


def _without_refinement(network: Network) -> set[int]:
    """Nodes whose forward functions equal a backward pass from them: linear functions of the input (no ReLU
    before them), and single-input linear operators on a ReLU of one (the relaxation's sides are picked by the
    same signs both ways)."""
    exact, plain = {0}, set()
    for k, node in enumerate(network.nodes[1:], 1):
        if isinstance(node.op, ops.ReLU):
            continue
        if all(i in exact for i in node.inputs):
            exact.add(k)
        elif len(node.inputs) == 1:
            source = network.nodes[node.inputs[0]]
            if isinstance(source.op, ops.ReLU) and source.inputs[0] in exact:
                plain.add(k)
    return exact | plain


def propagate(network: Network, lo: Tensor, hi: Tensor, refine: bool = True) -> Propagation:
    """Bounds of every node for B boxes lo, hi (B, n) (module docstring); with refine, the unstable (box, entry)
    pairs of the ReLU inputs and of the output get a backward pass (`_refine`). Each entry keeps the better of
    its forward and backward bounds for the relaxations in place; across nodes this is not monotone (tighter
    bounds change later relaxations, as in every CROWN-style pass)."""
    B, n = lo.shape
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    shape = network.input_shape
    identity = torch.cat([torch.eye(n, dtype=lo.dtype), lo.new_zeros(1, n)]).reshape(1, n + 1, *shape)
    funcs = {0: (identity.expand(B, *identity.shape[1:]),) * 2}
    bounds = {0: (lo.reshape(B, *shape), hi.reshape(B, *shape))}
    relaxations, coef = {}, {}
    pre_activation = engine.pre_activations(network)
    tighten = set()
    if refine:
        tighten = (pre_activation | {network.output}) - _without_refinement(network)
    last_use = {i: k for k, node in enumerate(network.nodes) for i in node.inputs}
    for k, node in enumerate(network.nodes[1:], 1):
        if isinstance(node.op, ops.ReLU):
            (i,) = node.inputs
            r = relaxations[k] = engine.relax(*bounds[i], "adaptive")
            low, up = funcs[i]
            funcs[k] = (low * r.rule_slope, _with_offset(up * r.upper_slope, r.upper_offset))
            bounds[k] = interval_step(network, k, bounds)
        else:
            low, up = funcs[k] = _through(node.op, [funcs[i] for i in node.inputs])
            l, u = interval_step(network, k, bounds)
            sym_l, sym_u = _concretize(low, up, centre, radius)
            l, u = torch.maximum(l, sym_l), torch.minimum(u, sym_u)
            if k in tighten:
                l, u = _refine(network, k, l, u, relaxations, centre, radius)
            bounds[k] = (l, u)
            if k in pre_activation:
                coef[k] = ((low + up) / 2)[:, :-1]
        for i in node.inputs:  # functions nobody reads again
            if last_use[i] == k:
                del funcs[i]
    return Propagation(bounds, relaxations, coef)


_RELAXATION_FIELDS = tuple(f.name for f in dataclasses.fields(engine.Relaxation))


def _take(relaxation: engine.Relaxation, boxes: Tensor) -> engine.Relaxation:
    """The relaxation of the boxes `boxes` (P,) (repeats allowed): tensors (P, 1, *shape)."""
    return engine.Relaxation(**{name: getattr(relaxation, name)[boxes] for name in _RELAXATION_FIELDS})


def _refine(network: Network, k: int, l: Tensor, u: Tensor, relaxations: dict, centre: Tensor, radius: Tensor
            ) -> tuple[Tensor, Tensor]:
    """l, u (B, *shape) of node k tightened on their unstable (box, entry) pairs: per pair the rows +e_i and -e_i
    (through a Dense node, +W_i and -W_i on its input) pushed back to the input by `engine.backward` with that
    box's relaxations, at most PASS_ENTRIES row entries per pass."""
    B = l.shape[0]
    flat_l, flat_u = l.reshape(B, -1), u.reshape(B, -1)
    boxes, entries = torch.nonzero((flat_l < 0) & (flat_u > 0), as_tuple=True)
    if boxes.numel() == 0:
        return l, u
    node = network.nodes[k]
    dense = isinstance(node.op, ops.Dense)
    top = node.inputs[0] if dense else k
    top_shape = network.nodes[top].op.out_shape
    size = int(np.prod(top_shape))
    lows = []
    for pairs in torch.arange(boxes.numel()).split(max(16, PASS_ENTRIES // (2 * size))):
        b, e = boxes[pairs], entries[pairs]
        if dense:
            rows = node.op.weight[e]
            const = l.new_zeros(e.numel()) if node.op.bias is None else node.op.bias[e]
        else:
            rows = l.new_zeros(e.numel(), size)
            rows[torch.arange(e.numel()), e] = 1.0
            const = l.new_zeros(e.numel())
        A = torch.stack([rows, -rows], 1).reshape(e.numel(), 2, *top_shape)
        picked = {r: _take(rx, b) for r, rx in relaxations.items()}
        lows.append(engine.backward(network, top, A, torch.stack([const, -const], 1), picked, centre[b], radius[b]))
    low = torch.cat(lows)
    flat_l, flat_u = flat_l.clone(), flat_u.clone()
    flat_l[boxes, entries] = torch.maximum(flat_l[boxes, entries], low[:, 0])
    flat_u[boxes, entries] = torch.minimum(flat_u[boxes, entries], -low[:, 1])
    return flat_l.reshape(l.shape), flat_u.reshape(u.shape)


def split_scores(network: Network, lo: Tensor, hi: Tensor, prop: Propagation, rows: dict, row: Tensor) -> Tensor:
    """How much bisecting each input dimension should help, (B, n): for every unstable neuron, the weight of its
    relaxation in the objective row `row` (B,) (|coefficient of the rows reaching its ReLU| x the triangle's
    height -l u / (u - l), the relaxation's upper offset), per unit of its pre-activation range, times how much of
    that range input dimension k spans (|symbolic coefficient on x_k| x width_k). A bisection shrinks the ranges
    of the neurons it spans most. rows: {ReLU node id: (B or 1, K, *shape)}, as `engine.linear_rows` gives."""
    B = lo.shape[0]
    score = torch.zeros_like(lo)
    for r, lam in rows.items():
        i = network.nodes[r].inputs[0]
        l, u = prop.bounds[i]
        height = prop.relaxations[r].upper_offset[:, 0]  # 0 where stable
        weight = engine.picked_rows(lam, row).abs() * height / (u - l).clamp(min=1e-300)
        coef = prop.coef[i].abs().reshape(B, lo.shape[1], -1)
        score = score + (coef @ weight.reshape(B, -1, 1)).squeeze(-1)
    return score * (hi - lo)


def clip(lo: Tensor, hi: Tensor, A: Tensor, c: Tensor, rounds: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Shrink boxes to contain every x with ``x @ A_r + c_r <= 0`` for all rows r: A (B, m, n), c (B, m).

    Each row bounds each coordinate given the others' extremes (bound tightening); rows with c = -inf impose
    nothing. The new bounds are widened outwards by a relative 1e-9 of the width plus 1e-12 so that rounding
    never cuts off a point of the set. Returns (lo, hi, empty (B,)): empty boxes hold no such x.
    """
    inf = torch.full_like(A, torch.inf)
    for _ in range(rounds):
        terms = torch.minimum(A * lo.unsqueeze(1), A * hi.unsqueeze(1))  # (B, m, n): each coordinate's minimum
        rest = terms.sum(-1, keepdim=True) - terms
        limit = (-c.unsqueeze(-1) - rest) / torch.where(A == 0, torch.ones_like(A), A)
        new_hi = torch.where(A > 0, limit, inf).amin(1)
        new_lo = torch.where(A < 0, limit, -inf).amax(1)
        slack = 1e-9 * (hi - lo) + 1e-12
        lo, hi = torch.maximum(lo, torch.nan_to_num(new_lo, nan=-torch.inf) - slack), \
            torch.minimum(hi, torch.nan_to_num(new_hi, nan=torch.inf) + slack)
    return lo, hi, (lo > hi).any(1)


def bound(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray | None = None, *,
          layer_bounds: list | None = None, refine: bool = True) -> BoundResult:
    """Lower bounds of ``C @ f(x) + d`` over one box (the shared signature; given layer_bounds are ignored: this
    method computes its own). Layer bounds: flat numpy (l, u) per node of `interval.relu_inputs`;
    info["unstable"]: unstable neurons per ReLU node."""
    start = time.perf_counter()
    C, d = check_problem(network, box, C, d)
    network = network.to("cpu", torch.float64)
    lo, hi = (torch.tensor(v).unsqueeze(0) for v in (box.lo, box.hi))
    with torch.no_grad():
        prop = propagate(network, lo, hi, refine)
        lower, *_ = engine.linear_rows(network, lo, hi, torch.tensor(C)[None], torch.tensor(d)[None],
                                       prop.relaxations, prop.bounds)
    bounds = [tuple(x[0].reshape(-1).numpy() for x in prop.bounds[k]) for k in relu_inputs(network)]
    unstable = [int(rx.unstable.sum()) for rx in prop.relaxations.values()]
    return BoundResult(lower[0].numpy(), bounds, "symbolic", time.perf_counter() - start, {"unstable": unstable})
