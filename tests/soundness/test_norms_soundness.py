"""L2 and L1 input sets: certified (ibp, dual, lp) <= exact <= attack on random tiny nets, sampled points of the
ball never below a certified bound, and the linear closed form against an independent solver.

The exact oracle shares no code with what it checks: it enumerates the activation patterns of a tiny dense net
and, per pattern, minimises the (then linear) objective over the pattern's region ∩ ball ∩ box with cvxpy
directly (an LP for L1, an SOCP for L2), so its answer carries the solvers' tolerance (~1e-7 here).
"""
from __future__ import annotations

import itertools

import cvxpy as cp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from verifier.attacks import attack
from verifier.bounds import bound
from verifier.linear import linear_worst_case
from verifier.network import Affine, Network, random_network
from verifier.spec import ball, margin_rows

TOL = 1e-6  # the oracle's solver tolerance


def exact_minima(net: Network, input_set, C: np.ndarray, d: np.ndarray) -> np.ndarray:
    """min over the set of each row of ``C f(x) + d`` (k,), by enumerating the ReLU patterns of a dense chain
    whose output has no ReLU; per pattern one convex program per row (cvxpy, its default solver)."""
    widths = [a.weight.shape[0] for a, relu in zip(net.affines, net.relu_after) if relu]
    n = net.n_inputs
    x = cp.Variable(n)
    p = 1 if input_set.norm == "l1" else 2
    sets = [cp.norm(x - input_set.x0, p) <= input_set.eps]
    if input_set.clip is not None:
        sets += [x >= input_set.clip[0], x <= input_set.clip[1]]
    best = np.full(C.shape[0], np.inf)
    for pattern in itertools.product(*[itertools.product((0.0, 1.0), repeat=w) for w in widths]):
        M, c, region = np.eye(n), np.zeros(n), []
        for (affine, relu), on in zip(zip(net.affines, net.relu_after), list(pattern) + [None]):
            M, c = affine.weight @ M, affine.weight @ c + affine.bias
            if relu:
                on = np.asarray(on)
                sign = 2 * on - 1  # active: z >= 0, inactive: z <= 0
                region.append(cp.multiply(sign, M @ x + c) >= 0)
                M, c = on[:, None] * M, on * c
        for j in range(C.shape[0]):
            problem = cp.Problem(cp.Minimize((C[j] @ M) @ x + C[j] @ c + d[j]), sets + region)
            problem.solve()
            if problem.status == cp.OPTIMAL:
                best[j] = min(best[j], problem.value)
            else:
                assert problem.status == cp.INFEASIBLE, problem.status
    return best


def tiny_problem(seed: int, norm: str, clipped: bool):
    rng = np.random.default_rng(seed)
    n_in, depth = int(rng.integers(2, 4)), int(rng.integers(1, 3))
    width = 2 if depth == 2 else int(rng.integers(2, 5))  # at most 16 activation patterns
    net = random_network([n_in] + [width] * depth + [3], rng, scale=float(rng.uniform(0.7, 2.0)))
    x0 = rng.uniform(0.0, 1.0, size=n_in)
    x0[rng.uniform(size=n_in) < 0.3] = 0.0  # on the clip boundary, like dark pixels
    input_set = ball(x0, float(rng.uniform(0.05, 0.8)), norm, (0.0, 1.0) if clipped else None)
    label = int(np.argmax(net.forward(x0)))
    return rng, net, input_set, label


@pytest.mark.parametrize("norm", ["2", "1"])
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), clipped=st.booleans())
def test_certified_below_exact_below_attack(norm, seed, clipped):
    rng, net, input_set, label = tiny_problem(seed, norm, clipped)
    C, d = margin_rows(label, net.n_outputs)
    exact = exact_minima(net, input_set, C, d)
    lowers = {"ibp": bound(net, input_set, C, d, method="ibp").lower,
              "dual-wk": bound(net, input_set, C, d, method="dual", slopes="wk").lower,
              "dual-adaptive": bound(net, input_set, C, d, method="dual").lower,
              "dual-opt": bound(net, input_set, C, d, method="dual", slopes="opt", iterations=20).lower,
              "lp": bound(net, input_set, C, d, method="lp").lower}
    for name, lower in lowers.items():
        assert np.all(lower <= exact + TOL), (name, lower, exact)
    assert np.all(lowers["lp"] >= lowers["dual-adaptive"] - 1e-9)  # the LP re-derivation is at least the pass
    if input_set.norm == "l1":  # the MILP is exact on L1 balls (linear constraints)
        milp = bound(net, input_set, C, d, method="milp", time_limit=30)
        assert np.allclose(milp.lower, exact, atol=1e-5) and np.all(milp.upper >= milp.lower)
        assert input_set.contains(milp.x, 1e-12)
    for method in ("pgd", "fgsm"):
        result = attack(net, input_set, label, method, restarts=5, steps=40, seed=seed, check=False)
        assert input_set.contains(result.x)  # exactly: no tolerance
        assert result.value >= exact.min() - TOL  # an attack is a real point: never below the exact minimum
    points = input_set.sample(4000, rng)
    sampled = (net.forward(points) @ C.T + d).min(axis=0)
    assert np.all(exact <= sampled + TOL)


@pytest.mark.parametrize("norm", ["2", "1"])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), depth=st.integers(1, 3), width=st.integers(1, 10), relu_out=st.booleans(),
       clipped=st.booleans(), eps=st.floats(0.0, 2.0))
def test_sampled_points_never_below_certified_bounds(norm, seed, depth, width, relu_out, clipped, eps):
    rng = np.random.default_rng(seed)
    n_in, n_out = int(rng.integers(1, 7)), int(rng.integers(2, 5))
    net = random_network([n_in] + [width] * depth + [n_out], rng, relu_on_output=relu_out)
    input_set = ball(rng.uniform(0, 1, size=n_in), eps, norm, (0.0, 1.0) if clipped else None)
    C, d = rng.normal(size=(2, n_out)), rng.normal(size=2)
    points = input_set.sample(5000, rng)
    assert input_set.contains(points)
    sampled = (net.forward(points) @ C.T + d).min(axis=0)
    for method, options in (("ibp", {}), ("dual", {"slopes": "wk"}), ("dual", {}),
                            ("dual", {"slopes": "opt", "iterations": 15}), ("lp", {})):
        result = bound(net, input_set, C, d, method=method, **options)
        assert np.all(result.lower <= sampled + 1e-9), (method, options, result.lower, sampled)
        for (l, u), layer in zip(result.layer_bounds, pre_activations(net, points)):
            assert np.all(layer >= l - 1e-9) and np.all(layer <= u + 1e-9), (method, "layer bounds")


def pre_activations(net: Network, points: np.ndarray) -> list[np.ndarray]:
    values, h = [], points
    for affine, relu in zip(net.affines, net.relu_after):
        values.append(affine.forward(h))
        h = np.maximum(values[-1], 0.0) if relu else values[-1]
    return values


@pytest.mark.parametrize("norm", ["2", "1"])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 8), k=st.integers(2, 5), eps=st.floats(0.01, 1.0),
       clipped=st.booleans())
def test_linear_closed_form_is_the_exact_minimum_and_pgd_reaches_it(norm, seed, n, k, eps, clipped):
    rng = np.random.default_rng(seed)
    W, b = rng.normal(size=(k, n)), rng.normal(size=k)
    net = Network((Affine(W, b),))
    input_set = ball(rng.uniform(0, 1, size=n), eps, norm, (0.0, 1.0) if clipped else None)
    label = int(rng.integers(k))
    closed, points = linear_worst_case(W, b, input_set, label)
    assert input_set.contains(points, 1e-12)
    x = cp.Variable(n)  # the independent answer: cvxpy per row
    constraints = [cp.norm(x - input_set.x0, input_set.p) <= eps]
    if clipped:
        constraints += [x >= 0, x <= 1]
    rows = W[label] - np.delete(W, label, 0)
    for j, row in enumerate(rows):
        problem = cp.Problem(cp.Minimize(row @ x + b[label] - np.delete(b, label)[j]), constraints)
        problem.solve()
        assert closed[j] == pytest.approx(problem.value, abs=1e-6)
    target = int(np.delete(np.arange(k), label)[0])
    targeted, _ = linear_worst_case(W, b, input_set, label, target=target)
    assert targeted[0] == pytest.approx(closed[0], abs=1e-12)
    C, d = margin_rows(label, k)
    if not clipped:  # Hölder: the certified bounds of a linear model are exact over a ball
        for method in ("ibp", "dual", "lp"):
            assert np.allclose(bound(net, input_set, C, d, method=method).lower, closed, atol=1e-7), method
    result = attack(net, input_set, label, restarts=10, steps=100, final_step=1e-4, seed=seed, check=False)
    assert result.value >= closed.min() - 1e-9  # a point of the set
    # and PGD reaches the minimum: L1's Frank-Wolfe steps land on it; L2's projected steps get within 6e-5
    # (relative) on 200 clipped cases, 5e-4 at worst seen near a box corner, where the clipped sphere has a kink
    tolerance = 1e-4 if input_set.norm == "l1" else 1e-3
    assert result.value <= closed.min() + tolerance * max(1.0, abs(closed.min()))
