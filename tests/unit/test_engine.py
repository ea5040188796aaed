"""The bound engine (CROWN over graphs): sound against sampled points on every graph kind, batched boxes agree
with single boxes, a conv graph gives the same bound as its dense expansion, and alpha-CROWN's intermediate slopes
tighten the layer bounds soundly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_models import KINDS, dense_expansion, random_graph_file
from verifier import ops
from verifier.bounds import dual, engine, interval
from verifier.network import Network, random_network
from verifier.onnx import load_onnx
from verifier.spec import InputBox, margin_rows


@pytest.fixture(scope="module", params=KINDS)
def graph(request, tmp_path_factory) -> Network:
    return load_onnx(random_graph_file(request.param, tmp_path_factory.mktemp(request.param), seed=3))


def box_around(net: Network, seed: int, eps: float) -> InputBox:
    center = np.random.default_rng(seed).uniform(-0.5, 0.5, net.n_inputs)
    return InputBox(center - eps, center + eps)


def samples(box: InputBox, rng, n: int = 400) -> np.ndarray:
    x = rng.uniform(box.lo, box.hi, size=(n, box.n))
    x[: n // 10] = np.where(rng.random((n // 10, box.n)) < 0.5, box.lo, box.hi)  # corners
    return x


@pytest.mark.parametrize("slopes", ["wk", "adaptive"])
@pytest.mark.parametrize("eps", [0.02, 0.2])
def test_sound_against_sampled_points(graph, slopes, eps):
    rng = np.random.default_rng(0)
    box = box_around(graph, 1, eps)
    C, d = margin_rows(1, graph.n_outputs)
    result = dual.bound(graph, box, C, d, slopes=slopes)
    x = samples(box, rng)
    y = graph.forward(x)
    assert np.all(y @ C.T + d >= result.lower - 1e-9)
    assert np.all(result.lower >= interval.bound(graph, box, C, d).lower - 1e-9)  # never worse than IBP
    lo, hi = (torch.tensor(v)[None] for v in (box.lo, box.hi))
    bounds, _ = engine.node_bounds(graph, lo, hi, slopes)
    values = [torch.tensor(x).reshape(len(x), *graph.input_shape)]
    for node in graph.nodes[1:]:
        values.append(node.op.forward(*[values[i] for i in node.inputs]))
    for k, v in enumerate(values):  # every node's sampled values lie in its bounds
        l, u = bounds[k]
        assert bool((v >= l - 1e-9).all()) and bool((v <= u + 1e-9).all()), (k, type(graph.nodes[k].op))


def test_batched_boxes_match_single_boxes(graph):
    boxes = [box_around(graph, s, 0.05) for s in range(3)]
    C, d = margin_rows(0, graph.n_outputs)
    lo = torch.tensor(np.stack([b.lo for b in boxes]))
    hi = torch.tensor(np.stack([b.hi for b in boxes]))
    batched, _ = engine.crown(graph, lo, hi, torch.tensor(C), torch.tensor(d))
    for i, box in enumerate(boxes):
        # the union of unstable neurons is bounded in a batch; each box keeps its own stable ones: same values
        np.testing.assert_allclose(batched[i].numpy(), dual.bound(graph, box, C, d).lower, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("slopes", ["wk", "adaptive"])
def test_conv_graph_equals_its_dense_expansion(graph, slopes, monkeypatch):
    """The operators' backward maps equal their dense matrices' (MaxPool's whole windows, which the expansion's
    dense Gathers hide, left out: test_max_windows.py)."""
    box = box_around(graph, 2, 0.1)
    C, d = margin_rows(2, graph.n_outputs)
    dense = dense_expansion(graph)
    assert not any(isinstance(n.op, (ops.Conv2d, ops.Gather, ops.Pad)) for n in dense.nodes)
    monkeypatch.setattr(engine, "max_windows", lambda network: {})
    a, b = dual.bound(graph, box, C, d, slopes=slopes), dual.bound(dense, box, C, d, slopes=slopes)
    np.testing.assert_allclose(a.lower, b.lower, rtol=1e-9, atol=1e-9)
    for (la, ua), (lb, ub) in zip(a.layer_bounds, b.layer_bounds):
        np.testing.assert_allclose(la, lb, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ua, ub, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_opt_intermediate_slopes_tighten_layer_bounds_soundly(seed):
    # alpha-CROWN optimizes the intermediate passes' slopes too: its layer bounds lie inside the adaptive ones,
    # strictly somewhere on these deep nets, and still contain every sampled value.
    rng = np.random.default_rng(seed)
    net = random_network([4, 12, 12, 12, 3], rng)
    center = rng.normal(size=4)
    box = InputBox(center - 0.6, center + 0.6)
    C, d = margin_rows(0, 3)
    adaptive = dual.bound(net, box, C, d, slopes="adaptive")
    opt = dual.bound(net, box, C, d, slopes="opt", iterations=40)
    gain = 0.0
    for (l, u), (la, ua) in zip(opt.layer_bounds, adaptive.layer_bounds):
        assert np.all(l >= la - 1e-12) and np.all(u <= ua + 1e-12)
        gain = max(gain, float(np.max(l - la)), float(np.max(ua - u)))
    assert gain > 1e-3
    x = samples(box, rng, 2000)
    for (l, u), affine_index in zip(opt.layer_bounds, range(len(net.affines))):
        z = x
        for a in net.affines[:affine_index]:
            z = np.maximum(z @ a.weight.T + a.bias, 0.0)
        z = z @ net.affines[affine_index].weight.T + net.affines[affine_index].bias
        assert np.all(z >= l - 1e-9) and np.all(z <= u + 1e-9)
    assert np.all(net.forward(x) @ C.T + d >= opt.lower - 1e-9)


def test_empty_and_stable_intervals_are_consistent():
    l = torch.tensor([[1.0, -2.0, -1.0, 0.5, 0.0]])
    u = torch.tensor([[2.0, -1.0, 3.0, -0.5, 0.0]])  # active, inactive, unstable, empty (l > u), degenerate
    r = engine.relax(l, u, "adaptive")
    assert r.unstable.flatten().tolist() == [False, False, True, False, False]
    assert r.lower_slope(None).flatten().tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert r.upper_slope.flatten().tolist() == [1.0, 0.0, 0.75, 0.0, 0.0]


def test_the_relu_step_gives_the_same_bound_with_and_without_a_gradient(graph):
    """Without a gradient the ReLU step is one addcmul, with one the clamps' form (whose subgradient the Adam steps
    use): the same values, up to float64 rounding, and the gradient's path is the clamps'."""
    box = box_around(graph, 6, 0.1)
    lo, hi = (torch.tensor(v)[None] for v in (box.lo, box.hi))
    _, relaxations = engine.node_bounds(graph, lo, hi, "wk")
    C = torch.tensor(margin_rows(0, graph.n_outputs)[0]).reshape(1, -1, *graph.output_shape)
    const = torch.zeros(1, C.shape[1], dtype=torch.float64)
    args = (graph, graph.output, C, const, relaxations, (lo + hi) / 2, (hi - lo) / 2)
    with torch.no_grad():
        plain = engine.backward(*args)
    tracked = engine.backward(graph, graph.output, C.clone().requires_grad_(), *args[3:])
    assert tracked.requires_grad
    np.testing.assert_allclose(plain.numpy(), tracked.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_optimized_slopes_are_sound_and_not_worse(graph):
    box = box_around(graph, 4, 0.1)
    C, d = margin_rows(0, graph.n_outputs)
    adaptive = dual.bound(graph, box, C, d, slopes="adaptive")
    opt = dual.bound(graph, box, C, d, slopes="opt", iterations=15)
    assert np.all(opt.lower >= adaptive.lower - 1e-9)
    y = graph.forward(samples(box, np.random.default_rng(5)))
    assert np.all(y @ C.T + d >= opt.lower - 1e-9)


def test_nodes_one_linear_operator_after_the_input_need_no_pass(graph):
    """Nodes that are one linear operator on the input moved about entry by entry (normalised, transposed,
    padded) get interval bounds only: they are exact, equal to a backward pass from each entry to the input."""
    box = box_around(graph, 4, 0.1)
    lo, hi = (torch.tensor(v)[None] for v in (box.lo, box.hi))
    bounds, _ = engine.node_bounds(graph, lo, hi)
    skipped = [k for k in engine.pre_activations(graph) if engine._after_input(graph, k)]
    assert skipped  # every kind starts with one linear operator on the (normalised / transposed) input
    for k in skipped:
        l, u = bounds[k]
        idx = torch.arange(l[0].numel())
        low, up = engine._entry_bounds(graph, k, idx, {}, (lo + hi) / 2, (hi - lo) / 2)
        np.testing.assert_allclose(l.reshape(1, -1).numpy(), low.numpy(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(u.reshape(1, -1).numpy(), up.numpy(), rtol=1e-9, atol=1e-9)
