"""The highspy backend of solvers.py: one `Highs` instance per model, warm-started re-solves (see solvers.py for
the problem form, the dual convention, failed solves and threads)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .solvers import (ERROR, INACCURATE, INFEASIBLE, OPTIMAL, TIME_LIMIT, LinearProblem, Model, Solution,
                      silenced_stdout)

# LPs with more variables than this go to HiGHS's interior-point solver (with crossover), the rest to warm-started
# dual simplex. Measured per row: cifar10_small's triangle LP (8,208 variables, ~2,000 unstable ReLUs) 0.7-0.8 s
# by IPM vs 43 s cold / 2-4 s warm by simplex; dense MNIST 256x2 / 256x4 LPs (1,808 / 2,832) 0.01-0.02 s warm
# simplex vs 0.23-0.45 s IPM.
IPM_ABOVE = 5000


_HIGHS_STATUS = {"kOptimal": OPTIMAL, "kInfeasible": INFEASIBLE, "kTimeLimit": TIME_LIMIT,
                 "kIterationLimit": TIME_LIMIT, "kUnknown": INACCURATE,
                 "kInterrupt": TIME_LIMIT, "kSolutionLimit": TIME_LIMIT}


class HighsModel(Model):
    """highspy backend: one `Highs` instance holding the model; warm-started re-solves."""

    def __init__(self, problem: LinearProblem, threads: int = 1, options: dict | None = None) -> None:
        super().__init__(problem, "highs")
        if problem.cone is not None:
            raise ValueError("HiGHS solves no second-order cone: use the clarabel backend")
        import highspy

        self._highspy = highspy
        with silenced_stdout():
            h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", int(threads))
        if problem.is_mip:  # exactness: the default gaps (1e-4 relative) would stop far from the optimum
            h.setOptionValue("mip_rel_gap", 1e-9)
            h.setOptionValue("mip_abs_gap", 1e-9)
        else:  # LPs here are small and re-solved warm: presolve cost more than it saved (0.27 s vs 0.12 s cold)
            h.setOptionValue("presolve", "off")
            if problem.n > IPM_ABOVE:
                h.setOptionValue("solver", "ipm")
        for name, value in (options or {}).items():
            if h.setOptionValue(name, value) == highspy.HighsStatus.kError:
                raise ValueError(f"HiGHS rejected option {name}={value!r}")
        inf = highspy.kHighsInf
        # rows: [A_ub; A_eq] with row bounds (-inf, b_ub] and [b_eq, b_eq]
        matrix = (sp.vstack([problem.A_ub, problem.A_eq]) if problem.A_eq.shape[0] else problem.A_ub).tocsc()
        lp = highspy.HighsLp()
        lp.num_col_ = problem.n
        lp.num_row_ = matrix.shape[0]
        lp.col_cost_ = problem.c
        lp.col_lower_ = np.where(np.isfinite(problem.lb), problem.lb, -inf)
        lp.col_upper_ = np.where(np.isfinite(problem.ub), problem.ub, inf)
        lp.row_lower_ = np.concatenate([np.full(problem.A_ub.shape[0], -inf), problem.b_eq])
        lp.row_upper_ = np.concatenate([problem.b_ub, problem.b_eq])
        lp.offset_ = float(problem.offset)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = matrix.indptr.astype(np.int32)
        lp.a_matrix_.index_ = matrix.indices.astype(np.int32)
        lp.a_matrix_.value_ = matrix.data
        lp.a_matrix_.num_col_ = problem.n
        lp.a_matrix_.num_row_ = matrix.shape[0]
        if problem.is_mip:
            lp.integrality_ = [highspy.HighsVarType.kInteger if flag else highspy.HighsVarType.kContinuous
                               for flag in problem.integrality]
        status = h.passModel(lp)
        if status == highspy.HighsStatus.kError:
            raise ValueError("HiGHS rejected the model")
        self._h = h
        self._c = problem.c.copy()
        self._offset = float(problem.offset)
        self._all_cols = np.arange(problem.n, dtype=np.int32)
        self._cutoff_row: int | None = None  # the row ``c @ x <= cutoff - offset``, added on first use
        self._cutoff_coef = np.zeros(problem.n)

    def _set_cutoff(self, cutoff: float | None) -> None:
        """A cutoff as an explicit row of the model (left unbounded when a later solve has none). HiGHS's own
        option for it (objective_bound) did not prune (measured: a row with minimum 0.934 and cutoff 0.9316 was
        solved to 0.934 in the same time) and let an incumbent above it come back as "optimal" with its value as
        the bound, which is false."""
        h, inf = self._h, self._highspy.kHighsInf
        if cutoff is None:
            if self._cutoff_row is not None:
                h.changeRowBounds(self._cutoff_row, -inf, inf)
            return
        if self._cutoff_row is None:
            cols = np.flatnonzero(self._c).astype(np.int32)
            self._cutoff_row = h.getNumRow()
            h.addRow(-inf, inf, cols.size, cols, self._c[cols])
        else:
            for col in np.flatnonzero(self._c != self._cutoff_coef):
                h.changeCoeff(self._cutoff_row, int(col), float(self._c[col]))
        self._cutoff_coef = self._c.copy()
        h.changeRowBounds(self._cutoff_row, -inf, float(cutoff) - self._offset)

    def _run(self):
        """h.run(), once more with threads=0 if HiGHS refused the thread count. HiGHS keeps one thread scheduler
        per process; a run asking for a different count than the one it was first made with (by any user of the
        library in this process: cvxpy, highspy, ...) fails with model status kNotset. threads=0 accepts the
        scheduler as it is; the process-wide scheduler is never reset here (it is not ours to reset)."""
        h = self._h
        run_status = h.run()
        if run_status == self._highspy.HighsStatus.kError and h.getModelStatus().name == "kNotset":
            h.setOptionValue("threads", 0)
            run_status = h.run()
        return run_status

    def _solve(self, c, offset, *, time_limit, cutoff, start) -> Solution:
        h, problem = self._h, self.problem
        if c is not None:
            c = np.asarray(c, dtype=np.float64).reshape(-1)
            changed = np.flatnonzero(c != self._c).astype(np.int32)
            if changed.size:
                h.changeColsCost(changed.size, changed, c[changed])
                self._c = c.copy()
        if offset is not None and float(offset) != self._offset:
            h.changeObjectiveOffset(float(offset))
            self._offset = float(offset)
        h.setOptionValue("time_limit", float(time_limit) if time_limit is not None else self._highspy.kHighsInf)
        self._set_cutoff(cutoff)
        if start is not None and problem.is_mip:
            h.setSolution(problem.n, self._all_cols, np.asarray(start, dtype=np.float64))
        run_status = self._run()
        model_status = h.getModelStatus()
        status = _HIGHS_STATUS.get(model_status.name, ERROR)
        info = h.getInfo()
        solution = h.getSolution()
        has_point = info.primal_solution_status == self._highspy.kSolutionStatusFeasible
        x = np.array(solution.col_value, dtype=np.float64) if has_point else None
        objective = float(info.objective_function_value) if has_point else float("nan")
        details = {"solver_status": model_status.name}
        if status == ERROR:
            details["message"] = f"HiGHS run returned {run_status.name}, model status {model_status.name}"
        if problem.is_mip:
            details["nodes"] = int(info.mip_node_count)
            return Solution(status, x, objective, None, None, float(info.mip_dual_bound), 0.0, "highs", details)
        details["iterations"] = int(info.simplex_iteration_count)
        duals_ub = duals_eq = None
        if status == OPTIMAL and info.dual_solution_status == self._highspy.kSolutionStatusFeasible:
            row_dual = -np.array(solution.row_dual, dtype=np.float64)  # HiGHS: c - A.T @ row_dual = reduced cost
            m_ub, m_eq = problem.A_ub.shape[0], problem.A_eq.shape[0]
            duals_ub, duals_eq = row_dual[:m_ub], row_dual[m_ub:m_ub + m_eq]
        return Solution(status, x, objective, duals_ub, duals_eq, objective, 0.0, "highs", details)
