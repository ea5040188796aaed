"""Random ONNX graph networks of every supported operator kind, built with onnx.helper (tests only).

`random_graph_model(kind, seed)` returns an onnx.ModelProto with one float32 input "x" and output "y"; onnxruntime
is the oracle the tests compare against, so nothing here shares code with the loader. `KINDS` lists the kinds,
`TINY_KINDS` those small enough for the enumeration oracle. `dense_expansion` turns a loaded network into the same
function with every single-input linear operator a dense matrix (to check operators' transposes and encodings).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from verifier import ops
from verifier.network import Network, Node


class _Builder:
    """An ONNX graph under construction that tracks the shape of the current data tensor."""

    def __init__(self, shape: tuple, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0
        self.input_shape = tuple(shape)

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, value, integer: bool = False) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64 if integer else np.float32), name))
        return name

    def node(self, op: str, inputs: list, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def weight(self, *shape) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return self.const(self.rng.normal(size=shape) / np.sqrt(fan_in))

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, groups: int = 1, **attrs) -> str:
        bias = self.const(self.rng.normal(size=c_out) * 0.1)
        return self.node("Conv", [x, self.weight(c_out, c_in // groups, k, k), bias], kernel_shape=[k, k], group=groups,
                         **attrs)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        return self.node("BatchNormalization", [x, self.const(r.uniform(0.5, 2, c)), self.const(r.normal(size=c) * 0.1),
                                                self.const(r.normal(size=c) * 0.1), self.const(r.uniform(0.5, 2, c))],
                         epsilon=1e-3)

    def gemm(self, x: str, n_in: int, n_out: int) -> str:
        return self.node("Gemm", [x, self.weight(n_out, n_in), self.const(self.rng.normal(size=n_out) * 0.1)], transB=1)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def flatten(self, x: str) -> str:
        return self.node("Flatten", [x], axis=1)

    def model(self, out: str) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [out], ["y"], name="output"))
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  list(self.input_shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 7
        return model


def _conv_bn_avgpool_dense(g: _Builder) -> str:  # input (1, 2, 8, 8)
    h = g.relu(g.bn(g.conv("x", 2, 4, 3, pads=[1, 1, 1, 1]), 4))
    h = g.node("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
    return g.gemm(g.relu(g.gemm(g.flatten(h), 64, 10)), 10, 3)


def _strided_dilated_grouped(g: _Builder) -> str:  # input (1, 4, 9, 9)
    h = g.relu(g.conv("x", 4, 6, 3, strides=[2, 2], pads=[1, 0, 0, 1]))  # asymmetric pads: 4 x 4
    h = g.relu(g.conv(h, 6, 6, 2, groups=3, dilations=[2, 2], pads=[1, 1, 1, 1]))  # 4 x 4
    h = g.relu(g.conv(h, 6, 4, 3, strides=[2, 2], pads=[1, 1, 1, 1]))  # stride 2 with a leftover row: 2 x 2
    return g.gemm(g.flatten(h), 16, 4)


def _residual(g: _Builder) -> str:  # input (1, 3, 6, 6)
    a = g.relu(g.conv("x", 3, 4, 3, pads=[1, 1, 1, 1]))
    b = g.conv(g.relu(g.conv(a, 4, 4, 3, pads=[1, 1, 1, 1])), 4, 4, 3, pads=[1, 1, 1, 1])
    h = g.relu(g.node("Add", [a, b]))
    h = g.relu(g.node("Sub", [h, g.relu(g.conv(h, 4, 4, 1))]))
    return g.gemm(g.flatten(h), 144, 3)


def _maxpool(g: _Builder) -> str:  # input (1, 2, 7, 7)
    h = g.relu(g.conv("x", 2, 3, 2))  # 6 x 6
    h = g.node("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 3 x 3, 9 -> 16 entries
    h = g.node("MaxPool", [h], kernel_shape=[2, 2], strides=[1, 1])  # 2 x 2
    return g.gemm(g.flatten(h), 12, 3)


def _concat_pad(g: _Builder) -> str:  # input (1, 2, 5, 5)
    a = g.relu(g.conv("x", 2, 3, 3, pads=[1, 1, 1, 1]))
    b = g.relu(g.conv("x", 2, 2, 1))
    h = g.node("Concat", [a, b], axis=1)  # 5 channels
    h = g.node("Pad", [h, g.const([0, 0, 1, 0, 0, 0, 0, 2], integer=True)], mode="constant")  # 6 x 7
    h = g.relu(g.conv(h, 5, 3, 3, strides=[2, 2]))  # 2 x 3
    return g.gemm(g.node("Concat", [g.flatten(h), g.flatten(g.conv(h, 3, 1, 1))], axis=1), 24, 4)


def _nhwc_normalised(g: _Builder) -> str:  # input (1, 6, 6, 3), as tf2onnx writes image nets
    h = g.node("Div", [g.node("Sub", ["x", g.const([0.4, 0.5, 0.6])]), g.const([0.2, 0.25, 0.3])])
    h = g.node("Transpose", [h], perm=[0, 3, 1, 2])
    h = g.relu(g.conv(h, 3, 4, 2, strides=[2, 2]))  # 3 x 3
    h = g.node("Reshape", [g.node("Transpose", [h], perm=[0, 2, 3, 1]), g.const([-1, 36], integer=True)])
    h = g.relu(g.node("Add", [g.node("MatMul", [h, g.weight(36, 8)]), g.const(g.rng.normal(size=8) * 0.1)]))
    return g.node("Add", [g.node("MatMul", [h, g.weight(8, 3)]), g.const(g.rng.normal(size=3) * 0.1)])


def _normalised_conv_padded_pool(g: _Builder) -> str:  # input (1, 3, 6, 6)
    mean = g.const(np.array([0.4, 0.5, 0.6]).reshape(3, 1, 1))
    std = g.const(np.array([0.2, 0.25, 0.3]).reshape(3, 1, 1))
    h = g.node("Div", [g.node("Sub", ["x", mean]), std])  # folds into the conv (no padding)
    h = g.relu(g.node("Mul", [g.conv(h, 3, 4, 3), g.const(np.array([1.5, -0.5, 2.0, 0.7]).reshape(4, 1, 1))]))  # 4x4
    h = g.node("AveragePool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    return g.gemm(g.flatten(h), 16, 3)  # 2 x 2


def _dense_branches(g: _Builder) -> str:  # input (1, 5): a dense graph that is not a chain
    a = g.relu(g.bn(g.gemm("x", 5, 6), 6))  # batch norm on (1, 6): folds into the Gemm
    a = g.relu(g.gemm(a, 6, 6))
    b = g.relu(g.gemm(a, 6, 6))
    h = g.relu(g.node("Add", [g.node("Mul", [g.gemm(b, 6, 6), g.const(1.5)]), a]))
    return g.gemm(h, 6, 3)


_KINDS = {
    "conv_bn_avgpool_dense": ((1, 2, 8, 8), _conv_bn_avgpool_dense),
    "strided_dilated_grouped": ((1, 4, 9, 9), _strided_dilated_grouped),
    "residual": ((1, 3, 6, 6), _residual),
    "maxpool": ((1, 2, 7, 7), _maxpool),
    "concat_pad": ((1, 2, 5, 5), _concat_pad),
    "nhwc_normalised": ((1, 6, 6, 3), _nhwc_normalised),
    "normalised_conv_padded_pool": ((1, 3, 6, 6), _normalised_conv_padded_pool),
    "dense_branches": ((1, 5), _dense_branches),
}
KINDS = tuple(_KINDS)


def _tiny_conv(g: _Builder) -> str:  # input (1, 1, 3, 3): 8 ReLUs
    return g.gemm(g.flatten(g.relu(g.conv("x", 1, 2, 2))), 8, 3)


def _tiny_residual(g: _Builder) -> str:  # input (1, 1, 2, 2): 12 ReLUs
    a = g.relu(g.conv("x", 1, 1, 3, pads=[1, 1, 1, 1]))
    b = g.conv(g.relu(g.conv(a, 1, 1, 3, pads=[1, 1, 1, 1])), 1, 1, 3, pads=[1, 1, 1, 1])
    return g.gemm(g.flatten(g.relu(g.node("Add", [a, b]))), 4, 2)


def _tiny_maxpool(g: _Builder) -> str:  # input (1, 1, 3, 4): 6 ReLUs, then 2 windows of 4 (3 ReLUs each)
    h = g.node("MaxPool", [g.relu(g.conv("x", 1, 1, 2))], kernel_shape=[2, 2], strides=[1, 1])  # 1 x 2
    return g.gemm(g.flatten(h), 2, 2)


_TINY = {  # at most 14 ReLUs: small enough for the enumeration oracle (bounds/enumerate.py)
    "tiny_conv": ((1, 1, 3, 3), _tiny_conv),
    "tiny_residual": ((1, 1, 2, 2), _tiny_residual),
    "tiny_maxpool": ((1, 1, 3, 4), _tiny_maxpool),
}
TINY_KINDS = tuple(_TINY)


def random_graph_model(kind: str, seed: int = 0) -> onnx.ModelProto:
    """A random network of the given kind (see `_KINDS` and `_TINY`)."""
    shape, build = {**_KINDS, **_TINY}[kind]
    g = _Builder(shape, seed)
    return g.model(build(g))


def random_graph_file(kind: str, folder: Path, seed: int = 0) -> Path:
    """`random_graph_model` written to folder/<kind>_<seed>.onnx."""
    path = Path(folder) / f"{kind}_{seed}.onnx"
    onnx.save(random_graph_model(kind, seed), str(path))
    return path


def verdict_cases(net: Network, seed: int) -> tuple:
    """A box around a random centre and properties with known verdicts from the enumeration oracle: (box, C (3,
    n_out), exact minima of C f (3,), [(Property, expected)]): single rows, disjunctions of three and a
    conjunction, shifted 0.05 from the exact minima ("holds" above them, "violated" below)."""
    from verifier.bounds.enumerate import enumerate_bound
    from verifier.spec import InputBox, Property

    rng = np.random.default_rng(seed)
    centre = rng.uniform(-0.5, 0.5, net.n_inputs)
    box = InputBox(centre - 0.3, centre + 0.3)
    C = rng.normal(size=(3, net.n_outputs))
    exact = enumerate_bound(net, box, C)
    cases = [Property(((C[:1], np.array([exact[0] + shift])),)) for shift in (-0.05, 0.05)]
    cases += [Property(tuple((C[k:k + 1], np.array([exact[k] + shift])) for k in range(3))) for shift in (-0.05, 0.05)]
    cases += [Property(((C[:2], exact[:2] - 0.05),))]  # a conjunction ruled out row by row
    return box, C, exact, list(zip(cases, ("holds", "violated", "holds", "violated", "holds")))


def assert_relu_split_verdicts(net: Network, seed: int, device: str = "cpu", around=None) -> list[dict]:
    """bab.relu_split on `verdict_cases` (net, seed) and an exact tie, on `device`, each run inside the context
    around() when given: asserts the enumeration's verdicts (a tie is never "holds"; a violation's point is
    checked) and returns every run's stats."""
    import contextlib
    import time

    from verifier import bab
    from verifier.spec import Property

    box, C, exact, cases = verdict_cases(net, seed)
    stats = []
    for prop, expected in cases + [(Property(((C[:1], exact[:1]),)), None)]:
        confirm = lambda x, prop=prop: box.contains(x) and bool(prop.violated_by(net.forward(x)))
        with around() if around is not None else contextlib.nullcontext():
            result = bab.relu_split(net, box, prop, deadline=time.perf_counter() + 20, confirm=confirm, device=device)
        # a tie (the threshold met at a point): never "holds"; "violated" when the search meets that point
        assert (result.status == expected) if expected else result.status != "holds", (expected, result)
        assert result.status != "violated" or confirm(result.x)
        stats.append(result.stats)
    return stats


def dense_expansion(net: Network) -> Network:
    """The same graph with every single-input linear operator replaced by its dense matrix (from `sparse()`)."""
    nodes = [net.nodes[0]]
    for node in net.nodes[1:]:
        op = node.op
        if isinstance(op, ops.Linear) and len(op.in_shapes) == 1:
            matrix, offset = op.sparse()
            op = ops.Dense(torch.tensor(matrix.toarray()), torch.tensor(offset), op.in_shapes, op.out_shape)
        nodes.append(Node(op, node.inputs))
    return Network(tuple(nodes), net.input_shape, output=net.output)
