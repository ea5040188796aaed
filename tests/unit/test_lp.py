"""solvers.py (known answers on every backend, status handling) and the triangle LP (lp.py): known values, an
independent reference LP, the sound re-derivation, fallbacks, LP-all."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linprog

from verifier import solvers
from verifier.bounds import METHODS, dual, lp
from verifier.network import Affine, Network, ReLU, random_network
from verifier.spec import InputBox, SpecError

# f = relu(x1 + x2 + 0.5) + relu(x1 - x2 - 0.5) - relu(x1 + 5) + 5 on [-1, 1]^2 (the third ReLU always active).
# Rows f and -f. Triangle LP: min f = 0 (slopes 1/2, 1/2 make the relaxation exact there), min -f = -2.25 (both
# upper chords: slopes 5/8, 3/8, offsets 15/16). True minima: 0 and -1.5.
HAND = Network((Affine([[1.0, 1.0], [1.0, -1.0], [1.0, 0.0]], [0.5, -0.5, 5.0]), ReLU(),
                Affine([[1.0, 1.0, -1.0]], [5.0])))
HAND_BOX = InputBox([-1.0, -1.0], [1.0, 1.0])
HAND_ROWS = np.array([[1.0], [-1.0]])

# min -x0 - 2 x1 + 0.5 x2 + 3 s.t. x0 + x1 <= 1, -x2 <= -0.2, x0 - x1 = 0, 0 <= x0, x1 <= 5, -10 <= x2 <= 10:
# unique primal (0.5, 0.5, 0.2), objective 1.6, unique duals y_ub = (1.5, 0.5), y_eq = -0.5 (all x interior).
DATA = Path(__file__).resolve().parents[1] / "data"  # as in tests/conftest.py
KNOWN_LP = solvers.LinearProblem(c=[-1.0, -2.0, 0.5], A_ub=[[1, 1, 0], [0, 0, -1]], b_ub=[1, -0.2],
                                 A_eq=[[1, -1, 0]], b_eq=[0], lb=[0, 0, -10], ub=[5, 5, 10], offset=3.0)


@pytest.mark.parametrize("backend", solvers.BACKENDS)
def test_known_lp_on_every_backend(backend):
    model = solvers.open_model(KNOWN_LP, backend)
    result = model.solve()
    assert result.status == solvers.OPTIMAL and result.backend == backend
    assert result.objective == pytest.approx(1.6, abs=1e-7)
    np.testing.assert_allclose(result.x, [0.5, 0.5, 0.2], atol=1e-7)
    np.testing.assert_allclose(result.duals_ub, [1.5, 0.5], atol=1e-7)
    np.testing.assert_allclose(result.duals_eq, [-0.5], atol=1e-7)
    # a second objective on the same model: min x0 + x1 + x2 -> x = (0, 0, 0.2), value 0.2
    again = model.solve(np.ones(3), 0.0)
    assert again.status == solvers.OPTIMAL and again.objective == pytest.approx(0.2, abs=1e-7)


def test_dual_sign_convention_on_random_lps():
    # stationarity c + A_ub' y_ub + A_eq' y_eq = r with r >= 0 at lower bounds, <= 0 at upper, 0 in between
    rng = np.random.default_rng(3)
    for _ in range(5):
        n, m = 6, 8
        A = rng.normal(size=(m, n))
        problem = solvers.LinearProblem(rng.normal(size=n), A, A @ rng.uniform(-0.5, 0.5, n) + 1.0,
                                        rng.normal(size=(2, n)), np.zeros(2), -np.ones(n), np.ones(n))
        for backend in ("highs", "clarabel"):
            res = solvers.solve(problem, backend)
            assert res.status == solvers.OPTIMAL
            assert np.all(res.duals_ub >= -1e-7)
            slack = problem.b_ub - problem.A_ub @ res.x
            assert np.all(np.abs(res.duals_ub * slack) < 1e-6)  # complementary slackness
            r = problem.c + problem.A_ub.T @ res.duals_ub + problem.A_eq.T @ res.duals_eq
            inside = (res.x > -1 + 1e-6) & (res.x < 1 - 1e-6)
            assert np.all(np.abs(r[inside]) < 1e-6)
            assert np.all(r[res.x <= -1 + 1e-6] >= -1e-6) and np.all(r[res.x >= 1 - 1e-6] <= 1e-6)
            # the weak-duality bound of optimal multipliers is the optimum
            bound = solvers.lagrangian_bound(problem, res.duals_ub, res.duals_eq, problem.lb, problem.ub)
            assert bound <= res.objective + 1e-7 and bound == pytest.approx(res.objective, abs=1e-6)


def test_lagrangian_bound_is_a_bound_for_any_multipliers():
    rng = np.random.default_rng(4)
    res = solvers.solve(KNOWN_LP)
    for _ in range(50):
        y_ub = res.duals_ub + rng.normal(size=2)  # negative entries are clipped to 0 inside
        y_eq = res.duals_eq + rng.normal(size=1)
        assert solvers.lagrangian_bound(KNOWN_LP, y_ub, y_eq, KNOWN_LP.lb, KNOWN_LP.ub) <= 1.6 + 1e-12
    free = solvers.LinearProblem([1.0], np.zeros((0, 1)), [], np.zeros((0, 1)), [], [-np.inf], [np.inf])
    assert solvers.lagrangian_bound(free, [], [], free.lb, free.ub) == -np.inf


def test_infeasible_and_bad_arguments():
    problem = solvers.LinearProblem([1.0], [[1.0], [-1.0]], [-1.0, -1.0], np.zeros((0, 1)), [], [-5], [5])
    assert solvers.solve(problem).status == solvers.INFEASIBLE
    with pytest.raises(ValueError):
        solvers.LinearProblem([1.0, 2.0], [[1.0]], [1.0], np.zeros((0, 2)), [], [0, 0], [1, 1])
    with pytest.raises(ValueError):
        solvers.open_model(KNOWN_LP, "gurobi")
    mip = solvers.LinearProblem([1.0], np.zeros((0, 1)), [], np.zeros((0, 1)), [], [0], [1], [True])
    with pytest.raises(ValueError):
        solvers.open_model(mip, "clarabel")


def test_known_milp_and_cutoff():
    # max x0 + x1 s.t. 2 x0 + 2 x1 <= 3, x integer in [0, 4]: optimum -1 (LP relaxation -1.5)
    mip = solvers.LinearProblem([-1.0, -1.0], [[2.0, 2.0]], [3.0], np.zeros((0, 2)), [], [0, 0], [4, 4],
                                [True, True])
    for backend in ("highs", "cvxpy-highs"):
        res = solvers.solve(mip, backend)
        assert res.status == solvers.OPTIMAL and res.objective == pytest.approx(-1.0)
        assert res.dual_bound == pytest.approx(-1.0, abs=1e-9)
    below = solvers.solve(mip, cutoff=-1.5)  # nothing below -1.5: the cutoff is what is proven
    assert below.status == solvers.INFEASIBLE and below.dual_bound == -1.5
    # HiGHS calls a start above the cutoff "optimal" with its own value as the bound; what is proven is only
    # min >= cutoff, and that is what must come back (the true minimum is -1, the start has value 0)
    model = solvers.open_model(mip)
    res = model.solve(cutoff=-1.5, start=np.zeros(2))
    assert res.dual_bound <= -1.0


def test_milp_time_limit_is_reported():
    rng = np.random.default_rng(0)
    n = 60  # a random multi-knapsack: far from solved in 0.05 s
    A = rng.uniform(0, 1, size=(20, n))
    mip = solvers.LinearProblem(-rng.uniform(0.5, 1, n), A, A.sum(1) / 3, np.zeros((0, n)), [], np.zeros(n),
                                np.ones(n), np.ones(n, dtype=bool))
    res = solvers.solve(mip, time_limit=0.05)
    assert res.status == solvers.TIME_LIMIT and res.seconds < 5
    if res.x is not None:  # an incumbent: the proven bound lies below it
        assert res.dual_bound <= res.objective + 1e-9


def test_hand_network_known_lp_values():
    res = lp.bound(HAND, HAND_BOX, HAND_ROWS)
    np.testing.assert_allclose(res.lower, [0.0, -2.25], atol=1e-8)
    np.testing.assert_allclose(res.info["objective"], [0.0, -2.25], atol=1e-8)
    assert res.method == "lp" and res.info["status"] == [solvers.OPTIMAL] * 2
    assert METHODS["lp"] is lp.bound
    # the LP's slopes for row f are 1/2 on both unstable neurons: the dual pass at them reaches 0 too
    np.testing.assert_allclose(res.info["alpha"][0][0, :2], [0.5, 0.5], atol=1e-7)


def reference_triangle_lp(net: Network, box: InputBox, bounds: list, c: np.ndarray, d: float) -> float:
    """The triangle LP written neuron by neuron with its own variable layout (x, then per ReLU layer its
    activations only; pre-activations substituted), solved by scipy's linprog: an independent check of lp.py."""
    affines, relus = net.affines, net.relu_after
    n_layers = len(affines) if relus[-1] else len(affines) - 1
    sizes = [net.n_inputs] + [a.n_out for a in affines[:n_layers]]
    offsets = np.cumsum([0] + sizes)
    n = int(offsets[-1])
    A_ub, b_ub, A_eq, b_eq = [], [], [], []
    for i in range(n_layers):
        W, b = affines[i].weight, affines[i].bias
        l, u = bounds[i]
        for j in range(W.shape[0]):
            pre = np.zeros(n)
            pre[offsets[i]:offsets[i + 1]] = W[j]  # zh = pre @ v + b_j
            z = np.zeros(n)
            z[offsets[i + 1] + j] = 1.0
            if u[j] <= 0:
                A_eq.append(z), b_eq.append(0.0)
            elif l[j] >= 0:
                A_eq.append(z - pre), b_eq.append(b[j])
            else:
                A_ub.append(-z), b_ub.append(0.0)
                A_ub.append(pre - z), b_ub.append(-b[j])
                A_ub.append((u[j] - l[j]) * z - u[j] * pre), b_ub.append(u[j] * b[j] - u[j] * l[j])
    cost = np.zeros(n)
    if relus[-1]:
        cost[offsets[-2]:] = c
        const = d
    else:
        cost[offsets[-2]:] = c @ affines[-1].weight
        const = c @ affines[-1].bias + d
    bnds = [(lo, hi) for lo, hi in zip(box.lo, box.hi)] + [(None, None)] * (n - net.n_inputs)
    res = linprog(cost, A_ub=np.array(A_ub) if A_ub else None, b_ub=b_ub or None,
                  A_eq=np.array(A_eq) if A_eq else None, b_eq=b_eq or None, bounds=bnds, method="highs")
    assert res.status == 0
    return res.fun + const


@pytest.mark.parametrize("seed", range(6))
def test_matches_an_independent_reference_lp(seed):
    rng = np.random.default_rng(seed)
    net = random_network([3, 6, 5, 3], rng, relu_on_output=seed % 3 == 2)
    centre = rng.normal(size=3)
    box = InputBox(centre - 0.8, centre + 0.8)
    C, d = rng.normal(size=(3, 3)), rng.normal(size=3)
    res = lp.bound(net, box, C, d)
    for j in range(3):
        expected = reference_triangle_lp(net, box, res.layer_bounds, C[j], d[j])
        assert res.info["objective"][j] == pytest.approx(expected, abs=1e-7)
        assert res.lower[j] == pytest.approx(expected, abs=1e-6) and res.lower[j] <= expected + 1e-9


def test_no_relu_is_exact_and_layer_bounds_are_used_as_given():
    rng = np.random.default_rng(1)
    net = Network((Affine(rng.normal(size=(2, 3)), rng.normal(size=2)),))
    box = InputBox(-np.ones(3), np.ones(3))
    C = np.array([[1.0, -1.0]])
    W = C @ net.affines[0].weight
    exact = -np.abs(W).sum() + (C @ net.affines[0].bias)[0]
    assert lp.bound(net, box, C).lower[0] == pytest.approx(exact, abs=1e-9)
    # looser given layer bounds make a looser (never tighter) LP, and are returned as given
    base = lp.bound(HAND, HAND_BOX, HAND_ROWS)
    wide = [(l - 1.0, u + 1.0) for l, u in base.layer_bounds]
    looser = lp.bound(HAND, HAND_BOX, HAND_ROWS, layer_bounds=wide)
    assert np.all(looser.lower <= base.lower + 1e-9) and looser.lower[1] < base.lower[1] - 1e-3
    np.testing.assert_array_equal(looser.layer_bounds[0][0], wide[0][0])


def test_failed_solves_fall_back_to_the_dual_pass(monkeypatch):
    net, box, C = HAND, HAND_BOX, HAND_ROWS
    bounds = lp.bound(net, box, C).layer_bounds
    expected = dual.bound(net, box, C, layer_bounds=bounds, slopes="adaptive").lower

    class Failing(solvers.Model):
        def solve(self, c=None, offset=None, **_):
            return solvers.Solution(solvers.ERROR, None, float("nan"), backend=self.backend)

    real_open = solvers.open_model
    # HiGHS fails, Clarabel (the fallback) succeeds: the LP value still comes back
    monkeypatch.setattr(solvers, "open_model", lambda p, b="highs", **k: Failing(p, b) if b == "highs"
                        else real_open(p, b, **k))
    res = lp.bound(net, box, C, layer_bounds=bounds)
    np.testing.assert_allclose(res.lower, [0.0, -2.25], atol=1e-6)
    # both fail: the dual pass with the same layer bounds, said so in info
    monkeypatch.setattr(solvers, "open_model", lambda p, b="highs", **k: Failing(p, b))
    res = lp.bound(net, box, C, layer_bounds=bounds)
    np.testing.assert_array_equal(res.lower, expected)
    assert res.info["status"] == [solvers.ERROR] * 2 and "fallback" in res.info
    assert np.all(np.isnan(res.info["objective"]))


def test_time_limit_falls_back_to_the_dual_pass():
    rng = np.random.default_rng(2)
    net = random_network([4, 12, 12, 3], rng)
    box = InputBox(-np.ones(4), np.ones(4))
    C = rng.normal(size=(2, 3))
    res = lp.bound(net, box, C, time_limit=0.0)
    assert res.info["status"] == [solvers.TIME_LIMIT] * 2 and "fallback" in res.info
    expected = dual.bound(net, box, C, layer_bounds=res.layer_bounds, slopes="adaptive").lower
    np.testing.assert_array_equal(res.lower, expected)


def test_clarabel_backend_gives_the_same_bound():
    rng = np.random.default_rng(5)
    net = random_network([3, 8, 8, 2], rng)
    box = InputBox(-np.ones(3) * 0.5, np.ones(3) * 0.5)
    C = np.array([[1.0, -1.0], [-1.0, 1.0]])
    a = lp.bound(net, box, C)
    b = lp.bound(net, box, C, layer_bounds=a.layer_bounds, backend="clarabel")
    np.testing.assert_allclose(a.lower, b.lower, atol=1e-6)
    assert np.all(b.lower <= b.info["objective"] + 1e-6)


def test_lp_all_tightens_and_stays_valid():
    rng = np.random.default_rng(6)
    net = random_network([3, 10, 10, 10, 2], rng)
    box = InputBox(-np.ones(3), np.ones(3))
    C = np.array([[1.0, -1.0]])
    base = lp.bound(net, box, C)
    tight = lp.bound(net, box, C, intermediate="lp")
    assert tight.lower[0] >= base.lower[0] - 1e-9
    assert tight.info["lp_all"]["lps"] > 0 and tight.info["lp_all"]["disagreements"] == 0
    points = box.sample(5000, rng)
    h, shrunk = points, 0.0
    for t, (affine, relu) in enumerate(zip(net.affines, net.relu_after)):
        z = affine.forward(h)
        (l, u), (bl, bu) = tight.layer_bounds[t], base.layer_bounds[t]
        assert np.all(z >= l - 1e-9) and np.all(z <= u + 1e-9)  # still valid
        if relu:
            assert np.all(l >= bl - 1e-12) and np.all(u <= bu + 1e-12)  # never looser
            shrunk += float(np.sum(bu - bl) - np.sum(u - l))
        h = np.maximum(z, 0) if relu else z
    assert shrunk > 0
    with pytest.raises(ValueError):
        lp.bound(net, box, C, intermediate="milp")


def test_bad_problem_is_rejected():
    with pytest.raises(SpecError):
        lp.bound(HAND, HAND_BOX, np.ones((1, 3)))


def test_mnist_property_0_is_certified_by_the_lp():
    from verifier.onnx import load_onnx
    from verifier.vnnlib import parse_vnnlib

    net = load_onnx(DATA / "mnist-net_256x2.onnx")
    [(box, prop)] = parse_vnnlib(DATA / "vnnlib" / "mnist_prop_0_0.03.vnnlib", net.n_inputs, net.n_outputs)
    C = np.concatenate([c for c, _ in prop.disjuncts])
    d = np.concatenate([-d for _, d in prop.disjuncts])
    res = lp.bound(net, box, C, d)
    adaptive = dual.bound(net, box, C, d, layer_bounds=res.layer_bounds).lower
    assert np.all(res.lower >= adaptive - 1e-9) and res.lower.min() > 0  # the property holds (expected: unsat)
    assert res.info["disagreements"] == []
    assert res.info["variables"] > 784
