"""Exact minimum of ``C f(x) + d`` over a box by enumerating activation patterns: the reference for tests.

On the set of inputs where every ReLU has a fixed state (an activation pattern), the network is affine in x and
that set is a polytope (the box cut by one half-space per neuron). The minimum over the box is the minimum over
the reachable patterns of an LP each. Patterns are explored depth first, neuron by neuron, ReLU node by ReLU node
in the graph's order; a neuron splits the current polytope only where the min and max of its pre-activation over
it (two LPs) have opposite signs, so unreachable patterns are never visited. Between ReLUs, every node's value is
kept as an affine map of x, composed from the operators' `sparse()` maps (the network's definition itself).
Exponential in the number of ReLUs: small nets only.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linprog

from .. import ops
from ..network import Network
from ..spec import InputBox
from .base import check_problem

MAX_RELUS = 14


def _lp_min(cost: np.ndarray, A: np.ndarray, b: np.ndarray, box: InputBox) -> float | None:
    """min cost @ x over {x in box, A x <= b}; None if that set is empty. scipy's own HiGHS build, not
    `verifier.solvers`: this is the tests' oracle and must not share code with what it checks (DESIGN.md rule 7)."""
    result = linprog(cost, A_ub=A if A.shape[0] else None, b_ub=b if A.shape[0] else None,
                     bounds=np.stack([box.lo, box.hi], axis=1), method="highs")
    if result.status == 2:
        return None
    if result.status != 0:
        raise RuntimeError(f"enumerate_bound: an LP ended with status {result.status} ({result.message})")
    return float(result.fun)


def _maps(network: Network) -> dict:
    """{linear node id: (matrix (n_out, sum n_in) dense, offset (n_out,))} from the operators' sparse maps."""
    maps = {}
    for k, node in enumerate(network.nodes):
        if isinstance(node.op, ops.Linear):
            matrix, offset = node.op.sparse()
            maps[k] = (matrix.toarray(), offset)
    return maps


def _node_intervals(network: Network, box: InputBox, maps: dict) -> dict:
    """Interval bounds {node id: (l, u)} of every node's flat values over the box, widened by a relative 1e-12 so
    that rounding never makes an unstable neuron look stable. Written here, not taken from bounds/interval.py: the
    oracle shares no code with the methods it checks."""
    intervals = {0: (box.lo, box.hi)}
    for k, node in enumerate(network.nodes[1:], 1):
        lo = np.concatenate([intervals[i][0] for i in node.inputs])
        hi = np.concatenate([intervals[i][1] for i in node.inputs])
        if isinstance(node.op, ops.ReLU):
            intervals[k] = (np.maximum(lo, 0.0), np.maximum(hi, 0.0))
            continue
        W, offset = maps[k]
        center = W @ ((lo + hi) / 2) + offset
        radius = np.abs(W) @ ((hi - lo) / 2)
        slack = 1e-12 * (1.0 + np.abs(center) + radius)
        intervals[k] = (center - radius - slack, center + radius + slack)
    return intervals


def enumerate_bound(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray | None = None) -> np.ndarray:
    """The exact ``min_{x in box} C f(x) + d`` per row (k,), for networks with at most 14 ReLUs."""
    C, d = check_problem(network, box, C, d)
    if network.n_relus > MAX_RELUS:
        raise ValueError(f"enumerate_bound: {network.n_relus} ReLUs, at most {MAX_RELUS} are enumerated")
    maps = _maps(network)
    interval = _node_intervals(network, box, maps)  # settles some neurons without an LP
    nodes, output = network.nodes, network.output
    best = np.full(C.shape[0], np.inf)

    def leaf(A: np.ndarray, b: np.ndarray, M: np.ndarray, m: np.ndarray) -> None:
        """Outputs ``M x + m`` on the polytope A x <= b (in the box): one LP per row."""
        for r in range(C.shape[0]):
            value = _lp_min(C[r] @ M, A, b, box)
            if value is not None:
                best[r] = min(best[r], value + C[r] @ m + d[r])

    def run(k: int, A: np.ndarray, b: np.ndarray, values: dict) -> None:
        """Go on from node k: values {node id: (M, m)} holds every earlier node as ``M x + m`` on A x <= b."""
        while k <= output and not isinstance(nodes[k].op, ops.ReLU):
            W, offset = maps[k]
            M = np.concatenate([values[i][0] for i in nodes[k].inputs])
            m = np.concatenate([values[i][1] for i in nodes[k].inputs])
            values = {**values, k: (W @ M, W @ m + offset)}
            k += 1
        if k > output:
            return leaf(A, b, *values[output])
        decide(k, 0, A, b, values, [])

    def decide(k: int, j: int, A: np.ndarray, b: np.ndarray, values: dict, mask: list) -> None:
        """Decide neuron j of ReLU node k, whose pre-activations are ``M x + m`` on the polytope A x <= b;
        mask: the states (1 active, 0 inactive) of its neurons 0..j-1."""
        M, m = values[nodes[k].inputs[0]]
        if j == M.shape[0]:  # the node complete: through its ReLUs and on
            on = np.asarray(mask, dtype=np.float64)
            return run(k + 1, A, b, {**values, k: (on[:, None] * M, on * m)})
        l, u = interval[nodes[k].inputs[0]][0][j], interval[nodes[k].inputs[0]][1][j]
        if l >= 0 or u <= 0:  # stable on the whole box
            low, high = l, u
        else:
            low = _lp_min(M[j], A, b, box)
            if low is None:
                return
            low, high = low + m[j], -_lp_min(-M[j], A, b, box) + m[j]
        if high > 0:  # the part where M_j x + m_j >= 0 (a new row only if the neuron splits the polytope)
            cut = low < 0
            decide(k, j + 1, np.vstack([A, -M[j]]) if cut else A, np.append(b, m[j]) if cut else b, values,
                   mask + [1])
        if low < 0 or high <= 0:  # the part where M_j x + m_j <= 0
            cut = high > 0
            decide(k, j + 1, np.vstack([A, M[j]]) if cut else A, np.append(b, -m[j]) if cut else b, values,
                   mask + [0])

    run(1, np.zeros((0, network.n_inputs)), np.zeros(0), {0: (np.eye(network.n_inputs), np.zeros(network.n_inputs))})
    return best
