"""Known-bound regression: the pinned values of every bound method on the shipped models and benchmark nets."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bound_cases import PINS, cases, compute, variants

PINNED = json.loads(PINS.read_text())
CASES = list(cases())


@pytest.mark.parametrize("label, method, options, rtol", variants(), ids=[v[0] for v in variants()])
def test_pinned_bounds(label, method, options, rtol):
    for name, net, box, C, d in CASES:
        expected = np.array(PINNED[name][label])
        got = np.array(compute(net, box, C, d, method, options))
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, rtol=0, atol=rtol * scale, err_msg=f"{name} {label}")


def test_pins_are_ordered():
    """The pinned values respect the theory: adaptive <= lp (the LP uses adaptive's layer bounds) and
    adaptive <= opt (opt starts from adaptive and keeps the best bound)."""
    for name, pins in PINNED.items():
        if "lp" in pins:
            assert np.all(np.array(pins["dual_adaptive"]) <= np.array(pins["lp"]) + 1e-7), name
        assert np.all(np.array(pins["dual_adaptive"]) <= np.array(pins["dual_opt"]) + 1e-9), name
