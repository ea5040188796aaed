"""Two-neuron cuts: inequalities over two unstable neurons of one ReLU layer that the triangle relaxation misses
(multi-neuron relaxations: Singh et al. 2019, k-ReLU; used inside branch and bound as cutting planes with their own
multipliers: GCP-CROWN, Zhang et al. 2022).

For unstable neurons i, j of one ReLU layer, their pre-activations x = (x_i, x_j) lie in the polygon P cut out by
their bounds and by bounds of x_i + x_j and x_i - x_j (an octagon; those from a backward pass of the bound engine).
Every cut here reads

    w relu(x_i) + (1 - w) relu(x_j) <= a x_i + b x_j + c,      0 <= w <= 1.

The left side g is convex in x, so the cut holds on P iff it holds at P's vertices: c is the largest value of
g(v) - a v_i - b v_j over them (plus a rounding margin), so every cut is valid whatever chose w, a and b. Where the
octagon is tighter than the box the cuts are tighter than the two triangles (over a box they add nothing). a, b: of
the planes through three of the points (v, g(v)), the one that a given point of the LP violates most (the facet of
the upper hull of g over P above that point, for each w of WEIGHTS).

In a bound pass a cut enters as a Lagrangian term: for gamma >= 0, ``f >= f + gamma (lhs - rhs)`` on the set, so
the rows get ``+gamma w`` at the ReLU's output, ``-gamma a`` at its input and the constant ``-gamma c``
(`lagrangian_terms`): a bound for ANY gamma >= 0, which the search optimizes beside its other multipliers.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .. import solvers
from ..network import Network
from ..spec import InputBox
from . import encode, engine
from .interval import by_node

Tensor = torch.Tensor
WEIGHTS = (0.2, 0.35, 0.5, 0.65, 0.8)  # the w tried per pair
MARGIN = 1e-9  # relative slack added to each cut's c (vertices and planes are computed in float64)
_LINES = np.array(list(itertools.combinations(range(8), 2)))  # (28, 2): pairs of the octagon's 8 lines
_TRIANGLES = np.array(list(itertools.combinations(range(8), 3)))  # (56, 3): of a polygon's at most 8 vertices


@dataclass(frozen=True)
class Cuts:
    """Cuts per ReLU node: {ReLU node id: (i, j (m,) flat entries, w, a, b, c (m,) float64)}, as numpy arrays."""

    by_relu: dict

    @property
    def count(self) -> int:
        return sum(len(parts[0]) for parts in self.by_relu.values())

    def merged(self, other: "Cuts") -> "Cuts":
        """The cuts of both (self's first, per ReLU node)."""
        join = {}
        for r in sorted(set(self.by_relu) | set(other.by_relu)):
            parts = [cuts.by_relu[r] for cuts in (self, other) if r in cuts.by_relu]
            join[r] = tuple(np.concatenate([p[k] for p in parts]) for k in range(6))
        return Cuts(join)


def octagon(network: Network, relu: int, i: np.ndarray, j: np.ndarray, relaxations: dict, centre: Tensor,
            radius: Tensor) -> np.ndarray:
    """Bounds (m, 4) = (lower, upper of x_i + x_j, lower, upper of x_i - x_j) of the pairs' pre-activations of ReLU
    node `relu`, by one backward pass of the engine (relaxations of the ReLU nodes before it; centre, radius (1, n))."""
    top, m = network.nodes[relu].inputs[0], len(i)
    n = int(np.prod(network.nodes[top].op.out_shape))
    rows = torch.zeros(4 * m, n, dtype=torch.float64, device=centre.device)
    k = torch.arange(m, device=centre.device)
    ti, tj = (torch.as_tensor(x, device=centre.device) for x in (i, j))
    for q, (si, sj) in enumerate(((1, 1), (-1, -1), (1, -1), (-1, 1))):
        rows[q * m + k, ti] = float(si)
        rows[q * m + k, tj] += float(sj)
    A = rows.reshape(1, 4 * m, *network.nodes[top].op.out_shape)
    low = engine.backward(network, top, A, torch.zeros(1, 4 * m, dtype=torch.float64, device=centre.device),
                          relaxations, centre, radius)[0].cpu().numpy()
    return np.stack([low[:m], -low[m:2 * m], low[2 * m:3 * m], -low[3 * m:]], 1)


def polygon_vertices(box: np.ndarray, octa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate vertices (m, 28, 2) of each pair's polygon and which of them are in it (m, 28) bool: box (m, 4) =
    (l_i, u_i, l_j, u_j), octa (m, 4) from `octagon`. Every vertex of the polygon is among them (the meeting points
    of two of its 8 lines, kept when they satisfy all 8 within a relative 1e-9: keeping one just outside only raises
    a cut's c)."""
    l_i, u_i, l_j, u_j = box.T
    s_lo, s_hi, d_lo, d_hi = octa.T
    normal = np.array([[-1, 0], [1, 0], [0, -1], [0, 1], [-1, -1], [1, 1], [-1, 1], [1, -1]], dtype=np.float64)
    offset = np.stack([-l_i, u_i, -l_j, u_j, -s_lo, s_hi, -d_lo, d_hi], 1)  # normal @ x <= offset, (m, 8)
    p, q = _LINES.T
    det = normal[p, 0] * normal[q, 1] - normal[p, 1] * normal[q, 0]  # (28,)
    ok_line = det != 0
    det = np.where(ok_line, det, 1.0)
    x = (offset[:, p] * normal[q, 1] - offset[:, q] * normal[p, 1]) / det
    y = (normal[p, 0] * offset[:, q] - normal[q, 0] * offset[:, p]) / det
    V = np.stack([x, y], -1)  # (m, 28, 2)
    slack = offset[:, None, :] - V @ normal.T  # (m, 28, 8)
    scale = 1.0 + np.abs(offset)[:, None, :] + np.abs(V).sum(-1, keepdims=True)
    ok = ok_line[None] & (slack >= -1e-9 * scale).all(-1) & (s_lo <= s_hi)[:, None] & (d_lo <= d_hi)[:, None]
    return V, ok


def best_planes(V: np.ndarray, ok: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """For each pair, the cut (w, a, b, c) (m,) each, valid at all its vertices V (m, 28, 2) with ok (m, 28), that
    the point with pre-activations x (m, 2) and ReLU outputs y (m, 2) violates most, and by how much (m,) (<= 0:
    none found). Over the weights WEIGHTS and the planes through three candidate vertices."""
    m = len(V)
    best = (np.full(m, -np.inf),) + tuple(np.zeros(m) for _ in range(4))
    if m == 0:
        return best
    # the planes go through 3 of (at most) 8 distinct vertices; c is taken over all the candidates all the same
    near = np.abs(V[:, :, None] - V[:, None]).max(-1) <= 1e-12 * (1 + np.abs(V).max((1, 2)))[:, None, None]
    duplicate = (np.tril(near & ok[:, None, :] & ok[:, :, None], -1)).any(-1)
    order = np.argsort(~(ok & ~duplicate), axis=1, kind="stable")[:, :8]
    V8, ok8 = np.take_along_axis(V, order[..., None], 1), np.take_along_axis(ok & ~duplicate, order, 1)
    picks = V8[:, _TRIANGLES]  # (m, T, 3, 2)
    valid_t = ok8[:, _TRIANGLES].all(-1)
    (x1, y1), (x2, y2), (x3, y3) = ((picks[..., k, 0], picks[..., k, 1]) for k in range(3))
    det = (x2 - x1) * (y3 - y1) - (x3 - x1) * (y2 - y1)
    scale = np.maximum(np.abs(x2 - x1) + np.abs(x3 - x1), 1e-300) * np.maximum(np.abs(y2 - y1) + np.abs(y3 - y1), 1e-300)
    valid_t &= np.abs(det) > 1e-9 * scale
    det = np.where(valid_t, det, 1.0)
    relu_v = np.maximum(V, 0.0)
    for w in WEIGHTS:
        g = w * relu_v[..., 0] + (1 - w) * relu_v[..., 1]  # (m, 28)
        gt = np.take_along_axis(g, order, 1)[:, _TRIANGLES]  # (m, T, 3)
        a = ((gt[..., 1] - gt[..., 0]) * (y3 - y1) - (gt[..., 2] - gt[..., 0]) * (y2 - y1)) / det
        b = ((x2 - x1) * (gt[..., 2] - gt[..., 0]) - (x3 - x1) * (gt[..., 1] - gt[..., 0])) / det
        a, b = np.where(valid_t, a, 0.0), np.where(valid_t, b, 0.0)
        # c: the largest g(v) - a v_x - b v_y over the pair's vertices (the cut is then valid on the polygon)
        excess = g[:, None, :] - a[..., None] * V[:, None, :, 0] - b[..., None] * V[:, None, :, 1]  # (m, T, 28)
        c = np.where(ok[:, None, :], excess, -np.inf).max(-1)
        violation = w * y[:, 0:1] + (1 - w) * y[:, 1:2] - a * x[:, 0:1] - b * x[:, 1:2] - c
        violation = np.where(valid_t & np.isfinite(c), violation, -np.inf)
        t = violation.argmax(1)
        r = np.arange(m)
        better = violation[r, t] > best[0]
        for k, value in enumerate((violation[r, t], np.full(m, w), a[r, t], b[r, t], c[r, t])):
            best[k][better] = value[better]
    return best


def separate(network: Network, box: InputBox, layer_bounds: list, point: list, *, limit: int,
             pairs_per_layer: int = 2000) -> Cuts:
    """Up to `limit` cuts that the LP point violates most: point [(pre-activations (n_r,), ReLU outputs (n_r,))] per
    ReLU node of `network.relu_nodes`; layer_bounds as `interval.relu_inputs` (flat numpy). Per ReLU node, the
    pairs of its unstable neurons whose triangles the point uses most (the largest sums of output minus relu(input):
    `pairs_per_layer` of them) are tried."""
    given = by_node(network, layer_bounds)
    lo, hi = (torch.tensor(np.asarray(x, np.float64)).reshape(1, -1) for x in (box.lo, box.hi))
    _, relaxations = engine.node_bounds(network, lo, hi, "adaptive", given, output_pass=False)
    found = []
    for t, relu in enumerate(network.relu_nodes):
        l, u = (np.asarray(x, np.float64).reshape(-1) for x in layer_bounds[t])
        pre, post = point[t]
        unstable = np.flatnonzero((l < 0) & (u > 0))
        if len(unstable) < 2:
            continue
        slack = post[unstable] - np.maximum(pre[unstable], 0.0)
        i, j = np.triu_indices(len(unstable), 1)
        total = slack[i] + slack[j]
        keep = np.argsort(-total)[:pairs_per_layer]
        keep = keep[total[keep] > 1e-9]
        i, j = unstable[i[keep]], unstable[j[keep]]
        if not len(i):
            continue
        octa = octagon(network, relu, i, j, relaxations, (lo + hi) / 2, (hi - lo) / 2)
        bx = np.stack([l[i], u[i], l[j], u[j]], 1)
        octa = np.stack([np.maximum(octa[:, 0], l[i] + l[j]), np.minimum(octa[:, 1], u[i] + u[j]),
                         np.maximum(octa[:, 2], l[i] - u[j]), np.minimum(octa[:, 3], u[i] - l[j])], 1)
        V, ok = polygon_vertices(bx, octa)
        violation, w, a, b, c = best_planes(V, ok, np.stack([pre[i], pre[j]], 1), np.stack([post[i], post[j]], 1))
        c = c + MARGIN * (1 + np.abs(c) + (np.abs(a) + np.abs(b)) * np.abs(V).max((1, 2)))
        found.append((violation, relu, i, j, w, a, b, c))
    if not found:
        return Cuts({})
    violation = np.concatenate([f[0] for f in found])
    order = np.argsort(-violation)[:limit]
    chosen = np.zeros(len(violation), dtype=bool)
    chosen[order[violation[order] > 1e-6]] = True
    cuts, start = {}, 0
    for violation_r, relu, *parts in found:
        mine = chosen[start:start + len(violation_r)]
        start += len(violation_r)
        if mine.any():
            cuts[relu] = tuple(np.asarray(p)[mine] for p in parts)
    return Cuts(cuts)


def _with_cuts(problem: solvers.LinearProblem, layout: encode.Layout, network: Network, cuts: Cuts
               ) -> solvers.LinearProblem:
    """The LP with the cuts' rows ``w y_i + (1 - w) y_j - a x_i - b x_j <= c`` added (x pre-activations, y outputs)."""
    if not cuts.count:
        return problem
    rows, cols, vals, rhs = [], [], [], []
    start = 0
    for t, relu in enumerate(network.relu_nodes):
        if relu not in cuts.by_relu:
            continue
        i, j, w, a, b, c = cuts.by_relu[relu]
        r = start + np.arange(len(i))
        start += len(i)
        pre, post = layout.zh[t], layout.z[t]
        for col, val in ((post[i], w), (post[j], 1 - w), (pre[i], -a), (pre[j], -b)):
            rows.append(r), cols.append(col), vals.append(val)
        rhs.append(c)
    extra = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(start, problem.n))
    return solvers.LinearProblem(problem.c, sp.vstack([problem.A_ub, extra]).tocsr(),
                                 np.concatenate([problem.b_ub, *rhs]), problem.A_eq, problem.b_eq, problem.lb,
                                 problem.ub)


def root_cuts(network: Network, box: InputBox, layer_bounds: list, C: np.ndarray, d: np.ndarray, *,
              rounds: int = 4, per_round: int = 300, deadline: float | None = None) -> tuple[Cuts, list]:
    """Cuts for the rows C (k, n_outputs), d (k,) over the box, with the layer bounds (as `interval.relu_inputs`,
    flat numpy): `rounds` rounds per row, in turn, of the triangle LP with the cuts so far minimizing the row, then
    up to `per_round` cuts its solution violates most (`separate`). Stops at deadline (time.perf_counter()). Returns
    (the cuts, the LP's values: per row, its value before each round's cuts and after the last)."""
    problem, layout = encode.build_problem(network, box, layer_bounds, kind="triangle")
    cuts, values = Cuts({}), []
    for c_row, d_row in zip(np.asarray(C, np.float64), np.asarray(d, np.float64)):
        G, g0 = encode.rows(layout, c_row[None], np.array([d_row]))
        trace = []
        for round_ in range(rounds + 1):
            if deadline is not None and time.perf_counter() > deadline:
                break
            remaining = None if deadline is None else deadline - time.perf_counter()
            result = solvers.open_model(_with_cuts(problem, layout, network, cuts)).solve(
                G.toarray().reshape(-1), float(g0[0]), time_limit=remaining)
            if result.status != solvers.OPTIMAL:
                break
            trace.append(result.objective)
            if round_ == rounds:
                break
            point = [(result.x[pre], result.x[post]) for pre, post in zip(layout.zh, layout.z)]
            new = separate(network, box, layer_bounds, point, limit=per_round)
            if not new.count:
                break
            cuts = cuts.merged(new)
        values.append(trace)
    return cuts, values


def lagrangian_terms(cuts: Cuts, gamma: Tensor, shapes: dict) -> tuple[dict, dict, Tensor]:
    """The cuts' Lagrangian terms for multipliers gamma (B, K, m) >= 0 (m = cuts.count, in the order of
    cuts.by_relu): ({ReLU id: rows added at its output (B, K, *shape)}, {ReLU id: rows added at its input}, the
    constant added (B, K)); shapes {ReLU id: its shape}. ``f >= f + gamma (lhs - c)`` on the set (module docstring)."""
    B, K, _ = gamma.shape
    posts, pres = {}, {}
    const = gamma.new_zeros(B, K)
    start = 0
    for relu, parts in cuts.by_relu.items():
        i, j, w, a, b, c = (torch.as_tensor(p, device=gamma.device) for p in parts)
        w, a, b, c = (x.to(gamma.dtype) for x in (w, a, b, c))
        g = gamma[:, :, start:start + len(i)]
        start += len(i)
        n = int(np.prod(shapes[relu]))
        post = gamma.new_zeros(B, K, n).index_add(2, i, g * w).index_add(2, j, g * (1 - w))
        pre = gamma.new_zeros(B, K, n).index_add(2, i, -g * a).index_add(2, j, -g * b)
        posts[relu], pres[relu] = post.reshape(B, K, *shapes[relu]), pre.reshape(B, K, *shapes[relu])
        const = const - g @ c
    return posts, pres, const
