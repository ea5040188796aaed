"""The bound engine (CROWN over graphs): sound against sampled points on every graph kind, batched boxes agree
with single boxes, a conv graph gives the same bound as its dense expansion, and on dense chains it reproduces
bounds/dual.py (the chain implementation it will replace)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from graph_models import KINDS, random_graph_file
from verifier import ops
from verifier.bounds import dual, engine, interval
from verifier.network import Network, Node, random_network
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


def dense_expansion(net: Network) -> Network:
    """TEST ONLY: the same graph with every single-input linear operator replaced by its dense matrix."""
    nodes = [net.nodes[0]]
    for node in net.nodes[1:]:
        op = node.op
        if isinstance(op, ops.Linear) and len(op.in_shapes) == 1:
            matrix, offset = op.sparse()
            op = ops.Dense(torch.tensor(matrix.toarray()), torch.tensor(offset), op.in_shapes, op.out_shape)
        nodes.append(Node(op, node.inputs))
    return Network(tuple(nodes), net.input_shape, output=net.output)


@pytest.mark.parametrize("slopes", ["wk", "adaptive"])
def test_conv_graph_equals_its_dense_expansion(graph, slopes):
    box = box_around(graph, 2, 0.1)
    C, d = margin_rows(2, graph.n_outputs)
    dense = dense_expansion(graph)
    assert not any(isinstance(n.op, (ops.Conv2d, ops.Gather, ops.Pad)) for n in dense.nodes)
    a, b = dual.bound(graph, box, C, d, slopes=slopes), dual.bound(dense, box, C, d, slopes=slopes)
    np.testing.assert_allclose(a.lower, b.lower, rtol=1e-9, atol=1e-9)
    for (la, ua), (lb, ub) in zip(a.layer_bounds, b.layer_bounds):
        np.testing.assert_allclose(la, lb, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ua, ub, rtol=1e-9, atol=1e-9)


def as_graph(chain: Network) -> Network:
    """The chain's own nodes as a graph network (so that dual.bound takes the engine's path)."""
    return Network(chain.nodes, chain.input_shape, output=chain.output)


@pytest.mark.parametrize("slopes", ["wk", "adaptive"])
@pytest.mark.parametrize("seed", range(4))
def test_dense_chains_reproduce_dual(slopes, seed):
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(2, 8, size=int(rng.integers(2, 6)))]
    chain = random_network(sizes, rng, relu_on_output=bool(seed % 2))
    center = rng.normal(size=sizes[0])
    box = InputBox(center - 0.5, center + 0.5)
    C, d = margin_rows(0, chain.n_outputs)
    expected = dual.bound(chain, box, C, d, slopes=slopes)
    got = dual.bound(as_graph(chain), box, C, d, slopes=slopes)
    np.testing.assert_allclose(got.lower, expected.lower, rtol=1e-9, atol=1e-9)
    assert len(got.layer_bounds) == len(expected.layer_bounds)
    for (la, ua), (lb, ub) in zip(got.layer_bounds, expected.layer_bounds):
        np.testing.assert_allclose(la, lb, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ua, ub, rtol=1e-9, atol=1e-9)
    given = dual.bound(as_graph(chain), box, C, d, slopes=slopes, layer_bounds=expected.layer_bounds)
    np.testing.assert_allclose(given.lower, dual.bound(chain, box, C, d, slopes=slopes,
                                                       layer_bounds=expected.layer_bounds).lower, rtol=1e-9,
                               atol=1e-9)


def test_empty_and_stable_intervals_are_consistent():
    l = torch.tensor([[1.0, -2.0, -1.0, 0.5, 0.0]])
    u = torch.tensor([[2.0, -1.0, 3.0, -0.5, 0.0]])  # active, inactive, unstable, empty (l > u), degenerate
    r = engine.relax(l, u, "adaptive")
    assert r.unstable.flatten().tolist() == [False, False, True, False, False]
    assert r.lower_slope(None).flatten().tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert r.upper_slope.flatten().tolist() == [1.0, 0.0, 0.75, 0.0, 0.0]


def test_optimized_slopes_are_sound_and_not_worse(graph):
    box = box_around(graph, 4, 0.1)
    C, d = margin_rows(0, graph.n_outputs)
    adaptive = dual.bound(graph, box, C, d, slopes="adaptive")
    opt = dual.bound(graph, box, C, d, slopes="opt", iterations=15)
    assert np.all(opt.lower >= adaptive.lower - 1e-9)
    y = graph.forward(samples(box, np.random.default_rng(5)))
    assert np.all(y @ C.T + d >= opt.lower - 1e-9)


@pytest.mark.parametrize("name, eps", [("mnist-net_256x2.onnx", 0.02), ("ACASXU_run2a_1_1_batch_2000.onnx", 0.05)])
def test_real_dense_chains_reproduce_dual(name, eps):
    chain = load_onnx(Path(__file__).resolve().parents[1] / "data" / name)
    center = np.random.default_rng(0).uniform(0.2, 0.8, chain.n_inputs)
    box = InputBox(center - eps, center + eps)
    C, d = margin_rows(0, chain.n_outputs)
    for slopes in ("wk", "adaptive"):
        expected, got = dual.bound(chain, box, C, d, slopes=slopes), dual.bound(as_graph(chain), box, C, d,
                                                                                  slopes=slopes)
        np.testing.assert_allclose(got.lower, expected.lower, rtol=1e-9, atol=1e-9)
