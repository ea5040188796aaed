"""Network -> ONNX: a dense chain as Gemm/Relu layers (as it always was), a graph operator by operator.

Graph export (opset 13, fixed shapes: the ONNX shapes of the graph): Dense -> Reshape to (1, n) + Gemm (+ Reshape),
Conv2d -> Conv, AvgPool2d -> AveragePool, Elementwise -> Mul/Add, Reshape, Transpose, Pad (constant), Concat,
Sum -> Add/Sub (Mul for other coefficients), Gather -> Reshape + Pad (a zero appended) + Gather, ReLU -> Relu. A loaded
MaxPool is saved as its exact ReLU rewrite (the ops package).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import ops
from .network import Affine, Network


def _model(nodes: list, inits: list, elem: int, input_shape: list, output_shape: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "network", [helper.make_tensor_value_info("input", elem, input_shape)],
                              [helper.make_tensor_value_info("output", elem, output_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="verifier")
    model.ir_version = 8  # opset 13 needs IR >= 7; pinned so that older onnxruntime releases load it too
    return model


def _chain_model(network: Network, dtype) -> onnx.ModelProto:
    """A dense chain as an ONNX model (opset 13): [Reshape to rows], then Gemm (transB=1) and Relu per layer.

    Input "input" of shape ``network.input_shape``, with a symbolic batch axis "batch" so that onnxruntime runs many
    samples in one call: a leading 1 of a rank >= 2 shape becomes "batch" (load_onnx reads it back as 1, so the
    shape round-trips), and a flat shape (n,) (the default of a Network built without one) is written as
    ["batch", n] (read back as (1, n): same n_inputs, same function). Other shapes (e.g. (2, 3)) stay fixed.
    Output "output" of shape [batch, n_outputs].
    """
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    shape = list(network.input_shape)
    shape = [1, *shape] if len(shape) == 1 else shape
    batched = len(shape) >= 2 and shape[0] == 1
    declared = ["batch", *shape[1:]] if batched else shape
    nodes, inits, current = [], [], "input"
    if not (batched and len(shape) == 2):  # rows of n_inputs: [batch, n], or [1, n] for one sample of a fixed shape
        nodes, current = [helper.make_node("Reshape", ["input", "rows"], ["flat"], name="reshape")], "flat"
    for i, layer in enumerate(network.layers):
        out = "output" if i == len(network.layers) - 1 else f"h{i}"
        if isinstance(layer, Affine):
            inits += [numpy_helper.from_array(layer.weight.astype(dtype), f"weight{i}"),
                      numpy_helper.from_array(layer.bias.astype(dtype), f"bias{i}")]
            nodes.append(helper.make_node("Gemm", [current, f"weight{i}", f"bias{i}"], [out], name=f"gemm{i}",
                                          transB=1))
        else:
            nodes.append(helper.make_node("Relu", [current], [out], name=f"relu{i}"))
        current = out
    if nodes[0].op_type == "Reshape":  # listed last: weight0 stays the first initializer
        inits.append(numpy_helper.from_array(np.array([-1, network.n_inputs], dtype=np.int64), "rows"))
    return _model(nodes, inits, elem, declared, ["batch" if batched else 1, network.n_outputs])


class _Writer:
    """ONNX nodes and initializers of a graph being written; names are unique by a counter."""

    def __init__(self, dtype) -> None:
        self.dtype, self.nodes, self.inits, self.count = dtype, [], [], 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, value, stem: str, integer: bool = False) -> str:
        name = self.name(stem)
        array = np.asarray(value, dtype=np.int64 if integer else self.dtype)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list, out: str | None = None, **attrs) -> str:
        out = out or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(f"{op}_"), **attrs))
        return out

    def reshape(self, x: str, shape: tuple, current: tuple) -> str:
        return x if tuple(shape) == tuple(current) else self.node("Reshape", [x, self.const(shape, "shape", True)])


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _write_op(w: _Writer, op, xs: list) -> str:
    """ONNX nodes computing op on the named inputs; returns the output's name."""
    if isinstance(op, ops.ReLU):
        return w.node("Relu", xs)
    if isinstance(op, ops.Dense):
        args = [w.reshape(xs[0], (1, op.weight.shape[1]), op.in_shape), w.const(_numpy(op.weight), "weight")]
        if op.bias is not None:
            args.append(w.const(_numpy(op.bias), "bias"))
        return w.reshape(w.node("Gemm", args, transB=1), op.out_shape, (1, op.weight.shape[0]))
    if isinstance(op, ops.Conv2d):
        image = w.reshape(xs[0], (1, *op.in_shape[-3:]), op.in_shape)
        pads = [*op.padding, *op.padding]
        if isinstance(op, ops.AvgPool2d):
            y = w.node("AveragePool", [image], kernel_shape=list(op.kernel), strides=list(op.stride), pads=pads,
                       count_include_pad=1)
        else:
            args = [image, w.const(_numpy(op.weight), "weight")]
            if op.bias is not None:
                args.append(w.const(_numpy(op.bias), "bias"))
            y = w.node("Conv", args, kernel_shape=list(op.weight.shape[-2:]), strides=list(op.stride), pads=pads,
                       dilations=list(op.dilation), group=op.groups)
        return w.reshape(y, op.out_shape, (1, *op.out_shape[-3:]))
    if isinstance(op, ops.Elementwise):
        y = xs[0] if op.scale is None else w.node("Mul", [xs[0], w.const(_numpy(op.scale), "scale")])
        return y if op.shift is None else w.node("Add", [y, w.const(_numpy(op.shift), "shift")])
    if isinstance(op, ops.Reshape):
        return w.node("Reshape", [xs[0], w.const(op.out_shape, "shape", True)])
    if isinstance(op, ops.Transpose):
        return w.node("Transpose", xs, perm=list(op.perm))
    if isinstance(op, ops.Pad):
        pads = [a for a, _ in op.pads] + [b for _, b in op.pads]
        return w.node("Pad", [xs[0], w.const(pads, "pads", True)], mode="constant")
    if isinstance(op, ops.Concat):
        return w.node("Concat", xs, axis=op.axis)
    if isinstance(op, ops.Sum):
        if tuple(op.coefficients) in ((1.0, 1.0), (1.0, -1.0)):
            return w.node("Add" if op.coefficients[1] > 0 else "Sub", xs)
        terms = [w.node("Mul", [x, w.const(c, "coefficient")]) for x, c in zip(xs, op.coefficients)]
        total = terms[0]
        for term in terms[1:]:
            total = w.node("Add", [total, term])
        return total
    if isinstance(op, ops.Gather):  # a zero appended: index -1 reads it
        flat = w.node("Pad", [w.reshape(xs[0], (-1,), ()), w.const([0, 1], "pads", True)], mode="constant")
        index = w.const(op.index.cpu().numpy().reshape(op.out_shape), "index", True)
        return w.node("Gather", [flat, index], axis=0)
    raise ValueError(f"save_onnx: no ONNX form for {type(op).__name__}")


def _graph_model(network: Network, dtype) -> onnx.ModelProto:
    w = _Writer(dtype)
    names = ["input"]
    for k, node in enumerate(network.nodes[1:], 1):
        names.append(_write_op(w, node.op, [names[i] for i in node.inputs]))
    w.node("Identity", [names[network.output]], out="output")
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return _model(w.nodes, w.inits, elem, list(network.input_shape), list(network.output_shape))


def to_onnx_model(network: Network, dtype=np.float32) -> onnx.ModelProto:
    """The network as an ONNX model (opset 13): `_chain_model` for a dense chain, else the graph's operators
    with fixed shapes (module docstring)."""
    return _chain_model(network, dtype) if network.is_chain else _graph_model(network, dtype)


def save_onnx(network: Network, path: str | Path, dtype=np.float32) -> Path:
    """Write the network as an ONNX file; returns the path.

    dtype float32 (default) is what ONNX models hold in practice and what every tool accepts; loading it back
    gives the float32-rounded weights (relative change <= 6e-8, and saving that again is lossless). float64
    (onnxruntime runs Gemm/Relu in double) makes ``load_onnx(save_onnx(net, p, np.float64))`` exactly ``net``.
    """
    path = Path(path)
    onnx.save(to_onnx_model(network, dtype), str(path))
    return path


