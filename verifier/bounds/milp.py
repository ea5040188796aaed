"""Exact minimum of ``C f(x) + d`` over a box: the big-M MILP of Tjeng et al. (2019), solved by HiGHS.

An unstable ReLU (l < 0 < u) with indicator a in {0, 1} is encoded exactly by ``z >= zh, z >= 0, z <= u a,
z <= zh - l (1 - a)``; stable ones are exact linear maps (on any network graph: `encode.build_problem`, the linear
nodes composed away, per ReLU node its pre-activations, activations and indicators). The tighter the layer
bounds, the smaller the big-M constants and the fewer binaries: by default they come from alpha-CROWN (the dual
pass with optimized slopes), optionally tightened by LP-all (``intermediate="lp"``).

Both sides are checked (DESIGN.md rule 2): ``lower`` is the solver's proven dual bound (or, if it is weaker, the
dual pass's bound: both are valid), and ``upper`` is OUR network's float64 value at the best point known for the
row (the solver's points moved into the set (`spec.pull_inside`), its centre, and any given start points), never
the solver's objective. ``lower <= upper`` always.

Minimum over rows (``objective="min"``, the robust margin): rows are solved most suspicious first (lowest dual
bound), each constrained to go below the best value found so far (a cutoff row), so a row that cannot is pruned:
without a MILP when its dual bound is already above the cutoff, else by the solver's infeasibility proof. A
verdict needs less (``decide=0``): only rows the dual pass leaves below 0 are solved, cut off at 0, stopping at the
first violation. Measured on MNIST 256x2 prop_0..4 (eps 0.03; `benchmarks/exact.py --compare`), exact minimum
margin, seconds per property: "min" 1.1 / 6.6 / 1.2 / 1.3 / 9.2 (19 in all), one MILP per row ("rows")
6.4 / 16.6 / 6.8 / 2.1 / 5.6 (38), one MILP with a binary selector over the rows ("min-selector")
1.9 / 28.1 / 2.0 / 0.6 / 3.2 (36): "min" is kept for the margin, the selector stays available.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch

from .. import solvers
from ..network import Network
from ..spec import InputBall, InputBox, SpecError, pull_inside
from . import dual, encode, lp
from .base import BoundResult, check_problem

OBJECTIVES = ("rows", "min", "min-selector")


def full_point(network: Network, layout: encode.Layout, n_vars: int, x: np.ndarray) -> np.ndarray:
    """The MILP's variable vector (n_vars,) for input x (n_inputs,): the network's own forward, read off at each ReLU
    node of the problem (pre-activations, activations, and the indicators of its unstable neurons)."""
    with torch.no_grad():
        pre = network.relu_inputs_torch(torch.tensor(np.asarray(x, dtype=np.float64).reshape(1, -1), device="cpu"))
    pre = [h[0].numpy() for h in pre]
    point = np.zeros(n_vars)
    point[:layout.n_inputs] = x
    for i, zh in enumerate(pre[:len(layout.zh)]):
        point[layout.zh[i]], point[layout.z[i]] = zh, np.maximum(zh, 0.0)
        point[layout.binary[i]] = (zh[layout.unstable[i]] > 0).astype(np.float64)
    if layout.aux is not None:  # an L1 ball's t = |x - x0|
        point[layout.aux] = np.abs(np.asarray(x, dtype=np.float64) - layout.aux_center)
    return point


def _exact_input_set(box: InputBox | InputBall) -> None:
    """The MILP is exact over boxes and L1 balls (linear constraints); an L2 ball is a one-line error."""
    if isinstance(box, InputBall) and box.norm == "l2":
        raise SpecError("milp: the exact MILP takes boxes (L-inf) and L1 balls only, not L2 balls "
                        "(use the certified methods ibp, dual, lp for L2)")


def _rows_range(problem: solvers.LinearProblem, layout: encode.Layout, bounds: list, G: sp.csr_matrix,
                g0: np.ndarray) -> np.ndarray:
    """Upper bounds (k,) of the rows ``G v + g0`` from the valid ranges of the variables (for big-M constants)."""
    lo, hi = encode.variable_ranges(problem, layout, bounds)
    return G.maximum(0) @ hi + G.minimum(0) @ lo + g0


def _epigraph(problem: solvers.LinearProblem, G: sp.csr_matrix, g0: np.ndarray,
              t_range: tuple[float, float] = (-np.inf, np.inf), big_m: np.ndarray | None = None
              ) -> solvers.LinearProblem:
    """The MILP with a variable t to minimize; G (k, n) CSR, g0 (k,) the rows over its variables. Without big_m:
    ``t >= G_j v + g0_j`` for every row j (t is the maximum over the rows: min-max). With big_m (k,): selectors
    s_j in {0, 1} with sum 1 and ``t >= G_j v + g0_j - M_j (1 - s_j)`` (t is the selected row: the minimum over
    the rows by one MILP)."""
    n, k = problem.n, G.shape[0]
    m = 0 if big_m is None else k  # selector columns
    selectors = [] if big_m is None else [sp.diags(big_m, format="csr")]
    rows = sp.hstack([G, sp.csr_matrix(-np.ones((k, 1)))] + selectors, format="csr")
    rhs = -g0 if big_m is None else big_m - g0
    A_eq, b_eq = sp.hstack([problem.A_eq, sp.csr_matrix((problem.A_eq.shape[0], 1 + m))]), problem.b_eq
    if big_m is not None:
        A_eq = sp.vstack([A_eq, sp.csr_matrix(np.concatenate([np.zeros(n + 1), np.ones(k)])[None])])
        b_eq = np.concatenate([b_eq, [1.0]])
    A_ub = sp.vstack([sp.hstack([problem.A_ub, sp.csr_matrix((problem.A_ub.shape[0], 1 + m))]), rows])
    return solvers.LinearProblem(np.concatenate([np.zeros(n), [1.0], np.zeros(m)]), A_ub.tocsr(),
                                 np.concatenate([problem.b_ub, rhs]), A_eq.tocsr(), b_eq,
                                 np.concatenate([problem.lb, [t_range[0]], np.zeros(m)]),
                                 np.concatenate([problem.ub, [t_range[1]], np.ones(m)]),
                                 np.concatenate([np.zeros(n, dtype=bool) if problem.integrality is None
                                                 else problem.integrality, [False], np.ones(m, dtype=bool)]))


def _setup(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray, layer_bounds: list | None,
           intermediate: str, slopes: str, deadline: float | None):
    """(layer bounds, the dual pass's lower bounds of the rows (k,), info, the rows over the MILP's variables
    G (k, n) CSR, g0 (k,), the big-M MILP, its layout)."""
    bounds, dual_lower, info = lp.initial_bounds(network, box, C, d, layer_bounds, intermediate, slopes, deadline)
    if dual_lower is None:
        dual_lower = dual.bound(network, box, C, d, layer_bounds=bounds, slopes="adaptive").lower
    problem, layout = encode.build_problem(network, box, bounds, network.output, "bigm")
    G, g0 = encode.rows(layout, C, d)
    return bounds, dual_lower, info, G, g0, problem, layout


def _read(result: solvers.Solution, cutoff: float | None, value_at_point: float | None) -> tuple[str, float, str]:
    """(row status, proven lower bound or nan, message) of one MILP solve. Only "optimal", "time_limit" (with the
    solver's finite proven bound) and "pruned" (infeasible under a cutoff: > cutoff) give a bound; any other answer
    is "error" and gives none. A bound above OUR float64 value at the solver's own point (value_at_point, more
    than 1e-6 relative) contradicts itself: "error" too (DESIGN.md rule 2: the solver's proof is checked)."""
    if result.status == solvers.INFEASIBLE:
        if cutoff is None:
            return "error", float("nan"), "solver says infeasible without a cutoff: the model cannot be"
        return "pruned", float(cutoff), ""
    if result.status not in (solvers.OPTIMAL, solvers.TIME_LIMIT):
        return "error", float("nan"), result.info.get("message", result.status)
    bound = float(result.dual_bound)
    if value_at_point is not None and np.isfinite(bound) and \
            bound > value_at_point + 1e-6 * max(1.0, abs(value_at_point)):
        return "error", float("nan"), f"solver bound {bound!r} above the network's {value_at_point!r} at its point"
    return result.status, bound, ""


def _cutoff(decide: float | None) -> float | None:
    """Just above decide, so that a solver's infeasibility proof under it says ``> decide``."""
    return None if decide is None else float(decide) + 1e-6 * max(1.0, abs(float(decide)))


def bound(network: Network, box: InputBox | InputBall, C: np.ndarray, d: np.ndarray | None = None, *,
          layer_bounds: list | None = None, time_limit: float | None = 60, intermediate: str = "dual",
          slopes: str = "opt", objective: str = "rows", decide: float | None = None,
          starts: np.ndarray | None = None) -> BoundResult:
    """Exact bounds of ``min_x C f(x) + d`` over the box (or an L1 ball ∩ its box: `encode`; an L2 ball is a
    SpecError) per row (within time_limit seconds in all).

    objective: "rows" (every row exact), "min" (only the minimum over the rows is exact: rows that cannot beat the
    best value found so far are pruned and get a lower bound at least that value) or "min-selector" (the minimum
    by one MILP). decide: only decide whether the minimum over the rows is > decide (a verdict): rows whose dual
    bound is above it are not solved, every MILP is cut off just above it (``decide + 1e-6 max(1, |decide|)``: a
    proof then says > decide), and the search stops at the first row whose value is below it; lower bounds stay
    valid but are not exact. starts (N, n_inputs): extra candidate points (e.g. from an attack) for the upper
    bounds and as MILP starts.

    Returns lower (k,), upper (k,), x (k, n_inputs) (the point reaching upper), info "status" per row
    ("optimal", "time_limit", "pruned": shown not to go below the cutoff, "skipped": not solved, "error": the
    solve failed, its row keeps the dual pass's bound; the reason in info "errors" {row: message}),
    "min_status" ("optimal" when min(lower) == min(upper) to 1e-6 relative, else "error" if a solve failed, else
    "time_limit"), "solver_bound" (k,) (the solver's checked bound, nan where none), "nodes", "binaries",
    "seconds_bounds", "objective", "intermediate", "slopes".
    """
    start = time.perf_counter()
    C, d = check_problem(network, box, C, d)
    _exact_input_set(box)
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    deadline = None if time_limit is None else start + float(time_limit)
    bounds, dual_lower, info, G, g0, problem, layout = _setup(network, box, C, d, layer_bounds, intermediate,
                                                              slopes, deadline)
    info["seconds_bounds"] = time.perf_counter() - start
    k = C.shape[0]
    # candidate points: every one gives an upper bound on every row's minimum (evaluated by our network)
    points = [box.center[None]] + ([] if starts is None else [pull_inside(box, np.atleast_2d(starts))])

    def values() -> np.ndarray:
        return network.forward(np.concatenate(points)) @ C.T + d  # (N, k)

    def remaining() -> float | None:
        return None if deadline is None else deadline - time.perf_counter()

    lower, status, errors = dual_lower.copy(), ["skipped"] * k, {}
    solver_bound, nodes = np.full(k, np.nan), 0
    threshold = _cutoff(decide)
    if objective == "min-selector":
        upper_rows = _rows_range(problem, layout, bounds, G, g0)
        sel = _epigraph(problem, G, g0, (dual_lower.min(), upper_rows.max()),
                        big_m=upper_rows - dual_lower.min())
        result = solvers.open_model(sel, highs_options=solvers.MILP_QUICK).solve(
            time_limit=max(remaining() or 0.0, 0.0) if deadline else None, cutoff=threshold)
        nodes = result.info.get("nodes", 0)
        at_point = None
        if result.x is not None:
            points.append(pull_inside(box, result.x[:network.n_inputs])[None])
            at_point = float(values()[-1].min())
        row_status, proven, message = _read(result, threshold, at_point)
        if np.isfinite(proven):
            lower = np.maximum(lower, proven)  # every row is >= the minimum over rows
        solver_bound[:] = proven
        status = [row_status] * k
        if message:
            errors.update({j: message for j in range(k)})
    else:
        model = solvers.open_model(problem, highs_options=solvers.MILP_QUICK)
        order = np.argsort(dual_lower) if objective == "min" or decide is not None else np.arange(k)
        for j in order:
            table = values()
            best = float(table.min())
            if decide is not None and best < decide:
                break  # decided: a point below the threshold
            cutoff = best if objective == "min" else None
            if threshold is not None:
                cutoff = threshold if cutoff is None else min(cutoff, threshold)
            if cutoff is not None and dual_lower[j] >= cutoff:  # cannot go below the cutoff: no MILP needed
                status[j] = "pruned"
                continue
            left = remaining()
            if left is not None and left <= 0:
                status[j] = solvers.TIME_LIMIT
                continue
            cost = G[j].toarray().reshape(-1)
            first = full_point(network, layout, problem.n, np.concatenate(points)[np.argmin(table[:, j])])
            result = model.solve(cost, float(g0[j]), time_limit=left, cutoff=cutoff, start=first)
            nodes += result.info.get("nodes", 0)
            at_point = None
            if result.x is not None:
                points.append(pull_inside(box, result.x[:network.n_inputs])[None])
                at_point = float(values()[-1, j])
            status[j], proven, message = _read(result, cutoff, at_point)
            if np.isfinite(proven):
                solver_bound[j] = proven
                lower[j] = max(lower[j], proven)
            if message:
                errors[j] = message
    table = values()
    best = np.argmin(table, axis=0)
    upper, x = table[best, np.arange(k)], np.concatenate(points)[best]
    lower = np.minimum(lower, upper)  # a solver bound above a real value is within its tolerance: clamp
    gap = float(upper.min() - lower.min())
    info.update(status=status, solver_bound=solver_bound, nodes=nodes, objective=objective,
                binaries=int(sum(a.size for a in layout.binary)), errors=errors,
                min_status=solvers.OPTIMAL if gap <= 1e-6 * max(1.0, abs(float(upper.min()))) else
                solvers.ERROR if errors else solvers.TIME_LIMIT)
    return BoundResult(lower, bounds, "milp", time.perf_counter() - start, info, upper=upper, x=x)


def min_max(network: Network, box: InputBox | InputBall, C: np.ndarray, d: np.ndarray | None = None, *,
            layer_bounds: list | None = None, time_limit: float | None = 60, decide: float | None = None,
            starts: np.ndarray | None = None) -> tuple[float, float, np.ndarray, str]:
    """The exact ``min_x max_r (C f(x) + d)_r`` over the box: the rows' conjunction ``C f + d <= 0`` is met
    somewhere iff it is <= 0. One MILP (the big-M encoding of `bound`, alpha-CROWN layer bounds by default) with
    a variable t: minimize t subject to ``t >= G_r h + g0_r`` for every row. decide: stop once "> decide?" is
    answered (cutoff just above it, as in `bound`). starts (N, n_inputs): extra candidate points.

    Returns (lower, upper, x (n_inputs,), status): lower is always valid (the solver's proven bound, or the
    largest row-wise dual bound: the maximum is at least every row), upper is OUR float64 ``max_r`` at x,
    status "optimal" | "time_limit" | "pruned" (shown > decide) | "error".
    """
    start = time.perf_counter()
    C, d = check_problem(network, box, C, d)
    _exact_input_set(box)
    deadline = None if time_limit is None else start + float(time_limit)
    _, dual_lower, _, G, g0, problem, layout = _setup(network, box, C, d, layer_bounds, "dual", "opt", deadline)
    epigraph = _epigraph(problem, G, g0)
    threshold = _cutoff(decide)
    left = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
    result = solvers.open_model(epigraph, highs_options=solvers.MILP_QUICK).solve(time_limit=left, cutoff=threshold)
    points = [box.center[None]] + ([] if starts is None else [pull_inside(box, np.atleast_2d(starts))])
    if result.x is not None:
        points.append(pull_inside(box, result.x[:network.n_inputs])[None])
    candidates = np.concatenate(points)
    values = (network.forward(candidates) @ C.T + d).max(axis=1)
    best = int(np.argmin(values))
    status, proven, _ = _read(result, threshold, float(values[-1]) if result.x is not None else None)
    lower = float(np.max(dual_lower))
    if np.isfinite(proven):
        lower = max(lower, proven)
    upper = float(values[best])
    return min(lower, upper), upper, candidates[best], status
