"""The dual network of Wong & Kolter (2018) / CROWN: the `dual` bound method, over the bound engine.

A linear function of a node's values is pushed backwards through the network (bounds/engine.py): through linear
operators exactly, through a ReLU by linear bounds chosen by the sign of each coefficient (lower line
``h >= alpha z`` under a positive one, the triangle's upper line under a negative one), and at the input it is
minimized over the box in closed form. Lower slopes: "wk" takes ``alpha = u / (u - l)`` (the paper's choice),
"adaptive" ``alpha = 1`` if ``u >= -l`` else 0 (CROWN), "opt" optimizes them per objective row and per bounded
neuron of the intermediate layers (alpha-CROWN, bounds/alpha.py). With the lower slopes free per row and neuron,
the best bound equals the triangle LP with the same layer bounds (the LP's dual is this dual network);
`backward_bound` evaluates the pass for given slopes, e.g. read off an LP's dual solution.

Layer bounds (the inputs of the ReLU nodes, then the output node unless it is a ReLU: for a dense chain, per
affine layer) are computed node by node: interval arithmetic from the bounds so far, then a backward pass for the
entries still unstable, intersected. The rows' bounds are also intersected with their interval bounds.

Soundness: float64 arithmetic without directed rounding (errors ~1e-16 relative, like every bound method here).
The bounds are NOT monotone in the box: a smaller box changes the layer bounds, hence the relaxations, and can
give a looser bound; with the layer bounds held fixed they are monotone.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..network import Network, dense_graph
from ..spec import InputBall, InputBox, bounding_box
from . import alpha, engine
from .base import BoundResult, check_problem
from .interval import by_node, relu_inputs

Tensor = torch.Tensor


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def ball_tensors(input_set: InputBox | InputBall, dtype=torch.float64, device="cpu") -> engine.Ball | None:
    """The engine's Ball (a batch of one) of an L2/L1 input set; None for a box."""
    if not isinstance(input_set, InputBall):
        return None
    x0 = torch.tensor(input_set.x0, dtype=dtype, device=device)[None]
    return engine.Ball(x0, torch.tensor([input_set.eps], dtype=dtype, device=device), input_set.norm)


def _problem(network: Network, input_set: InputBox | InputBall, C: np.ndarray, d: np.ndarray, device, dtype):
    box = bounding_box(input_set)
    lo, hi = (torch.tensor(x, dtype=dtype, device=device)[None] for x in (box.lo, box.hi))
    Ct, dt = (torch.as_tensor(x, dtype=dtype, device=device)[None] for x in (C, d))
    return network.to(device, dtype), lo, hi, Ct, dt, ball_tensors(input_set, dtype, device)


def bound(network: Network, box: InputBox | InputBall, C: np.ndarray, d: np.ndarray | None = None, *,
          layer_bounds: list | None = None, reference: list | None = None, slopes: str = "adaptive",
          iterations: int = 50, lr: float = 0.5, time_limit: float | None = None, device: str = "cpu",
          dtype: torch.dtype = torch.float64) -> BoundResult:
    """Dual-network lower bounds of ``C @ f(x) + d`` over the box, or over an L2/L1 ball ∩ its clip box (every
    linear bound concretised over the set by `engine.concretize`); C (k, n_outputs), d (k,).

    slopes: "wk", "adaptive" or "opt" (Adam for `iterations` steps of size lr on the lower slopes, from
    adaptive; the best bound seen per row and per layer-bound entry is kept; no step starts after time_limit
    seconds). layer_bounds: [(l, u)] flat numpy
    per `interval.relu_inputs` node (for a chain: per affine layer); the ReLU inputs then use exactly these.
    reference: bounds in the same layout intersected with every layer's computed ones (they get tighter still).
    info: "slopes", "iterations" (0 unless opt) and "alpha", per ReLU node the rows' lower slopes (k, n_flat)
    (stable neurons: 1 active, 0 inactive), which `backward_bound` turns back into the bound.
    """
    start = time.perf_counter()
    C, d = check_problem(network, box, C, d)
    if slopes not in ("wk", "adaptive", "opt"):
        raise ValueError(f"unknown slopes {slopes!r}; use 'wk', 'adaptive' or 'opt'")
    net, lo, hi, Ct, dt, ball = _problem(network, box, C, d, device, dtype)
    given = None if layer_bounds is None else by_node(network, layer_bounds, dtype, device)
    ref = None if reference is None else by_node(network, reference, dtype, device)
    row_slopes = None
    if slopes == "opt":
        deadline = None if time_limit is None else start + time_limit
        lower, bounds, relaxations, row_slopes = alpha.optimize(net, lo, hi, Ct, dt, given, reference=ref,
                                                                iterations=iterations, lr=lr, deadline=deadline,
                                                                ball=ball)
    else:
        with torch.no_grad():
            bounds, relaxations = engine.node_bounds(net, lo, hi, slopes, given, reference=ref, ball=ball)
            lower = engine.rows_lower(net, lo, hi, Ct, dt, bounds, relaxations, ball=ball)
    k = C.shape[0]
    used = [relaxations[r].lower_slope((row_slopes or {}).get(r)) for r in network.relu_nodes]
    info = {"slopes": slopes, "iterations": iterations if slopes == "opt" else 0,
            "alpha": [_numpy(a[0].expand(k, *a.shape[2:]).reshape(k, -1)) for a in used]}
    layer = [(_numpy(bounds[n][0][0].reshape(-1)), _numpy(bounds[n][1][0].reshape(-1))) for n in relu_inputs(network)]
    return BoundResult(_numpy(lower[0]), layer, "dual", time.perf_counter() - start, info)


def backward_bound(network: Network, box: InputBox | InputBall, C: np.ndarray, d: np.ndarray | None,
                   layer_bounds: list, alpha: list) -> np.ndarray:
    """The sound lower bound (k,) float64 of ``C @ f(x) + d`` for fixed layer bounds (as `bound` takes them)
    and fixed lower slopes: alpha[j] (k, n_flat) or (n_flat,) for the j-th ReLU node (`network.relu_nodes`),
    clipped to [0, 1]; entries of stable neurons are ignored; a None entry takes the adaptive rule. (Like every
    bound here, each row is also intersected with its interval bound.) For an LP's dual:
    alpha = mu(h >= z) / (mu(h >= 0) + mu(h >= z))."""
    C, d = check_problem(network, box, C, d)
    relus = network.relu_nodes
    if len(alpha) != len(relus):
        raise ValueError(f"alpha has {len(alpha)} entries, the network has {len(relus)} ReLU nodes")
    slopes = {}
    for r, a in zip(relus, alpha):
        if a is None:
            continue
        a, shape = torch.tensor(np.asarray(a, dtype=np.float64)), network.nodes[r].op.out_shape
        n = int(np.prod(shape))
        if a.shape[-1] != n or a.dim() > 2 or (a.dim() == 2 and a.shape[0] not in (1, C.shape[0])):
            raise ValueError(f"alpha for ReLU node {r}: shape {tuple(a.shape)}, expected ({C.shape[0]}, {n})")
        slopes[r] = a.reshape(1, a.shape[0] if a.dim() == 2 else 1, *shape)
    net, lo, hi, Ct, dt, ball = _problem(network, box, C, d, "cpu", torch.float64)
    with torch.no_grad():
        given = by_node(network, layer_bounds)  # the output's bounds as given, no new pass
        bounds, relaxations = engine.node_bounds(net, lo, hi, "adaptive", given, output_pass=False, ball=ball)
        lower = engine.rows_lower(net, lo, hi, Ct, dt, bounds, relaxations, slopes, ball=ball)
    return _numpy(lower[0])


def batched_bounds(weights: list, relu_after: list[bool], lo: Tensor, hi: Tensor, C: Tensor,
                   d: Tensor | None = None, *, slopes: str = "adaptive", layer_bounds: list | None = None):
    """Lower bounds of ``C @ f(x) + d`` over B boxes ``lo <= x <= hi`` for a dense chain given as torch tensors,
    differentiable w.r.t. them (certified training).

    weights [(W (out, in), b (out,))]; relu_after[i]: a ReLU follows affine i; lo, hi (B, n); C (B, k, n_out) or
    (k, n_out); d (B, k), (k,) or None; slopes "wk" or "adaptive". layer_bounds: [(l, u)] per affine layer,
    (B, w) or (w,) tensors, used exactly for the ReLU layers. Returns ``(lower (B, k), [(l, u)] (B, w_i) per
    affine layer)`` (the last entry: the outputs' bounds).
    """
    if lo.shape != hi.shape or lo.dim() != 2 or lo.shape[1] != weights[0][0].shape[1]:
        raise ValueError(f"lo {tuple(lo.shape)} and hi {tuple(hi.shape)} must be (B, {weights[0][0].shape[1]})")
    network = dense_graph(weights, relu_after)
    C = C if C.dim() == 3 else C.unsqueeze(0)
    d = torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device) if d is None else d
    d = d if d.dim() == 2 else d.unsqueeze(0)
    described = relu_inputs(network)
    given = None if layer_bounds is None else {
        k: tuple(x if x.dim() == 2 else x.unsqueeze(0) for x in lu)
        for k, lu in zip(described, layer_bounds) if lu is not None}
    bounds, relaxations = engine.node_bounds(network, lo, hi, slopes, given)
    return engine.rows_lower(network, lo, hi, C, d, bounds, relaxations), [bounds[k] for k in described]
