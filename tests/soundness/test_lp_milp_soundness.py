"""The triangle LP and the MILP against sampling, against the exact enumeration and against the dual pass, on
random nets and boxes (hypothesis)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from verifier.bounds import dual, lp, milp
from verifier.bounds.enumerate import enumerate_bound
from verifier.network import random_network
from verifier.spec import InputBox

SAMPLES = 10_000


def random_problem(seed: int, depth: int, width: int, relu_out: bool, radius: float, n_in_max: int = 4):
    rng = np.random.default_rng(seed)
    n_in, n_out = int(rng.integers(1, n_in_max + 1)), int(rng.integers(1, 4))
    net = random_network([n_in] + [width] * depth + [n_out], rng, relu_on_output=relu_out,
                         scale=float(rng.uniform(0.5, 2.0)))
    centre = rng.normal(size=n_in)
    widths = radius * rng.uniform(0.0, 1.0, size=n_in)  # some inputs may be fixed (zero width)
    box = InputBox(centre - widths, centre + widths)
    k = int(rng.integers(1, 4))
    return rng, net, box, rng.normal(size=(k, n_out)), rng.normal(size=k)


def scale(values: np.ndarray) -> np.ndarray:
    return np.maximum(1.0, np.abs(values))


problems = dict(seed=st.integers(0, 10**6), depth=st.integers(1, 3), width=st.integers(1, 8),
                relu_out=st.booleans(), radius=st.floats(0.0, 2.0))


@settings(max_examples=40, deadline=None)
@given(**problems)
def test_lp_is_sound_and_at_least_the_dual_pass(seed, depth, width, relu_out, radius):
    rng, net, box, C, d = random_problem(seed, depth, width, relu_out, radius)
    res = lp.bound(net, box, C, d)
    sampled = (net.forward(box.sample(SAMPLES, rng)) @ C.T + d).min(axis=0)
    assert np.all(res.lower <= sampled + 1e-9)
    objective = res.info["objective"]
    # the re-derived value agrees with the solver's objective and never exceeds it by more than tolerance
    assert np.all(np.abs(res.lower - objective) <= 1e-6 * scale(objective)) and res.info["disagreements"] == []
    assert np.all(res.info["crown"] <= objective + 1e-7 * scale(objective))  # any slopes: at most the LP
    for slopes in ("wk", "adaptive"):
        same = dual.bound(net, box, C, d, layer_bounds=res.layer_bounds, slopes=slopes).lower
        assert np.all(res.lower >= same - 1e-7 * scale(same)), slopes
    # optimized slopes cannot beat the LP: it is their optimum (how close they come: the xfail test below)
    opt = dual.bound(net, box, C, d, layer_bounds=res.layer_bounds, slopes="opt").lower
    assert np.all(opt <= res.lower + 1e-7 * scale(res.lower))


@pytest.mark.xfail(reason="alpha-CROWN (dual.py, default 50 Adam steps, lr 0.5) stops short of the LP optimum on "
                          "many random nets (seen: 0.081 vs 0.133 at seed=10133, depth=1, width=6, radius=2; "
                          "1000 steps reach it); the target is 1e-4", strict=False)
@settings(max_examples=20, deadline=None)
@given(**problems)
def test_opt_slopes_reach_the_lp_value(seed, depth, width, relu_out, radius):
    _, net, box, C, d = random_problem(seed, depth, width, relu_out, radius)
    res = lp.bound(net, box, C, d)
    opt = dual.bound(net, box, C, d, layer_bounds=res.layer_bounds, slopes="opt").lower
    assert np.all(res.lower - opt <= 1e-4 * scale(res.lower))


@settings(max_examples=25, deadline=None)
@given(**problems)
def test_lp_all_is_never_looser_and_stays_valid(seed, depth, width, relu_out, radius):
    rng, net, box, C, d = random_problem(seed, depth, width, relu_out, radius)
    base = lp.bound(net, box, C, d)
    tight = lp.bound(net, box, C, d, intermediate="lp")
    assert np.all(tight.lower >= base.lower - 1e-7 * scale(base.lower))
    h = box.sample(2000, rng)
    for (l, u), (bl, bu), affine, relu in zip(tight.layer_bounds, base.layer_bounds, net.affines, net.relu_after):
        z = affine.forward(h)
        assert np.all(z >= l - 1e-9) and np.all(z <= u + 1e-9)
        if relu:
            assert np.all(l >= bl) and np.all(u <= bu)
        h = np.maximum(z, 0.0) if relu else z
    assert tight.info["lp_all"]["disagreements"] == 0


@settings(max_examples=25, deadline=None)
@given(**problems, shrink=st.floats(0.0, 1.0))
def test_bounds_never_loosen_when_the_box_shrinks(seed, depth, width, relu_out, radius, shrink):
    _, net, box, C, d = random_problem(seed, depth, width, relu_out, radius)
    inner = InputBox(box.center - shrink * box.radius, box.center + shrink * box.radius)
    outer = lp.bound(net, box, C, d)
    # the inner box's layer bounds intersected with the outer's (both valid on the inner box): what a
    # branch-and-bound does, and what makes the comparison exact
    own = dual.bound(net, inner, C, d).layer_bounds
    nested = [(np.maximum(l, ol), np.minimum(u, ou)) for (l, u), (ol, ou) in zip(own, outer.layer_bounds)]
    assert np.all(lp.bound(net, inner, C, d, layer_bounds=nested).lower >= outer.lower - 1e-7 * scale(outer.lower))
    inner_exact = milp.bound(net, inner, C, d, layer_bounds=nested).lower
    assert np.all(inner_exact >= milp.bound(net, box, C, d, layer_bounds=outer.layer_bounds).lower - 1e-6)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), depth=st.integers(1, 2), width=st.integers(1, 6), relu_out=st.booleans(),
       radius=st.floats(0.05, 2.0))
def test_milp_is_exact_and_between_lp_and_samples(seed, depth, width, relu_out, radius):
    rng, net, box, C, d = random_problem(seed, depth, width, relu_out, radius, n_in_max=2)
    assume(net.n_relus <= 12)  # enumeration is exponential in the ReLUs
    exact = enumerate_bound(net, box, C, d)
    res = milp.bound(net, box, C, d)
    np.testing.assert_allclose(res.lower, exact, atol=1e-6 * float(scale(exact).max()))
    np.testing.assert_allclose(res.upper, exact, atol=1e-6 * float(scale(exact).max()))
    assert np.all(res.lower <= res.upper) and box.contains(res.x)
    np.testing.assert_allclose(res.upper, np.einsum("kj,kj->k", net.forward(res.x), C) + d, rtol=0, atol=1e-12)
    assert np.all(lp.bound(net, box, C, d, layer_bounds=res.layer_bounds).lower <= res.lower + 1e-7)
    sampled = (net.forward(box.sample(SAMPLES, rng)) @ C.T + d).min(axis=0)
    assert np.all(exact <= sampled + 1e-9)
    low = milp.bound(net, box, C, d, objective="min")
    assert low.lower.min() == pytest.approx(exact.min(), abs=1e-6 * float(scale(exact).max()))
    assert np.all(low.lower <= exact + 1e-6)
