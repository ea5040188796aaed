"""The triangle LP (Ehlers' planet relaxation) of a network graph, with a sound re-derivation of its value.

The encoding (variables x, then per ReLU node zh and z; linear nodes composed away from the operators' sparse
maps; the triangle on unstable neurons) is `encode.build_problem`'s. The objective rows ``C f + d`` become one cost
vector on the variables the output depends on (the linear nodes after the last ReLU folded in: `encode.rows`), so
``C f(x) + d`` is never a variable. The LP leaves the pre-activations free and classifies neurons as the bound
engine does: it is then exactly the dual pass with free lower slopes.

Sound value (DESIGN.md rule 2). With multipliers mu0, mu1, mu2 >= 0 of R0, R1, R2 and the coefficient g of z
that the later layers pass back, stationarity in z gives ``g = mu0 + mu1 - mu2`` and the coefficient handed on to
zh is ``mu1 - s mu2``. Where g > 0 and mu2 = 0, the dual pass with the lower line ``z >= alpha zh`` hands on
``g alpha``: both agree for ``alpha = mu1 / (mu0 + mu1)``. Where g < 0 and mu0 = mu1 = 0 the dual pass uses the
upper line R2 whatever alpha is. Such a dual solution always exists among the optimal ones (the layer bounds are
valid for the relaxation of the layers before), so the LP's value is the dual pass at some slopes. But at a vertex
of a triangle where the layer bound is reached (zh = u, z = u: R1 and R2 both active) HiGHS may return a
degenerate mixture (mu1, mu2 > 0) that the dual pass cannot express; slopes guided by the primal point (1 where
zh > 0, 0 where zh < 0) then mostly recover the value (`slopes_from_solution`). The reported value is the best of
three sound re-derivations: `dual.backward_bound` at either set of slopes, and the weak-duality bound of the LP's
multipliers over valid variable ranges (`solvers.lagrangian_bound`). Each is a valid bound whatever the solver's
accuracy; with an accurate solver the best equals the LP's objective to ~1e-9. The solver's objective is kept in
``info["objective"]`` and never reported as the bound.

L2/L1 input balls (`spec.InputBall`, `encode`): for L1 the LP gains the linear rows of the ball (HiGHS as
usual, and the weak-duality bound covers them); for L2 the cone ``||x - x0||_2 <= eps`` makes it an SOCP, which
`solvers.open_model` hands to Clarabel (cvxpy). Its value is re-derived the same way: the dual pass at the slopes
read off the triangle rows' multipliers, concretised over ball ∩ box (`engine.concretize`); the weak-duality
bound drops the cone (a relaxation: still valid, weaker). Any slopes give a valid bound, so the re-derived value
is sound whatever the conic solver's accuracy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .. import ops, solvers
from ..network import Network
from ..spec import InputBox
from . import dual, encode
from .base import BoundResult, check_problem
from .encode import Layout, neuron_states
from .engine import MAX_ENTRIES
from .interval import relu_inputs

AGREEMENT = 1e-6  # relative gap between re-derived value and solver objective that info reports as a disagreement


def slopes_from_solution(layout: Layout, solution: solvers.Solution, bounds: list) -> tuple[list, list]:
    """Two sets of lower slopes per ReLU node of the problem (w_i,) read off one LP solution (module docstring):

    - from the duals: ``alpha = mu1 / (mu0 + mu1)`` on unstable neurons (adaptive where both vanish);
    - guided by the primal point: 1 where its pre-activation is > 0, 0 where < 0, the dual ratio where it is 0.
    Both are the LP's slopes when its dual solution is of the dual pass's form; at a degenerate vertex of a
    triangle (zh = u or zh = l with R2 and R0/R1 all active) HiGHS may return a mixture the dual pass cannot
    express, and then the primal-guided slopes mostly still reach the LP value (measured on 900 random rows:
    the dual ratio fell short on 8, by up to 13 %, the primal-guided ones on 1, by 3e-4).
    """
    from_duals, from_primal = [], []
    for i, unstable in enumerate(layout.unstable):
        l, u = (np.asarray(x, dtype=np.float64).reshape(-1) for x in bounds[i])
        alpha = (u >= -l).astype(np.float64)
        if unstable.size:
            mu0, mu1 = (np.maximum(solution.duals_ub[layout.rows[i][j]], 0.0) for j in (0, 1))
            total = mu0 + mu1
            ok = total > 1e-12 * max(float(np.max(total)), 1.0)
            alpha[unstable[ok]] = mu1[ok] / total[ok]
        zh = solution.x[layout.zh[i]]
        tol = 1e-9 * np.maximum(1.0, np.maximum(-l, u))
        from_duals.append(alpha)
        from_primal.append(np.where(zh > tol, 1.0, np.where(zh < -tol, 0.0, alpha)))
    return from_duals, from_primal


@dataclass(frozen=True, eq=False)
class RowSolutions:
    """Per row j of an LP run: objective (k,) (nan where not optimal), status [k], slopes per ReLU node of the
    problem (k, w_i) from the duals and from the primal point, lagrangian (k,) the weak-duality bound (-inf where none),
    errors {row: message} of the rows whose solve failed."""

    objective: np.ndarray
    status: list
    from_duals: list
    from_primal: list
    lagrangian: np.ndarray
    timing: dict
    errors: dict  # {row: the solver's message} for rows whose solve failed


def minimize_rows(network: Network, box: InputBox, bounds: list, C, d: np.ndarray, target: int,
                  deadline: float | None = None, backend: str = "highs") -> RowSolutions:
    """Minimize each row of ``C v + d`` over the triangle LP of the network up to node `target` (one model, one
    objective per row, warm-started), v the target's flat values; C (k, n_target) dense or sparse, d (k,). A row
    whose solve is not optimal is retried with Clarabel; if that fails too it keeps status, nan objective and
    adaptive slopes."""
    start = time.perf_counter()
    problem, layout = encode.build_problem(network, box, bounds, target, "triangle")
    G, g0 = encode.rows(layout, C, d)
    model = solvers.open_model(problem, backend)
    lo, hi = encode.variable_ranges(problem, layout, bounds)
    built = time.perf_counter()
    k = G.shape[0]
    adaptive = [(np.asarray(u).reshape(-1) >= -np.asarray(l).reshape(-1)).astype(np.float64)
                for l, u in bounds[:len(layout.zh)]]
    from_duals = [np.tile(a, (k, 1)) for a in adaptive]
    from_primal = [np.tile(a, (k, 1)) for a in adaptive]
    objective, lagrangian = np.full(k, np.nan), np.full(k, -np.inf)
    status, errors = [solvers.ERROR] * k, {}
    clarabel = None
    for j in range(k):
        remaining = None if deadline is None else deadline - time.perf_counter()
        if remaining is not None and remaining <= 0:
            status[j] = solvers.TIME_LIMIT
            continue
        cost = G[j].toarray().reshape(-1)
        result = model.solve(cost, float(g0[j]), time_limit=remaining)
        if result.status not in (solvers.OPTIMAL, solvers.TIME_LIMIT) and backend != "clarabel":
            clarabel = clarabel or solvers.open_model(problem, "clarabel")  # the LP fallback solver
            second = clarabel.solve(cost, float(g0[j]), time_limit=remaining)
            result = second if second.status == solvers.OPTIMAL else result
        status[j] = result.status
        if result.status != solvers.OPTIMAL:
            errors[j] = result.info.get("message", result.status)
            continue
        objective[j] = result.objective
        lagrangian[j] = solvers.lagrangian_bound(problem, result.duals_ub, result.duals_eq, lo, hi, cost, g0[j])
        for i, (a_dual, a_primal) in enumerate(zip(*slopes_from_solution(layout, result, bounds))):
            from_duals[i][j], from_primal[i][j] = a_dual, a_primal
    timing = {"build_s": built - start, "solve_s": time.perf_counter() - built, "variables": problem.n,
              "rows": problem.A_ub.shape[0] + problem.A_eq.shape[0], "nonzeros": problem.A_ub.nnz + problem.A_eq.nnz}
    return RowSolutions(objective, status, from_duals, from_primal, lagrangian, timing, errors)


def rederive(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray, bounds: list, rows: RowSolutions
             ) -> tuple[np.ndarray, np.ndarray, list]:
    """Sound values of the rows (k,) from an LP run: the best of the dual pass at either set of slopes and the
    weak-duality bound (all three valid whatever the solver did). Returns (value, dual-pass value, slopes used)."""
    by_duals = dual.backward_bound(network, box, C, d, bounds, rows.from_duals)
    by_primal = dual.backward_bound(network, box, C, d, bounds, rows.from_primal)
    primal_better = by_primal >= by_duals
    alphas = [np.where(primal_better[:, None], p, q) for p, q in zip(rows.from_primal, rows.from_duals)]
    crown = np.maximum(by_duals, by_primal)
    return np.maximum(crown, rows.lagrangian), crown, alphas


def _short(value: np.ndarray, objective: np.ndarray) -> np.ndarray:
    """Rows whose sound value is more than AGREEMENT (relative) below the solver's objective."""
    return np.flatnonzero(value < objective - AGREEMENT * np.maximum(1.0, np.abs(objective)))


def lp_layer_bounds(network: Network, box: InputBox, layer_bounds: list, *, deadline: float | None = None,
                    backend: str = "highs") -> tuple[list, dict]:
    """LP-all: tighten the input bounds of every ReLU node that has a ReLU before it by the triangle LP up to its
    input node (using the tightened bounds of the ReLU nodes before), for the entries the given bounds leave
    unstable (in blocks of MAX_ENTRIES entries, one LP model each); each min/max is re-derived soundly
    (`rederive`) and intersected with the given bounds. layer_bounds: [(l, u)] flat per node of
    `interval.relu_inputs`. Returns (bounds, info)."""
    bounds = [(np.array(l, dtype=np.float64).reshape(-1), np.array(u, dtype=np.float64).reshape(-1))
              for l, u in layer_bounds]
    info = {"lps": 0, "failed": 0, "disagreements": 0}
    for t, k in enumerate(relu_inputs(network)[:len(network.relu_nodes)]):
        before = len(encode.relus_up_to(network, k))
        if before == 0:  # a linear function of the box: its bounds are exact already
            continue
        l, u = bounds[t]
        sub = network.upto(k)
        sub_bounds = bounds[:before] + ([] if isinstance(network.nodes[k].op, ops.ReLU) else [bounds[t]])
        unstable = np.flatnonzero(neuron_states(l, u)[2])
        for first in range(0, unstable.size, MAX_ENTRIES):  # blocks: the re-derivation's rows cost memory
            idx = unstable[first:first + MAX_ENTRIES]
            m = idx.size
            E = np.zeros((2 * m, l.size))
            E[np.arange(m), idx], E[np.arange(m, 2 * m), idx] = 1.0, -1.0
            rows = minimize_rows(network, box, bounds, sp.csr_matrix(E), np.zeros(2 * m), k, deadline, backend)
            sound, _, _ = rederive(sub, box, E, np.zeros(2 * m), sub_bounds, rows)
            info["lps"] += 2 * m
            info["failed"] += sum(s != solvers.OPTIMAL for s in rows.status)
            info["disagreements"] += _short(sound, rows.objective).size
            l[idx] = np.maximum(l[idx], sound[:m])
            u[idx] = np.minimum(u[idx], -sound[m:])
    return bounds, info


def initial_bounds(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray, layer_bounds: list | None,
                   intermediate: str, slopes: str, deadline: float | None, backend: str = "highs"
                   ) -> tuple[list, np.ndarray | None, dict]:
    """Layer bounds for an LP/MILP: the given ones, else the dual pass's (slopes); with intermediate="lp" then
    tightened by LP-all. Returns (bounds, the dual pass's lower bounds of the rows with exactly these bounds or
    None when not computed, info)."""
    if intermediate not in ("dual", "lp"):
        raise ValueError(f"unknown intermediate {intermediate!r}; use 'dual' or 'lp'")
    info: dict = {"intermediate": intermediate, "slopes": slopes}
    if layer_bounds is None:  # the optimized pass gets at most half the time
        limit = None if deadline is None else max(0.0, (deadline - time.perf_counter()) / 2)
        first = dual.bound(network, box, C, d, slopes=slopes, time_limit=limit)
        bounds, lower = first.layer_bounds, first.lower
    else:
        bounds = [tuple(np.asarray(x, dtype=np.float64).reshape(-1) for x in lu) for lu in layer_bounds]
        lower = None
    if intermediate == "lp":
        start = time.perf_counter()
        bounds, info["lp_all"] = lp_layer_bounds(network, box, bounds, deadline=deadline, backend=backend)
        info["lp_all"]["seconds"] = time.perf_counter() - start
        lower = None
    return bounds, lower, info


def bound(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray | None = None, *,
          layer_bounds: list | None = None, intermediate: str = "dual", slopes: str = "adaptive",
          time_limit: float | None = None, backend: str = "highs") -> BoundResult:
    """Triangle-LP lower bounds of ``C @ f(x) + d`` over the box; C (k, n_outputs), d (k,).

    layer_bounds: [(l, u)] flat per node of `interval.relu_inputs` (for a dense chain: per affine layer), used as
    given; else the dual pass's (`slopes`: "wk", "adaptive" or "opt"); intermediate="lp" then tightens the ReLU
    inputs by LP-all. The reported lower bound of each row is
    re-derived from the LP's solution (`rederive`: the dual pass at the LP's slopes, or weak duality); a row whose
    LP failed or ran out of time keeps the dual pass's bound with the same layer bounds ("fallback").
    info: "objective" (k,) the solver's values (nan where none), "status" per row, "errors" {row: the solver's
    message} where a solve failed, "crown" (k,) the dual pass at the LP's slopes, "lagrangian" (k,) the
    weak-duality value, "alpha" the slopes per ReLU node (k, w_i),
    "disagreements" (rows whose value is more than 1e-6 relative below the objective), the time split
    "bounds_s" (layer bounds) / "build_s" (matrices) / "solve_s" (solver) / "rederive_s", the LP's size
    ("variables", "rows", "nonzeros"), and "intermediate"/"slopes"/"lp_all".
    """
    start = time.perf_counter()
    C, d = check_problem(network, box, C, d)
    deadline = None if time_limit is None else start + float(time_limit)
    bounds, dual_lower, info = initial_bounds(network, box, C, d, layer_bounds, intermediate, slopes, deadline,
                                              backend)
    info["bounds_s"] = time.perf_counter() - start
    rows = minimize_rows(network, box, bounds, C, d, network.output, deadline, backend)
    checked = time.perf_counter()
    value, crown, alphas = rederive(network, box, C, d, bounds, rows)
    info["rederive_s"] = time.perf_counter() - checked
    ok = np.array([s == solvers.OPTIMAL for s in rows.status])
    lower = value
    if not ok.all():
        if dual_lower is None:
            dual_lower = dual.bound(network, box, C, d, layer_bounds=bounds, slopes=slopes).lower
        lower = np.where(ok, value, dual_lower)
        info["fallback"] = "dual pass (same layer bounds) on rows " + ", ".join(map(str, np.flatnonzero(~ok)))
    info.update(rows.timing, objective=rows.objective, status=rows.status, errors=rows.errors, crown=crown,
                lagrangian=rows.lagrangian, alpha=alphas,
                disagreements=_short(np.where(ok, value, np.inf), rows.objective).tolist())
    return BoundResult(lower, bounds, "lp", time.perf_counter() - start, info)
