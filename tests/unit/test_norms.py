"""L2/L1 input sets piece by piece: the set type, projections and steps, the engine's concretisation rule, the LP
and MILP encodings, and the onnxruntime gate on a ball."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier.attacks import _snap_float32, attack
from verifier.bounds import bound, engine
from verifier.linear import binary_linear_worst
from verifier.network import random_network
from verifier.norms import dual_norm, l1_vertex, project_l1, steepest_direction
from verifier.spec import InputBall, InputBox, SpecError, ball, linf_ball, margin_rows, norm_name, pull_inside


def test_norm_names_and_linf_is_the_same_box():
    assert [norm_name(v) for v in ("inf", np.inf, "linf", 2, "2", "l2", 1, "1", "L1")] == \
        ["linf"] * 3 + ["l2"] * 3 + ["l1"] * 3
    with pytest.raises(SpecError):
        norm_name(3)
    x0 = np.array([0.0, 0.3, 1.0])
    a, b = ball(x0, 0.2, "inf"), linf_ball(x0, 0.2)
    assert isinstance(a, InputBox) and np.array_equal(a.lo, b.lo) and np.array_equal(a.hi, b.hi)


def test_input_ball_bounding_box_contains_and_errors():
    s = ball([0.0, 0.5, 1.0], 0.3, 2)
    assert isinstance(s, InputBall) and s.norm == "l2" and s.n == 3
    assert np.allclose(s.box.lo, [0.0, 0.2, 0.7]) and np.allclose(s.box.hi, [0.3, 0.8, 1.0])
    assert s.contains([0.1, 0.5, 0.9]) and not s.contains([0.25, 0.7, 1.0])  # in the box, not in the ball
    assert not s.contains([-0.1, 0.5, 1.0])  # in the ball, not in the clip box
    with pytest.raises(SpecError):
        ball([1.5], 0.3, 2)  # centre outside the clip range
    with pytest.raises(SpecError):
        ball([0.5], -1.0, 1)
    with pytest.raises(SpecError):
        InputBall([0.5], 0.1, "linf")
    pulled = pull_inside(s, np.array([[3.0, 3.0, 3.0], [0.1, 0.5, 0.9]]))
    assert s.contains(pulled) and np.array_equal(pulled[1], [0.1, 0.5, 0.9])


def test_l1_projection_is_the_euclidean_projection():
    rng = np.random.default_rng(2)
    lo, hi = -rng.uniform(0.1, 1, size=(50, 5)), rng.uniform(0.1, 1, size=(50, 5))
    centre = rng.uniform(lo, hi)
    radius, p = rng.uniform(0.05, 2.0, size=50), rng.normal(size=(50, 5)) * 2
    t = lambda a: torch.tensor(a, dtype=torch.float64)
    x = project_l1(t(p), t(lo), t(hi), t(centre), t(radius)).numpy()
    assert np.all(x >= lo) and np.all(x <= hi) and np.all(np.abs(x - centre).sum(1) <= radius * (1 + 1e-12))
    for _ in range(200):  # (p - x).(z - x) <= 0 for every feasible z: the projection's variational inequality
        z = centre + rng.normal(size=(50, 5))
        shrink = np.minimum(1.0, radius / np.maximum(np.abs(z - centre).sum(1), 1e-300))
        z = np.clip(centre + (z - centre) * shrink[:, None], lo, hi)  # clipping keeps it in the L1 ball
        assert np.all(np.einsum("bn,bn->b", p - x, z - x) <= 1e-9)


def test_steepest_directions_and_dual_norms():
    g = torch.tensor([[3.0, -4.0, 0.5, 0.0]])
    assert torch.equal(steepest_direction(g, "linf"), torch.tensor([[1.0, -1.0, 1.0, 0.0]]))
    assert torch.allclose(steepest_direction(g, "l2"), g / g.norm())
    centre, lo, hi = torch.full((1, 4), 0.5), torch.zeros(1, 4), torch.ones(1, 4)
    vertex = l1_vertex(g, lo, hi, centre, torch.tensor([0.8]))  # -4 first (up to its side 1), then 3 (down)
    assert torch.allclose(vertex, torch.tensor([[0.2, 1.0, 0.5, 0.5]]))
    assert dual_norm(g, "l2").item() == pytest.approx(np.sqrt(25.25))
    assert dual_norm(g, "l1").item() == 4.0 and dual_norm(g, "linf").item() == 7.5
    delta, worst = binary_linear_worst([3.0, -4.0], 1.0, [0.0, 0.0], 1, 0.5, norm=1)
    assert np.array_equal(delta, [0.0, 0.5]) and worst == pytest.approx(1.0 - 0.5 * 4)
    delta, worst = binary_linear_worst([3.0, -4.0], 1.0, [0.0, 0.0], -1, 0.5, norm=2)
    assert np.allclose(delta, [0.3, -0.4]) and worst == pytest.approx(-1.0 - 2.5)


def test_concretize_takes_the_better_of_box_and_ball():
    A = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)  # min x1 + x2
    const = torch.zeros(1, 1, dtype=torch.float64)
    centre, radius = torch.tensor([[0.5, 0.5]], dtype=torch.float64), torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    x0 = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    ball_only = engine.Ball(x0, torch.tensor([1.0], dtype=torch.float64), "l2")
    # box [0, 1]^2: min 0; ball around 0 of radius 1: -sqrt 2; their intersection: 0 (the box's is better)
    assert engine.concretize(A, const, centre, radius, ball_only).item() == 0.0
    centre, radius = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    assert engine.concretize(A, const, centre, radius, ball_only).item() == pytest.approx(-np.sqrt(2))
    assert engine.concretize(A, const, centre, radius).item() == -2.0


def test_lp_on_l2_is_an_socp_rederived_and_milp_refuses_l2():
    rng = np.random.default_rng(5)
    net = random_network([3, 6, 6, 3], rng)
    s = ball(rng.uniform(0.2, 0.8, size=3), 0.3, 2, clip=None)
    C, d = margin_rows(0, 3)
    lp = bound(net, s, C, d, method="lp")
    assert all(status == "optimal" for status in lp.info["status"])
    # the reported value is re-derived, never the solver's objective; with no clipping they agree
    assert np.all(lp.lower <= lp.info["objective"] + 1e-6) and np.allclose(lp.lower, lp.info["objective"], atol=1e-5)
    with pytest.raises(SpecError, match="L2"):
        bound(net, s, C, d, method="milp")


def test_milp_on_l1_is_exact_with_a_feasible_point():
    rng = np.random.default_rng(6)
    net = random_network([3, 5, 3], rng)
    s = ball(np.array([0.0, 0.4, 1.0]), 0.6, 1)
    C, d = margin_rows(1, 3)
    exact = bound(net, s, C, d, method="milp")
    assert s.contains(exact.x, 1e-12) and np.allclose(exact.lower, exact.upper, atol=1e-6)
    values = net.forward(exact.x) @ C.T + d
    assert np.allclose(np.diag(values), exact.upper)
    points = s.sample(20_000, rng)
    assert np.all((net.forward(points) @ C.T + d).min(0) >= exact.lower - 1e-7)


def test_float32_snap_rounds_towards_the_centre():
    s = ball(np.array([0.25, 0.5, 0.75], dtype=np.float32).astype(np.float64), 0.1, 2)
    x = s.x0 + np.array([0.1, 0.0, 0.0]) * (1 - 1e-12)  # on the sphere: plain rounding could leave the ball
    snapped = _snap_float32(x, s)
    assert s.contains(snapped) and np.array_equal(snapped, snapped.astype(np.float32).astype(np.float64))


def test_attack_takes_an_input_ball_and_refuses_mixed_arguments():
    rng = np.random.default_rng(7)
    net = random_network([4, 8, 3], rng)
    s = ball(rng.uniform(0, 1, size=4), 0.4, 1)
    result = attack(net, s, 0, check=False)
    assert s.contains(result.x) and result.info["norm"] == "l1"
    with pytest.raises(SpecError):
        attack(net, s, 0, norm="l2", eps=0.4)


def test_verify_takes_boxes_only():
    from verifier.spec import robustness_property
    from verifier.verify import verify

    net = random_network([2, 4, 2], np.random.default_rng(8))
    with pytest.raises(SpecError, match="boxes"):
        verify(net, ball([0.5, 0.5], 0.1, 2), robustness_property(0, 2), timeout=5)
