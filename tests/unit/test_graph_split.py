"""Input splitting and the ReLU-split cheap phase on network graphs (bounds/symbolic.py, bab.py).

Checked on the random ONNX graphs of every operator kind (graph_models.py) and on tiny graphs built here with few
inputs: symbolic node bounds hold every sampled value of every node and are never looser than IBP; batched boxes
agree with single boxes; the objective's linear bound lies below the rows at sampled points and clipping keeps
every sampled point where the rows are <= 0; input_split's verdicts and the symbolic bound match the enumeration
oracle (bounds/enumerate.py) on the tiny conv / residual / MaxPool graphs, a dense grid evaluated by onnxruntime
(with a Lipschitz bound from the operators' sparse matrices, which no bound pass uses) on 3-input graphs, and on a
9-input conv graph holds only when sampling and PGD find nothing, violated only with a point the network and
onnxruntime confirm; every ReLU-split domain's bound is below the sampled minimum within its activation pattern.
"""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from graph_models import KINDS, TINY_KINDS, random_graph_file
from verifier import bab, ops
from verifier.split_domains import SplitDomains
from verifier.falsification import falsify
from verifier.bounds import dual, engine, interval, symbolic
from verifier.bounds.enumerate import enumerate_bound
from verifier.network import Network, Node
from verifier.objective_rows import ObjectiveRows
from verifier.onnx import OnnxRunner, load_onnx
from verifier.spec import InputBox, Property
from verifier.verify import Checker, verify

TOL = 1e-9


# --- tiny graphs with few inputs ----------------------------------------------------------------------------
def _dense(rng, n_in: int, n_out: int) -> ops.Dense:
    return ops.Dense(torch.tensor(rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)),
                     torch.tensor(rng.normal(size=n_out) * 0.3), ((n_in,),), (n_out,))


def _conv(rng, in_shape: tuple, out_channels: int, kernel: tuple, **kw) -> ops.Conv2d:
    weight = rng.normal(size=(out_channels, in_shape[-3], *kernel)) / np.sqrt(in_shape[-3] * np.prod(kernel))
    return ops.Conv2d(torch.tensor(weight), torch.tensor(rng.normal(size=out_channels) * 0.3), (in_shape,), **kw)


def _graph(input_shape: tuple, ops_and_inputs: list) -> Network:
    nodes = [Node(ops.Input(input_shape), ())] + [Node(op, tuple(inputs)) for op, inputs in ops_and_inputs]
    return Network(nodes, input_shape)


def residual3(seed: int) -> Network:
    """3 inputs: relu(W1 x) -> relu(W2 .) -> W3 ., added to the first block (residual), relu, dense."""
    rng = np.random.default_rng(seed)
    return _graph((3,), [(_dense(rng, 3, 6), [0]), (ops.ReLU((6,)), [1]), (_dense(rng, 6, 6), [2]),
                         (ops.ReLU((6,)), [3]), (_dense(rng, 6, 6), [4]), (ops.Sum((1.0, 1.0), ((6,), (6,))), [2, 5]),
                         (ops.ReLU((6,)), [6]), (_dense(rng, 6, 2), [7])])


def conv3(seed: int) -> Network:
    """Input (1, 1, 1, 3): conv (1 x 2 kernel), relu, average pool, per-channel affine, relu, flatten, dense."""
    rng = np.random.default_rng(seed)
    conv = _conv(rng, (1, 1, 1, 3), 4, (1, 2))  # -> (1, 4, 1, 2)
    scale, shift = torch.tensor(rng.uniform(0.5, 2.0, (4, 1, 1))), torch.tensor(rng.normal(size=(4, 1, 1)) * 0.2)
    return _graph((1, 1, 1, 3), [(conv, [0]), (ops.ReLU((1, 4, 1, 2)), [1]),
                                 (ops.AvgPool2d.of((1, 4, 1, 2), (1, 2), (1, 1), (0, 0)), [2]),
                                 (ops.Elementwise(scale, shift, ((1, 4, 1, 1),)), [3]), (ops.ReLU((1, 4, 1, 1)), [4]),
                                 (ops.Reshape(((1, 4, 1, 1),), (4,)), [5]), (_dense(rng, 4, 4), [6]),
                                 (ops.ReLU((4,)), [7]), (_dense(rng, 4, 2), [8])])


def maxpool3(seed: int) -> Network:
    """3 inputs: relu(W x) (4), max of its two halves as the loader rewrites MaxPool (b + relu(a - b), Gather and
    Sum), concatenated with the relu layer (fan-out), dense."""
    rng = np.random.default_rng(seed)
    return _graph((3,), [(_dense(rng, 3, 4), [0]), (ops.ReLU((4,)), [1]),
                         (ops.Gather(torch.tensor([0, 1]), ((4,),), (2,)), [2]),
                         (ops.Gather(torch.tensor([2, 3]), ((4,),), (2,)), [2]),
                         (ops.Sum((1.0, -1.0), ((2,), (2,))), [3, 4]), (ops.ReLU((2,)), [5]),
                         (ops.Sum((1.0, 1.0), ((2,), (2,))), [4, 6]), (ops.Concat(0, ((2,), (4,))), [7, 2]),
                         (_dense(rng, 6, 4), [8]), (ops.ReLU((4,)), [9]), (_dense(rng, 4, 2), [10])])


def conv9(seed: int) -> Network:
    """Input (1, 1, 3, 3): zero pad, 3x3 conv, relu, 2x2 conv, transpose, relu, flatten, dense."""
    rng = np.random.default_rng(seed)
    first, second = _conv(rng, (1, 1, 5, 5), 3, (3, 3)), _conv(rng, (1, 3, 3, 3), 2, (2, 2))
    return _graph((1, 1, 3, 3), [(ops.Pad(((0, 0), (0, 0), (1, 1), (1, 1)), ((1, 1, 3, 3),)), [0]), (first, [1]),
                                 (ops.ReLU((1, 3, 3, 3)), [2]), (second, [3]),
                                 (ops.Transpose((0, 1, 3, 2), ((1, 2, 2, 2),)), [4]), (ops.ReLU((1, 2, 2, 2)), [5]),
                                 (ops.Reshape(((1, 2, 2, 2),), (8,)), [6]), (_dense(rng, 8, 3), [7])])


TINY = {"residual3": residual3, "conv3": conv3, "maxpool3": maxpool3, "conv9": conv9}


@pytest.fixture(scope="module", params=list(KINDS) + list(TINY))
def graph(request, tmp_path_factory) -> Network:
    if request.param in TINY:
        return TINY[request.param](1)
    return load_onnx(random_graph_file(request.param, tmp_path_factory.mktemp(request.param), seed=5))


# --- helpers ------------------------------------------------------------------------------------------------
def boxes_of(net: Network, seed: int, count: int, eps: float) -> list[InputBox]:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-0.5, 0.5, (count, net.n_inputs))
    return [InputBox(c - eps * rng.uniform(0.5, 1.0, net.n_inputs), c + eps * rng.uniform(0.5, 1.0, net.n_inputs))
            for c in centres]


def points(box: InputBox, rng, n: int = 3000) -> np.ndarray:
    """Uniform points, random corners, and every corner of a box of <= 10 inputs."""
    x = rng.uniform(box.lo, box.hi, (n, box.n))
    x[: n // 5] = np.where(rng.random((n // 5, box.n)) < 0.5, box.lo, box.hi)
    if box.n <= 10:
        corners = np.array(list(itertools.product([0, 1], repeat=box.n)), dtype=np.float64)
        x = np.vstack([x, box.lo + corners * (box.hi - box.lo)])
    return x


def node_values(net: Network, x: np.ndarray) -> list[torch.Tensor]:
    """Every node's values (N, *shape) at the points x (N, n_inputs)."""
    values = [torch.tensor(x).reshape(len(x), *net.input_shape)]
    for node in net.nodes[1:]:
        values.append(node.op.forward(*[values[i] for i in node.inputs]))
    return values


def stacked(boxes: list[InputBox]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(np.stack([b.lo for b in boxes])), torch.tensor(np.stack([b.hi for b in boxes]))


def lipschitz(net: Network, C: np.ndarray) -> np.ndarray:
    """Per row of C, a bound on |C_k f(x) - C_k f(x')| / ||x - x'||_inf: |C| times the product of the operators'
    |matrices| (their sparse() export, which no bound pass uses) applied to ones, a ReLU's slope taken as 1."""
    v = {0: np.ones(net.n_inputs)}
    for k, node in enumerate(net.nodes[1:], 1):
        if isinstance(node.op, ops.ReLU):
            v[k] = v[node.inputs[0]]
        else:
            v[k] = abs(node.op.sparse()[0]) @ np.concatenate([v[i] for i in node.inputs])
    return np.abs(C) @ v[net.output]


# --- symbolic bounds ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("refine", [True, False])
def test_symbolic_bounds_hold_every_sampled_node_value_and_beat_ibp(graph, refine):
    rng = np.random.default_rng(0)
    boxes = boxes_of(graph, 1, 3, 0.15)
    lo, hi = stacked(boxes)
    with torch.no_grad():
        prop = symbolic.propagate(graph, lo, hi, refine)
        ibp = interval.node_bounds(graph, lo, hi)
    assert set(prop.bounds) == set(range(len(graph.nodes)))
    for b, box in enumerate(boxes):
        for k, v in enumerate(node_values(graph, points(box, rng))):
            l, u = (t[b] for t in prop.bounds[k])
            assert bool((v >= l - TOL).all()) and bool((v <= u + TOL).all()), (k, type(graph.nodes[k].op).__name__)
            assert bool((l >= ibp[k][0][b] - TOL).all()) and bool((u <= ibp[k][1][b] + TOL).all()), k


def test_batched_boxes_give_each_box_its_own_bounds(graph):
    """Per-(box, neuron) refinement gathers each box's relaxations: a batch equals its boxes bounded one by one."""
    boxes = boxes_of(graph, 2, 4, 0.2)
    lo, hi = stacked(boxes)
    C, d = torch.tensor(np.random.default_rng(2).normal(size=(1, 3, graph.n_outputs))), torch.zeros(1, 3)
    with torch.no_grad():
        prop = symbolic.propagate(graph, lo, hi)
        lower, A, c, _ = engine.linear_rows(graph, lo, hi, C, d, prop.relaxations, prop.bounds)
        for b in range(len(boxes)):
            one = symbolic.propagate(graph, lo[b:b + 1], hi[b:b + 1])
            for k, (l, u) in one.bounds.items():
                torch.testing.assert_close(l[0], prop.bounds[k][0][b], rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(u[0], prop.bounds[k][1][b], rtol=1e-12, atol=1e-12)
            low_one, A_one, c_one, _ = engine.linear_rows(graph, lo[b:b + 1], hi[b:b + 1], C, d, one.relaxations,
                                                          one.bounds)
            torch.testing.assert_close(low_one[0], lower[b], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(A_one[0], A[b], rtol=1e-12, atol=1e-12)


def test_linear_lower_bound_and_clipping_keep_every_sampled_point(graph):
    rng = np.random.default_rng(3)
    boxes = boxes_of(graph, 3, 2, 0.2)
    lo, hi = stacked(boxes)
    C = rng.normal(size=(3, graph.n_outputs))
    x = [points(box, rng) for box in boxes]
    rows = [graph.forward(xb) @ C.T for xb in x]
    d = -np.quantile(np.vstack(rows), 0.5, axis=0)  # about half the points meet each row (<= 0)
    with torch.no_grad():
        prop = symbolic.propagate(graph, lo, hi)
        lower, A, c, at_relus = engine.linear_rows(graph, lo, hi, torch.tensor(C)[None], torch.tensor(d)[None],
                                                   prop.relaxations, prop.bounds)
        scores = symbolic.split_scores(graph, lo, hi, prop, at_relus, torch.zeros(len(boxes), dtype=torch.long))
    assert bool((scores >= 0).all()) and bool(torch.isfinite(scores).all())
    assert set(at_relus) <= set(graph.relu_nodes)
    for b, xb in enumerate(x):
        values = rows[b] + d
        linear = xb @ A[b].numpy().T + c[b].numpy()
        assert np.all(linear <= values + TOL) and np.all(lower[b].numpy() <= values.min(0) + TOL)
        for chosen in ([0], [1, 2], [0, 1, 2]):  # a row alone and conjunctions
            new_lo, new_hi, empty = symbolic.clip(lo[b:b + 1], hi[b:b + 1], A[b:b + 1, chosen], c[b:b + 1, chosen])
            inside = np.all(values[:, chosen] <= 0, axis=1)
            if bool(empty[0]):
                assert not inside.any()
            else:
                kept = xb[inside]
                assert np.all(kept >= new_lo[0].numpy() - 1e-12) and np.all(kept <= new_hi[0].numpy() + 1e-12)


# --- input splitting ----------------------------------------------------------------------------------------
def float64_confirm(net: Network, box: InputBox, prop: Property):
    return lambda x: box.contains(x) and bool(prop.violated_by(net.forward(x)))


@pytest.mark.parametrize("kind", list(TINY_KINDS) + ["maxpool3"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_input_split_verdicts_and_symbolic_bounds_match_the_enumeration(kind, seed, tmp_path):
    """Tiny conv, residual and MaxPool graphs (<= 14 ReLUs): the symbolic bound (refined or not) is below the
    exact minimum, and input_split's verdict is the exact one on single rows, disjunctions and conjunctions
    0.05 on either side of the exact minimum; an exact tie is never proved."""
    net = TINY[kind](seed) if kind in TINY else load_onnx(random_graph_file(kind, tmp_path, seed))
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-0.5, 0.5, net.n_inputs)
    box = InputBox(centre - 0.3, centre + 0.3)
    C = rng.normal(size=(3, net.n_outputs))
    exact = enumerate_bound(net, box, C)
    for refine in (True, False):
        assert np.all(symbolic.bound(net, box, C, refine=refine).lower <= exact + TOL)
    cases = [(Property(((C[:1], np.array([exact[0] + shift])),)), shift) for shift in (-0.05, 0.05)]
    cases += [(Property(tuple((C[k:k + 1], np.array([exact[k] + shift])) for k in range(3))), shift)
              for shift in (-0.05, 0.05)]
    cases += [(Property(((C[:2], exact[:2] - 0.05),)), -0.05)]  # a conjunction ruled out row by row
    for prop, shift in cases:
        result = bab.input_split(net, box, prop, deadline=time.perf_counter() + 20,
                                 confirm=float64_confirm(net, box, prop))
        assert result.status == ("holds" if shift < 0 else "violated"), (shift, result.stats)
        if result.status == "violated":
            assert box.contains(result.x) and prop.violated_by(net.forward(result.x))
    tie = Property(((C[:1], exact[:1]),))  # the threshold is the exact minimum, met at a point: unsafe
    assert bab.input_split(net, box, tie, deadline=time.perf_counter() + 1, confirm=lambda x: False).status in (
        "unknown", "timeout")


@pytest.mark.parametrize("name", ["residual3", "conv3", "maxpool3"])
@pytest.mark.parametrize("n_rows", [1, 2])
def test_input_split_matches_a_grid_on_three_input_graphs(name, n_rows):
    """Unsafe: ``C f(x) <= t`` (one row, or a conjunction of two). The minimum of ``max_rows (C f - t)`` over a
    121^3 grid minus the Lipschitz bound times half a grid step bounds the true minimum from below: thresholds
    shifted to a margin of 0.01 on either side decide the verdict. The grid's values are the network's forward,
    checked against onnxruntime on a sample of the grid."""
    rng = np.random.default_rng(n_rows)
    for seed in range(3):
        net = TINY[name](seed)
        centre = rng.uniform(-0.5, 0.5, 3)
        box = InputBox(centre - 0.6, centre + 0.6)
        C = rng.normal(size=(n_rows, net.n_outputs))
        steps = 120
        axes = [np.linspace(a, b, steps + 1) for a, b in zip(box.lo, box.hi)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        outputs = net.forward(grid)
        some = rng.choice(len(grid), 500, replace=False)
        np.testing.assert_allclose(outputs[some], OnnxRunner(net)(grid[some]), rtol=1e-5, atol=1e-5)
        values = outputs @ C.T
        t0 = np.quantile(values, 0.3, axis=0)
        lowest = np.max(values - t0, axis=1).min()
        error = lipschitz(net, C).max() * (1.2 / steps) / 2
        for expected, shift in (("holds", lowest - error - 0.01), ("violated", lowest + 0.01)):
            prop = Property(((C, t0 + shift),))
            result = bab.input_split(net, box, prop, deadline=time.perf_counter() + 30,
                                     confirm=float64_confirm(net, box, prop))
            assert result.status == expected, (seed, result.stats)
            if expected == "violated":
                assert box.contains(result.x) and prop.violated_by(net.forward(result.x))
                assert prop.violated_by(OnnxRunner(net)(result.x[None])[0])


def test_input_split_on_a_nine_input_conv_graph_is_sound_against_sampling_pgd_and_onnxruntime():
    """Thresholds around the sampled minimum of a conjunction of two rows: input_split with verify's confirm path
    (the point rounded to float32 in the box, onnxruntime) and verify itself (which takes input splitting for 9
    inputs) say holds only when 200k samples and PGD find no violation, violated only with a point that the
    network and onnxruntime confirm."""
    seen = set()
    for seed in range(3):
        net = conv9(seed)
        rng = np.random.default_rng(seed)
        box = InputBox(rng.uniform(-0.5, 0.0, 9), rng.uniform(0.0, 0.5, 9))
        C = rng.normal(size=(2, net.n_outputs))
        x = box.sample(200_000, rng)
        sampled = np.max(net.forward(x) @ C.T, axis=1).min()
        checker = Checker(net)
        for offset in (-0.3, -0.02, 0.0, 0.02):
            prop = Property(((C, np.full(2, sampled + offset)),))  # unsafe: both rows <= threshold
            split = bab.input_split(net, box, prop, deadline=time.perf_counter() + 20,
                                    confirm=lambda p: checker(box, prop, p) is not None)
            verdict = verify(net, box, prop, timeout=20, seed=seed)
            assert verdict.status == split.status or "timeout" in (verdict.status, split.status)
            assert "input_split" in verdict.stats["phases"] or verdict.stats["phases"].keys() == {"falsify"}
            seen.add(split.status)
            if split.status == "holds":
                assert not prop.violated_by(net.forward(x)).any()
                assert not falsify(net, box, prop, seed=seed, time_limit=1.0, rounds=2).success
            elif split.status == "violated":
                point, y = verdict.counterexample
                for z in (point, split.x):
                    assert box.contains(z) and prop.violated_by(net.forward(z))
                    assert prop.violated_by(OnnxRunner(net)(z[None])[0])
            else:
                assert offset < 0  # undecided only where no sampled point violates
    assert seen >= {"holds", "violated"}


# --- ReLU splitting -----------------------------------------------------------------------------------------
def test_every_relu_split_domain_bound_is_below_its_patterns_sampled_minimum(graph):
    """SplitDomains on graphs (re-tightened layer bounds, alpha and beta optimized, beta started at random
    values >= 0): each domain's bound is below the minimum over the sampled points with its split phases."""
    rng = np.random.default_rng(4)
    box = boxes_of(graph, 4, 1, 0.1)[0]
    C = rng.normal(size=(2, graph.n_outputs))
    prop = Property(tuple((C[k:k + 1], np.array([-10.0])) for k in range(2)))
    root = dual.bound(graph, box, C, np.zeros(2), slopes="adaptive").layer_bounds
    root_t = {k: tuple(torch.tensor(v).reshape(1, *graph.nodes[k].op.out_shape) for v in lu)
              for k, lu in zip(interval.relu_inputs(graph), root)}
    rows = ObjectiveRows.of(prop, graph.n_outputs)
    lo, hi = (torch.tensor(v)[None] for v in (box.lo, box.hi))
    problem = SplitDomains(graph, lo, hi, rows, root_t)
    if problem.n_split == 0:
        pytest.skip("no unstable neuron at the root")
    x = points(box, rng, 4000)
    values = node_values(graph, x)
    pre = torch.cat([values[graph.nodes[r].inputs[0]].reshape(len(x), -1)[:, problem.cols[r]]
                     for r in problem.relus], 1)  # (P, N): the splittable neurons' pre-activations
    B = 12
    splits = torch.zeros(B, problem.n_split, dtype=torch.int8)
    for s in splits[1:]:  # domains of 1-4 split neurons, phases of a sampled point (so the pattern is met)
        chosen = torch.randperm(problem.n_split)[:int(rng.integers(1, 5))]
        s[chosen] = torch.where(pre[int(rng.integers(len(x))), chosen] >= 0, 1, -1).to(torch.int8)
    disjunct = torch.arange(B) % 2
    alpha = problem.start_alpha().expand(B, 1, -1).clone()
    beta = torch.tensor(rng.uniform(0, 1, size=(B, 1, problem.n_split)))
    lower, *_ = problem.bound(splits, disjunct, alpha, beta, steps=5)
    objective = graph.forward(x) @ C.T  # rows C f(x) + d with d = 10
    for s, k, low in zip(splits, disjunct, lower[:, 0]):
        fixed = s != 0
        within = ((pre[:, fixed] >= 0) == (s[fixed] > 0)).all(1).numpy()
        assert within.any()
        assert float(low) <= objective[within, int(k)].min() + 10.0 + TOL


@pytest.mark.parametrize("kind", ["residual", "maxpool", "conv_bn_avgpool_dense"])
def test_relu_split_on_graphs_is_sound(kind, tmp_path):
    """Thresholds around the sampled minimum: holds only when sampling finds nothing; violated with a real point;
    undecided only when neither the search nor the MILP settles it in time."""
    net = load_onnx(random_graph_file(kind, tmp_path, seed=6))
    rng = np.random.default_rng(6)
    box = boxes_of(net, 6, 1, 0.03)[0]
    C = rng.normal(size=(1, net.n_outputs))
    x = box.sample(20_000, rng)
    sampled = (net.forward(x) @ C.T).min()
    for offset in (-0.5, -0.01, 0.01):
        prop = Property(((C, np.array([sampled + offset])),))
        result = bab.relu_split(net, box, prop, deadline=time.perf_counter() + 10,
                                confirm=float64_confirm(net, box, prop))
        assert result.status in ("holds", "violated", "unknown", "timeout")
        if result.status == "holds":
            assert offset < 0 and not prop.violated_by(net.forward(x)).any()
        elif result.status == "violated":
            assert box.contains(result.x) and prop.violated_by(net.forward(result.x))
        assert result.stats["domains"] >= 1
