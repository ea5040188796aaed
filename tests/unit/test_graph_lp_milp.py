"""The triangle LP, the big-M MILP and the enumeration oracle on network graphs (conv, residual, MaxPool, branches):
the MILP is the oracle's exact value and its point is real (our forward and onnxruntime); the LP lies between the
dual pass with the same layer bounds and the exact value, and a conv graph gives the LP of its dense expansion;
LP-all bounds hold the sampled values of every ReLU input; every real input is a point of the MILP."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_models import KINDS, TINY_KINDS, dense_expansion, random_graph_file
from verifier.bounds import dual, encode, engine, interval, lp, milp
from verifier.bounds.enumerate import MAX_RELUS, enumerate_bound
from verifier.network import Network
from verifier.onnx import load_onnx, run_onnxruntime, save_onnx
from verifier.spec import InputBox


@pytest.fixture(scope="module", params=[(k, s) for k in TINY_KINDS for s in (0, 2)], ids=lambda p: f"{p[0]}-{p[1]}")
def tiny(request, tmp_path_factory):
    """(net, box, C, d, the enumerated exact minima) of a tiny graph: a box of radius 0.3, three random rows."""
    kind, seed = request.param
    net = load_onnx(random_graph_file(kind, tmp_path_factory.mktemp(kind), seed))
    assert not net.is_chain and 0 < net.n_relus <= MAX_RELUS
    _, box, C, d = problem(net, seed, 0.3)
    return net, box, C, d, enumerate_bound(net, box, C, d)


@pytest.fixture(scope="module", params=KINDS)
def graph(request, tmp_path_factory) -> Network:
    return load_onnx(random_graph_file(request.param, tmp_path_factory.mktemp(request.param), seed=5))


def problem(net: Network, seed: int, eps: float):
    """A box of radius eps around a random centre and three random rows with offsets."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-0.5, 0.5, net.n_inputs)
    return rng, InputBox(centre - eps, centre + eps), rng.normal(size=(3, net.n_outputs)), rng.normal(size=3)


def samples(box: InputBox, rng, n: int = 2000) -> np.ndarray:
    x = box.sample(n, rng)
    x[: n // 10] = np.where(rng.random((n // 10, box.n)) < 0.5, box.lo, box.hi)  # corners
    return x


def test_milp_is_the_enumerated_minimum_at_a_real_point(tiny, tmp_path):
    net, box, C, d, exact = tiny
    res = milp.bound(net, box, C, d)
    assert res.info["status"] == ["optimal"] * 3 and res.info["binaries"] > 0
    tolerance = 1e-6 * np.maximum(1.0, np.abs(exact))  # HiGHS's proven bound may sit ~1e-6 below
    assert np.all(np.abs(res.lower - exact) <= tolerance) and np.all(res.lower <= exact + 1e-9)
    np.testing.assert_allclose(res.upper, exact, rtol=0, atol=1e-6)
    assert box.contains(res.x)
    np.testing.assert_allclose(res.upper, np.einsum("kj,kj->k", net.forward(res.x), C) + d, rtol=0, atol=1e-12)
    # onnxruntime has no float64 Conv: the file holds the loaded float32 weights (lossless), run in float32
    outputs = run_onnxruntime(save_onnx(net, tmp_path / "net.onnx"), res.x)
    np.testing.assert_allclose(np.einsum("kj,kj->k", outputs, C) + d, res.upper, rtol=1e-5, atol=1e-5)
    lower, upper, x, status = milp.min_max(net, box, C, d)  # the conjunction's exact value, at a real point
    assert status == "optimal" and abs(upper - lower) <= 1e-6 * max(1.0, abs(upper)) and box.contains(x)
    assert upper == pytest.approx(np.max(C @ net.forward(x) + d), abs=1e-12)
    assert upper <= (net.forward(samples(box, np.random.default_rng(1))) @ C.T + d).max(axis=1).min() + 1e-9
    assert upper >= exact.max() - 1e-9  # the maximum over the rows is at least each row's minimum


def rederived_as_solved(net: Network, res) -> bool:
    """The LP's re-derived bounds equal its objective; on a rewritten MaxPool (returns True) they may beat it,
    never fall below: the engine's passes also take interval bounds, whose rule for max(a, b) ([max(l_a, l_b),
    max(u_a, u_b)]) the LP's triangles do not have."""
    if any(interval.max_operands(net, k) for k in range(len(net.nodes))):
        assert np.all(res.lower >= res.info["objective"] - 1e-7)
        return True
    np.testing.assert_allclose(res.lower, res.info["objective"], atol=1e-7)
    return False


def test_lp_lies_between_the_dual_pass_and_the_exact_minimum(tiny):
    net, box, C, d, exact = tiny
    res = lp.bound(net, box, C, d)
    assert res.info["disagreements"] == [] and res.info["status"] == ["optimal"] * 3
    rederived_as_solved(net, res)
    adaptive = dual.bound(net, box, C, d, layer_bounds=res.layer_bounds, slopes="adaptive").lower
    assert np.all(res.lower >= adaptive - 1e-7)
    assert np.all(res.lower <= exact + 1e-7)
    same_bounds = milp.bound(net, box, C, d, layer_bounds=res.layer_bounds)
    assert np.all(np.abs(same_bounds.upper - exact) <= 1e-6)


@pytest.mark.parametrize("eps", [0.02, 0.1])
def test_lp_on_graphs_is_sound_and_at_least_the_dual_pass(graph, eps):
    rng, box, C, d = problem(graph, 2, eps)
    res = lp.bound(graph, box, C, d)
    assert res.info["disagreements"] == [] and res.info["variables"] > graph.n_inputs + 2 * graph.n_relus - 1
    if not rederived_as_solved(graph, res):  # the same relaxation: the dual pass at any slopes is at most the LP
        assert np.all(res.info["crown"] <= res.info["objective"] + 1e-7)
    for slopes in ("wk", "adaptive"):
        same = dual.bound(graph, box, C, d, layer_bounds=res.layer_bounds, slopes=slopes).lower
        assert np.all(res.lower >= same - 1e-7), slopes
    assert np.all(res.lower <= (graph.forward(samples(box, rng)) @ C.T + d).min(axis=0) + 1e-9)


def test_lp_on_a_conv_graph_equals_the_lp_of_its_dense_expansion(graph, monkeypatch):
    """(MaxPool's whole windows, which the expansion's dense Gathers hide, left out: test_max_windows.py.)"""
    _, box, C, d = problem(graph, 3, 0.05)
    for module in (engine, encode):
        monkeypatch.setattr(module, "max_windows", lambda network: {})
    dense = dense_expansion(graph)
    a, b = lp.bound(graph, box, C, d), lp.bound(dense, box, C, d)
    np.testing.assert_allclose(a.lower, b.lower, rtol=0, atol=1e-7)
    np.testing.assert_allclose(a.info["objective"], b.info["objective"], rtol=0, atol=1e-7)


def node_values(net: Network, x: np.ndarray) -> list[np.ndarray]:
    """Every node's flat values (N, n_k) at the inputs x (N, n_inputs), node by node through the operators."""
    values = [torch.tensor(x).reshape(len(x), *net.input_shape)]
    for node in net.nodes[1:]:
        values.append(node.op.forward(*[values[i] for i in node.inputs]))
    return [v.reshape(len(x), -1).numpy() for v in values]


@pytest.mark.parametrize("kind, eps", [("conv_bn_avgpool_dense", 0.05), ("strided_dilated_grouped", 0.05),
                                       ("residual", 0.02), ("maxpool", 0.05), ("concat_pad", 0.05)])
def test_lp_all_bounds_hold_every_sampled_relu_input(kind, eps, tmp_path):
    net = load_onnx(random_graph_file(kind, tmp_path, seed=6))
    rng, box, C, d = problem(net, 4, eps)
    base = dual.bound(net, box, C, d)
    tight, info = lp.lp_layer_bounds(net, box, base.layer_bounds)
    assert info["lps"] > 0 and info["failed"] == 0 and info["disagreements"] == 0
    values = node_values(net, samples(box, rng))
    shrunk = 0.0
    for k, (l, u), (bl, bu) in zip(interval.relu_inputs(net), tight, base.layer_bounds):
        assert np.all(values[k] >= l - 1e-9) and np.all(values[k] <= u + 1e-9), k
        assert np.all(l >= bl) and np.all(u <= bu)  # never looser
        shrunk += float(np.sum(bu - bl) - np.sum(u - l))
    assert shrunk > 0
    res = lp.bound(net, box, C, d, intermediate="lp")
    assert np.all(res.lower >= lp.bound(net, box, C, d).lower - 1e-7)


def test_every_real_input_is_a_point_of_the_milp(graph):
    rng, box, C, d = problem(graph, 5, 0.1)
    bounds = dual.bound(graph, box, C, d).layer_bounds
    problem_, layout = encode.build_problem(graph, box, bounds, kind="bigm")
    G, g0 = encode.rows(layout, C, d)
    assert sum(a.size for a in layout.binary) == sum(u.size for u in layout.unstable) > 0
    for x in samples(box, rng, 40):
        p = milp.full_point(graph, layout, problem_.n, x)
        assert np.all(problem_.A_ub @ p <= problem_.b_ub + 1e-9)
        np.testing.assert_allclose(problem_.A_eq @ p, problem_.b_eq, atol=1e-9)
        assert np.all(p >= problem_.lb - 1e-9) and np.all(p <= problem_.ub + 1e-9)
        np.testing.assert_allclose(G @ p + g0, C @ graph.forward(x) + d, atol=1e-9)


def test_milp_with_a_time_limit_stays_sound_on_graphs(graph):
    rng, box, C, d = problem(graph, 6, 0.1)
    res = milp.bound(graph, box, C, d, time_limit=1.0, objective="min")
    assert np.all(res.lower <= res.upper) and box.contains(res.x)
    np.testing.assert_allclose(res.upper, np.einsum("kj,kj->k", graph.forward(res.x), C) + d, rtol=0, atol=1e-12)
    assert res.lower.min() <= (graph.forward(samples(box, rng)) @ C.T + d).min() + 1e-9
    # never below the dual pass on the same layer bounds (given, so that a loaded machine's shorter alpha pass
    # inside the 1 s cannot change what is compared)
    bounds = dual.bound(graph, box, C, d, slopes="adaptive").layer_bounds
    given = milp.bound(graph, box, C, d, layer_bounds=bounds, time_limit=1.0, objective="min")
    assert np.all(given.lower >= dual.bound(graph, box, C, d, layer_bounds=bounds, slopes="adaptive").lower - 1e-9)
    assert given.lower.min() <= (graph.forward(samples(box, rng)) @ C.T + d).min() + 1e-9


def test_interior_point_and_simplex_give_the_same_lp_bound(graph, monkeypatch):
    """Large LPs go to HiGHS's interior-point solver (solver_highs.IPM_ABOVE); forced on these small ones, its
    re-derived bounds equal the warm-started simplex's (the same LP optimum, both re-derived soundly)."""
    from verifier import solver_highs

    _, box, C, d = problem(graph, 5, 0.05)
    simplex = lp.bound(graph, box, C, d)
    monkeypatch.setattr(solver_highs, "IPM_ABOVE", 0)
    ipm = lp.bound(graph, box, C, d)
    assert all(s == "optimal" for s in ipm.info["status"])
    np.testing.assert_allclose(ipm.info["objective"], simplex.info["objective"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ipm.lower, simplex.lower, rtol=1e-6, atol=1e-6)
