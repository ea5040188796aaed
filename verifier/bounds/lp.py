"""The triangle LP (Ehlers' planet relaxation) in matrix form, with a sound re-derivation of its value.

Variables, in this order: the input x (box bounds), then per ReLU layer i the pre-activations zh_i (free) and the
activations z_i. Rows: ``zh_i - W_i h_{i-1} = b_i`` (h_{-1} = x); a stable active ReLU ``z = zh``; a stable
inactive one ``z = 0`` (fixed bounds); an unstable one (l < 0 < u) the triangle

    R0: -z <= 0,    R1: zh - z <= 0,    R2: z - s zh <= t,   s = u / (u - l), t = -u l / (u - l)

(R2 is ``(u - l) z <= u (zh - l)`` divided by ``u - l``). The layer after the last ReLU and the objective rows
``C f + d`` fold into one cost vector on the last activations (the "head"), so ``C f(x) + d`` is never a variable.
The stable/unstable split follows the dual pass exactly (inactive when u <= 0, unstable when l < 0 < u), and the
pre-activations are not bounded by l, u in the LP: this LP is then exactly the dual pass with free lower slopes.

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
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .. import solvers
from ..network import Network
from ..spec import InputBox
from . import dual
from .base import BoundResult, check_problem

AGREEMENT = 1e-6  # relative gap between re-derived value and solver objective that info reports as a disagreement


@dataclass(frozen=True, eq=False)
class Layout:
    """Where each layer's variables and triangle rows live in a built problem.

    zh[i], z[i]: column index arrays (w_i,) of ReLU layer i; head: the columns of the last activations (or of x);
    unstable[i]: indices of the unstable neurons of layer i; rows[i]: for the triangle, row indices (3, m_i) of
    R0, R1, R2 of those neurons in A_ub; for big-M, binary[i]: the columns of their indicators.
    """

    n_inputs: int
    zh: list
    z: list
    head: np.ndarray
    unstable: list
    rows: list
    binary: list


def neuron_states(l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inactive, active, unstable) masks, classified exactly as the dual pass does."""
    inactive = u <= 0
    unstable = (l < 0) & (u > 0)
    return inactive, ~inactive & ~unstable, unstable


class _Rows:
    """Accumulates sparse rows (COO triplets) and right-hand sides."""

    def __init__(self) -> None:
        self.rows, self.cols, self.vals, self.rhs = [], [], [], []
        self.count = 0

    def add(self, cols_vals: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rhs: np.ndarray) -> np.ndarray:
        """Append len(rhs) rows; cols_vals: (local row index, column, value) triplets. Returns the rows' indices."""
        rhs = np.asarray(rhs, dtype=np.float64).reshape(-1)
        for r, c, v in cols_vals:
            self.rows.append(np.asarray(r) + self.count)
            self.cols.append(np.asarray(c))
            self.vals.append(np.broadcast_to(np.asarray(v, dtype=np.float64), np.shape(r)))
        index = np.arange(self.count, self.count + rhs.size)
        self.rhs.append(rhs)
        self.count += rhs.size
        return index

    def matrix(self, n: int) -> tuple[sp.csr_matrix, np.ndarray]:
        if not self.rows:
            return sp.csr_matrix((0, n)), np.zeros(0)
        cat = np.concatenate
        A = sp.coo_matrix((cat(self.vals), (cat(self.rows), cat(self.cols))), shape=(self.count, n)).tocsr()
        return A, cat(self.rhs)


def build_problem(network: Network, box: InputBox, layer_bounds: list, n_layers: int, kind: str = "triangle"
                  ) -> tuple[solvers.LinearProblem, Layout]:
    """The LP (kind "triangle") or MILP (kind "bigm", Tjeng et al.) of the first n_layers affine layers, each
    followed by its ReLU; layer_bounds [(l, u)] for at least those layers. The cost is zero: callers set it on
    ``layout.head`` (the activations of layer n_layers - 1, or x when n_layers is 0).

    Big-M, for an unstable neuron with indicator a: ``z >= zh, z >= 0, z <= u a, z <= zh - l (1 - a)``; there the
    valid bounds l <= zh <= u, 0 <= z <= max(u, 0) are also set on every neuron (they help the MILP solver and
    cannot change its exact value).
    """
    n0 = network.n_inputs
    affines = network.affines[:n_layers]
    widths = [a.n_out for a in affines]
    n_bin = [int(neuron_states(*layer_bounds[i])[2].sum()) for i in range(n_layers)] if kind == "bigm" else \
        [0] * n_layers
    offsets = np.cumsum([n0] + [2 * w + m for w, m in zip(widths, n_bin)])
    n = int(offsets[-1])
    lb, ub = np.full(n, -np.inf), np.full(n, np.inf)
    lb[:n0], ub[:n0] = box.lo, box.hi
    integrality = np.zeros(n, dtype=bool)
    eq, ineq = _Rows(), _Rows()
    zh_cols, z_cols, unstable_idx, tri_rows, bin_cols = [], [], [], [], []
    prev = np.arange(n0)
    for i, affine in enumerate(affines):
        w = widths[i]
        zh = np.arange(offsets[i], offsets[i] + w)
        z = zh + w
        l, u = (np.asarray(x, dtype=np.float64) for x in layer_bounds[i])
        inactive, active, unstable = neuron_states(l, u)
        W = affine.weight
        r, c = np.nonzero(W)
        eq.add([(r, prev[c], -W[r, c]), (np.arange(w), zh, 1.0)], affine.bias)
        act = np.flatnonzero(active)
        eq.add([(np.arange(act.size), z[act], 1.0), (np.arange(act.size), zh[act], -1.0)], np.zeros(act.size))
        lb[z[inactive]], ub[z[inactive]] = 0.0, 0.0
        idx = np.flatnonzero(unstable)
        m, k = idx.size, np.arange(idx.size)
        lu, uu = l[idx], u[idx]
        if kind == "triangle":
            s, t = uu / (uu - lu), -uu * lu / (uu - lu)
            r0 = ineq.add([(k, z[idx], -1.0)], np.zeros(m))
            r1 = ineq.add([(k, zh[idx], 1.0), (k, z[idx], -1.0)], np.zeros(m))
            r2 = ineq.add([(k, z[idx], 1.0), (k, zh[idx], -s)], t)
            tri_rows.append(np.stack([r0, r1, r2]))
            bin_cols.append(np.zeros(0, dtype=int))
        elif kind == "bigm":
            a = np.arange(offsets[i] + 2 * w, offsets[i] + 2 * w + m)
            ineq.add([(k, zh[idx], 1.0), (k, z[idx], -1.0)], np.zeros(m))
            ineq.add([(k, z[idx], 1.0), (k, a, -uu)], np.zeros(m))
            ineq.add([(k, z[idx], 1.0), (k, zh[idx], -1.0), (k, a, -lu)], -lu)
            lb[a], ub[a], integrality[a] = 0.0, 1.0, True
            lb[zh], ub[zh] = l, u
            lb[z[idx]], ub[z[idx]] = 0.0, uu
            tri_rows.append(np.zeros((3, 0), dtype=int))
            bin_cols.append(a)
        else:
            raise ValueError(f"unknown problem kind {kind!r}")
        zh_cols.append(zh)
        z_cols.append(z)
        unstable_idx.append(idx)
        prev = z
    A_ub, b_ub = ineq.matrix(n)
    A_eq, b_eq = eq.matrix(n)
    problem = solvers.LinearProblem(np.zeros(n), A_ub, b_ub, A_eq, b_eq, lb, ub,
                                    integrality if kind == "bigm" else None)
    return problem, Layout(n0, zh_cols, z_cols, prev, unstable_idx, tri_rows, bin_cols)


def objective_head(network: Network, C: np.ndarray, d: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(n_layers to build, G (k, w), g0 (k,)): ``C f(x) + d = G h + g0`` with h the activations of the last
    built layer (the layer after the last ReLU folds into G)."""
    if network.relu_after[-1]:
        return len(network.affines), C, d
    last = network.affines[-1]
    return len(network.affines) - 1, C @ last.weight, C @ last.bias + d


def slopes_from_solution(layout: Layout, solution: solvers.Solution, bounds: list) -> tuple[list, list]:
    """Two sets of lower slopes per ReLU layer (w_i,) read off one LP solution (module docstring):

    - from the duals: ``alpha = mu1 / (mu0 + mu1)`` on unstable neurons (adaptive where both vanish);
    - guided by the primal point: 1 where its pre-activation is > 0, 0 where < 0, the dual ratio where it is 0.
    Both are the LP's slopes when its dual solution is of the dual pass's form; at a degenerate vertex of a
    triangle (zh = u or zh = l with R2 and R0/R1 all active) HiGHS may return a mixture the dual pass cannot
    express, and then the primal-guided slopes mostly still reach the LP value (measured on 900 random rows:
    the dual ratio fell short on 8, by up to 13 %, the primal-guided ones on 1, by 3e-4).
    """
    from_duals, from_primal = [], []
    for i, unstable in enumerate(layout.unstable):
        l, u = bounds[i]
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


def variable_ranges(problem: solvers.LinearProblem, layout: Layout, bounds: list) -> tuple[np.ndarray, np.ndarray]:
    """Valid bounds of every LP variable at every point of the real network: the box, ``l <= zh <= u`` and
    ``relu(l) <= z <= relu(u)`` (the LP itself leaves zh and z free; the weak-duality bound needs them finite)."""
    lo, hi = problem.lb.copy(), problem.ub.copy()
    for i, (zh, z) in enumerate(zip(layout.zh, layout.z)):
        l, u = bounds[i]
        lo[zh], hi[zh] = l, u
        lo[z], hi[z] = np.maximum(l, 0.0), np.maximum(u, 0.0)
    return lo, hi


@dataclass(frozen=True, eq=False)
class RowSolutions:
    """Per row j of an LP run: objective (k,) (nan where not optimal), status [k], slopes per ReLU layer
    (k, w_i) from the duals and from the primal point, lagrangian (k,) the weak-duality bound (-inf where none),
    errors {row: message} of the rows whose solve failed."""

    objective: np.ndarray
    status: list
    from_duals: list
    from_primal: list
    lagrangian: np.ndarray
    timing: dict
    errors: dict  # {row: the solver's message} for rows whose solve failed


def minimize_rows(network: Network, box: InputBox, bounds: list, G: np.ndarray, g0: np.ndarray, n_layers: int,
                  deadline: float | None = None, backend: str = "highs") -> RowSolutions:
    """Minimize each row of ``G h + g0`` over the triangle LP of the first n_layers layers (one model, one
    objective per row, warm-started), h the activations of layer n_layers - 1 (x if 0). A row whose solve is not
    optimal is retried with Clarabel; if that fails too it keeps status, nan objective and adaptive slopes."""
    start = time.perf_counter()
    problem, layout = build_problem(network, box, bounds, n_layers, "triangle")
    model = solvers.open_model(problem, backend)
    lo, hi = variable_ranges(problem, layout, bounds)
    built = time.perf_counter()
    k = G.shape[0]
    adaptive = [(bounds[i][1] >= -bounds[i][0]).astype(np.float64) for i in range(n_layers)]
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
        cost = np.zeros(problem.n)
        cost[layout.head] = G[j]
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


def _truncated(network: Network, t: int) -> Network:
    """Affine layers 0..t (ReLUs after 0..t-1, none after t): its outputs are the pre-activations of layer t."""
    return Network(tuple(network.layers[:2 * t + 1]), network.input_shape)


def lp_layer_bounds(network: Network, box: InputBox, layer_bounds: list, *, deadline: float | None = None,
                    backend: str = "highs") -> tuple[list, dict]:
    """LP-all: tighten the bounds of every ReLU layer t >= 1 by the triangle LP of the layers before it (using the
    tightened bounds of those), for the neurons the given bounds leave unstable; each min/max is re-derived
    soundly (`rederive`) and intersected with the given bounds. Returns (bounds, info)."""
    bounds = [(np.array(l, dtype=np.float64), np.array(u, dtype=np.float64)) for l, u in layer_bounds]
    info = {"lps": 0, "failed": 0, "disagreements": 0}
    for t, relu in enumerate(network.relu_after):
        if t == 0 or not relu:  # layer 0 is exact already (a linear function of the box)
            continue
        l, u = bounds[t]
        idx = np.flatnonzero(neuron_states(l, u)[2])
        if idx.size == 0:
            continue
        affine, m = network.affines[t], idx.size
        G = np.concatenate([affine.weight[idx], -affine.weight[idx]])
        g0 = np.concatenate([affine.bias[idx], -affine.bias[idx]])
        rows = minimize_rows(network, box, bounds, G, g0, t, deadline, backend)
        E = np.zeros((2 * m, affine.n_out))
        E[np.arange(m), idx], E[np.arange(m, 2 * m), idx] = 1.0, -1.0
        sound, _, _ = rederive(_truncated(network, t), box, E, np.zeros(2 * m), bounds[:t + 1], rows)
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
    if layer_bounds is None:
        first = dual.bound(network, box, C, d, slopes=slopes)
        bounds, lower = first.layer_bounds, first.lower
    else:
        bounds = [(np.asarray(l, dtype=np.float64), np.asarray(u, dtype=np.float64)) for l, u in layer_bounds]
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

    layer_bounds: [(l, u)] per affine layer, used as given; else the dual pass's (`slopes`: "wk", "adaptive" or
    "opt"); intermediate="lp" then tightens the ReLU layers by LP-all. The reported lower bound of each row is
    re-derived from the LP's solution (`rederive`: the dual pass at the LP's slopes, or weak duality); a row whose
    LP failed or ran out of time keeps the dual pass's bound with the same layer bounds ("fallback").
    info: "objective" (k,) the solver's values (nan where none), "status" per row, "errors" {row: the solver's
    message} where a solve failed, "crown" (k,) the dual pass at the LP's slopes, "lagrangian" (k,) the
    weak-duality value, "alpha" the slopes per ReLU layer (k, w_i),
    "disagreements" (rows whose value is more than 1e-6 relative below the objective), the time split
    "bounds_s" (layer bounds) / "build_s" (matrices) / "solve_s" (solver) / "rederive_s", the LP's size
    ("variables", "rows", "nonzeros"), and "intermediate"/"slopes"/"lp_all".
    """
    start = time.perf_counter()
    network.require_chain("lp")
    C, d = check_problem(network, box, C, d)
    deadline = None if time_limit is None else start + float(time_limit)
    bounds, dual_lower, info = initial_bounds(network, box, C, d, layer_bounds, intermediate, slopes, deadline,
                                              backend)
    info["bounds_s"] = time.perf_counter() - start
    n_layers, G, g0 = objective_head(network, C, d)
    rows = minimize_rows(network, box, bounds, G, g0, n_layers, deadline, backend)
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
