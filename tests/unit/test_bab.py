"""Branch and bound (bab.py) and its bounding engine (bounds/symbolic.py): sound bounds, sound box clipping, and
input splitting that reaches the exact answer on small random networks."""
from __future__ import annotations

import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from verifier import bab
from verifier.bounds import dual, milp, symbolic
from verifier.bounds.enumerate import MAX_RELUS, enumerate_bound
from verifier.network import Affine, Network, ReLU, random_network
from verifier.spec import InputBox, Property

DATA = Path(__file__).resolve().parents[1] / "data"


def exact_min(net: Network, box: InputBox, C: np.ndarray, d: np.ndarray | None = None) -> np.ndarray:
    """The exact minimum of each row of ``C f + d`` over the box, by enumerating activation patterns: an oracle
    that shares no code with branch and bound (whose ReLU phase ends in the MILP). Nets of <= 14 ReLUs."""
    return enumerate_bound(net, box, C, d)


def problem(seed: int, n: int, depth: int, width: int, relu_out: bool, radius: float = 1.0):
    rng = np.random.default_rng(seed)
    net = random_network([n] + [width] * depth + [3], rng, relu_on_output=relu_out)
    centre = rng.normal(size=n)
    box = InputBox(centre - rng.uniform(0.0, radius, n), centre + rng.uniform(0.0, radius, n))
    return rng, net, box


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 4), depth=st.integers(0, 3), width=st.integers(1, 8),
       relu_out=st.booleans(), refine=st.booleans())
def test_symbolic_bounds_are_below_the_exact_minimum(seed, n, depth, width, relu_out, refine):
    rng, net, box = problem(seed, n, depth, width, relu_out)
    assume(net.n_relus <= MAX_RELUS)
    C, d = rng.normal(size=(2, 3)), rng.normal(size=2)
    res = symbolic.bound(net, box, C, d, refine=refine)
    exact = exact_min(net, box, C, d)
    assert np.all(res.lower <= exact + 1e-9)
    xs = box.sample(500, rng)  # every sampled pre-activation lies in its layer's bounds
    h = xs
    for (l, u), affine, relu in zip(res.layer_bounds, net.affines, net.relu_after):
        z = affine.forward(h)
        assert np.all(z >= l - 1e-9) and np.all(z <= u + 1e-9)
        h = np.maximum(z, 0) if relu else z


@pytest.mark.parametrize("vnnlib", ["vnnlib/acasxu_prop_1.vnnlib", "instances/vnnlib/acasxu_prop_3.vnnlib"])
def test_refined_bounds_equal_crown_on_acas_xu(vnnlib):
    """Back-substituting every unstable neuron IS CROWN (same adaptive slopes): equal to the dual pass; without
    it the forward symbolic bounds are far looser on this deep, steep network."""
    from verifier.onnx import load_onnx
    from verifier.vnnlib import parse_vnnlib

    net = load_onnx(DATA / "ACASXU_run2a_1_1_batch_2000.onnx")
    box, prop = parse_vnnlib(DATA / vnnlib, 5, 5)[0]
    C, d = prop.objective_rows(0)
    refined, plain = symbolic.bound(net, box, C, d).lower, symbolic.bound(net, box, C, d, refine=False).lower
    np.testing.assert_allclose(refined, dual.bound(net, box, C, d, slopes="adaptive").lower, rtol=1e-9)
    assert np.all(plain < 2 * refined)  # all negative here: plain is more than twice as far below 0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 5), m=st.integers(1, 3))
def test_clip_keeps_every_point_of_the_halfspaces(seed, n, m):
    rng = np.random.default_rng(seed)
    lo, hi = -rng.uniform(0.1, 2, n), rng.uniform(0.1, 2, n)
    A, c = rng.normal(size=(m, n)), rng.normal(size=m)
    if rng.uniform() < 0.3:
        A[0, rng.integers(n)] = 0.0
    new_lo, new_hi, empty = symbolic.clip(torch.tensor(lo)[None], torch.tensor(hi)[None], torch.tensor(A)[None],
                                          torch.tensor(c)[None])
    xs = InputBox(lo, hi).sample(4000, rng)
    inside = np.all(xs @ A.T + c <= 0, axis=1)
    if bool(empty[0]):
        assert not inside.any()
    else:
        kept = xs[inside]  # (sampled corners can sit an ulp outside the box: lo + 1 * (hi - lo) rounds)
        assert np.all(kept >= new_lo[0].numpy() - 1e-12) and np.all(kept <= new_hi[0].numpy() + 1e-12)
        assert np.all(new_lo[0].numpy() >= lo - 1e-9) and np.all(new_hi[0].numpy() <= hi + 1e-9)


def float64_confirm(net: Network, box: InputBox, prop: Property):
    """A confirm callback for tests: the point lies in the box and our float64 forward reaches an unsafe set."""
    seen = []

    def confirm(x: np.ndarray) -> bool:
        seen.append(x)
        return box.contains(x) and bool(prop.violated_by(net.forward(x)))
    return confirm, seen


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 4), depth=st.integers(1, 3), width=st.integers(2, 8),
       relu_out=st.booleans(), disjuncts=st.integers(1, 3), shift=st.floats(-1.0, 1.0))
def test_input_split_reaches_the_exact_verdict(seed, n, depth, width, relu_out, disjuncts, shift):
    rng, net, box = problem(seed, n, depth, width, relu_out)
    assume(net.n_relus <= MAX_RELUS)
    C, d = rng.normal(size=(disjuncts, 3)), rng.normal(size=disjuncts)
    exact = exact_min(net, box, C, d)  # exact minimum of each row C_k f + d_k
    # shift the offsets so that the property is near its threshold (hard) but not on it (undecidable in float)
    d = d - np.min(exact) + shift
    exact = exact - np.min(exact) + shift
    assume(np.all(np.abs(exact) > 1e-6))
    prop = Property(tuple((C[k:k + 1], -d[k:k + 1]) for k in range(disjuncts)))  # unsafe: C_k f + d_k <= 0
    confirm, seen = float64_confirm(net, box, prop)
    result = bab.input_split(net, box, prop, deadline=time.perf_counter() + 20, confirm=confirm)
    expected = "holds" if np.min(exact) > 0 else "violated"
    assert result.status == expected
    if expected == "violated":
        assert box.contains(result.x) and prop.violated_by(net.forward(result.x))
    assert result.stats["domains"] >= 1


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(2, 4), rows=st.integers(2, 3))
def test_input_split_on_conjunctions_is_sound(seed, n, rows):
    """A conjunction of rows (no exact reference): holds must survive sampling; violated must be real."""
    rng, net, box = problem(seed, n, 2, 6, False)
    C, d = rng.normal(size=(rows, 3)), rng.normal(size=rows) * 0.3
    prop = Property(((C, d),))
    confirm, _ = float64_confirm(net, box, prop)
    result = bab.input_split(net, box, prop, deadline=time.perf_counter() + 10, confirm=confirm)
    assert result.status in ("holds", "violated")
    if result.status == "holds":
        assert not np.any(prop.violated_by(net.forward(box.sample(20000, rng))))
    else:
        assert box.contains(result.x) and prop.violated_by(net.forward(result.x))


def test_input_split_handles_thin_dimensions_and_an_always_unsafe_disjunct():
    net = Network((Affine([[1.0, -1.0], [0.5, 2.0]], [0.0, -0.5]), ReLU(), Affine([[1.0, 1.0]], [0.0])))
    box = InputBox([0.0, 0.3], [1.0, 0.3])  # the second input is fixed
    never = Property(((np.array([[1.0]]), np.array([-1.0])),))  # f <= -1: f >= 0 always, so it holds
    confirm, seen = float64_confirm(net, box, never)
    assert bab.input_split(net, box, never, deadline=time.perf_counter() + 5, confirm=confirm).status == "holds"
    always = Property(((np.zeros((1, 1)), np.zeros(1)),))  # 0 <= 0: every input is unsafe
    confirm, seen = float64_confirm(net, box, always)
    result = bab.input_split(net, box, always, deadline=time.perf_counter() + 5, confirm=confirm)
    assert result.status == "violated" and box.contains(result.x)


def test_input_split_rejects_candidates_the_checker_refuses_and_keeps_the_deadline():
    rng, net, box = problem(3, 4, 3, 16, False, radius=2.0)
    C = np.array([[1.0, -1.0, 0.0]])
    low = (net.forward(box.sample(1000, rng)) @ C.T).min()  # a sampled point reaches it
    prop = Property(((C, np.array([low + 0.5])),))  # violated, but the checker says no to everything
    start = time.perf_counter()
    result = bab.input_split(net, box, prop, deadline=start + 0.5, confirm=lambda x: False)
    assert result.status in ("timeout", "unknown") and time.perf_counter() - start < 2.0
    assert result.stats["candidates_tried"] >= 1


@pytest.mark.parametrize("decides", [[0], []])
def test_the_disjuncts_an_interlude_decides_leave_input_splitting(decides):
    """bab.input_split's interlude (verify's MILP slot), due at once, returns the disjuncts it rules out; the boxes
    are bounded for the others only from then on. Disjunct 0 is met on part of the box, but the checker refuses
    its points (as if the MILP had ruled it out); disjunct 1 holds by 0.05. Decided: the search holds. Not decided:
    no box where disjunct 0 is met ever closes, and it does not."""
    rng, net, box = problem(5, 3, 2, 6, False)
    C = rng.normal(size=(2, 3))
    low = exact_min(net, box, C)
    prop = Property(((C[:1], low[:1] + 0.3), (C[1:], low[1:] - 0.05)))
    calls = []

    def interlude(pending):
        calls.append(pending)
        return None, decides

    confirm = lambda x: bool((net.forward(x[None]) @ C[1:].T <= low[1:] - 0.05).all())  # disjunct 1 only
    result = bab.input_split(net, box, prop, deadline=time.perf_counter() + 3, confirm=confirm, interlude=interlude)
    assert calls == [[0, 1]] and result.status == ("holds" if decides else "timeout")


def test_side_attack_points_are_checked():
    rng, net, box = problem(5, 3, 2, 8, False)
    C = np.array([[0.0, 1.0, -1.0]])
    exact = milp.bound(net, box, C, time_limit=60)
    prop = Property(((C, exact.upper + 1e-3),))
    target = exact.x[0]  # an unsafe point the side attack "finds"; confirm accepts it and nothing else
    calls = []

    def side(elapsed: float):
        calls.append(elapsed)
        return target

    result = bab.input_split(net, box, prop, deadline=time.perf_counter() + 5, confirm=lambda x: np.allclose(x, target),
                             side_attack=side)
    assert calls and result.status == "violated" and np.allclose(result.x, target)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), depth=st.integers(1, 3), width=st.integers(2, 10), relu_out=st.booleans(),
       disjuncts=st.integers(1, 3), shift=st.floats(-0.5, 0.5),
       path=st.sampled_from(["milp after the root", "search", "small-network slot"]))
def test_relu_split_reaches_the_exact_verdict(seed, depth, width, relu_out, disjuncts, shift, path):
    """The MILP after one round of the optimized ReLU splitting (milp_after 0); the splitting alone deciding (the
    MILP only for domains it cannot split further); or, as by default on networks this small, the MILP slot after
    the search's first share of the time (bab.MILP_SLOT_SPLITTABLE), then the search again."""
    rng, net, box = problem(seed, 12, depth, width, relu_out, radius=0.5)
    assume(net.n_relus <= MAX_RELUS)
    C = rng.normal(size=(disjuncts, 3))
    exact = exact_min(net, box, C)
    assume(abs(shift) > 1e-6)
    prop = Property(tuple((C[k:k + 1], np.array([np.min(exact) + shift])) for k in range(disjuncts)))
    confirm, _ = float64_confirm(net, box, prop)
    slot = bab.MILP_SLOT_SPLITTABLE if path == "small-network slot" else 0
    with mock.patch.object(bab, "MILP_SLOT_SPLITTABLE", slot):
        result = bab.relu_split(net, box, prop, deadline=time.perf_counter() + 30, confirm=confirm,
                                milp_after=0.0 if path == "milp after the root" else 1.0)
    assert result.status == ("holds" if shift < 0 else "violated")
    if result.status == "violated":
        assert box.contains(result.x) and prop.violated_by(net.forward(result.x))
    assert result.stats["domains"] >= 1


@pytest.mark.parametrize("relu_out", [False, True])
def test_relu_split_decides_single_rows_and_rules_out_conjunctions(relu_out):
    rng, net, box = problem(11, 20, 2, 5, relu_out, radius=0.3)
    C = rng.normal(size=(3, 3))
    exact = exact_min(net, box, C)
    holds = Property(tuple((C[k:k + 1], np.array([exact[k] - 0.1])) for k in range(3)))  # unsafe C f <= min - 0.1
    violated = Property(tuple((C[k:k + 1], np.array([exact[k] + 0.1])) for k in range(3)))
    for prop, expected in ((holds, "holds"), (violated, "violated")):
        confirm, _ = float64_confirm(net, box, prop)
        result = bab.relu_split(net, box, prop, deadline=time.perf_counter() + 30, confirm=confirm)
        assert result.status == expected
    conj = Property(((C, exact - 0.1),))  # every row's minimum is above its bound: ruled out row by row
    confirm, _ = float64_confirm(net, box, conj)
    assert bab.relu_split(net, box, conj, deadline=time.perf_counter() + 30, confirm=confirm).status == "holds"


@pytest.mark.parametrize("split", ["input", "relu"])
def test_an_exact_tie_is_never_proved(split):
    """A one-point box whose value is exactly the threshold is unsafe (VNN-LIB's <= includes it): rounding in the
    bounds must not make it "holds"; with a checker that refuses, the answer can only be unknown."""
    rng = np.random.default_rng(0)
    net = random_network([3, 5, 5, 2], rng)
    box = InputBox(np.full(3, 0.25), np.full(3, 0.25))
    prop = Property(((np.array([[1.0, 0.0]]), net.forward(box.lo)[:1]),))
    search = bab.input_split if split == "input" else bab.relu_split
    refused = search(net, box, prop, deadline=time.perf_counter() + 2, confirm=lambda x: False)
    assert refused.status == "unknown"
    accepted = search(net, box, prop, deadline=time.perf_counter() + 2, confirm=lambda x: True)
    assert accepted.status == "violated" and np.array_equal(accepted.x, box.lo)


@pytest.mark.parametrize("relu_out", [False, True])
def test_relu_split_decides_conjunctions_no_single_row_rules_out(relu_out):
    """Unsafe: y_0 - y_1 <= -a and y_1 - y_0 <= -a (a > 0): empty, yet each row alone is met somewhere, so only
    the conjunction's min-max (not row by row) proves it; with a < 0 the set is {|y_0 - y_1| <= -a}."""
    rng, net, box = problem(0, 20, 2, 12, relu_out, radius=0.5)
    C = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]])
    assert milp.bound(net, box, C, time_limit=60).upper.max() < -0.1  # y_0 - y_1 takes both signs on the box
    empty = Property(((C, np.array([-0.05, -0.05])),))
    confirm, _ = float64_confirm(net, box, empty)
    assert bab.relu_split(net, box, empty, deadline=time.perf_counter() + 30, confirm=confirm,
                          milp_after=0.0).status == "holds"
    wide = Property(((C, np.array([10.0, 10.0])),))  # |y_0 - y_1| <= 10: met at many points
    confirm, _ = float64_confirm(net, box, wide)
    result = bab.relu_split(net, box, wide, deadline=time.perf_counter() + 30, confirm=confirm, milp_after=0.0)
    assert result.status == "violated" and prop_met(net, wide, result.x)


def prop_met(net: Network, prop: Property, x: np.ndarray) -> bool:
    return bool(prop.violated_by(net.forward(x)))
