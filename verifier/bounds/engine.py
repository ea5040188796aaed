"""The bound engine: CROWN / dual-network linear bounds over a network graph, batched over boxes.

A linear function ``A . v_top + c`` of one node's values is pushed backwards through the graph in reverse
topological order: through a linear operator by its transpose (`backward`, plus ``<A, offset>`` into c), through
a ReLU by a linear bound chosen by the sign of each coefficient (the lower line ``alpha z`` under a positive one,
the upper line ``s z + t`` under a negative one); where a node feeds several others (fan-out) the rows arriving
from each are summed. At the input it is minimised over the box in closed form: ``A @ centre - |A| @ radius + c``.

ReLU relaxation for pre-activation bounds l <= z <= u (as bounds/dual.py): ``u <= 0`` is inactive (h = 0; an
empty interval l > u from an infeasible split counts here too), ``l < 0 < u`` strictly is unstable, anything else
active (h = z). On unstable neurons the upper line has slope ``s = u / (u - l)`` and offset ``-s l``; the lower
slope is "wk" (alpha = s), "adaptive" (alpha = 1 if u >= -l else 0) or given (clipped to [0, 1]).

Layer bounds (the inputs of every ReLU node, then the output) are computed in topological order: interval
arithmetic from the bounds so far, intersected with given bounds; then, for the neurons still unstable
in some box of the batch, a backward pass from that node (rows +e_i and -e_i) intersected with them. A ReLU input
that is one linear operator on the network input gets no pass (its intervals are exact); the output node gets
the pass on all its entries. The objective rows take a backward pass from the output, intersected with their
interval bounds (C over the output's interval, and through a final Dense over its input's interval).

Tensors: boxes lo, hi (B, n_inputs); node values (B, *shape); rows A (B or 1, K, *shape); results (B, K).
Soundness: float64, no directed rounding (like every bound here); certification needs ``lower > 0``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import ops
from ..network import Network
from ..spec import InputBox
from .base import BoundResult
from .interval import interval_step, relu_inputs

Tensor = torch.Tensor
MAX_ENTRIES = 256  # entries of one node bounded per backward pass (2 rows each): caps the passes' memory


@dataclass(frozen=True)
class Relaxation:
    """Linear bounds of one ReLU node given its input bounds; tensors (B, 1, *shape) (the 1 broadcasts rows)."""

    unstable: Tensor  # bool
    stable_slope: Tensor  # 1 active, 0 inactive and unstable
    rule_slope: Tensor  # the slopes rule's lower slope (stable_slope on stable neurons)
    upper_slope: Tensor
    upper_offset: Tensor

    def lower_slope(self, alpha: Tensor | None) -> Tensor:
        """The rule's lower slopes, or alpha (clipped to [0, 1]) on the unstable neurons."""
        if alpha is None:
            return self.rule_slope
        return torch.where(self.unstable, alpha.clamp(0.0, 1.0), self.stable_slope)


def relax(l: Tensor, u: Tensor, rule: str) -> Relaxation:
    """Relaxation of ReLU(z), l <= z <= u (B, *shape); rule "wk" or "adaptive" (module docstring)."""
    l, u = l.unsqueeze(1), u.unsqueeze(1)
    inactive = u <= 0  # checked first: an empty interval (l > u, from an infeasible split) counts as h = 0
    unstable = (l < 0) & (u > 0)
    stable_slope = (~inactive & ~unstable).to(l.dtype)
    width = torch.where(unstable, u - l, torch.ones_like(u))  # > 0 where used; 1 elsewhere keeps gradients finite
    upper_slope = torch.where(unstable, u / width, stable_slope)
    upper_offset = torch.where(unstable, -u * l / width, torch.zeros_like(u))
    if rule == "wk":
        rule_slope = upper_slope
    elif rule == "adaptive":
        rule_slope = torch.where(unstable, (u >= -l).to(l.dtype), stable_slope)
    else:
        raise ValueError(f"unknown slopes {rule!r}; use 'wk' or 'adaptive' (or alpha tensors)")
    return Relaxation(unstable, stable_slope, rule_slope, upper_slope, upper_offset)


def _sum_over_shape(x: Tensor) -> Tensor:
    """x (B, K, *shape) summed over the shape -> (B, K)."""
    return x.reshape(*x.shape[:2], -1).sum(-1)


def backward(network: Network, top: int, A: Tensor, const: Tensor, relaxations: dict, centre: Tensor,
             radius: Tensor, alphas: dict | None = None) -> Tensor:
    """Lower bound (B, K) of ``<A, v_top> + const`` over the boxes, v_top the values of node `top`.

    A (B or 1, K, *shape_top), const (B or 1, K); relaxations {ReLU node id: Relaxation} for every ReLU node
    before top; centre, radius (B, n_inputs); alphas {ReLU node id: lower slopes broadcastable to (B, K, *shape)}.
    """
    rows = {top: A}
    for k in range(top, 0, -1):
        if k not in rows:
            continue
        A, node = rows.pop(k), network.nodes[k]
        if isinstance(node.op, ops.ReLU):
            r = relaxations[k]
            slope = r.lower_slope(None if alphas is None else alphas.get(k))
            pos, neg = A.clamp(min=0), A.clamp(max=0)
            const = const + _sum_over_shape(neg * r.upper_offset)
            parts = (pos * slope + neg * r.upper_slope,)
        else:
            if node.op.offset is not None:
                const = const + _sum_over_shape(A * node.op.offset)
            lead = A.shape[:2]
            parts = tuple(p.reshape(*lead, *p.shape[1:])
                          for p in node.op.backward(A.reshape(-1, *node.op.out_shape)))
        for i, part in zip(node.inputs, parts):
            rows[i] = rows[i] + part if i in rows else part
    if 0 not in rows:  # the rows do not depend on the input
        return const.expand(centre.shape[0], -1)
    A = rows[0].reshape(*rows[0].shape[:2], -1)
    return const + (A @ centre.unsqueeze(-1)).squeeze(-1) - (A.abs() @ radius.unsqueeze(-1)).squeeze(-1)


def _entry_bounds(network: Network, k: int, idx: Tensor, relaxations: dict, centre: Tensor, radius: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds (B, m) of the entries idx (m,) of node k's flat values: one backward pass with the
    rows +e_i then -e_i."""
    node, m = network.nodes[k], idx.numel()
    dtype, device = centre.dtype, centre.device
    if isinstance(node.op, ops.Dense):  # the rows +-e_i through the dense map: its rows +-W_i (cheaper)
        top, weight = node.inputs[0], node.op.weight[idx]
        bias = torch.zeros(m, dtype=dtype, device=device) if node.op.bias is None else node.op.bias[idx]
        A = torch.cat([weight, -weight]).reshape(1, 2 * m, *node.op.in_shape)
        const = torch.cat([bias, -bias]).unsqueeze(0)
    else:
        eye = torch.zeros(m, int(np.prod(node.op.out_shape)), dtype=dtype, device=device)
        eye[torch.arange(m), idx] = 1.0
        top, A = k, torch.cat([eye, -eye]).reshape(1, 2 * m, *node.op.out_shape)
        const = torch.zeros(1, 2 * m, dtype=dtype, device=device)
    low = backward(network, top, A, const, relaxations, centre, radius)
    return low[:, :m], -low[:, m:]


def _tighten(network: Network, k: int, l: Tensor, u: Tensor, all_entries: bool, relaxations: dict,
             centre: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds (B, *shape) of node k intersected with backward passes from it (MAX_ENTRIES entries per pass, to
    bound the memory), for the entries unstable in some box (all entries when all_entries); each box keeps its
    own stable entries as they were."""
    flat_l, flat_u = l.reshape(l.shape[0], -1), u.reshape(u.shape[0], -1)
    need = torch.ones_like(flat_l[0], dtype=torch.bool) if all_entries else ((flat_l < 0) & (flat_u > 0)).any(0)
    idx = need.nonzero().flatten()
    if idx.numel() == 0:
        return l, u
    parts = [_entry_bounds(network, k, chunk, relaxations, centre, radius) for chunk in idx.split(MAX_ENTRIES)]
    new_l = torch.maximum(flat_l[:, idx], torch.cat([p[0] for p in parts], 1))
    new_u = torch.minimum(flat_u[:, idx], torch.cat([p[1] for p in parts], 1))
    if not all_entries:  # the union over the batch was bounded: each box keeps its own stable entries
        keep = (flat_l[:, idx] >= 0) | (flat_u[:, idx] <= 0)
        new_l, new_u = torch.where(keep, flat_l[:, idx], new_l), torch.where(keep, flat_u[:, idx], new_u)
    return (flat_l.index_copy(1, idx, new_l).reshape(l.shape), flat_u.index_copy(1, idx, new_u).reshape(u.shape))


def node_bounds(network: Network, lo: Tensor, hi: Tensor, rule: str = "adaptive", given: dict | None = None
                ) -> tuple[dict, dict]:
    """Bounds {node id: (l, u) (B, *shape)} of every node (module docstring), and the ReLU relaxations {ReLU
    node id: Relaxation} (slopes `rule`). given: {ReLU-input node id: (l, u)} used exactly (not recomputed) for
    those ReLU inputs, intersected with the computed ones for the output node."""
    given = given or {}
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    pre_activation = {network.nodes[k].inputs[0] for k in network.relu_nodes}
    bounds = {0: (lo.reshape(lo.shape[0], *network.input_shape), hi.reshape(hi.shape[0], *network.input_shape))}
    relaxations: dict = {}
    batch = lo.shape[0]
    for k in range(1, len(network.nodes)):
        node = network.nodes[k]
        if k in given and k in pre_activation:
            l, u = (x.expand(batch, *node.op.out_shape) for x in given[k])
        else:
            l, u = interval_step(network, k, bounds)
            if k in given:
                l, u = torch.maximum(l, given[k][0]), torch.minimum(u, given[k][1])
            exact = len(node.inputs) == 1 and node.inputs[0] == 0  # one linear operator on the input
            output = k == network.output and not isinstance(node.op, ops.ReLU)
            if not exact and (k in pre_activation or output):
                l, u = _tighten(network, k, l, u, k not in pre_activation, relaxations, centre, radius)
        bounds[k] = (l, u)
        if isinstance(node.op, ops.ReLU):
            relaxations[k] = relax(*bounds[node.inputs[0]], rule)
    return bounds, relaxations


def _interval_rows(network: Network, bounds: dict, C: Tensor, d: Tensor) -> Tensor:
    """Interval lower bounds (B, K) of the rows: C over the output's interval and, through a final Dense, C W over
    its input's interval; the better of the two."""
    l, u = (x.reshape(x.shape[0], -1) for x in bounds[network.output])
    rows = (C.clamp(min=0) @ l.unsqueeze(-1) + C.clamp(max=0) @ u.unsqueeze(-1)).squeeze(-1) + d
    last = network.nodes[network.output]
    if isinstance(last.op, ops.Dense):
        a, b = (x.reshape(x.shape[0], -1) for x in bounds[last.inputs[0]])
        CW = C @ last.op.weight
        fused = (CW.clamp(min=0) @ a.unsqueeze(-1) + CW.clamp(max=0) @ b.unsqueeze(-1)).squeeze(-1) + d
        rows = torch.maximum(rows, fused if last.op.bias is None else fused + C @ last.op.bias)
    return rows


def crown(network: Network, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor | None = None, *,
          slopes: str = "adaptive", given: dict | None = None, alphas: dict | None = None
          ) -> tuple[Tensor, dict]:
    """Lower bounds (B, K) of ``C @ f(x) + d`` over B boxes lo <= x <= hi (B, n_inputs), and every node's bounds.

    C (B or 1, K, n_outputs) or (K, n_outputs); d (B or 1, K), (K,) or None; given: as `node_bounds`; alphas:
    {ReLU node id: slopes broadcastable to (B, K, *shape)} for the objective rows' pass.
    """
    C = C if C.dim() == 3 else C.unsqueeze(0)
    d = torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device) if d is None else d
    d = d if d.dim() == 2 else d.unsqueeze(0)
    bounds, relaxations = node_bounds(network, lo, hi, slopes, given)
    return rows_lower(network, lo, hi, C, d, bounds, relaxations, alphas), bounds


def rows_lower(network: Network, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, bounds: dict, relaxations: dict,
               alphas: dict | None = None) -> Tensor:
    """Lower bounds (B, K) of the rows C (B or 1, K, n_outputs), d (B or 1, K) for given layer bounds and
    relaxations: the backward pass from the output, intersected with the rows' interval bounds."""
    A = C.reshape(*C.shape[:2], *network.output_shape)
    lower = backward(network, network.output, A, d, relaxations, (lo + hi) / 2, (hi - lo) / 2, alphas)
    return torch.maximum(lower, _interval_rows(network, bounds, C, d))


def optimized_rows(network: Network, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, bounds: dict,
                   relaxations: dict, iterations: int, lr: float, decay: float = 0.98) -> tuple[Tensor, dict]:
    """alpha-CROWN on the objective rows' lower slopes (the layer bounds stay as given): projected Adam ascent on
    the sum of the rows' bounds from the adaptive slopes, the step decaying geometrically; every iterate is sound
    (any slope in [0, 1] is), so the best value per row is kept. C (B or 1, K, n_outputs), d (B or 1, K).
    Returns (lower (B, K), the slopes of the best iterate per ReLU node (B, K, *shape))."""
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    A = C.reshape(*C.shape[:2], *network.output_shape)
    k = C.shape[1]
    alphas = {r: rel.rule_slope.expand(lo.shape[0], k, *rel.rule_slope.shape[2:]).clone()
              for r, rel in relaxations.items()}
    with torch.no_grad():
        best = backward(network, network.output, A, d, relaxations, centre, radius, alphas)
    best_alphas = {r: a.clone() for r, a in alphas.items()}
    leaves = [a.requires_grad_() for r, a in alphas.items() if bool(relaxations[r].unstable.any())]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in leaves]
    for step in range(1, iterations + 1 if leaves else 1):
        lower = backward(network, network.output, A, d, relaxations, centre, radius, alphas)
        with torch.no_grad():
            better = lower > best
            best = torch.where(better, lower, best)
            for r, a in alphas.items():
                row_mask = better.reshape(*better.shape, *([1] * (a.dim() - 2)))
                best_alphas[r] = torch.where(row_mask, a.detach().clamp(0, 1), best_alphas[r])
        grads = torch.autograd.grad(lower.sum(), leaves)
        with torch.no_grad():  # Adam ascent (written out, as in dual.py), then the projection on [0, 1]
            rate = lr * decay ** (step - 1)
            for p, g, (m, v) in zip(leaves, grads, moments):
                m.mul_(0.9).add_(g, alpha=0.1)
                v.mul_(0.999).addcmul_(g, g, value=0.001)
                p.add_(rate * (m / (1 - 0.9 ** step)) / ((v / (1 - 0.999 ** step)).sqrt() + 1e-8))
                p.clamp_(0.0, 1.0)
    return torch.maximum(best, _interval_rows(network, bounds, C, d)), best_alphas


def graph_bound(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray, *, layer_bounds: list | None = None,
                slopes: str = "adaptive", iterations: int = 50, lr: float = 0.5, device: str = "cpu",
                dtype: torch.dtype = torch.float64) -> BoundResult:
    """`dual.bound` on a graph (C (k, n_outputs), d (k,) checked): the engine's CROWN pass with slopes "wk",
    "adaptive" or "opt" (`optimized_rows`: the objective rows' slopes only; the intermediate bounds are the
    adaptive ones). layer_bounds / the result's layer_bounds: [(l, u)] flat numpy per node of
    `interval.relu_inputs` (given ones are used exactly for the ReLU inputs)."""
    start = time.perf_counter()
    net = network.to(device, dtype)
    described = relu_inputs(network)
    given = None
    if layer_bounds is not None:
        given = {k: tuple(torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype, device=device)
                          .reshape(1, *network.nodes[k].op.out_shape) for x in lu)
                 for k, lu in zip(described, layer_bounds) if lu is not None}
    lo, hi = (torch.tensor(x, dtype=dtype, device=device)[None] for x in (box.lo, box.hi))
    Ct, dt = (torch.as_tensor(x, dtype=dtype, device=device)[None] for x in (C, d))
    with torch.no_grad():
        bounds, relaxations = node_bounds(net, lo, hi, "adaptive" if slopes == "opt" else slopes, given)
        if slopes != "opt":
            lower = rows_lower(net, lo, hi, Ct, dt, bounds, relaxations)
    if slopes == "opt":
        lower, _ = optimized_rows(net, lo, hi, Ct, dt, bounds, relaxations, iterations, lr)
    flat = [tuple(x[0].reshape(-1).to("cpu", torch.float64).numpy() for x in bounds[k]) for k in described]
    info = {"slopes": slopes, "iterations": iterations if slopes == "opt" else 0}
    return BoundResult(lower[0].to("cpu", torch.float64).numpy(), flat, "dual", time.perf_counter() - start, info)
