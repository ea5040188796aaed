"""The bound engine: CROWN / dual-network linear bounds over a network graph, batched over boxes.

A linear function ``A . v_top + c`` of one node's values is pushed backwards through the graph in reverse
topological order: through a linear operator by its transpose (`backward`, plus ``<A, offset>`` into c), through
a ReLU by a linear bound chosen by the sign of each coefficient (the lower line ``alpha z`` under a positive one,
the upper line ``s z + t`` under a negative one); where a node feeds several others (fan-out) the rows arriving
from each are summed. At the input it is minimised over the box in closed form: ``A @ centre - |A| @ radius + c``;
with an L2/L1 ball (`Ball`, the boxes then being its bounding boxes) over ball ∩ box by `concretize`, the one
place that knows the input set: every pass (layer bounds, rows, alpha-CROWN, the LP's re-derivation) gets it.

ReLU relaxation (`relax`, the only one in the project) for pre-activation bounds l <= z <= u: ``u <= 0`` is
inactive (h = 0; an empty interval l > u from an infeasible split counts here too), ``l < 0 < u`` strictly is
unstable, anything else active (h = z). On unstable neurons the upper line has slope ``s = u / (u - l)`` and
offset ``-s l``; the lower slope is "wk" (alpha = s), "adaptive" (alpha = 1 if u >= -l else 0) or given
(clipped to [0, 1]).

MaxPool (rewritten into ReLUs at load): at the top of each pool's tree, the negative coefficients may skip the
tree and go straight to the window's entries by `window_bound`'s upper line, where that line is lower than the
tree's own at the centre of the entries' box (bounds/windows.py).

Layer bounds (the inputs of every ReLU node, then the output) are computed in topological order: interval
arithmetic from the bounds so far, intersected with given bounds; then, for the neurons still unstable
in some box of the batch, a backward pass from that node (rows +e_i and -e_i) intersected with them. A ReLU input
that is one linear operator on the network input gets no pass (its intervals are exact); the output node gets
the pass on all its entries. The objective rows take a backward pass from the output, intersected with their
interval bounds (C over the output's interval, and through a final Dense over its input's interval).

Tensors: boxes lo, hi (B, n_inputs); node values (B, *shape); rows A (B or 1, K, *shape); results (B, K).
Soundness: float64, no directed rounding (like every bound here); certification needs ``lower > PROOF_MARGIN``.
Every method bounds through this module: dual (wk / adaptive; opt through bounds/alpha.py), the LP's sound
re-derivation (dual.backward_bound), certified training (dual.batched_bounds) and branch and bound.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .. import ops
from ..network import Network
from ..norms import ball_box_lower, dual_norm
from .interval import interval_step
from .windows import WindowBound, max_windows, window_bound

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

    def to(self, dtype: torch.dtype) -> "Relaxation":
        """The same relaxation with its slopes and offsets in dtype (the mask stays bool)."""
        return Relaxation(self.unstable, self.stable_slope.to(dtype), self.rule_slope.to(dtype),
                          self.upper_slope.to(dtype), self.upper_offset.to(dtype))

    def select(self, index: Tensor) -> "Relaxation":
        """The relaxations of the boxes `index` (the tensors taken along their first dimension)."""
        return Relaxation(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

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


@dataclass(frozen=True)
class Ball:
    """The Lp ball ``||x - x0||_p <= eps`` that each box of a batch is intersected with: x0 (B, n_inputs), eps (B,)
    tensors, norm "l2" or "l1" (dual norms L2 and L-inf). The boxes lo, hi stay the bounding boxes."""

    x0: Tensor
    eps: Tensor
    norm: str


def concretize(A: Tensor, const: Tensor, centre: Tensor, radius: Tensor, ball: Ball | None = None) -> Tensor:
    """Lower bound (B, K) of ``<A_k, x> + const_k`` over the input set: A (B or 1, K, n_inputs), const (B or 1, K),
    the boxes' centre and radius (B, n_inputs).

    Box: its exact minimum ``A centre - |A| radius + const``. Ball ∩ box (ball given): the largest of three lower
    bounds of the minimum over the intersection: the box's minimum and the ball's ``A x0 - eps ||A||_* + const``
    (Hölder, exact over the ball) -- the box and the ball each contain the intersection, so each minimum is at
    most the one over the intersection, and so is their maximum -- and the Lagrangian dual bound of
    `norms.ball_box_lower` (weak duality: valid for any multiplier; exact at the best one, which it picks), which
    is tight where both constraints bind, as on clipped images with dark pixels.
    """
    box = const + (A @ centre.unsqueeze(-1)).squeeze(-1) - (A.abs() @ radius.unsqueeze(-1)).squeeze(-1)
    if ball is None:
        return box
    at_ball = const + (A @ ball.x0.unsqueeze(-1)).squeeze(-1) - ball.eps.unsqueeze(-1) * dual_norm(A, ball.norm)
    both = const + ball_box_lower(A, ball.x0, ball.eps, ball.norm, centre - radius, centre + radius)
    return torch.maximum(torch.maximum(box, at_ball), both)


def backward(network: Network, top: int, A: Tensor, const: Tensor, relaxations: dict, centre: Tensor,
             radius: Tensor, alphas: dict | None = None, *, betas: dict | None = None, record: dict | None = None,
             ball: Ball | None = None) -> Tensor:
    """Lower bound (B, K) of ``<A, v_top> + const`` over the boxes (each intersected with ball, when given:
    `concretize`), v_top the values of node `top`.

    A (B or 1, K, *shape_top), const (B or 1, K); relaxations {ReLU node id: Relaxation} for every ReLU node
    before top; centre, radius (B, n_inputs); alphas {ReLU node id: lower slopes broadcastable to (B, K, *shape)}.
    betas {ReLU node id: (B, K, *shape)}: added to the rows reaching that ReLU's input (a Lagrangian term
    ``<beta, z>`` of split constraints, see split_domains.py). record: a dict filled with the rows reaching each ReLU
    node {id: (B or 1, K, *shape)} (before its relaxation), the input coefficients {0: (B or 1, K, n_inputs)}
    (zeros when the rows do not reach the input) and under "const" the rows' constant (B or 1, K): on the boxes,
    ``<A, v_top> + const >= <record[0], x> + record["const"]``.
    """
    rows = {top: A}
    for k in range(top, 0, -1):
        if k not in rows:
            continue
        A, node = rows.pop(k), network.nodes[k]
        window = relaxations.get(k)
        if isinstance(window, WindowBound):  # a maximum: its upper line under the negative coefficients
            neg = A.clamp(max=0) * window.use.reshape(-1, 1, *A.shape[2:])
            A = A - neg
            neg = neg.reshape(*A.shape[:2], -1)  # (B, K, n)
            const = const + (neg * window.offset).sum(-1)
            shape = network.nodes[window.source].op.out_shape
            part = neg.new_zeros(*neg.shape[:2], int(np.prod(shape)))
            for i in range(window.index.shape[1]):  # entry by entry: (B, K, n) at a time, not (B, K, n, m)
                part.index_add_(2, window.index[:, i], neg * window.coef[..., i])
            part = part.reshape(*part.shape[:2], *shape)
            rows[window.source] = rows[window.source] + part if window.source in rows else part
        if isinstance(node.op, ops.ReLU):
            if record is not None:
                record[k] = A
            r = relaxations[k]
            slope = r.lower_slope(None if alphas is None else alphas.get(k))
            neg = A.clamp(max=0)
            offset = r.upper_offset.reshape(r.upper_offset.shape[0], -1, 1)  # (B or 1, n, 1)
            const = const + (neg.reshape(*neg.shape[:2], -1) @ offset).squeeze(-1)
            if torch.is_grad_enabled():  # the clamps: the values and subgradient the Adam steps were tuned with
                parts = (A.clamp(min=0) * slope + neg * r.upper_slope,)
            else:  # the same values in fewer passes over A (docs/search.md, "A ReLU step in fewer passes")
                parts = (torch.addcmul(A * slope, neg, r.upper_slope - slope),)
            if betas is not None and k in betas:
                parts = (parts[0] + betas[k],)
        else:
            if node.op.offset is not None:
                offset = node.op.offset.expand(node.op.out_shape).reshape(-1)
                const = const + A.reshape(*A.shape[:2], -1) @ offset
            lead = A.shape[:2]
            parts = tuple(p.reshape(*lead, *p.shape[1:])
                          for p in node.op.backward(A.reshape(-1, *node.op.out_shape)))
        for i, part in zip(node.inputs, parts):
            rows[i] = rows[i] + part if i in rows else part
    A = rows[0].reshape(*rows[0].shape[:2], -1) if 0 in rows else torch.zeros_like(centre).unsqueeze(1)
    if record is not None:
        record.update({0: A, "const": const})
    return concretize(A, const, centre, radius, ball)


def _entry_bounds(network: Network, k: int, idx: Tensor, relaxations: dict, centre: Tensor, radius: Tensor,
                  alphas: dict | None = None, ball: Ball | None = None) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds (B, m) of the entries idx (m,) of node k's flat values: one backward pass with the
    rows +e_i then -e_i (alphas: lower slopes for those 2m rows, as `backward` takes them)."""
    node, m = network.nodes[k], idx.numel()
    dtype, device = centre.dtype, centre.device
    if isinstance(node.op, (ops.Dense, ops.Conv2d)):  # the rows +-e_i through the map: its rows +-W_i (cheaper)
        top, weight = node.inputs[0], node.op.rows(idx)
        offset = node.op.offset
        bias = torch.zeros(m, dtype=dtype, device=device) if offset is None else \
            offset.expand(node.op.out_shape).reshape(-1)[idx]
        A = torch.cat([weight, -weight]).unsqueeze(0)
        const = torch.cat([bias, -bias]).unsqueeze(0)
    else:
        eye = torch.zeros(m, int(np.prod(node.op.out_shape)), dtype=dtype, device=device)
        eye[torch.arange(m), idx] = 1.0
        top, A = k, torch.cat([eye, -eye]).reshape(1, 2 * m, *node.op.out_shape)
        const = torch.zeros(1, 2 * m, dtype=dtype, device=device)
    low = backward(network, top, A, const, relaxations, centre, radius, alphas, ball=ball)
    return low[:, :m], -low[:, m:]


def _tighten(network: Network, k: int, l: Tensor, u: Tensor, all_entries: bool, relaxations: dict,
             centre: Tensor, radius: Tensor, fixed: tuple | None = None, straight_through: bool = False,
             ball: Ball | None = None) -> tuple[Tensor, Tensor]:
    """Bounds (B, *shape) of node k intersected with backward passes from it (MAX_ENTRIES entries per pass, to
    bound the memory), for the entries unstable in some box (all entries when all_entries); each box keeps its
    own stable entries as they were. fixed: (entries idx (m,), alphas for their 2m rows) instead, in one pass.
    straight_through: the value of the intersection with the gradient of the pass (see bounds/alpha.py)."""
    flat_l, flat_u = l.reshape(l.shape[0], -1), u.reshape(u.shape[0], -1)
    if fixed is None:
        need = torch.ones_like(flat_l[0], dtype=torch.bool) if all_entries else ((flat_l < 0) & (flat_u > 0)).any(0)
        idx, alphas = need.nonzero().flatten(), None
    else:
        idx, alphas = fixed
    if idx.numel() == 0:
        return l, u
    chunks = idx.split(MAX_ENTRIES) if alphas is None else (idx,)
    parts = [_entry_bounds(network, k, chunk, relaxations, centre, radius, alphas, ball) for chunk in chunks]
    low, up = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
    new_l, new_u = torch.maximum(flat_l[:, idx], low), torch.minimum(flat_u[:, idx], up)
    if not all_entries:  # the union over the batch was bounded: each box keeps its own stable entries
        keep = (flat_l[:, idx] >= 0) | (flat_u[:, idx] <= 0)
        new_l, new_u = torch.where(keep, flat_l[:, idx], new_l), torch.where(keep, flat_u[:, idx], new_u)
    if straight_through:  # value of the intersection (x - x is exactly 0), gradient of the pass
        new_l, new_u = new_l.detach() + (low - low.detach()), new_u.detach() + (up - up.detach())
    return (flat_l.index_copy(1, idx, new_l).reshape(l.shape), flat_u.index_copy(1, idx, new_u).reshape(u.shape))


def pre_activations(network: Network) -> set:
    """Ids of the nodes feeding a ReLU node."""
    return {network.nodes[k].inputs[0] for k in network.relu_nodes}


_ONE_TO_ONE = (ops.Reshape, ops.Transpose, ops.Pad, ops.Elementwise)  # each entry: one input entry or a constant


def _input_entries(network: Network, k: int) -> bool:
    """Whether node k is the input moved about entry by entry (reshaped, transposed, padded, scaled and
    shifted per entry): then every entry of node k is ``a x_i + b`` for a different input i, and intervals are
    exact on it and on one linear operator after it."""
    while k != 0:
        node = network.nodes[k]
        if not isinstance(node.op, _ONE_TO_ONE) or len(node.inputs) != 1:
            return False
        k = node.inputs[0]
    return True


def _after_input(network: Network, k: int) -> bool:
    """Whether node k is one linear operator on the input (moved about entry by entry: `_input_entries`)."""
    node = network.nodes[k]
    return len(node.inputs) == 1 and not isinstance(node.op, ops.ReLU) and _input_entries(network, node.inputs[0])


def bounded_by_pass(network: Network, k: int) -> bool:
    """Whether node_bounds tightens node k by backward passes: a ReLU input or the (non-ReLU) output node that is
    more than one linear operator away from the input (intervals are exact there: `_after_input`)."""
    if _after_input(network, k) or isinstance(network.nodes[k].op, ops.ReLU):
        return False
    return k == network.output or k in pre_activations(network)


def node_bounds(network: Network, lo: Tensor, hi: Tensor, rule: str = "adaptive", given: dict | None = None, *,
                reference: dict | None = None, alphas: dict | None = None, straight_through: bool = False,
                output_pass: bool = True, ball: Ball | None = None) -> tuple[dict, dict]:
    """Bounds {node id: (l, u) (B, *shape)} of every node (module docstring), and the ReLU relaxations {ReLU
    node id: Relaxation} (slopes `rule`). given: {node id: (l, u)} used exactly (not recomputed) for ReLU inputs,
    intersected with the computed ones elsewhere. For alpha-CROWN (bounds/alpha.py): reference {node id: (l, u)}
    intersected with every node not given; alphas {node id: (entries (m,), {ReLU id: slopes (B, 2m, *shape)})}
    bounds exactly those entries with those slopes; straight_through see `_tighten`; output_pass False leaves the
    output node at its interval bounds. ball: each box intersected with this ball (`concretize`); the nodes fed by
    the input alone then get a pass too, on all their entries (the ball's bounds of their rows ``W_i x0 + b_i -
    eps ||W_i||_*``, intersected with the interval ones)."""
    given, reference, alphas = given or {}, reference or {}, alphas or {}
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    pre_activation = pre_activations(network)
    bounds = {0: (lo.reshape(lo.shape[0], *network.input_shape), hi.reshape(hi.shape[0], *network.input_shape))}
    relaxations: dict = {}
    batch, windows = lo.shape[0], max_windows(network)
    for k in range(1, len(network.nodes)):
        node = network.nodes[k]
        if k in given and k in pre_activation:
            l, u = (x.expand(batch, *node.op.out_shape) for x in given[k])
        else:
            l, u = interval_step(network, k, bounds)
            for extra in (given.get(k), reference.get(k)):
                if extra is not None:
                    l, u = torch.maximum(l, extra[0]), torch.minimum(u, extra[1])
            first = ball is not None and _after_input(network, k) and (k == network.output or k in pre_activation)
            if (bounded_by_pass(network, k) or first) and (output_pass or k in pre_activation):
                l, u = _tighten(network, k, l, u, k not in pre_activation or first, relaxations, centre, radius,
                                alphas.get(k), straight_through, ball)
        bounds[k] = (l, u)
        if isinstance(node.op, ops.ReLU):
            relaxations[k] = relax(*bounds[node.inputs[0]], rule)
        elif k in windows:
            relaxations[k] = window_bound(windows[k], *bounds[windows[k][0]], relaxations)
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
          slopes: str = "adaptive", given: dict | None = None, alphas: dict | None = None,
          ball: Ball | None = None) -> tuple[Tensor, dict]:
    """Lower bounds (B, K) of ``C @ f(x) + d`` over B boxes lo <= x <= hi (B, n_inputs), and every node's bounds.

    C (B or 1, K, n_outputs) or (K, n_outputs); d (B or 1, K), (K,) or None; given: as `node_bounds`; alphas:
    {ReLU node id: slopes broadcastable to (B, K, *shape)} for the objective rows' pass.
    """
    C = C if C.dim() == 3 else C.unsqueeze(0)
    d = torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device) if d is None else d
    d = d if d.dim() == 2 else d.unsqueeze(0)
    bounds, relaxations = node_bounds(network, lo, hi, slopes, given, ball=ball)
    return rows_lower(network, lo, hi, C, d, bounds, relaxations, alphas, ball=ball), bounds


def rows_lower(network: Network, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, bounds: dict, relaxations: dict,
               alphas: dict | None = None, straight_through: bool = False, ball: Ball | None = None) -> Tensor:
    """Lower bounds (B, K) of the rows C (B or 1, K, n_outputs), d (B or 1, K) for given layer bounds and
    relaxations: the backward pass from the output, intersected with the rows' interval bounds (straight_through:
    the value of that intersection with the gradient of the pass)."""
    A = C.reshape(*C.shape[:2], *network.output_shape)
    lower = backward(network, network.output, A, d, relaxations, (lo + hi) / 2, (hi - lo) / 2, alphas, ball=ball)
    tight = torch.maximum(lower, _interval_rows(network, bounds, C, d))
    return tight.detach() + (lower - lower.detach()) if straight_through else tight


def linear_rows(network: Network, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, relaxations: dict,
                bounds: dict | None = None) -> tuple[Tensor, Tensor, Tensor, dict]:
    """The backward pass of the rows C (B or 1, K, n_outputs), d (B or 1, K) over B boxes lo, hi (B, n_inputs),
    with what it proves besides the bound: returns (lower (B, K), A (B, K, n_inputs), c (B, K), rows) where
    ``C f(x) + d >= A x + c`` on each box and rows = {ReLU node id: rows reaching it (B or 1, K, *shape)}.
    With bounds (every node's, as `node_bounds`) lower is also intersected with the rows' interval bounds."""
    record: dict = {}
    A = C.reshape(*C.shape[:2], *network.output_shape)
    lower = backward(network, network.output, A, d, relaxations, (lo + hi) / 2, (hi - lo) / 2, record=record)
    shape = (lo.shape[0], C.shape[1])
    inputs = record.pop(0, None)
    inputs = C.new_zeros(*shape, lo.shape[1]) if inputs is None else inputs.reshape(*inputs.shape[:2], -1)
    c = record.pop("const").expand(shape)
    if bounds is not None:
        lower = torch.maximum(lower, _interval_rows(network, bounds, C, d))
    return lower, inputs.expand(*shape, -1), c, record


def picked_rows(rows: Tensor, row: Tensor) -> Tensor:
    """Row row[b] of box b: rows (B or 1, K, *shape), row (B,) -> (B, *shape)."""
    B = row.shape[0]
    return rows.expand(B, *rows.shape[1:])[torch.arange(B), row]
