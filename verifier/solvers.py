"""LP and MILP solving in matrix form: with solver_highs.py (the highspy backend), the only module that imports a
solver (highspy, cvxpy).

A problem is ``min c @ x + offset  s.t.  A_ub @ x <= b_ub,  A_eq @ x = b_eq,  lb <= x <= ub`` with optional
integrality. It is loaded into a solver once (`open_model`) and solved for any number of objectives, which is how
the triangle LP bounds every objective row and every neuron of a layer with one model.

Backends (measured on the MNIST 256x2 triangle LP, 1808 variables, 267k nonzeros, 9 objectives, same layer bounds;
`benchmarks/bounds.py --backends`, two runs on a shared 2-core machine):
- ``"highs"`` (default): highspy directly. HiGHS keeps its simplex basis, so a new objective is a warm start:
  load 0.04-0.05 s, first solve 0.03-0.06 s, later ones 0.01-0.02 s; 0.14-0.27 s for the 9 rows.
- ``"cvxpy-highs"``: the same solver through cvxpy with the objective as a parameter: building the cvxpy problem
  1.0-1.4 s, compilation 0.13-0.23 s, and every solve cold (0.18-0.26 s; cvxpy's warm_start=True was 10-25x
  slower still): 2.9-3.8 s for the 9 rows, 14-20x the direct route. Kept for comparison.
- ``"clarabel"``: the interior-point solver Clarabel through cvxpy (2.5 s a solve, 24 s for the 9 rows): the
  fallback for LPs that HiGHS fails on (no integrality).

Dual values follow one convention on every backend: ``duals_ub >= 0`` and ``duals_eq`` are the multipliers y of
the Lagrangian ``c @ x + y_ub @ (A_ub @ x - b_ub) + y_eq @ (A_eq @ x - b_eq)``, so at an optimum the reduced costs
``c + A_ub.T @ y_ub + A_eq.T @ y_eq`` are >= 0 on variables at their lower bound, <= 0 at their upper bound and
0 in between. A solver's numbers are not a proof: callers re-derive sound bounds from them (DESIGN.md rule 2).

Failed solves: every backend's answer passes through `checked` (also when the backend raises), so a solve that is
not optimal, time-limited with a proven bound, or infeasible under a cutoff carries no bound (``dual_bound`` nan,
no duals) and says why in ``info["message"]``; any other HiGHS model status (kNotset, kSolveError, kUnbounded,
kModelError, ...) is ERROR. Callers then fall back to the dual pass's bound.

Threads: HiGHS keeps one thread scheduler per process, made by the first run with the thread count of that run;
a later run asking for another count fails (model status kNotset). The highs backend asks for 1 thread and, if
the process already has a scheduler of another size (e.g. the user ran cvxpy's HiGHS first), runs again with
threads=0, which uses the scheduler as it is. It never resets the scheduler: a user's later solves with HiGHS's
default options keep working (tests/unit/test_solver_faults.py runs both orders in a fresh process). A user who
later asks HiGHS for an explicit thread count other than the one the process started with gets HiGHS's own
error; ``highspy.Highs.resetGlobalScheduler(True)`` between the two is HiGHS's remedy.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

OPTIMAL = "optimal"
INFEASIBLE = "infeasible"  # also: no point with objective below the cutoff (MILP with ``cutoff``)
TIME_LIMIT = "time_limit"
INACCURATE = "inaccurate"
ERROR = "error"
STATUSES = (OPTIMAL, INFEASIBLE, TIME_LIMIT, INACCURATE, ERROR)
BACKENDS = ("highs", "cvxpy-highs", "clarabel")
# HiGHS's sub-MIP heuristics (RINS, RENS, root reduced cost) took 75 % of the time of the MNIST 256x2 big-M MILPs
# (29 binaries: 5.8 s -> 1.4 s per row without them); the verifier offers its own incumbents instead.
MILP_QUICK = {"mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False,
              "mip_heuristic_run_root_reduced_cost": False}


@dataclass(frozen=True, eq=False)
class LinearProblem:
    """``min c @ x + offset`` s.t. ``A_ub @ x <= b_ub``, ``A_eq @ x = b_eq``, ``lb <= x <= ub`` (±inf allowed).

    c, lb, ub (n,); A_ub (m_ub, n), A_eq (m_eq, n) scipy sparse (or dense; stored as CSR float64); b_ub (m_ub,),
    b_eq (m_eq,); integrality (n,) bool or None (x[j] integer where True). cone: an optional second-order cone
    constraint on the first variables (an L2 input ball): such a problem is an SOCP, solved by Clarabel only.
    """

    c: np.ndarray
    A_ub: sp.csr_matrix
    b_ub: np.ndarray
    A_eq: sp.csr_matrix
    b_eq: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    integrality: np.ndarray | None = None
    offset: float = 0.0
    cone: tuple | None = None  # (center (m,), radius): also ||x[:m] - center||_2 <= radius (Clarabel only)

    def __post_init__(self) -> None:
        c = np.asarray(self.c, dtype=np.float64).reshape(-1)
        n = c.size
        vectors = {"c": c}
        for name in ("b_ub", "b_eq", "lb", "ub"):
            vectors[name] = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
        for name in ("A_ub", "A_eq"):
            matrix = sp.csr_matrix(getattr(self, name), dtype=np.float64)
            rhs = vectors["b" + name[1:]]
            if matrix.shape != (rhs.size, n):
                raise ValueError(f"{name} has shape {matrix.shape}, expected ({rhs.size}, {n})")
            object.__setattr__(self, name, matrix)
        if vectors["lb"].shape != (n,) or vectors["ub"].shape != (n,):
            raise ValueError("lb and ub must have one entry per variable")
        for name, value in vectors.items():
            object.__setattr__(self, name, value)
        if self.integrality is not None:
            integrality = np.asarray(self.integrality, dtype=bool).reshape(-1)
            if integrality.shape != (n,):
                raise ValueError("integrality must have one entry per variable")
            object.__setattr__(self, "integrality", integrality if integrality.any() else None)

    @property
    def n(self) -> int:
        return self.c.size

    @property
    def is_mip(self) -> bool:
        return self.integrality is not None


@dataclass(frozen=True, eq=False)
class Solution:
    """One solve. x (n,) the primal point (None if the solver has none); objective includes the offset;
    duals_ub (m_ub,) >= 0 and duals_eq (m_eq,) the LP multipliers (module docstring; None for MILPs or on
    failure); dual_bound: for a MILP the solver's proven lower bound on the objective (its claim, within its
    tolerances), for an LP the objective of its dual solution; nan when unknown."""

    status: str
    x: np.ndarray | None
    objective: float
    duals_ub: np.ndarray | None = None
    duals_eq: np.ndarray | None = None
    dual_bound: float = float("nan")
    seconds: float = 0.0
    backend: str = ""
    info: dict = field(default_factory=dict)


class Model:
    """A problem loaded into a solver once; `solve` takes a new objective each call."""

    def __init__(self, problem: LinearProblem, backend: str) -> None:
        self.problem = problem
        self.backend = backend

    def solve(self, c: np.ndarray | None = None, offset: float | None = None, *, time_limit: float | None = None,
              cutoff: float | None = None, start: np.ndarray | None = None) -> Solution:
        """Minimize ``c @ x + offset`` (default: the problem's). cutoff (highs backend): only points with objective
        at most it are of interest (the constraint ``c @ x + offset <= cutoff`` is added); INFEASIBLE then proves
        ``min > cutoff`` (to the solver's tolerance) and dual_bound is the cutoff. The cvxpy backends ignore it
        (they solve the whole problem, which is sound, only slower).
        start (n,): a feasible point offered to a MILP solver as its first incumbent (ignored by cvxpy).

        Whatever the backend does, the result obeys `checked`: a failed solve (an exception included) comes back
        as status ERROR with the reason in ``info["message"]`` and never carries a bound."""
        begin = time.perf_counter()
        try:
            raw = self._solve(c, offset, time_limit=time_limit, cutoff=cutoff, start=start)
        except Exception as exc:  # noqa: BLE001 -- a crashed solve is a failed solve, reported, never a bound
            raw = Solution(ERROR, None, float("nan"), backend=self.backend,
                           info={"message": f"{type(exc).__name__}: {exc}"})
        return checked(raw, self.problem, cutoff, time.perf_counter() - begin)

    def _solve(self, c, offset, *, time_limit, cutoff, start) -> Solution:
        raise NotImplementedError


def _finite_vector(value, size: int) -> np.ndarray | None:
    """value as a float64 vector of the given size, or None when it is missing, of another size or not finite."""
    if value is None:
        return None
    vector = np.asarray(value, dtype=np.float64).reshape(-1)
    return vector if vector.size == size and np.all(np.isfinite(vector)) else None


def checked(solution: Solution, problem: LinearProblem, cutoff: float | None, seconds: float = 0.0) -> Solution:
    """The one place where a solver's answer becomes something callers may read (DESIGN.md rule 5).

    - status outside `STATUSES` -> ERROR; x, duals: None unless finite and of the right size.
    - dual_bound (a claim that every feasible point has objective >= it) is kept only from
      OPTIMAL or TIME_LIMIT (finite, and not above the solver's own incumbent by more than 1e-6 relative: a bound
      above a point it found is self-contradictory, and so is an incumbent above the cutoff it was solved under;
      the whole answer is then ERROR), and from INFEASIBLE under a cutoff, where it is the cutoff itself.
      Every other status (infeasible without a cutoff, inaccurate, error) has dual_bound nan, whatever the
      backend put there.
    - an LP reported OPTIMAL without a finite dual solution becomes INACCURATE (LP values are re-derived from
      duals; without them there is nothing to re-derive).
    """
    info = dict(solution.info)
    status = solution.status if solution.status in STATUSES else ERROR
    if status != solution.status:
        info.setdefault("message", f"unknown solver status {solution.status!r}")
    x = _finite_vector(solution.x, problem.n)
    objective = float(solution.objective) if x is not None and np.isfinite(solution.objective) else float("nan")
    duals_ub = duals_eq = None
    if status == OPTIMAL and not problem.is_mip:
        duals_ub = _finite_vector(solution.duals_ub, problem.A_ub.shape[0])
        duals_eq = _finite_vector(solution.duals_eq, problem.A_eq.shape[0])
        if duals_ub is None or duals_eq is None or not np.isfinite(objective):
            status, duals_ub, duals_eq = INACCURATE, None, None
            info.setdefault("message", "optimal without a finite primal and dual solution")
    bound = float(solution.dual_bound)
    if status == INFEASIBLE:
        bound = float(cutoff) if cutoff is not None else float("nan")
        x, objective = None, float("nan")
    elif status in (OPTIMAL, TIME_LIMIT) and cutoff is not None and np.isfinite(objective) and \
            objective > float(cutoff) + 1e-6 * max(1.0, abs(float(cutoff))):
        info["message"] = f"solver point's objective {objective!r} above the cutoff {cutoff!r} it was solved under"
        status, bound, duals_ub, duals_eq = ERROR, float("nan"), None, None
    elif status in (OPTIMAL, TIME_LIMIT) and np.isfinite(bound):
        if np.isfinite(objective) and bound > objective + 1e-6 * max(1.0, abs(objective)):
            info["message"] = f"solver bound {bound!r} above its own point's objective {objective!r}"
            status, bound, duals_ub, duals_eq = ERROR, float("nan"), None, None
        elif np.isfinite(objective):
            bound = min(bound, objective)
        if cutoff is not None and np.isfinite(bound):  # solved over {objective <= cutoff}: min >= min(cutoff, bound)
            bound = min(bound, float(cutoff))
    else:
        bound = float("nan")
    if status == ERROR:
        info.setdefault("message", f"solver status {info.get('solver_status', 'unknown')}")
    return Solution(status, x, objective, duals_ub, duals_eq, bound, seconds, solution.backend, info)


@contextlib.contextmanager
def silenced_stdout():
    """Send C-level writes to file descriptor 1 to /dev/null: HiGHS prints a banner to stdout the first time an
    instance is made in a process, whatever its options, which would corrupt the CLI's JSON output."""
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stdout.flush()
        os.dup2(devnull, 1)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # what C buffered goes to /dev/null, not to the restored stdout
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


# ----------------------------------------------------------------------------------------------------- cvxpy
class CvxpyModel(Model):
    """cvxpy backend (HiGHS or Clarabel) with the objective vector as a parameter, compiled on first solve."""

    def __init__(self, problem: LinearProblem, solver: str = "CLARABEL") -> None:
        super().__init__(problem, "clarabel" if solver == "CLARABEL" else "cvxpy-highs")
        import cvxpy as cp

        if problem.is_mip and solver == "CLARABEL":
            raise ValueError("Clarabel solves LPs only; use the highs backend for a MILP")
        self._cp = cp
        self._solver = solver
        integer = ([int(j) for j in np.flatnonzero(problem.integrality)],) if problem.is_mip else False
        x = cp.Variable(problem.n, integer=integer)
        self._cost = cp.Parameter(problem.n, value=problem.c)
        self._offset = cp.Parameter(value=float(problem.offset))
        self._ub_rows = problem.A_ub @ x <= problem.b_ub
        self._eq_rows = problem.A_eq @ x == problem.b_eq
        constraints = [self._ub_rows, self._eq_rows]
        low, high = np.isfinite(problem.lb), np.isfinite(problem.ub)
        if low.any():
            constraints.append(x[np.flatnonzero(low)] >= problem.lb[low])
        if high.any():
            constraints.append(x[np.flatnonzero(high)] <= problem.ub[high])
        if problem.cone is not None:
            if solver != "CLARABEL":
                raise ValueError("a second-order cone needs the clarabel backend")
            center, radius = np.asarray(problem.cone[0], dtype=np.float64), float(problem.cone[1])
            constraints.append(cp.SOC(cp.Constant(radius), x[:center.size] - center))
        self._x = x
        self._problem = cp.Problem(cp.Minimize(self._cost @ x + self._offset), constraints)

    def _solve(self, c, offset, *, time_limit, cutoff, start) -> Solution:
        cp, problem = self._cp, self.problem
        if c is not None:
            self._cost.value = np.asarray(c, dtype=np.float64).reshape(-1)
        if offset is not None:
            self._offset.value = float(offset)
        options: dict = {}
        if time_limit is not None:
            options["time_limit"] = float(time_limit)
        if self._solver == "HIGHS" and problem.is_mip:
            options.update(mip_rel_gap=1e-9, mip_abs_gap=1e-9)
        # no "threads" for cvxpy's HiGHS: its default (0) runs on whatever thread scheduler the process has
        with silenced_stdout():
            # warm_start=False: cvxpy's HiGHS warm start made re-solves 10-25x slower (or hang) here
            self._problem.solve(solver=self._solver, warm_start=False, **options)
        raw = self._problem.status
        status = {cp.OPTIMAL: OPTIMAL, cp.OPTIMAL_INACCURATE: INACCURATE, cp.INFEASIBLE: INFEASIBLE,
                  cp.USER_LIMIT: TIME_LIMIT}.get(raw, ERROR)
        has_point = self._x.value is not None and status in (OPTIMAL, INACCURATE, TIME_LIMIT)
        x = np.array(self._x.value, dtype=np.float64) if has_point else None
        objective = float(self._problem.value) if has_point else float("nan")
        duals_ub = duals_eq = None
        if status == OPTIMAL and not problem.is_mip:
            duals_ub = np.asarray(self._ub_rows.dual_value, dtype=np.float64).reshape(-1)
            duals_eq = np.asarray(self._eq_rows.dual_value, dtype=np.float64).reshape(-1)
        # cvxpy reports no MILP dual bound: only an optimal MILP's value bounds it (to the gap asked above)
        dual_bound = objective if status == OPTIMAL else float("nan")
        stats = self._problem.solver_stats
        solver_s = stats.solve_time if stats is not None and stats.solve_time is not None else float("nan")
        return Solution(status, x, objective, duals_ub, duals_eq, dual_bound, 0.0, self.backend,
                        {"solver_status": raw, "solver_s": float(solver_s)})


def open_model(problem: LinearProblem, backend: str = "highs", *, threads: int = 1,
               highs_options: dict | None = None) -> Model:
    """Load the problem into the chosen backend (`BACKENDS`); solve it with ``model.solve(c)``.
    highs_options: raw HiGHS options for the "highs" backend (e.g. `MILP_QUICK`). A problem with a cone (an SOCP)
    always goes to Clarabel."""
    if problem.cone is not None:
        if problem.is_mip:
            raise ValueError("no mixed-integer second-order cone programs here")
        return CvxpyModel(problem, "CLARABEL")
    if backend == "highs":
        from .solver_highs import HighsModel  # highspy is loaded when first used

        return HighsModel(problem, threads=threads, options=highs_options)
    if backend == "cvxpy-highs":
        return CvxpyModel(problem, "HIGHS")
    if backend == "clarabel":
        return CvxpyModel(problem, "CLARABEL")
    raise ValueError(f"unknown solver backend {backend!r}; available: {', '.join(BACKENDS)}")


def solve(problem: LinearProblem, backend: str = "highs", *, time_limit: float | None = None,
          cutoff: float | None = None, threads: int = 1) -> Solution:
    """Solve one problem once (see `open_model` for repeated objectives)."""
    return open_model(problem, backend, threads=threads).solve(time_limit=time_limit, cutoff=cutoff)


def lagrangian_bound(problem: LinearProblem, duals_ub: np.ndarray, duals_eq: np.ndarray, lower: np.ndarray,
                     upper: np.ndarray, c: np.ndarray | None = None, offset: float | None = None) -> float:
    """A lower bound on ``c @ x + offset`` over ``{A_ub x <= b_ub, A_eq x = b_eq, lower <= x <= upper}`` from any
    multipliers (weak duality; no optimality needed): ``min_{lower <= x <= upper} r @ x + offset - y_ub @ b_ub -
    y_eq @ b_eq`` with ``r = c + A_ub.T @ y_ub + A_eq.T @ y_eq`` and y_ub clipped at 0. lower/upper (n,) may be
    tighter than the problem's own bounds (e.g. valid bounds of variables the LP leaves free), as long as they
    contain every point the bound must cover; -inf if a variable with a nonzero reduced cost is unbounded.
    A cone constraint of the problem is simply dropped (relaxed): the bound stays valid, only weaker.
    A relative margin of 1e-13 of the terms' magnitude covers float64 rounding."""
    c = problem.c if c is None else np.asarray(c, dtype=np.float64)
    offset = problem.offset if offset is None else float(offset)
    y_ub = np.maximum(np.asarray(duals_ub, dtype=np.float64), 0.0)
    y_eq = np.asarray(duals_eq, dtype=np.float64)
    r = c + problem.A_ub.T @ y_ub + problem.A_eq.T @ y_eq
    with np.errstate(invalid="ignore"):  # 0 * inf where r_j == 0: that term is 0
        at = np.where(r > 0, r * lower, np.where(r < 0, r * upper, 0.0))
    if not np.all(np.isfinite(at)):
        return float("-inf")
    terms = np.concatenate([at, -y_ub * problem.b_ub, -y_eq * problem.b_eq])
    return float(terms.sum() + offset - 1e-13 * (np.abs(terms).sum() + abs(offset)))
