"""Float32 backward passes made sound for their rounding (verifier/bounds/rounding.py)."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings, strategies as st

from graph_models import random_graph_file
from verifier.bounds import engine, rounding
from verifier.network import Affine, Network, ReLU, random_network
from verifier.onnx import load_onnx


def node_bounds_both(net: Network, lo: np.ndarray, hi: np.ndarray) -> tuple[dict, dict]:
    """The adaptive layer bounds with float64 passes and with float32 ones."""
    lo, hi = torch.tensor(lo)[None], torch.tensor(hi)[None]
    exact, _ = engine.node_bounds(net, lo, hi, "adaptive")
    fast, _ = engine.node_bounds(net, lo, hi, "adaptive", float32=net.to("cpu", torch.float32))
    return exact, fast


def rounding_net() -> tuple[Network, np.ndarray, float]:
    """x (1,) -> s x -> ReLU -> s h -> ReLU -> identity, s = 1 + 2^-12, at the point x = 1: the second ReLU's input
    is s^2 = 1 + 2^-11 + 2^-24, while float32 rounds the backward pass's product s * s to 1 + 2^-11 (a tie, to
    even; a single product, so no fused multiply-add can keep it exact)."""
    s = 1 + 2.0 ** -12
    net = Network((Affine(np.array([[s]]), np.zeros(1)), ReLU(), Affine(np.array([[s]]), np.zeros(1)), ReLU(),
                   Affine(np.eye(1), np.zeros(1))))
    return net, np.ones(1), s * s


def float32_pass(net: Network, k: int, point: np.ndarray) -> tuple[float, float]:
    """The float32 pass's bounds of entry 0 of node k at one point, as `engine.node_bounds` runs it."""
    lo = torch.tensor(point)[None]
    bounds, relaxations = engine.node_bounds(net, lo, lo, "adaptive")
    low, up = engine._entry_bounds(net.to("cpu", torch.float32), k, torch.tensor([0]),
                                   {r: x.to(torch.float32) for r, x in relaxations.items()}, lo,
                                   torch.zeros_like(lo), magnitudes=rounding.magnitudes(bounds, k))
    return float(low[0, 0]), float(up[0, 0])


def test_a_float32_pass_is_sound_where_its_rounding_alone_would_not_be(monkeypatch):
    net, point, z = rounding_net()
    assert rounding.exact_in_float32(net)
    k = 3  # the second ReLU's input: bounded by a pass
    assert k in engine.pre_activations(net) and engine.bounded_by_pass(net, k)
    low, up = float32_pass(net, k, point)
    assert low <= z <= up and up - low < 1e-4  # sound, and still nearly the point
    _, fast = node_bounds_both(net, point, point)
    assert float(fast[k][0]) <= z <= float(fast[k][1])
    assert z == 1 + 2.0 ** -11 + 2.0 ** -24  # exact in float64
    monkeypatch.setattr(rounding, "ERROR_FACTOR", 0.0)  # the pass's rounding left out: z is above its upper bound
    monkeypatch.setattr(rounding, "UNDERFLOW", 0.0)
    assert float32_pass(net, k, point)[1] < z


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), depth=st.integers(2, 3), width=st.integers(3, 24),
       radius=st.sampled_from([0.05, 0.5, 2.0]), scale=st.sampled_from([1.0, 30.0]))
def test_float32_passes_contain_the_float64_bounds_and_the_sampled_values(seed, depth, width, radius, scale):
    rng = np.random.default_rng(seed)
    net = random_network([4] + [width] * depth + [3], rng, scale=scale, float32=True)
    centre = rng.normal(size=4)
    exact, fast = node_bounds_both(net, centre - radius, centre + radius)
    x = torch.tensor(rng.uniform(centre - radius, centre + radius, size=(300, 4)))
    values = [x]
    for node in net.nodes[1:]:
        values.append(node.op.forward(*[values[i] for i in node.inputs]))
    first_pass = min(k for k in engine.pre_activations(net) if engine.bounded_by_pass(net, k))
    for k in range(1, len(net.nodes)):
        (l64, u64), (l32, u32) = exact[k], fast[k]
        tol = 1e-12 * (1 + torch.maximum(l64.abs(), u64.abs()))  # float64's own rounding (outputs ~1e4 at scale 30)
        assert bool((values[k] >= l32 - tol).all()) and bool((values[k] <= u32 + tol).all())
        if k == first_pass:  # the same bounds before it: the float64 pass's within the float32 one's
            assert bool((l32 <= l64 + tol).all()) and bool((u32 >= u64 - tol).all())
        # later, a looser bound may flip an adaptive slope and tighten what follows: only near each other
        width_64 = (u64 - l64).clamp(min=1e-6)
        assert float(((l64 - l32).abs() / width_64).max()) < 0.05 and float(((u32 - u64).abs() / width_64).max()) < 0.05


def test_which_networks_qualify(tmp_path):
    rng = np.random.default_rng(0)
    assert rounding.exact_in_float32(random_network([3, 5, 2], rng, float32=True))
    assert not rounding.exact_in_float32(random_network([3, 5, 2], rng))  # weights not float32 numbers
    conv = load_onnx(random_graph_file("conv_bn_avgpool_dense", tmp_path, seed=0))
    assert not rounding.exact_in_float32(conv)  # convolutions: not plain sums of products here
