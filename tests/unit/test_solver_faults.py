"""A failed solve never becomes a bound (DESIGN.md rule 5): every status HiGHS or cvxpy can give, with garbage in
the numbers that should not be read, injected at the `solvers` boundary; the HiGHS thread scheduler shared with
the user's own solves; the one proof margin; misspelt options.

The oracle is `bounds/enumerate.py` (scipy's own HiGHS build, no code shared with `verifier.solvers`), so the
injected faults cannot reach it."""
from __future__ import annotations

import functools
import json
import subprocess
import sys

import numpy as np
import pytest

from verifier import bound, solver_highs, solvers
from verifier.bounds import PROOF_MARGIN, milp, proves
from verifier.bounds.enumerate import enumerate_bound
from verifier.compare import decide
from verifier.network import random_network
from verifier.spec import InputBox, Property
from verifier.verify import verify

GARBAGE = 1e6  # what a broken answer carries where a bound or a value would be


def _garbage_point(problem: solvers.LinearProblem) -> np.ndarray:
    return np.full(problem.n, GARBAGE)


def _garbage_duals(problem: solvers.LinearProblem) -> dict:
    return {"duals_ub": np.full(problem.A_ub.shape[0], np.nan), "duals_eq": np.full(problem.A_eq.shape[0], GARBAGE)}


def _real(problem, c, offset, time_limit, cutoff, start) -> solvers.Solution:
    """The honest answer of HiGHS (through the raw backend, before any checking)."""
    return solver_highs.HighsModel(problem)._solve(c, offset, time_limit=time_limit, cutoff=cutoff, start=start)


# name -> the answer a faulty solver gives to (problem, c, offset, time_limit, cutoff, start)
FAULTS = {
    "error-kNotset": lambda p, *a: solvers.Solution(solvers.ERROR, None, GARBAGE, dual_bound=GARBAGE,
                                                    info={"solver_status": "kNotset"}),
    "error-kSolveError": lambda p, *a: solvers.Solution(solvers.ERROR, _garbage_point(p), GARBAGE,
                                                        dual_bound=GARBAGE, info={"solver_status": "kSolveError"},
                                                        **_garbage_duals(p)),
    "unbounded": lambda p, *a: solvers.Solution("unbounded", _garbage_point(p), -GARBAGE, dual_bound=GARBAGE),
    "inaccurate": lambda p, *a: solvers.Solution(solvers.INACCURATE, _garbage_point(p), GARBAGE,
                                                 dual_bound=GARBAGE, **_garbage_duals(p)),
    # "infeasible" for a problem without a cutoff (which always has points); under a cutoff infeasibility is a
    # proof the project trusts (as it trusts an optimal MILP's bound), so there it answers honestly
    "infeasible-without-cutoff": lambda p, c, o, t, cutoff, s: solvers.Solution(
        solvers.INFEASIBLE, None, GARBAGE, dual_bound=GARBAGE) if cutoff is None else _real(p, c, o, t, cutoff, s),
    "time-limit-without-point": lambda p, *a: solvers.Solution(solvers.TIME_LIMIT, None, GARBAGE,
                                                               dual_bound=float("nan")),
    # a bound above the solver's own incumbent: self-contradictory
    "time-limit-bound-above-point": lambda p, *a: solvers.Solution(solvers.TIME_LIMIT, _garbage_point(p), -GARBAGE,
                                                                   dual_bound=GARBAGE),
    # objective and bound consistent with each other but far above the network's value at the point
    "time-limit-garbage-objective": lambda p, *a: solvers.Solution(solvers.TIME_LIMIT, _garbage_point(p), GARBAGE,
                                                                   dual_bound=GARBAGE / 2),
    # an honest solve whose point is reported with a garbage objective and a valid (lowered) bound
    "time-limit-honest-bound": lambda p, *a: (lambda r: solvers.Solution(
        solvers.TIME_LIMIT, r.x, GARBAGE, dual_bound=r.dual_bound - 1.0 if np.isfinite(r.dual_bound) else np.nan,
        info=r.info))(_real(p, *a)),
    # honest "nothing below the cutoff" with garbage numbers: the bound must be the cutoff, not what it carries
    "infeasible-under-cutoff": lambda p, c, o, t, cutoff, s: (lambda r: solvers.Solution(
        solvers.INFEASIBLE, _garbage_point(p), GARBAGE, dual_bound=GARBAGE)
        if r.status == solvers.INFEASIBLE else solvers.Solution(solvers.TIME_LIMIT, None, GARBAGE))(
        _real(p, c, o, t, cutoff, s)),
    "optimal-lp-with-nan-duals": lambda p, *a: solvers.Solution(solvers.OPTIMAL, _garbage_point(p), GARBAGE,
                                                                dual_bound=GARBAGE, **_garbage_duals(p)),
    "exception": None,
}


class FaultyModel(solvers.Model):
    """A solver backend that answers every solve with the fault `name` (or raises)."""

    def __init__(self, problem: solvers.LinearProblem, name: str) -> None:
        super().__init__(problem, "faulty")
        self.name = name

    def _solve(self, c, offset, *, time_limit, cutoff, start) -> solvers.Solution:
        if FAULTS[self.name] is None:
            raise RuntimeError("the solver crashed")
        problem = self.problem if c is None else solvers.LinearProblem(
            c, self.problem.A_ub, self.problem.b_ub, self.problem.A_eq, self.problem.b_eq, self.problem.lb,
            self.problem.ub, self.problem.integrality, self.problem.offset if offset is None else offset)
        return FAULTS[self.name](problem, None, None, time_limit, cutoff, start)


@pytest.fixture(params=sorted(FAULTS))
def fault(request, monkeypatch):
    monkeypatch.setattr(solvers, "open_model", lambda problem, *args, **kwargs: FaultyModel(problem, request.param))
    return request.param


@functools.lru_cache(maxsize=None)
def _problem(seed: int, n_inputs: int):
    """A random net small enough for enumeration (<= 14 ReLUs), a box, two rows with offsets, and the rows'
    exact minima (computed once: the faults do not reach the oracle)."""
    rng = np.random.default_rng(100 + seed)
    net = random_network([n_inputs, 6, 5, 3] if n_inputs <= 16 else [n_inputs, 5, 4, 3], rng)
    centre = rng.normal(size=n_inputs)
    box = InputBox(centre - 0.8, centre + 0.8)
    C, d = rng.normal(size=(2, 3)), rng.normal(size=2)
    return net, box, C, d, enumerate_bound(net, box, C, d)


def nets(count: int = 2, n_inputs: int = 3):
    """(rng, net, box, C, d, exact) for `count` random problems."""
    for seed in range(count):
        yield (np.random.default_rng(seed), *_problem(seed, n_inputs))


def test_lp_and_lp_all_fall_back_to_valid_bounds(fault):
    for _, net, box, C, d, exact in nets():
        for intermediate in ("dual", "lp"):
            res = bound(net, box, C, d, method="lp", intermediate=intermediate)
            assert np.all(np.isfinite(res.lower)) and np.all(res.lower <= exact + 1e-7), (fault, intermediate)
            for l, u in res.layer_bounds:
                assert np.all(l <= u + 1e-9)


def test_milp_never_reads_a_bound_out_of_a_failed_solve(fault):
    for _, net, box, C, d, exact in nets():
        for options in ({}, {"decide": 0.0}, {"objective": "min"}, {"objective": "min-selector"}):
            res = bound(net, box, C, d, method="milp", time_limit=20, **options)
            assert np.all(res.lower <= exact + 1e-7), (fault, options, res.lower, exact)
            assert np.all(res.upper >= exact - 1e-7)  # upper values are the network's at real points
            # under a cutoff, "infeasible" is a proof the project trusts (as it trusts an optimal MILP's bound):
            # that fault answers honestly there
            has_cutoff = "decide" in options or options.get("objective") == "min"
            honest = ("time-limit-honest-bound", "infeasible-under-cutoff", "time-limit-without-point") + \
                (("infeasible-without-cutoff",) if has_cutoff else ())
            if fault not in honest:  # every solve failed: no row may carry a solver's bound
                assert "error" in res.info["status"] or set(res.info["status"]) <= {"pruned", "skipped"}
                assert res.info["min_status"] != "optimal" or np.isclose(res.lower.min(), res.upper.min())
                assert np.all(np.isnan(res.info["solver_bound"]))


def test_min_max_stays_below_sampled_values(fault):
    for rng, net, box, C, d, _ in nets():
        lower, upper, x, status = milp.min_max(net, box, C, d, time_limit=20)
        sampled = (net.forward(box.sample(20000, rng)) @ C.T + d).max(axis=1).min()
        assert lower <= sampled + 1e-9 and lower <= upper and box.contains(x)
        if fault.startswith(("error", "unbounded", "inaccurate", "infeasible-without", "exception")):
            assert status == "error"


def test_verify_never_holds_where_a_counterexample_exists(fault):
    """20 inputs: the dual passes, ReLU splitting and the MILP phase, all with the faulty solver."""
    for _, net, box, C, d, exact in nets(count=1, n_inputs=20):
        unsafe = Property(((C[:1], np.array([exact[0] - d[0] + 0.05])),))  # C_0 f <= min + 0.05: reachable
        assert verify(net, box, unsafe, timeout=2).status != "holds"
        conjunction = Property(((C, exact - d + 0.05),))  # each row alone reachable; the conjunction perhaps not
        status = verify(net, box, conjunction, timeout=2).status
        if status == "holds":  # then no sampled point may meet it
            assert not np.any(conjunction.violated_by(net.forward(box.sample(20000, np.random.default_rng(0)))))


def test_faults_do_not_reach_the_oracle(fault):
    _, net, box, C, d, exact = next(nets())
    np.testing.assert_array_equal(enumerate_bound(net, box, C, d), exact)


def test_checked_keeps_only_proofs():
    problem = solvers.LinearProblem(np.ones(2), np.zeros((0, 2)), np.zeros(0), np.zeros((0, 2)), np.zeros(0),
                                    np.zeros(2), np.ones(2), np.array([True, False]))
    point = np.array([1.0, 0.5])
    cases = [  # (status, x, objective, dual bound, cutoff) -> (status, dual bound)
        ((solvers.OPTIMAL, point, 1.5, 1.4, None), (solvers.OPTIMAL, 1.4)),
        ((solvers.OPTIMAL, point, 1.5, 2.0, None), (solvers.ERROR, np.nan)),  # bound above its own point
        ((solvers.TIME_LIMIT, None, np.nan, 0.7, None), (solvers.TIME_LIMIT, 0.7)),
        ((solvers.TIME_LIMIT, None, np.nan, -np.inf, None), (solvers.TIME_LIMIT, np.nan)),
        ((solvers.TIME_LIMIT, None, np.nan, 1.2, 1.0), (solvers.TIME_LIMIT, 1.0)),  # min(bound, cutoff)
        ((solvers.INFEASIBLE, point, 9.0, 9.0, 0.25), (solvers.INFEASIBLE, 0.25)),
        ((solvers.INFEASIBLE, None, np.nan, 9.0, None), (solvers.INFEASIBLE, np.nan)),
        ((solvers.INACCURATE, point, 1.5, 1.5, None), (solvers.INACCURATE, np.nan)),
        ((solvers.ERROR, point, 1.5, 1.5, None), (solvers.ERROR, np.nan)),
        (("kUnbounded", point, -np.inf, 1.5, None), (solvers.ERROR, np.nan)),
        ((solvers.OPTIMAL, np.array([np.nan, 0.0]), 1.5, 1.5, None), (solvers.OPTIMAL, 1.5)),  # no point: no check
        ((solvers.OPTIMAL, point, 1.5, 1.5, 1.0), (solvers.ERROR, np.nan)),  # its point is above its cutoff
    ]
    for (status, x, objective, dual_bound, cutoff), (want_status, want_bound) in cases:
        out = solvers.checked(solvers.Solution(status, x, objective, dual_bound=dual_bound), problem, cutoff)
        assert out.status == want_status, (status, dual_bound)
        np.testing.assert_equal(out.dual_bound, want_bound)
        if out.status == solvers.ERROR:
            assert out.info["message"]


def test_an_exception_becomes_an_error_status():
    problem = solvers.LinearProblem(np.ones(1), np.zeros((0, 1)), np.zeros(0), np.zeros((0, 1)), np.zeros(0),
                                    np.zeros(1), np.ones(1))
    out = FaultyModel(problem, "exception").solve()
    assert out.status == solvers.ERROR and np.isnan(out.dual_bound) and "crashed" in out.info["message"]


THREADS_SCRIPT = """
import json, cvxpy as cp, numpy as np, verifier
from verifier.bounds.enumerate import enumerate_bound
from verifier.network import random_network

def users_milp():
    x = cp.Variable(3, integer=True)
    problem = cp.Problem(cp.Minimize(cp.sum(x)), [x >= 1.5, x <= 10])
    problem.solve(solver=cp.HIGHS)  # HiGHS's default options: its scheduler gets its default thread count
    return problem.status, float(problem.value)

rng = np.random.default_rng(0)
net = random_network([5, 9, 3], rng)
box = verifier.linf_ball(rng.uniform(size=5), 0.3, clip=None)
C, d = verifier.margin_rows(0, 3)
out = {}
if ORDER == "user-first":
    out["user_before"] = users_milp()
res = verifier.bound(net, box, C, d, method="milp")
out["status"], out["lower"], out["upper"] = res.info["status"], res.lower.tolist(), res.upper.tolist()
out["user_after"] = users_milp()
out["exact"] = enumerate_bound(net, box, C, d).tolist()
print(json.dumps(out))
"""


@pytest.mark.parametrize("order", ["user-first", "verifier-first"])
def test_highs_thread_scheduler_shared_with_the_users_solves(order):
    """The issue's scenario in a fresh process: the user's cvxpy HiGHS solve (default options) before or after
    ours; both answer, and ours is the exact value."""
    script = THREADS_SCRIPT.replace("ORDER", repr(order))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == ["optimal", "optimal"]
    np.testing.assert_allclose(out["lower"], out["exact"], atol=1e-6)
    np.testing.assert_allclose(out["upper"], out["exact"], atol=1e-6)
    assert out["user_after"] == ["optimal", 6.0]
    if order == "user-first":
        assert out["user_before"] == ["optimal", 6.0]


def test_one_proof_margin():
    assert not proves(PROOF_MARGIN) and proves(2 * PROOF_MARGIN) and not proves(0.0)
    tie = {"dual": {"lower": PROOF_MARGIN / 2, "seconds": 0.0}, "milp": {"lower": 0.0, "upper": 0.0}}
    assert decide(tie) == "unknown"  # neither a tie nor a rounding-sized margin certifies a sample
    assert decide({"dual": {"lower": 1e-6, "seconds": 0.0}}) == "certified"


@pytest.mark.parametrize("method, misspelt", [("dual", "slope"), ("lp", "slope"), ("milp", "timelimit"),
                                              ("ibp", "slopes")])
def test_unknown_options_are_refused_with_the_accepted_ones(method, misspelt):
    _, net, box, C, d, _ = next(nets())
    with pytest.raises(ValueError, match=f"no option '{misspelt}'.*layer_bounds"):
        bound(net, box, C, d, method=method, **{misspelt: "opt"})
