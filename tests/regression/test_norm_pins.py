"""Known values, computed by hand, of two 2-input two-layer nets over L-inf, L2 and L1 balls (no clipping).

A: f0 = relu(x1) + relu(x2), f1 = 0, ball around (1, 1) of radius 0.5. Every ReLU stays active, so the robust
margin f0 - f1 is ``min (x1 + x2) = 2 - 0.5 ||(1, 1)||_*``: 1 (L-inf: dual norm L1), 2 - 0.5 sqrt(2) (L2), 1.5 (L1:
dual norm L-inf). IBP bounds each input on its own (x_i in [0.5, 1.5] for every norm) and gives 1 whatever the
norm; the dual pass and the LP keep the correlation and are exact.

B: f0 = -relu(x1 + x2), f1 = 0, ball around 0 of radius 1. x1 + x2 ranges over [-r, r] with r = ||(1, 1)||_* =
2, sqrt(2), 1, so the first layer's bounds are +-r and the margin is -r; IBP, the dual pass (upper line
relu(z) <= z / 2 + r / 2, minimised over the ball: -r/2 - r/2) and the LP all reach it, and PGD finds it.
"""
from __future__ import annotations

import numpy as np
import pytest

from verifier.attacks import attack
from verifier.bounds import bound
from verifier.network import Affine, Network, ReLU
from verifier.spec import InputBox, ball

C = np.array([[1.0, -1.0]])
NET_A = Network((Affine(np.eye(2), np.zeros(2)), ReLU(), Affine([[1.0, 1.0], [0.0, 0.0]], [0.0, 0.0])))
NET_B = Network((Affine([[1.0, 1.0]], [0.0]), ReLU(), Affine([[-1.0], [0.0]], [0.0, 0.0])))
CASE_A = {"inf": 1.0, "2": 2 - 0.5 * np.sqrt(2), "1": 1.5}
CASE_B = {"inf": 2.0, "2": np.sqrt(2), "1": 1.0}


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_case_a_dual_and_lp_exact_ibp_loses_correlation(norm):
    input_set = ball([1.0, 1.0], 0.5, norm, clip=None)
    assert isinstance(input_set, InputBox) == (norm == "inf")
    assert bound(NET_A, input_set, C, method="ibp").lower[0] == pytest.approx(1.0, abs=1e-12)
    for method in ("dual", "lp"):
        assert bound(NET_A, input_set, C, method=method).lower[0] == pytest.approx(CASE_A[norm], abs=1e-9)
    result = attack(NET_A, input_set, 0, check=False)
    assert result.value == pytest.approx(CASE_A[norm], abs=1e-6) and result.value >= CASE_A[norm] - 1e-12
    if norm != "2":
        exact = bound(NET_A, input_set, C, method="milp")
        assert exact.lower[0] == pytest.approx(CASE_A[norm], abs=1e-7)


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_case_b_unstable_neuron(norm):
    input_set = ball([0.0, 0.0], 1.0, norm, clip=None)
    r = CASE_B[norm]
    for method in ("ibp", "dual", "lp"):
        result = bound(NET_B, input_set, C, method=method)
        assert result.lower[0] == pytest.approx(-r, abs=1e-9), method
        l, u = result.layer_bounds[0]
        assert l[0] == pytest.approx(-r, abs=1e-12) and u[0] == pytest.approx(r, abs=1e-12)
    assert attack(NET_B, input_set, 0, check=False).value == pytest.approx(-r, abs=1e-6)
