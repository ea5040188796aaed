"""IBP is sound: sampled activations and outputs lie inside its bounds on random networks and boxes."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from verifier.bounds import bound
from verifier.network import random_network
from verifier.spec import InputBox, margin_rows


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), depth=st.integers(1, 3), width=st.integers(1, 8),
       relu_out=st.booleans(), radius=st.floats(0.0, 2.0))
def test_ibp_contains_samples(seed, depth, width, relu_out, radius):
    rng = np.random.default_rng(seed)
    n_in, n_out = int(rng.integers(1, 5)), int(rng.integers(2, 4))
    net = random_network([n_in] + [width] * depth + [n_out], rng, relu_on_output=relu_out)
    center = rng.normal(size=n_in)
    box = InputBox(center - radius, center + radius)
    C, d = margin_rows(0, n_out)
    res = bound(net, box, C, d, method="ibp")
    pts = box.sample(2000, rng)
    h = pts
    for affine, relu, (l, u) in zip(net.affines, net.relu_after, res.layer_bounds):
        z = affine.forward(h)
        assert np.all(z >= l - 1e-9) and np.all(z <= u + 1e-9)
        h = np.maximum(z, 0) if relu else z
    assert np.all((net.forward(pts) @ C.T + d).min(axis=0) >= res.lower - 1e-9)
