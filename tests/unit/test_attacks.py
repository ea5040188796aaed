"""verifier.attacks: closed forms, targeted/untargeted attacks, the onnxruntime gate, falsify on real nets."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import verifier.onnx as vonnx
from verifier.attacks import AttackResult, attack, binary_linear_worst, fgsm, linear_worst_case, pgd
from verifier.falsification import falsify
from verifier.norms import project_l2 as _project_l2
from verifier.network import Affine, Network, ReLU, random_network
from verifier.onnx import load_onnx, run_onnxruntime, save_onnx
from verifier.spec import InputBox, Property, SpecError, linf_ball
from verifier.vnnlib import parse_vnnlib

DATA = Path(__file__).resolve().parents[2] / "tests" / "data"  # as in tests/conftest.py


def margin(y: np.ndarray, label: int) -> float:
    return float(y[label] - np.max(np.delete(y, label)))


def reachable_net() -> Network:
    """2 inputs in [-1, 1]^2, 3 classes: f0 = 1, f1 = 2 relu(x0) (beats class 0 when x0 > 0.5), f2 = -10 + x1."""
    hidden = Affine(np.array([[1.0, 0.0], [0.0, 1.0]]), np.zeros(2))
    out = Affine(np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]), np.array([1.0, 0.0, -10.0]))
    return Network((hidden, ReLU(), out))


# --- closed forms -----------------------------------------------------------------------------------------------
def test_linear_worst_case_equals_corner_enumeration():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n, k = int(rng.integers(1, 6)), int(rng.integers(2, 5))
        W, b = rng.normal(size=(k, n)), rng.normal(size=k)
        lo = rng.uniform(-1, 0, size=n)
        box = InputBox(lo, lo + rng.uniform(0, 1, size=n))
        label = int(rng.integers(k))
        values, points = linear_worst_case(W, b, box, label)
        corners = np.array(list(itertools.product(*zip(box.lo, box.hi))))
        others = [j for j in range(k) if j != label]
        brute = [((W[label] - W[j]) @ corners.T + b[label] - b[j]).min() for j in others]
        np.testing.assert_allclose(values, brute, atol=1e-12)
        assert box.contains(points)
        np.testing.assert_allclose([(W[label] - W[j]) @ p + b[label] - b[j] for j, p in zip(others, points)],
                                   values, atol=1e-12)


@pytest.mark.parametrize("y", [-1, 1])
def test_binary_linear_worst_is_the_course_formula(y):
    rng = np.random.default_rng(y + 5)
    w, b, x, eps = rng.normal(size=6), 0.3, rng.normal(size=6), 0.2
    delta, worst = binary_linear_worst(w, b, x, y, eps)
    np.testing.assert_array_equal(delta, -y * eps * np.sign(w))
    assert worst == pytest.approx(y * (w @ (x + delta) + b), abs=1e-12)
    # the same number from the multi-class closed form: f0 - f1 = w.x + b, label 0 <-> y = +1
    values, _ = linear_worst_case(np.stack([w, np.zeros(6)]), [b, 0.0], linf_ball(x, eps, clip=None),
                                  0 if y == 1 else 1)
    assert values[0] == pytest.approx(worst, abs=1e-12)
    with pytest.raises(SpecError):
        binary_linear_worst(w, b, x, 0, eps)


def test_fgsm_on_a_linear_binary_model_is_the_closed_form():
    rng = np.random.default_rng(0)
    w, x0, eps = rng.normal(size=5), rng.normal(size=5), 0.1
    net = Network((Affine(np.stack([w, -w]) / 2, np.zeros(2)),))  # f0 - f1 = w.x
    label = 0 if w @ x0 > 0 else 1
    box = linf_ball(x0, eps, clip=None)
    x, value = fgsm(net, box.lo[None], box.hi[None], [label])
    delta, worst = binary_linear_worst(w, 0.0, x0, 1 if label == 0 else -1, eps)
    np.testing.assert_allclose(x[0], x0 + delta, atol=1e-15)
    assert value[0] == pytest.approx(worst, abs=1e-12)


# --- targeted / untargeted ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["margin", "ce"])
def test_targeted_attack_reaches_a_reachable_target_only(loss):
    net, box = reachable_net(), InputBox([-1.0, -1.0], [1.0, 1.0])
    assert int(np.argmax(net.forward(box.center))) == 0
    hit = attack(net, box, 0, target=1, loss=loss)
    assert hit.success and hit.info["confirmed"] and hit.info["target_value"] < 0
    assert hit.x[0] > 0.5 and box.contains(hit.x)
    assert hit.value == margin(net.forward(hit.x), 0) < 0
    miss = attack(net, box, 0, target=2, loss=loss)  # f2 <= -9 < f0 = 1 everywhere
    assert not miss.success and miss.info["target_value"] > 0
    untargeted = attack(net, box, 0, loss=loss)
    assert untargeted.success and int(np.argmax(net.forward(untargeted.x))) == 1
    assert untargeted.value == pytest.approx(1.0 - 2.0, abs=1e-9)  # the robust margin: x0 = 1


def test_pgd_batches_samples_and_restarts():
    net, lo, hi = reachable_net(), np.full((3, 2), -1.0), np.full((3, 2), 1.0)
    hi[1] = [0.4, 1.0]  # class 1 unreachable in box 1: the margin stays >= 1 - 0.8
    x, value = pgd(net, lo, hi, [0, 0, 1], restarts=4, steps=30, early_exit=False)
    assert x.shape == (3, 2) and value.shape == (3,)
    np.testing.assert_allclose(value, [margin(net.forward(xi), l) for xi, l in zip(x, [0, 0, 1])], atol=1e-12)
    assert value[0] < 0 and value[1] == pytest.approx(0.2, abs=1e-9) and value[2] == pytest.approx(-1.0, abs=1e-9)


def test_relu_output_network_with_dead_outputs():
    # f0 = relu(-1) = 0 and f1 = relu(2 x - 1.5): both dead at the centre 0.5, so the true gradient is zero;
    # the output leak still points to x = 1 where f1 = 0.5 > f0.
    net = Network((Affine([[0.0], [2.0]], [-1.0, -1.5]), ReLU()))
    result = attack(net, InputBox([0.0], [1.0]), 0, restarts=1, steps=40)
    assert result.success and result.value == pytest.approx(-0.5, abs=1e-9)


def test_l2_projection_is_the_euclidean_projection():
    import torch

    rng = np.random.default_rng(1)
    lo, hi = -rng.uniform(0.1, 1, size=(50, 4)), rng.uniform(0.1, 1, size=(50, 4))
    centre = (lo + hi) / 2 + rng.uniform(-0.05, 0.05, size=(50, 4))
    radius, p = rng.uniform(0.05, 1.5, size=50), rng.normal(size=(50, 4)) * 2
    t = lambda a: torch.tensor(a, dtype=torch.float64)
    x = _project_l2(t(p), t(lo), t(hi), t(centre), t(radius)).numpy()
    assert np.all(x >= lo) and np.all(x <= hi)
    assert np.all(np.linalg.norm(x - centre, axis=1) <= radius)
    # variational inequality of a projection onto a convex set: (p - x).(z - x) <= 0 for every feasible z
    for _ in range(200):
        z = np.clip(centre + rng.normal(size=(50, 4)), lo, hi)
        shrink = np.minimum(1.0, radius / np.maximum(np.linalg.norm(z - centre, axis=1), 1e-300))
        z = centre + (z - centre) * shrink[:, None]  # still in the box: centre and z are, the box is convex
        assert np.all(np.einsum("bn,bn->b", p - x, z - x) <= 1e-9)


# --- the onnxruntime gate ----------------------------------------------------------------------------------------
def test_reported_counterexample_is_accepted_by_onnxruntime(tmp_path):
    rng = np.random.default_rng(4)
    path = save_onnx(random_network([6, 16, 16, 4], rng), tmp_path / "net.onnx")
    net = load_onnx(path)  # float32 weights, source = path: the check runs this file
    x0 = rng.uniform(0.2, 0.8, size=6)
    label = int(np.argmax(net.forward(x0)))
    box = linf_ball(x0, 0.5)
    result = attack(net, box, label)
    assert isinstance(result, AttackResult) and result.success and result.info["confirmed"]
    assert box.contains(result.x) and result.value < 0
    assert np.array_equal(result.x, result.x.astype(np.float32).astype(np.float64))  # snapped: same input
    assert margin(run_onnxruntime(path, result.x[None])[0], label) < 0
    assert result.info["onnxruntime_value"] == pytest.approx(result.value, abs=1e-5)


def test_unconfirmed_point_is_not_a_success(monkeypatch):
    net, box = reachable_net(), InputBox([-1.0, -1.0], [1.0, 1.0])
    monkeypatch.setattr(vonnx, "run_onnxruntime", lambda model, x: np.array([[5.0, 0.0, 0.0]]))
    result = attack(net, box, 0)
    assert result.value < 0 and not result.success and "onnxruntime" in result.info["reason"]
    prop = Property((([[1.0, -1.0, 0.0]], [0.0]),))  # unsafe: f0 <= f1
    result = falsify(net, box, prop, rounds=1)
    assert result.value <= 0 and not result.success and "onnxruntime" in result.info["reason"]
    unchecked = attack(net, box, 0, check=False)
    assert unchecked.success and not unchecked.info["confirmed"]


def test_bad_arguments_raise():
    net, box = reachable_net(), InputBox([-1.0, -1.0], [1.0, 1.0])
    with pytest.raises(ValueError):
        attack(net, box, 0, method="cw")
    with pytest.raises(SpecError):
        attack(net, box, 0, norm="l2")  # no eps
    with pytest.raises(SpecError):
        attack(net, box, 0, target=0)
    with pytest.raises(SpecError):
        attack(net, InputBox([0.0], [1.0]), 0)


# --- falsify on the VNN-COMP test nets --------------------------------------------------------------------------
def test_falsify_finds_the_test_sat_violation():
    net = load_onnx(DATA / "test_sat.onnx")
    [(box, prop)] = parse_vnnlib(DATA / "vnnlib" / "test_prop.vnnlib", net.n_inputs, net.n_outputs)
    result = falsify(net, box, prop, time_limit=20)
    assert result.success and box.contains(result.x)
    assert result.value == float(prop.unsafe_value(net.forward(result.x))) <= 0
    assert prop.unsafe_value(run_onnxruntime(DATA / "test_sat.onnx", result.x[None]))[0] <= 0


@pytest.mark.parametrize("name, vnnlib", [("test_unsat", "test_prop"), ("test_nano", "test_nano"),
                                          ("test_tiny", "test_tiny"), ("test_small", "test_small")])
def test_falsify_never_reports_a_property_that_holds(name, vnnlib):
    net = load_onnx(DATA / f"{name}.onnx")
    for box, prop in parse_vnnlib(DATA / "vnnlib" / f"{vnnlib}.vnnlib", net.n_inputs, net.n_outputs):
        result = falsify(net, box, prop, rounds=2, time_limit=5)
        assert not result.success and result.value > 0 and box.contains(result.x)
        assert result.value == float(prop.unsafe_value(net.forward(result.x)))


def test_attacks_are_deterministic_under_a_seed():
    net = random_network([5, 12, 12, 3], np.random.default_rng(8))
    box = InputBox(np.zeros(5), np.ones(5))
    a, b = (attack(net, box, 1, seed=7, check=False) for _ in range(2))
    assert np.array_equal(a.x, b.x) and a.value == b.value
    prop = Property((([[1.0, -1.0, 0.0]], [-10.0]),))  # unreachable: every round runs in full
    c, d = (falsify(net, box, prop, seed=3, rounds=2, check=False) for _ in range(2))
    assert np.array_equal(c.x, d.x) and c.value == d.value


def test_falsify_on_a_network_with_a_batch_axis_in_its_input_shape():
    net = Network(reachable_net().layers, input_shape=(1, 2))  # a (1, 2) array reads as one sample
    prop = Property((([[1.0, -1.0, 0.0]], [0.0]),))  # unsafe: f0 <= f1, reached for x0 >= 0.5
    result = falsify(net, InputBox([-1.0, -1.0], [1.0, 1.0]), prop, rounds=2, check=False)
    assert result.success and result.x.shape == (2,) and result.x[0] >= 0.5


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_cuda_gives_the_cpu_answer():
    net = random_network([5, 12, 12, 3], np.random.default_rng(8))
    box = InputBox(np.zeros(5), np.ones(5))
    cpu, cuda = (attack(net, box, 1, seed=2, device=device, check=False) for device in ("cpu", "cuda"))
    assert cuda.value == pytest.approx(cpu.value, abs=1e-9) and box.contains(cuda.x)


def test_the_hinge_loss_is_zero_exactly_where_the_conjunction_is_violated():
    """falsify descends sum_rows max(row, 0) (padded rows ignored) and tracks max_rows: both <= 0 at the same
    outputs, and the hinge is the sum of the positive rows."""
    import torch

    from verifier.falsification import _violation

    rng = np.random.default_rng(0)
    C, d = torch.tensor(rng.normal(size=(2, 4, 3))), torch.tensor(rng.normal(size=(2, 4)))
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    out = torch.tensor(rng.normal(size=(2, 500, 3)) * 2)
    rows = torch.einsum("brk,bmk->brm", out, C) - d[:, None, :]
    hinge, worst = _violation(C, d, valid, hinge=True)(out), _violation(C, d, valid)(out)
    assert torch.equal(hinge <= 0, worst <= 0) and bool((worst <= 0).any()) and bool((worst > 0).any())
    assert torch.allclose(hinge, (rows.clamp(min=0) * valid[:, None, :]).sum(-1))
    assert torch.allclose(worst, rows.masked_fill(~valid[:, None, :], -torch.inf).amax(-1))
