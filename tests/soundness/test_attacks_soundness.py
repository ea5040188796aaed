"""Attacks are upper bounds: their points lie in the input set, their values are the network's margin there (so
never below a certified bound), PGD reaches the exact answer on linear models, and falsify never claims a
property that a certified bound proves."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from verifier.attacks import attack, linear_worst_case
from verifier.falsification import falsify
from verifier.bounds import bound
from verifier.network import Affine, Network, random_network
from verifier.spec import InputBox, Property, linf_ball, margin_rows


def margin(y: np.ndarray, label: int) -> float:
    return float(y[label] - np.max(np.delete(y, label)))


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**6), depth=st.integers(1, 3), width=st.integers(1, 8), relu_out=st.booleans(),
       method=st.sampled_from(["fgsm", "pgd"]), norm=st.sampled_from(["linf", "l2"]),
       loss=st.sampled_from(["margin", "ce"]), targeted=st.booleans(), eps=st.floats(0.0, 1.5))
def test_attacks_stay_in_the_set_and_report_the_margin_there(seed, depth, width, relu_out, method, norm, loss,
                                                            targeted, eps):
    rng = np.random.default_rng(seed)
    n_in, n_out = int(rng.integers(1, 6)), int(rng.integers(2, 5))
    net = random_network([n_in] + [width] * depth + [n_out], rng, relu_on_output=relu_out)
    x0 = rng.uniform(0, 1, size=n_in)
    box = linf_ball(x0, eps, clip=(0.0, 1.0))
    label = int(rng.integers(n_out))
    target = int((label + 1 + rng.integers(n_out - 1)) % n_out) if targeted else None
    result = attack(net, box, label, method, target=target, loss=loss, norm=norm, center=x0, eps=eps,
                    restarts=3, steps=15, seed=seed, check=False)
    assert box.contains(result.x)  # exactly: no tolerance
    if norm == "l2":
        assert np.linalg.norm(result.x - x0) <= eps * (1 + 1e-12)
    assert result.value == margin(net.forward(result.x), label)
    C, d = margin_rows(label, n_out)
    assert result.value >= bound(net, box, C, d, method="ibp").lower.min() - 1e-9  # certified <= attack
    if method == "pgd" and target is None and loss == "margin":
        assert result.value <= margin(net.forward(x0), label)  # restart 0 starts at x0 and keeps the best


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 8), k=st.integers(2, 5), eps=st.floats(0.01, 0.5))
def test_pgd_reaches_the_linear_closed_form(seed, n, k, eps):
    rng = np.random.default_rng(seed)
    W, b = rng.normal(size=(k, n)), rng.normal(size=k)
    net = Network((Affine(W, b),))
    box = linf_ball(rng.uniform(0, 1, size=n), eps, clip=(0.0, 1.0))
    label = int(rng.integers(k))
    exact, _ = linear_worst_case(W, b, box, label)
    result = attack(net, box, label, restarts=10, steps=30, seed=seed, check=False)
    assert abs(result.value - exact.min()) <= 1e-6
    assert result.value >= exact.min() - 1e-12  # and never below the exact minimum


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), depth=st.integers(1, 2), width=st.integers(1, 8), relu_out=st.booleans(),
       radius=st.floats(0.0, 1.0))
def test_falsify_never_claims_a_certified_property_and_finds_a_sampled_violation(seed, depth, width, relu_out,
                                                                                 radius):
    rng = np.random.default_rng(seed)
    n_in, n_out = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    net = random_network([n_in] + [width] * depth + [n_out], rng, relu_on_output=relu_out)
    centre = rng.normal(size=n_in)
    box = InputBox(centre - radius, centre + radius)
    k = int(rng.integers(n_out))
    lower = bound(net, box, np.eye(n_out)[k:k + 1], None, method="ibp").lower[0]
    holds = Property((([np.eye(n_out)[k]], [lower - 0.1]),))  # unsafe y_k <= lower - 0.1: IBP rules it out
    result = falsify(net, box, holds, rounds=1, restarts=32, steps=20, seed=seed)
    assert not result.success and result.value > 0 and box.contains(result.x)
    # a property violated at a sampled point: y_k <= y_k(sample) + 0.01 (onnxruntime agrees to ~1e-6)
    sample = box.sample(1, rng)[0]
    violated = Property((([np.eye(n_out)[k]], [net.forward(sample)[k] + 0.01]),))
    result = falsify(net, box, violated, rounds=3, restarts=32, steps=20, seed=seed)
    assert result.success and result.value <= 0 and box.contains(result.x)
    assert result.value == float(violated.unsafe_value(net.forward(result.x)))
