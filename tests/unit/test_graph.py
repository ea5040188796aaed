"""Network graphs: every operator kind loaded from ONNX agrees with onnxruntime; each linear operator's backward is
its transpose, its sparse matrix its forward and its forward_abs the |W| map; save_onnx round-trips; IBP on graphs
is sound against sampled points; every bound method takes graphs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from graph_models import KINDS, random_graph_file
from verifier import ops
from verifier.bounds import interval
from verifier.errors import InputError
from verifier.network import Network, Node
from verifier.onnx import load_onnx, run_onnxruntime, save_onnx
from verifier.spec import InputBox, margin_rows

DATA = Path(__file__).resolve().parents[1] / "data"
SEEDS = (0, 1)


def matches_onnxruntime(net: Network, path: Path, n_points: int = 30, seed: int = 0) -> None:
    x = np.random.default_rng(seed).uniform(-1, 1, size=(n_points, net.n_inputs)).astype(np.float32)
    reference = run_onnxruntime(path, x.astype(np.float64))
    scale = max(1.0, float(np.abs(reference).max()))
    np.testing.assert_allclose(net.forward(x.astype(np.float64)), reference, rtol=1e-5, atol=1e-5 * scale,
                               err_msg=str(path))


@pytest.fixture(scope="module", params=[(k, s) for k in KINDS for s in SEEDS], ids=lambda p: f"{p[0]}-{p[1]}")
def graph(request, tmp_path_factory) -> tuple[Network, Path]:
    kind, seed = request.param
    path = random_graph_file(kind, tmp_path_factory.mktemp(kind), seed)
    return load_onnx(path), path


def test_forward_matches_onnxruntime(graph):
    net, path = graph
    assert not net.is_chain
    matches_onnxruntime(net, path)
    x = np.random.default_rng(5).uniform(-1, 1, size=(3, net.n_inputs))
    np.testing.assert_allclose(net.forward(x[1]), net.forward(x)[1], rtol=1e-12, atol=1e-12)  # one flat sample
    if len(net.input_shape) > 2:  # the declared shape reads as one sample too ((1, n) reads as a batch of 1)
        np.testing.assert_allclose(net.forward(x[1].reshape(net.input_shape)), net.forward(x)[1], rtol=1e-12,
                                   atol=1e-12)


def linear_nodes(net: Network):
    return [node.op for node in net.nodes[1:] if isinstance(node.op, ops.Linear)]


def random_inputs(op, rng, batch: int = 3) -> list[torch.Tensor]:
    return [torch.tensor(rng.normal(size=(batch, *shape))) for shape in op.in_shapes]


def test_backward_is_the_transpose(graph):
    rng = np.random.default_rng(1)
    for op in linear_nodes(graph[0]):
        xs = random_inputs(op, rng)
        A = torch.tensor(rng.normal(size=(3, *op.out_shape)))
        linear_part = op.forward(*xs) - op.forward(*[torch.zeros_like(x) for x in xs])
        lhs = (A * linear_part).flatten(1).sum(1)
        rhs = sum((a * x).flatten(1).sum(1) for a, x in zip(op.backward(A), xs))
        np.testing.assert_allclose(lhs.numpy(), rhs.numpy(), rtol=1e-10, atol=1e-10, err_msg=type(op).__name__)


def test_sparse_and_forward_abs_agree_with_forward(graph):
    rng = np.random.default_rng(2)
    for op in linear_nodes(graph[0]):
        xs = random_inputs(op, rng)
        matrix, offset = op.sparse()
        flat = np.concatenate([x.reshape(3, -1).numpy() for x in xs], axis=1)
        np.testing.assert_allclose(flat @ matrix.T.toarray() + offset, op.forward(*xs).reshape(3, -1).numpy(),
                                   rtol=1e-10, atol=1e-10, err_msg=type(op).__name__)
        absolute = np.abs(matrix.toarray())
        np.testing.assert_allclose(flat @ absolute.T, op.forward_abs(*xs).reshape(3, -1).numpy(), rtol=1e-10,
                                   atol=1e-10, err_msg=type(op).__name__)


def test_save_onnx_round_trip(graph, tmp_path):
    net, _ = graph
    saved = save_onnx(net, tmp_path / "saved.onnx")
    again = load_onnx(saved)
    x = np.random.default_rng(3).uniform(-1, 1, size=(20, net.n_inputs))
    np.testing.assert_allclose(again.forward(x), net.forward(x), rtol=1e-5, atol=1e-5)
    matches_onnxruntime(again, saved)
    assert {type(n.op) for n in again.nodes} == {type(n.op) for n in net.nodes}  # Conv stays Conv, etc.


def test_ibp_is_sound_on_sampled_points(graph):
    net, _ = graph
    rng = np.random.default_rng(4)
    center = rng.uniform(-0.5, 0.5, net.n_inputs)
    box = InputBox(center - 0.1, center + 0.1)
    C, d = margin_rows(0, net.n_outputs)
    result = interval.bound(net, box, C, d)
    x = rng.uniform(box.lo, box.hi, size=(500, net.n_inputs))
    x[:10] = np.where(rng.random((10, net.n_inputs)) < 0.5, box.lo, box.hi)  # corners too
    y = net.forward(x)
    assert np.all(y @ C.T + d >= result.lower - 1e-9)
    l, u = result.layer_bounds[-1]
    assert np.all(y >= l - 1e-9) and np.all(y <= u + 1e-9)
    lo, hi = (torch.tensor(v)[None] for v in (box.lo, box.hi))
    bounds = interval.node_bounds(net, lo, hi)
    values = [torch.tensor(x).reshape(len(x), *net.input_shape)]
    for node in net.nodes[1:]:  # every node's values lie in its interval
        values.append(node.op.forward(*[values[i] for i in node.inputs]))
    for (l, u), v in zip(bounds, values):
        assert bool((v >= l - 1e-9).all()) and bool((v <= u + 1e-9).all())


def test_every_bound_method_takes_graphs_and_they_have_no_dense_layers(graph):
    from verifier.bounds import METHODS, bound

    net, _ = graph
    box = InputBox(np.zeros(net.n_inputs), np.full(net.n_inputs, 0.1))
    C, d = margin_rows(0, net.n_outputs)
    value = C @ net.forward(box.center) + d
    options = {"milp": {"time_limit": 0.5, "objective": "min"}}
    lower = {m: bound(net, box, C, d, method=m, **options.get(m, {})).lower for m in METHODS}
    for method, low in lower.items():
        assert np.all(low <= value + 1e-9), method
    assert np.all(lower["lp"] >= lower["dual"] - 1e-7)  # the same (adaptive) layer bounds, free slopes
    with pytest.raises(InputError):
        net.affines
    assert net.n_relus == sum(net.widths) > 0 and "ReLUs" in net.summary()


def test_local_conv_copy_matches_onnxruntime():
    path = DATA / "Convnet_maxpool.onnx"
    net = load_onnx(path)
    assert net.input_shape == (1, 1, 28, 28) and net.n_outputs == 10
    assert {"Conv2d", "Gather", "Sum", "Dense"} <= set(net.op_names())
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(20, 784)).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(net.forward(x), run_onnxruntime(path, x), rtol=1e-5, atol=1e-5)


def test_every_conv_benchmark_network_matches_onnxruntime(shared_conv_benchmarks):
    paths = sorted(shared_conv_benchmarks.glob("*/onnx/*.onnx"))
    assert len(paths) == 5
    for path in paths:
        net = load_onnx(path)
        x = np.random.default_rng(0).uniform(0, 1, size=(8, net.n_inputs)).astype(np.float32).astype(np.float64)
        np.testing.assert_allclose(net.forward(x), run_onnxruntime(path, x), rtol=1e-5, atol=1e-5, err_msg=str(path))


def test_dense_nets_stay_dense_chains():
    net = load_onnx(DATA / "mnist-net_256x2.onnx")
    assert net.is_chain and [type(n.op).__name__ for n in net.nodes] == ["Input"] + ["Dense", "ReLU"] * 2 + ["Dense"]
    for node, affine in zip(net.nodes[1::2], net.affines):  # the graph holds the chain's very weights
        np.testing.assert_array_equal(node.op.weight.numpy(), affine.weight)


def test_graph_validation():
    inp = Node(ops.Input((2,)), ())
    dense = ops.Dense(torch.ones(3, 2), None, ((2,),), (3,))
    Network((inp, Node(dense, (0,)), Node(ops.ReLU((3,)), (1,))))
    with pytest.raises(ValueError, match="expects inputs of shapes"):
        Network((inp, Node(ops.ReLU((3,)), (0,))))
    with pytest.raises(ValueError, match="need earlier nodes"):
        Network((inp, Node(dense, (1,))))
    with pytest.raises(ValueError, match="Input node"):
        Network((Node(dense, (0,)),))


def test_verify_decides_on_a_conv_graph_or_says_unknown(tmp_path):
    from verifier.bounds import bound
    from verifier.spec import linf_ball, robustness_property
    from verifier.verify import verify

    net = load_onnx(random_graph_file("conv_bn_avgpool_dense", tmp_path, seed=0))
    x0 = np.random.default_rng(0).uniform(0, 1, net.n_inputs)
    label = int(np.argmax(net.forward(x0)))
    holds = verify(net, linf_ball(x0, 1e-4), robustness_property(label, net.n_outputs), timeout=30)
    assert holds.status == "holds"
    wrong = (label + 1) % net.n_outputs  # x0 itself is a counterexample, confirmed by onnxruntime
    violated = verify(net, linf_ball(x0, 1e-4), robustness_property(wrong, net.n_outputs), timeout=30)
    assert violated.status == "violated" and violated.counterexample is not None
    hard = verify(net, linf_ball(x0, 0.3), robustness_property(label, net.n_outputs), timeout=5)
    assert hard.status in ("unknown", "timeout", "violated")  # the engine's bound is far below 0 there
    C, d = margin_rows(label, net.n_outputs)
    assert bound(net, linf_ball(x0, 0.3), C, d, method="dual", slopes="opt").lower.min() < 0


def test_ibp_bounds_a_rewritten_maxpool_by_the_max_of_its_operands(monkeypatch):
    """MaxPool is rewritten into ``b + relu(a - b)``; IBP gives each such node [max(l_a, l_b), max(u_a, u_b)]
    (every sampled value inside), tighter than adding the intervals of its terms."""
    net = load_onnx(DATA / "Convnet_maxpool.onnx")
    maxes = [k for k in range(len(net.nodes)) if interval.max_operands(net, k) is not None]
    assert maxes
    rng = np.random.default_rng(1)
    x0 = rng.uniform(0.1, 0.9, size=net.n_inputs)
    lo, hi = (torch.tensor(x0 + s * 0.02)[None] for s in (-1, 1))
    with torch.no_grad():
        bounds = interval.node_bounds(net, lo, hi)
        points = lo + (hi - lo) * torch.rand(200, net.n_inputs, generator=torch.Generator().manual_seed(0),
                                             dtype=torch.float64)
        values = [points.reshape(200, *net.input_shape)]
        for node in net.nodes[1:]:
            values.append(node.op.forward(*[values[i] for i in node.inputs]))
    for k in maxes:
        a, b = interval.max_operands(net, k)
        l, u = bounds[k]
        torch.testing.assert_close(l, torch.maximum(bounds[a][0], bounds[b][0]), rtol=0, atol=1e-12)
        torch.testing.assert_close(u, torch.maximum(bounds[a][1], bounds[b][1]), rtol=0, atol=1e-12)
    for k, v in enumerate(values):
        assert torch.all(v >= bounds[k][0] - 1e-9) and torch.all(v <= bounds[k][1] + 1e-9), k
    monkeypatch.setattr(interval, "max_operands", lambda network, k: None)
    with torch.no_grad():
        summed = interval.node_bounds(net, lo, hi)
    width = lambda bs: float(sum((u - l).sum() for l, u in bs[-1:]))  # noqa: E731  the outputs' intervals
    assert width(bounds) < width(summed)
