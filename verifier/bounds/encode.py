"""The LP and MILP encodings of a network graph in matrix form (`solvers.LinearProblem`), and where their parts live.

Variables, in this order: the input x (flat, C order; box bounds), then per ReLU node i (in `network.relu_nodes`
order) the pre-activations zh_i (free) and the activations z_i of its flat entries, then (big-M only) the
indicators of its unstable neurons. Every linear node is composed away: its value is an affine function
``M v + c`` of the variables v (M scipy CSR), obtained from the operators' own `sparse()` maps, starting from x
and from the activations z of the ReLU nodes, summed where branches meet; on a dense chain that is
``zh_i = W_i z_{i-1} + b_i``, and nothing is ever expanded densely (a convolution stays its sparse matrix).

Rows, per ReLU node with input node p (bounds l <= zh <= u of p's values): ``zh - M_p v = c_p``; a stable active
neuron (l >= 0, u > 0) ``z = zh``; a stable inactive one (u <= 0) ``z = 0`` (fixed bounds); an unstable one
(l < 0 < u), for the triangle LP (Ehlers' planet relaxation),

    R0: -z <= 0,    R1: zh - z <= 0,    R2: z - s zh <= t,   s = u / (u - l), t = -u l / (u - l)

(R2 is ``(u - l) z <= u (zh - l)`` divided by ``u - l``), and for the big-M MILP (Tjeng et al. 2019) with its
indicator a in {0, 1}: ``z >= zh, z >= 0, z <= u a, z <= zh - l (1 - a)``; there the valid bounds l <= zh <= u,
0 <= z <= max(u, 0) are also set on every neuron (they help the MILP solver and cannot change its exact value).
The stable/unstable split is the bound engine's (inactive when u <= 0, unstable when l < 0 < u), and the LP leaves
the pre-activations free: it is exactly the dual pass with free lower slopes. The triangle LP also takes, at the
top of each MaxPool tree over a ReLU node's output, the upper line of each window's maximum over its entries
(`windows.threshold_line`: the dual pass uses that line where it beats the tree's, the LP has both).

Input sets: a box gives the bounds of x. An L2/L1 ball (`spec.InputBall`) gives its bounding box as x's bounds
and, for L1, auxiliary variables t (n_inputs, after everything else) with ``-t <= x - x0 <= t``, ``sum t <= eps``
(linear: the LP stays an LP, the MILP a MILP); for L2 the problem's cone ``||x - x0||_2 <= eps`` (an SOCP, solved
by Clarabel; no big-M MILP).

A problem is built up to a target node (the output for the objective, a ReLU's input for LP-all); it holds the
ReLU nodes up to that node, and `Layout.value` is the target's value ``M v + c``. Its cost is zero: callers set
it from `rows` (C times the target's value, plus d).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .. import ops, solvers
from ..network import Network
from ..spec import InputBall, InputBox, bounding_box
from .windows import max_windows, threshold_line


@dataclass(frozen=True, eq=False)
class Layout:
    """Where the parts of a built problem live.

    zh[i], z[i]: column indices (w_i,) of ReLU node i (the i-th of `network.relu_nodes`, w_i its flat size);
    unstable[i]: indices of its unstable neurons; rows[i]: for the triangle, row indices (3, m_i) of R0, R1, R2 of
    those neurons in A_ub; binary[i]: for big-M, the columns (m_i,) of their indicators; value: (M CSR
    (n_target, n), c (n_target,)), the target node's flat value as ``M v + c`` in the variables v; aux,
    aux_center: an L1 input ball's auxiliary columns and centre (None otherwise).
    """

    n_inputs: int
    zh: list
    z: list
    unstable: list
    rows: list
    binary: list
    value: tuple
    aux: np.ndarray | None = None  # an L1 ball's columns t (n_inputs,), t_i >= |x_i - x0_i|
    aux_center: np.ndarray | None = None  # that ball's x0


def neuron_states(l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inactive, active, unstable) masks, classified exactly as the bound engine does."""
    inactive = u <= 0
    unstable = (l < 0) & (u > 0)
    return inactive, ~inactive & ~unstable, unstable


def relus_up_to(network: Network, target: int) -> list[int]:
    """The ReLU nodes a problem up to node `target` holds: those with id <= target (a prefix of relu_nodes)."""
    return [k for k in network.relu_nodes if k <= target]


def _picks(columns: np.ndarray, n: int, values=1.0) -> sp.csr_matrix:
    """(m, n) CSR whose row r holds values[r] (or the scalar) at column columns[r]; m = len(columns)."""
    m = columns.size
    data = np.broadcast_to(np.asarray(values, dtype=np.float64), (m,)).copy()
    return sp.csr_matrix((data, columns, np.arange(m + 1)), shape=(m, n))


class _Rows:
    """Accumulates blocks of sparse rows and their right-hand sides."""

    def __init__(self, n: int) -> None:
        self.n, self.blocks, self.rhs, self.count = n, [], [], 0

    def add(self, block: sp.spmatrix, rhs: np.ndarray) -> np.ndarray:
        """Append the rows of block (r, n) with right-hand sides rhs (r,); returns their indices."""
        rhs = np.broadcast_to(np.asarray(rhs, dtype=np.float64), (block.shape[0],))
        index = np.arange(self.count, self.count + block.shape[0])
        self.blocks.append(block)
        self.rhs.append(rhs)
        self.count += block.shape[0]
        return index

    def terms(self, terms: list[tuple[np.ndarray, object]], rhs: np.ndarray) -> np.ndarray:
        """Append rows r = 0..m-1 that hold, per term (columns (m,), values (m,) or a scalar), values[r] at
        columns[r]; returns their indices."""
        m = terms[0][0].size  # one COO build (duplicates summed) rather than a CSR per term added up
        rows = np.tile(np.arange(m), len(terms))
        cols = np.concatenate([c for c, _ in terms])
        data = np.concatenate([np.broadcast_to(np.asarray(v, dtype=np.float64), (m,)) for _, v in terms])
        return self.add(sp.csr_matrix((data, (rows, cols)), shape=(m, self.n)), rhs)

    def matrix(self) -> tuple[sp.csr_matrix, np.ndarray]:
        if not self.blocks:
            return sp.csr_matrix((0, self.n)), np.zeros(0)
        return sp.vstack(self.blocks, format="csr"), np.concatenate(self.rhs)


def _last_uses(network: Network, target: int) -> dict:
    """{node id: the last node <= target that reads it}."""
    last = {}
    for k, node in enumerate(network.nodes[:target + 1]):
        for i in node.inputs:
            last[i] = k
    return last


def _window_rows(ineq: _Rows, top: tuple, source: tuple, window: tuple, source_input: tuple) -> None:
    """The upper lines of a MaxPool's maxima over their whole windows (`windows.threshold_line`), rows
    ``v_top - W v_source <= offset``: values (M, c) of the top and the source (a ReLU node, whose input bounds are
    source_input), window as `windows.max_windows` gives it."""
    _, index, counted, _ = window
    l, u = (torch.as_tensor(np.maximum(x, 0.0)[index.numpy()])[None] for x in source_input)
    coef, offset = (x[0].numpy() for x in threshold_line(l, u, counted))
    n, m = index.shape
    W = sp.csr_matrix((coef.ravel(), (np.repeat(np.arange(n), m), index.numpy().ravel())),
                      shape=(n, source[0].shape[0]))
    ineq.add((top[0] - W @ source[0]).tocsr(), offset - top[1] + W @ source[1])


def build_problem(network: Network, box: InputBox | InputBall, layer_bounds: list, target: int | None = None,
                  kind: str = "triangle") -> tuple[solvers.LinearProblem, Layout]:
    """The LP (kind "triangle") or MILP (kind "bigm") of the network up to node `target` (default: the output),
    with the ReLU nodes up to it (`relus_up_to`); layer_bounds [(l, u)] flat per ReLU node's input, in the format
    of `interval.relu_inputs` (at least the entries of those ReLU nodes). Module docstring for the encoding."""
    if kind not in ("triangle", "bigm"):
        raise ValueError(f"unknown problem kind {kind!r}")
    ball, box = (box, box.box) if isinstance(box, InputBall) else (None, bounding_box(box))
    if ball is not None and ball.norm == "l2" and kind == "bigm":
        raise ValueError("the big-M MILP takes boxes and L1 balls, not L2 balls (that would be a MISOCP)")
    l1 = ball is not None and ball.norm == "l1"
    target = network.output if target is None else int(target)
    relus = relus_up_to(network, target)
    n0 = network.n_inputs
    bounds = [tuple(np.asarray(x, dtype=np.float64).reshape(-1) for x in layer_bounds[i])
              for i in range(len(relus))]
    states = [neuron_states(l, u) for l, u in bounds]
    widths = [l.size for l, _ in bounds]
    n_bin = [int(s[2].sum()) if kind == "bigm" else 0 for s in states]
    offsets = np.cumsum([n0] + [2 * w + m for w, m in zip(widths, n_bin)])
    n = int(offsets[-1]) + (n0 if l1 else 0)
    lb, ub = np.full(n, -np.inf), np.full(n, np.inf)
    lb[:n0], ub[:n0] = box.lo, box.hi
    integrality = np.zeros(n, dtype=bool)
    eq, ineq = _Rows(n), _Rows(n)
    zh_cols, z_cols, unstable_idx, tri_rows, bin_cols = [], [], [], [], []
    values = {0: (_picks(np.arange(n0), n), np.zeros(n0))}
    aux = None
    if l1:  # t >= x - x0, t >= x0 - x, sum t <= eps; 0 <= t <= eps
        x, aux = np.arange(n0), np.arange(int(offsets[-1]), n)
        ineq.terms([(x, 1.0), (aux, -1.0)], ball.x0)
        ineq.terms([(x, -1.0), (aux, -1.0)], -ball.x0)
        ineq.add(sp.csr_matrix((np.ones(n0), aux, [0, n0]), shape=(1, n)), ball.eps)
        lb[aux], ub[aux] = 0.0, ball.eps
    last_use = _last_uses(network, target)
    windows = {k: w for k, w in max_windows(network).items() if k <= target and w[0] in relus} \
        if kind == "triangle" else {}
    for k, (source, *_) in windows.items():  # the source's value is read again at the window's top
        last_use[source] = max(last_use[source], k)
    for k in range(1, target + 1):
        node = network.nodes[k]
        if isinstance(node.op, ops.ReLU):
            i = len(zh_cols)
            w, (l, u), (inactive, active, unstable) = widths[i], bounds[i], states[i]
            zh = np.arange(offsets[i], offsets[i] + w)
            z = zh + w
            M, c = values[node.inputs[0]]
            if M.shape[0] != w:
                raise ValueError(f"layer bounds for ReLU node {k} have {w} entries, the node has {M.shape[0]}")
            eq.add(_picks(zh, n) - M, c)
            act = np.flatnonzero(active)
            eq.terms([(z[act], 1.0), (zh[act], -1.0)], 0.0)
            lb[z[inactive]], ub[z[inactive]] = 0.0, 0.0
            idx = np.flatnonzero(unstable)
            lu, uu = l[idx], u[idx]
            if kind == "triangle":
                s, t = uu / (uu - lu), -uu * lu / (uu - lu)
                r0 = ineq.terms([(z[idx], -1.0)], 0.0)
                r1 = ineq.terms([(zh[idx], 1.0), (z[idx], -1.0)], 0.0)
                r2 = ineq.terms([(z[idx], 1.0), (zh[idx], -s)], t)
                tri_rows.append(np.stack([r0, r1, r2]))
                bin_cols.append(np.zeros(0, dtype=int))
            else:
                a = np.arange(offsets[i] + 2 * w, offsets[i] + 2 * w + idx.size)
                ineq.terms([(zh[idx], 1.0), (z[idx], -1.0)], 0.0)
                ineq.terms([(z[idx], 1.0), (a, -uu)], 0.0)
                ineq.terms([(z[idx], 1.0), (zh[idx], -1.0), (a, -lu)], -lu)
                lb[a], ub[a], integrality[a] = 0.0, 1.0, True
                lb[zh], ub[zh] = l, u
                lb[z[idx]], ub[z[idx]] = 0.0, uu
                tri_rows.append(np.zeros((3, 0), dtype=int))
                bin_cols.append(a)
            zh_cols.append(zh)
            z_cols.append(z)
            unstable_idx.append(idx)
            values[k] = (_picks(z, n), np.zeros(w))
        else:
            A, offset = node.op.sparse()
            inputs = [values[i] for i in node.inputs]
            M = inputs[0][0] if len(inputs) == 1 else sp.vstack([m for m, _ in inputs], format="csr")
            values[k] = ((A @ M).tocsr(), A @ np.concatenate([const for _, const in inputs]) + offset)
            if k in windows:
                _window_rows(ineq, values[k], values[windows[k][0]], windows[k], bounds[relus.index(windows[k][0])])
        for i in node.inputs:  # values nobody reads any more: free (they can be large on conv nets)
            if last_use[i] == k and i != target:
                values.pop(i, None)
    A_ub, b_ub = ineq.matrix()
    A_eq, b_eq = eq.matrix()
    cone = (ball.x0, ball.eps) if ball is not None and ball.norm == "l2" else None
    problem = solvers.LinearProblem(np.zeros(n), A_ub, b_ub, A_eq, b_eq, lb, ub,
                                    integrality if kind == "bigm" else None, cone=cone)
    return problem, Layout(n0, zh_cols, z_cols, unstable_idx, tri_rows, bin_cols, values[target], aux,
                           None if aux is None else ball.x0)


def rows(layout: Layout, C, d: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """``C v_target + d`` in the problem's variables: (G CSR (k, n), g0 (k,)) with G v + g0 its value; C (k,
    n_target) dense or sparse, d (k,). For the objective rows (target: the output) this folds the linear nodes
    after the last ReLU into the cost."""
    M, c = layout.value
    return (sp.csr_matrix(C) @ M).tocsr(), np.asarray(C @ c).reshape(-1) + d


def variable_ranges(problem: solvers.LinearProblem, layout: Layout, bounds: list) -> tuple[np.ndarray, np.ndarray]:
    """Valid bounds (n,) of every variable at every point of the real network: the problem's own, ``l <= zh <= u``
    and ``relu(l) <= z <= relu(u)`` (the LP itself leaves zh and z free; the weak-duality bound needs them
    finite)."""
    lo, hi = problem.lb.copy(), problem.ub.copy()
    for i, (zh, z) in enumerate(zip(layout.zh, layout.z)):
        l, u = (np.asarray(x, dtype=np.float64).reshape(-1) for x in bounds[i])
        lo[zh], hi[zh] = l, u
        lo[z], hi[z] = np.maximum(l, 0.0), np.maximum(u, 0.0)
    return lo, hi
