"""Exact minimum of ``C f(x) + d`` over a box by enumerating activation patterns: the reference for tests.

On the set of inputs where every ReLU has a fixed state (an activation pattern), the network is affine in x and
that set is a polytope (the box cut by one half-space per neuron). The minimum over the box is the minimum over
the reachable patterns of an LP each. Patterns are explored depth first, neuron by neuron in layer order; a
neuron splits the current polytope only where the min and max of its pre-activation over it (two LPs) have
opposite signs, so unreachable patterns are never visited. Exponential in the number of ReLUs: small nets only.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linprog

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


def _layer_intervals(network: Network, box: InputBox) -> list[tuple[np.ndarray, np.ndarray]]:
    """Interval bounds (l, u) of every affine layer's outputs over the box, widened by a relative 1e-12 so that
    rounding never makes an unstable neuron look stable. Written here, not taken from bounds/interval.py: the
    oracle shares no code with the methods it checks."""
    lo, hi = box.lo, box.hi
    intervals = []
    for affine, relu in zip(network.affines, network.relu_after):
        center = affine.weight @ ((lo + hi) / 2) + affine.bias
        radius = np.abs(affine.weight) @ ((hi - lo) / 2)
        slack = 1e-12 * (1.0 + np.abs(center) + radius)
        l, u = center - radius - slack, center + radius + slack
        intervals.append((l, u))
        lo, hi = (np.maximum(l, 0.0), np.maximum(u, 0.0)) if relu else (l, u)
    return intervals


def enumerate_bound(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray | None = None) -> np.ndarray:
    """The exact ``min_{x in box} C f(x) + d`` per row (k,), for networks with at most 14 ReLUs."""
    network.require_chain("enumerate")
    C, d = check_problem(network, box, C, d)
    if network.n_relus > MAX_RELUS:
        raise ValueError(f"enumerate_bound: {network.n_relus} ReLUs, at most {MAX_RELUS} are enumerated")
    interval = _layer_intervals(network, box)  # settles some neurons without an LP
    affines, relu_after = network.affines, network.relu_after
    best = np.full(C.shape[0], np.inf)

    def leaf(A: np.ndarray, b: np.ndarray, M: np.ndarray, m: np.ndarray) -> None:
        """Outputs ``M x + m`` on the polytope A x <= b (in the box): one LP per row."""
        for r in range(C.shape[0]):
            value = _lp_min(C[r] @ M, A, b, box)
            if value is not None:
                best[r] = min(best[r], value + C[r] @ m + d[r])

    def visit(i: int, j: int, A: np.ndarray, b: np.ndarray, M: np.ndarray, m: np.ndarray, mask: list) -> None:
        """Decide neuron j of ReLU layer i, whose pre-activations are ``M x + m`` on the polytope A x <= b;
        mask: the states (1 active, 0 inactive) of its neurons 0..j-1."""
        if j == M.shape[0]:  # layer complete: through its ReLUs and on to the next ReLU layer or the outputs
            M, m = np.asarray(mask, dtype=np.float64)[:, None] * M, np.asarray(mask, dtype=np.float64) * m
            if i + 1 == len(affines):
                return leaf(A, b, M, m)
            nxt = affines[i + 1]
            M, m = nxt.weight @ M, nxt.weight @ m + nxt.bias
            return visit(i + 1, 0, A, b, M, m, []) if relu_after[i + 1] else leaf(A, b, M, m)
        l, u = interval[i][0][j], interval[i][1][j]
        if l >= 0 or u <= 0:  # stable on the whole box
            low, high = l, u
        else:
            low = _lp_min(M[j], A, b, box)
            if low is None:
                return
            low, high = low + m[j], -_lp_min(-M[j], A, b, box) + m[j]
        if high > 0:  # the part where M_j x + m_j >= 0 (a new row only if the neuron splits the polytope)
            cut = low < 0
            visit(i, j + 1, np.vstack([A, -M[j]]) if cut else A, np.append(b, m[j]) if cut else b, M, m,
                  mask + [1])
        if low < 0 or high <= 0:  # the part where M_j x + m_j <= 0
            cut = high > 0
            visit(i, j + 1, np.vstack([A, M[j]]) if cut else A, np.append(b, -m[j]) if cut else b, M, m,
                  mask + [0])

    first = affines[0]
    if not relu_after[0]:  # no ReLU at all: an affine map, minimized over the box in closed form
        W, c0 = C @ first.weight, C @ first.bias + d
        return np.clip(W, 0, None) @ box.lo + np.clip(W, None, 0) @ box.hi + c0
    visit(0, 0, np.zeros((0, network.n_inputs)), np.zeros(0), first.weight.copy(), first.bias.copy(), [])
    return best
