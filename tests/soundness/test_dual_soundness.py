"""The dual pass is sound: no sampled point beats its bounds, for every slope rule, on random nets and boxes."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings, strategies as st

from verifier.bounds import bound
from verifier.bounds.dual import batched_bounds
from verifier.network import random_network
from verifier.spec import InputBox

SAMPLES = 10_000


def random_problem(seed: int, depth: int, width: int, relu_out: bool, radius: float):
    rng = np.random.default_rng(seed)
    n_in, n_out = int(rng.integers(1, 5)), int(rng.integers(2, 5))
    net = random_network([n_in] + [width] * depth + [n_out], rng, relu_on_output=relu_out,
                         scale=float(rng.uniform(0.5, 2.0)))
    centre = rng.normal(size=n_in)
    widths = radius * rng.uniform(0.0, 1.0, size=n_in)  # some inputs may be fixed (zero width)
    box = InputBox(centre - widths, centre + widths)
    k = int(rng.integers(1, 4))
    return rng, net, box, rng.normal(size=(k, n_out)), rng.normal(size=k)


def pre_activations(net, points: np.ndarray) -> list[np.ndarray]:
    values, h = [], points
    for affine, relu in zip(net.affines, net.relu_after):
        z = affine.forward(h)
        values.append(z)
        h = np.maximum(z, 0.0) if relu else z
    return values


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), depth=st.integers(1, 3), width=st.integers(1, 8), relu_out=st.booleans(),
       radius=st.floats(0.0, 2.0))
def test_dual_bounds_contain_samples(seed, depth, width, relu_out, radius):
    rng, net, box, C, d = random_problem(seed, depth, width, relu_out, radius)
    points = box.sample(SAMPLES, rng)
    sampled_min = (net.forward(points) @ C.T + d).min(axis=0)
    zs = pre_activations(net, points)
    results = {}
    for slopes in ("wk", "adaptive", "opt"):
        res = bound(net, box, C, d, method="dual", slopes=slopes, iterations=20)
        results[slopes] = res
        assert res.lower.shape == (len(C),) and res.lower.dtype == np.float64
        assert np.all(res.lower <= sampled_min + 1e-9), slopes
        assert len(res.layer_bounds) == len(net.affines)
        for z, (l, u) in zip(zs, res.layer_bounds):
            assert np.all(z >= l - 1e-9) and np.all(z <= u + 1e-9), slopes
    # opt starts from adaptive and keeps the best value seen, per row and per neuron
    assert np.all(results["opt"].lower >= results["adaptive"].lower - 1e-12)
    for (l, u), (la, ua) in zip(results["opt"].layer_bounds, results["adaptive"].layer_bounds):
        assert np.all(l >= la - 1e-12) and np.all(u <= ua + 1e-12)
    # and with identical (adaptive) layer bounds as well
    fixed = bound(net, box, C, d, method="dual", slopes="opt", iterations=20,
                  layer_bounds=results["adaptive"].layer_bounds)
    assert np.all(fixed.lower >= results["adaptive"].lower - 1e-12)
    assert np.all(fixed.lower <= sampled_min + 1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), depth=st.integers(1, 3), width=st.integers(1, 6), relu_out=st.booleans())
def test_batched_bounds_sound_per_box(seed, depth, width, relu_out):
    rng, net, box, C, d = random_problem(seed, depth, width, relu_out, 1.0)
    boxes = []
    for _ in range(3):
        lo, hi = np.sort(rng.uniform(box.lo - 0.5, box.hi + 0.5, size=(2, box.n)), axis=0)
        boxes.append(InputBox(lo, hi))
    weights = [(torch.tensor(a.weight), torch.tensor(a.bias)) for a in net.affines]
    lo = torch.tensor(np.stack([b.lo for b in boxes]))
    hi = torch.tensor(np.stack([b.hi for b in boxes]))
    for slopes in ("wk", "adaptive"):
        lower, layer_bounds = batched_bounds(weights, net.relu_after, lo, hi, torch.tensor(C), torch.tensor(d),
                                             slopes=slopes)
        for j, b in enumerate(boxes):
            points = b.sample(2000, rng)
            assert np.all(lower[j].numpy() <= (net.forward(points) @ C.T + d).min(axis=0) + 1e-9)
            for z, (l, u) in zip(pre_activations(net, points), layer_bounds):
                assert np.all(z >= l[j].numpy() - 1e-9) and np.all(z <= u[j].numpy() + 1e-9)
