"""The big-M MILP (milp.py) and the enumeration reference (enumerate.py): exact values, the formulation itself,
both sides checked, time limits, the min-over-rows modes."""
from __future__ import annotations

import numpy as np
import pytest

from verifier import solvers
from verifier.attacks import attack
from verifier.bounds import METHODS, dual, encode, interval, lp, milp
from verifier.bounds.enumerate import enumerate_bound
from verifier.network import Affine, Network, ReLU, random_network
from verifier.onnx import run_onnxruntime, save_onnx
from verifier.spec import InputBox, margin_rows

# f = relu(x1 + x2 + 0.5) + relu(x1 - x2 - 0.5) - x1 on [-1, 1]^2 (see test_lp.py): min f = 0, min -f = -1.5.
HAND = Network((Affine([[1.0, 1.0], [1.0, -1.0], [1.0, 0.0]], [0.5, -0.5, 5.0]), ReLU(),
                Affine([[1.0, 1.0, -1.0]], [5.0])))
HAND_BOX = InputBox([-1.0, -1.0], [1.0, 1.0])
HAND_ROWS = np.array([[1.0], [-1.0]])


def small(seed: int, sizes=(2, 5, 4, 3), relu_out=False, radius=1.0):
    rng = np.random.default_rng(seed)
    net = random_network(list(sizes), rng, relu_on_output=relu_out)
    centre = rng.normal(size=sizes[0])
    box = InputBox(centre - radius, centre + radius)
    return rng, net, box, rng.normal(size=(3, sizes[-1])), rng.normal(size=3)


def test_hand_network_exact_values():
    res = milp.bound(HAND, HAND_BOX, HAND_ROWS)
    np.testing.assert_allclose(res.lower, [0.0, -1.5], atol=1e-9)
    np.testing.assert_allclose(res.upper, [0.0, -1.5], atol=1e-9)
    assert res.info["status"] == ["optimal", "optimal"] and res.method == "milp"
    assert HAND.forward(res.x[1])[0] == pytest.approx(1.5)  # -f reaches -1.5 at (1, 1)
    np.testing.assert_allclose(enumerate_bound(HAND, HAND_BOX, HAND_ROWS), [0.0, -1.5], atol=1e-12)
    assert METHODS["milp"] is milp.bound


@pytest.mark.parametrize("seed", range(5))
def test_milp_equals_enumeration(seed):
    _, net, box, C, d = small(seed, relu_out=seed == 4)
    exact = enumerate_bound(net, box, C, d)
    res = milp.bound(net, box, C, d)
    np.testing.assert_allclose(res.lower, exact, atol=1e-6)
    np.testing.assert_allclose(res.upper, exact, atol=1e-6)
    assert np.all(res.lower <= res.upper)
    assert box.contains(res.x)
    np.testing.assert_allclose(res.upper, np.einsum("kj,kj->k", net.forward(res.x), C) + d, atol=1e-12)
    for objective in ("min", "min-selector"):  # only the minimum over the rows is exact; no row is overstated
        other = milp.bound(net, box, C, d, objective=objective)
        assert other.lower.min() == pytest.approx(exact.min(), abs=1e-6)
        assert np.all(other.lower <= exact + 1e-6) and np.all(other.lower <= other.upper)


def test_enumeration_matches_a_dense_grid_in_one_dimension():
    rng = np.random.default_rng(7)
    net = random_network([1, 6, 5, 2], rng, scale=2.0)
    box = InputBox([-2.0], [2.0])
    C = rng.normal(size=(2, 2))
    grid = np.linspace(-2, 2, 400_001)[:, None]
    values = (net.forward(grid) @ C.T).min(axis=0)
    exact = enumerate_bound(net, box, C)
    assert np.all(exact <= values + 1e-12) and np.all(values - exact < 1e-3)
    with pytest.raises(ValueError):
        enumerate_bound(random_network([2, 8, 8, 2], rng), InputBox([-1, -1], [1, 1]), np.eye(2))


def test_big_m_formulation_holds_the_network_and_relaxes_to_the_triangle():
    rng, net, box, C, d = small(11, sizes=(3, 6, 6, 2))
    bounds = dual.bound(net, box, C, d).layer_bounds
    problem, layout = encode.build_problem(net, box, bounds, kind="bigm")
    G, g0 = encode.rows(layout, C, d)
    assert problem.is_mip and sum(a.size for a in layout.binary) == sum(u.size for u in layout.unstable) > 0
    for x in box.sample(50, rng):  # every real input gives a feasible point with the network's value
        p = milp.full_point(net, layout, problem.n, x)
        assert np.all(problem.A_ub @ p <= problem.b_ub + 1e-9)
        np.testing.assert_allclose(problem.A_eq @ p, problem.b_eq, atol=1e-9)
        assert np.all(p >= problem.lb - 1e-9) and np.all(p <= problem.ub + 1e-9)
        np.testing.assert_allclose(G @ p + g0, C @ net.forward(x) + d, atol=1e-9)
    # its LP relaxation is the triangle relaxation (plus the valid bounds l <= zh <= u): never looser
    relaxed = solvers.LinearProblem(problem.c, problem.A_ub, problem.b_ub, problem.A_eq, problem.b_eq,
                                    problem.lb, problem.ub)
    triangle = lp.bound(net, box, C, d, layer_bounds=bounds)
    model = solvers.open_model(relaxed)
    for j in range(len(C)):
        value = model.solve(G[j].toarray().reshape(-1), g0[j]).objective
        assert value >= triangle.info["objective"][j] - 1e-7


def test_upper_is_what_onnxruntime_computes_at_x(tmp_path):
    _, net, box, C, d = small(3, sizes=(3, 6, 5, 4))
    res = milp.bound(net, box, C, d)
    path = save_onnx(net, tmp_path / "net.onnx", dtype=np.float64)
    outputs = run_onnxruntime(path, res.x)
    np.testing.assert_allclose(np.einsum("kj,kj->k", outputs, C) + d, res.upper, rtol=1e-10, atol=1e-10)


def test_certified_exact_attack_order():
    rng = np.random.default_rng(12)
    net = random_network([4, 8, 8, 3], rng)
    x0 = rng.uniform(0.3, 0.7, size=4)
    label = int(np.argmax(net.forward(x0)))
    box = InputBox(np.clip(x0 - 0.2, 0, 1), np.clip(x0 + 0.2, 0, 1))
    C, d = margin_rows(label, 3)
    ex = milp.bound(net, box, C, d)
    certified = [interval.bound(net, box, C, d).lower, dual.bound(net, box, C, d).lower, lp.bound(net, box, C, d).lower]
    for lower in certified:
        assert np.all(lower <= ex.lower + 1e-7)
    assert np.all(ex.lower <= ex.upper)
    pgd = attack(net, box, label, method="pgd")
    assert ex.upper.min() <= pgd.value + 1e-9  # the exact robust margin is below any attack's value


def test_time_limit_keeps_both_sides_valid():
    rng = np.random.default_rng(0)
    net = random_network([10, 40, 40, 5], rng)
    box = InputBox(-np.ones(10), np.ones(10))
    C, d = margin_rows(0, 5)
    res = milp.bound(net, box, C, d, time_limit=0.5, slopes="adaptive")
    assert "time_limit" in res.info["status"] and res.info["min_status"] == "time_limit"
    assert np.all(res.lower <= res.upper)
    weaker = dual.bound(net, box, C, d, layer_bounds=res.layer_bounds).lower
    assert np.all(res.lower >= weaker - 1e-9)
    samples = box.sample(5000, rng)
    assert np.all(res.lower <= (net.forward(samples) @ C.T + d).min(axis=0) + 1e-9)
    assert res.seconds < 10


def test_decide_and_starts():
    # a problem whose box centre is safe (every row > 0) but whose most suspicious row goes below 0
    for seed in range(100):
        _, net, box, C, d = small(seed, radius=0.5)
        exact = enumerate_bound(net, box, C, d)
        first = int(np.argmin(dual.bound(net, box, C, d, slopes="opt").lower))
        if np.all(C @ net.forward(box.center) + d > 0) and exact[first] < 0:
            break
    res = milp.bound(net, box, C, d, objective="min", decide=0.0)
    assert res.upper[first] == pytest.approx(exact[first], abs=1e-9) and res.upper.min() < 0
    assert res.info["status"][first] == "optimal"
    assert res.info["status"].count("skipped") == len(C) - 1  # decided: the other rows are not solved
    assert np.all(res.lower <= exact + 1e-9)
    # a start point at a violating point decides it before any MILP runs
    quick = milp.bound(net, box, C, d, objective="min", decide=0.0, starts=res.x[first][None])
    assert set(quick.info["status"]) == {"skipped"} and quick.upper.min() == pytest.approx(exact[first], abs=1e-9)
    with pytest.raises(ValueError):
        milp.bound(net, box, C, d, objective="max")


def test_decide_proves_a_safe_problem_without_exact_values():
    # safe (exact minima 0.54, 0.20, 0.38) but the dual pass (adaptive) cannot show it for the second row: that
    # row needs a MILP, cut off just above 0, and comes back "pruned" with a lower bound > 0; the rows the dual
    # pass settles need none
    _, net, box, C, d = small(184, radius=0.6)
    exact = enumerate_bound(net, box, C, d)
    duals = dual.bound(net, box, C, d, slopes="adaptive").lower
    assert exact.min() > 0.1 and duals.min() < 0 < duals.max()
    res = milp.bound(net, box, C, d, decide=0.0, slopes="adaptive")
    assert res.lower.min() > 0 and np.all(res.lower <= exact + 1e-9)
    assert set(res.info["status"]) == {"pruned"}
    # the rows the dual pass left open were cut off just above 0 and proved: their bound is the cutoff
    np.testing.assert_allclose(res.info["solver_bound"][duals <= 0], 1e-6)
    np.testing.assert_array_equal(res.lower[duals > 0], duals[duals > 0])  # settled by the dual pass
    assert np.all(np.isnan(res.info["solver_bound"][duals > 0]))


@pytest.mark.parametrize("seed", range(8))
def test_min_max_is_the_exact_value_of_a_conjunction(seed):
    """min_x max_r (C f + d)_r: optimal, lower == upper, never above a sampled point's value nor below the best
    single row's minimum; with one row it is that row's exact minimum; decide=0 answers its sign."""
    rng = np.random.default_rng(seed)
    net = random_network([5, 8, 8, 3], rng)
    centre = rng.normal(size=5)
    box = InputBox(centre - 0.5, centre + 0.5)
    C, d = rng.normal(size=(1 + seed % 3, 3)), rng.normal(size=1 + seed % 3)
    lower, upper, x, status = milp.min_max(net, box, C, d, time_limit=60)
    assert status == "optimal" and upper - lower <= 1e-6 * max(1.0, abs(upper))
    assert box.contains(x) and np.isclose(np.max(C @ net.forward(x) + d), upper, rtol=0, atol=1e-12)
    sampled = np.max(net.forward(box.sample(5000, rng)) @ C.T + d, axis=1)
    assert upper <= sampled.min() + 1e-9
    rows = milp.bound(net, box, C, d, time_limit=60)
    assert lower >= rows.lower.max() - 1e-6  # the maximum is at least every row
    if len(d) == 1:
        assert abs(upper - rows.upper[0]) <= 1e-6 * max(1.0, abs(upper))
    low0, up0, _, status0 = milp.min_max(net, box, C, d - upper + 0.05, time_limit=60, decide=0.0)
    assert low0 > 0 and status0 == "pruned"  # every point's max is >= 0.05: shown > 0
    low1, up1, _, status1 = milp.min_max(net, box, C, d - upper - 0.05, time_limit=60, decide=0.0)
    assert up1 <= 0 and status1 != "pruned"  # the optimum is -0.05: a point below 0 is found, nothing "proved"
