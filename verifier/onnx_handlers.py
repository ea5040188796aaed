"""The ONNX operator table: one handler per operator on the data path, each adding operators (verifier/ops/) to
the graph being built. Only verifier/onnx.py uses it.

A handler gets the graph builder, the node's attributes and its inputs: `Data` for a data tensor (a node of the
graph and its ONNX shape), a numpy array for a constant, None for an absent optional input. It returns the `Data`
of its output, or raises ValueError with the reason (onnx.py adds the file, node and operator to the message).
Shapes are ONNX shapes (a batch axis of 1 included); the ops package explains why.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import ops
from .network import Node


@dataclass(frozen=True)
class Data:
    """A data tensor while loading: the id of the node computing it and its ONNX shape."""

    node: int
    shape: tuple


class GraphBuilder:
    """The nodes added so far; node 0 is the input."""

    def __init__(self, input_shape: tuple) -> None:
        self.nodes: list[Node] = [Node(ops.Input(tuple(input_shape)), ())]

    def add(self, op, *inputs: Data) -> Data:
        self.nodes.append(Node(op, tuple(i.node for i in inputs)))
        return Data(len(self.nodes) - 1, tuple(int(s) for s in op.out_shape))


def _tensor(x) -> torch.Tensor:
    return torch.tensor(np.asarray(x, dtype=np.float64))


def _data_args(args: list, op: str, allowed: tuple = (0,)) -> list[int]:
    positions = [k for k, a in enumerate(args) if isinstance(a, Data)]
    if any(k not in allowed for k in positions):
        raise ValueError(f"{op} whose input {positions[-1]} is the data tensor (supported: input(s) {allowed})")
    return positions


# --- shapes --------------------------------------------------------------------------------------------------
def _axes(attrs: dict, args: list) -> list[int] | None:
    """Axes from the attribute (opset < 13) or the second input (opset >= 13), as given (may be negative)."""
    axes = attrs.get("axes", args[1] if len(args) > 1 else None)
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def shape_op(op: str, shape: tuple, attrs: dict, args: list) -> tuple[int, ...]:
    """The output shape of a shape-only op (Identity, Flatten, Reshape, Squeeze, Unsqueeze)."""
    if op in ("Identity", "Dropout"):
        return shape
    if op == "Flatten":
        axis = int(attrs.get("axis", 1)) % (len(shape) + 1) if shape else 0
        return (int(np.prod(shape[:axis])), int(np.prod(shape[axis:])))
    if op == "Reshape":  # 0 copies the input dim (unless allowzero), -1 is inferred
        dims = [int(d) for d in np.asarray(attrs["shape"] if "shape" in attrs else args[1]).reshape(-1)]
        dims = dims if attrs.get("allowzero", 0) else [shape[i] if d == 0 else d for i, d in enumerate(dims)]
        if -1 in dims:
            dims[dims.index(-1)] = int(np.prod(shape)) // max(1, -int(np.prod(dims)))
        if int(np.prod(dims)) != int(np.prod(shape)):
            raise ValueError(f"cannot reshape {shape} to {tuple(dims)}")
        return tuple(dims)
    if op == "Squeeze":
        axes = _axes(attrs, args)
        axes = [i for i, s in enumerate(shape) if s == 1] if axes is None else [a % len(shape) for a in axes]
        if any(shape[a] != 1 for a in axes):
            raise ValueError(f"Squeeze of axes {axes} of shape {shape} that are not of size 1")
        return tuple(s for i, s in enumerate(shape) if i not in axes)
    axes = _axes(attrs, args) or []  # Unsqueeze: the axes index the output
    rank = len(shape) + len(axes)
    out = list(shape)
    for a in sorted(a % rank for a in axes):
        out.insert(a, 1)
    return tuple(out)


def _reshape(g: GraphBuilder, x: Data, shape: tuple) -> Data:
    return x if tuple(shape) == x.shape else g.add(ops.Reshape((x.shape,), tuple(shape)), x)


def _shape_handler(op: str):
    def handle(g: GraphBuilder, attrs: dict, args: list) -> Data:
        if not isinstance(args[0], Data) or any(isinstance(a, Data) for a in args[1:]):
            raise ValueError(f"{op} whose shape/axes depend on the data tensor")
        return _reshape(g, args[0], shape_op(op, args[0].shape, attrs, args))
    return handle


# --- dense maps ----------------------------------------------------------------------------------------------
def right_matmul(shape: tuple, weight: np.ndarray) -> tuple[np.ndarray, tuple]:
    """x @ weight with x the data tensor of `shape`: (matrix on the flat vector, output shape)."""
    if weight.ndim > 2 or not shape:
        raise ValueError(f"MatMul of a data tensor of shape {shape} with a weight of shape {weight.shape}")
    w2 = weight.reshape(-1, 1) if weight.ndim == 1 else weight
    if shape[-1] != w2.shape[0]:
        raise ValueError(f"MatMul shapes {shape} and {weight.shape} do not match")
    rows = int(np.prod(shape[:-1]))
    matrix = w2.T if rows == 1 else np.kron(np.eye(rows), w2.T)  # each row of x is mapped on its own
    return matrix, shape[:-1] + ((w2.shape[1],) if weight.ndim == 2 else ())


def left_matmul(weight: np.ndarray, shape: tuple) -> tuple[np.ndarray, tuple]:
    """weight @ x with x the data tensor of `shape` ([k], [k, c] or [..., k, c])."""
    if weight.ndim > 2 or not shape:
        raise ValueError(f"MatMul of a weight of shape {weight.shape} with a data tensor of shape {shape}")
    w2 = weight.reshape(1, -1) if weight.ndim == 1 else weight
    k = shape[0] if len(shape) == 1 else shape[-2]
    if k != w2.shape[1]:
        raise ValueError(f"MatMul shapes {weight.shape} and {shape} do not match")
    if len(shape) == 1:
        return w2, (w2.shape[0],) if weight.ndim == 2 else ()
    cols, batch = shape[-1], int(np.prod(shape[:-2]))
    matrix = np.kron(w2, np.eye(cols))  # row-major [k, c]: entry (i, j) -> sum_l W[i, l] x[l, j]
    if batch > 1:
        matrix = np.kron(np.eye(batch), matrix)
    return matrix, shape[:-2] + ((w2.shape[0],) if weight.ndim == 2 else ()) + (cols,)


def _dense(g: GraphBuilder, x: Data, matrix: np.ndarray, offset: np.ndarray | None, shape: tuple) -> Data:
    bias = None if offset is None else _tensor(offset)
    return g.add(ops.Dense(_tensor(matrix), bias, (x.shape,), tuple(shape)), x)


def _matmul(g: GraphBuilder, attrs: dict, args: list) -> Data:
    pos = _data_args(args, "MatMul", (0, 1))
    if len(pos) != 1:
        raise ValueError("a product of two data tensors is not linear")
    x, const = args[pos[0]], args[1 - pos[0]].astype(np.float64)
    matrix, shape = right_matmul(x.shape, const) if pos[0] == 0 else left_matmul(const, x.shape)
    return _dense(g, x, matrix, None, shape)


def _gemm(g: GraphBuilder, attrs: dict, args: list) -> Data:
    pos = _data_args(args, "Gemm", (0, 1))
    if len(pos) != 1:
        raise ValueError("a product of two data tensors is not linear")
    x = args[pos[0]]
    if len(x.shape) != 2:
        raise ValueError(f"Gemm with the data tensor of shape {x.shape} (needs rank 2)")
    if int(attrs.get("transA" if pos[0] == 0 else "transB", 0)):
        x = g.add(ops.Transpose((1, 0), (x.shape,)), x)
    other = args[1 - pos[0]].astype(np.float64)
    if int(attrs.get("transB" if pos[0] == 0 else "transA", 0)):
        other = other.T
    matrix, shape = right_matmul(x.shape, other) if pos[0] == 0 else left_matmul(other, x.shape)
    offset = None
    if len(args) > 2 and args[2] is not None:
        offset = float(attrs.get("beta", 1.0)) * np.broadcast_to(args[2].astype(np.float64), shape).reshape(-1)
    return _dense(g, x, float(attrs.get("alpha", 1.0)) * matrix, offset, shape)


# --- elementwise ---------------------------------------------------------------------------------------------
def _elementwise(g: GraphBuilder, x: Data, scale, shift) -> Data:
    for c in (scale, shift):
        if c is not None and np.broadcast_shapes(x.shape, np.shape(c)) != x.shape:
            raise ValueError(f"a constant of shape {np.shape(c)} broadcasts the data tensor {x.shape} to "
                             f"{np.broadcast_shapes(x.shape, np.shape(c))}")
    scale, shift = (None if c is None else _tensor(c) for c in (scale, shift))
    return g.add(ops.Elementwise(scale, shift, (x.shape,)), x)


def _arithmetic(op: str):
    def handle(g: GraphBuilder, attrs: dict, args: list) -> Data:
        pos = _data_args(args, op, (0, 1))
        if len(pos) == 2:
            if op in ("Mul", "Div"):
                raise ValueError("a product of two data tensors is not linear")
            a, b = args
            if a.shape != b.shape:
                raise ValueError(f"{op} of data tensors of shapes {a.shape} and {b.shape} (no broadcasting)")
            return g.add(ops.Sum((1.0, 1.0 if op == "Add" else -1.0), (a.shape, b.shape)), a, b)
        x, const = args[pos[0]], args[1 - pos[0]].astype(np.float64)
        if op == "Add":
            return _elementwise(g, x, None, const)
        if op == "Sub":
            return _elementwise(g, x, None, -const) if pos[0] == 0 else \
                _elementwise(g, x, -np.ones_like(const), const)
        if op == "Mul":
            return _elementwise(g, x, const, None)
        if pos[0] != 0:
            raise ValueError("division by the data tensor is not affine")
        if np.any(const == 0):
            raise ValueError("division by a constant that has zeros")
        return _elementwise(g, x, 1.0 / const, None)
    return handle


def _neg(g: GraphBuilder, attrs: dict, args: list) -> Data:
    return g.add(ops.Elementwise(_tensor(-1.0), None, (args[0].shape,)), args[0])


def _batch_norm(g: GraphBuilder, attrs: dict, args: list) -> Data:
    _data_args(args, "BatchNormalization")
    if int(attrs.get("training_mode", 0)):
        raise ValueError("BatchNormalization in training mode")
    x, gamma, beta, mean, var = args[0], *(a.astype(np.float64) for a in args[1:5])
    if len(x.shape) < 2:
        raise ValueError(f"BatchNormalization of a tensor of shape {x.shape} (needs a channel axis 1)")
    scale = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    per_channel = (-1,) + (1,) * (len(x.shape) - 2)
    return _elementwise(g, x, scale.reshape(per_channel), (beta - mean * scale).reshape(per_channel))


# --- structure -----------------------------------------------------------------------------------------------
def _relu(g: GraphBuilder, attrs: dict, args: list) -> Data:
    return g.add(ops.ReLU(args[0].shape), args[0])


def _transpose(g: GraphBuilder, attrs: dict, args: list) -> Data:
    x = args[0]
    perm = tuple(int(p) for p in attrs.get("perm", reversed(range(len(x.shape)))))
    return x if perm == tuple(range(len(perm))) else g.add(ops.Transpose(perm, (x.shape,)), x)


def _concat(g: GraphBuilder, attrs: dict, args: list) -> Data:
    if not all(isinstance(a, Data) for a in args):
        raise ValueError("Concat of data tensors with constants (only data tensors are supported)")
    axis = int(attrs["axis"]) % len(args[0].shape)
    return g.add(ops.Concat(axis, tuple(a.shape for a in args)), *args)


def _pad_pairs(pads, rank: int) -> tuple:
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if len(pads) != 2 * rank or min(pads) < 0:
        raise ValueError(f"pads {pads} for a tensor of rank {rank} (need {2 * rank} values >= 0)")
    return tuple(zip(pads[:rank], pads[rank:]))


def _pad(g: GraphBuilder, attrs: dict, args: list) -> Data:
    _data_args(args, "Pad")
    x = args[0]
    value = attrs.get("value", args[2] if len(args) > 2 and args[2] is not None else 0.0)
    if attrs.get("mode", b"constant") not in (b"constant", "constant") or float(np.asarray(value).reshape(-1)[0]):
        raise ValueError("Pad other than constant zero padding")
    if len(args) > 3 and args[3] is not None:
        raise ValueError("Pad with axes")
    pairs = _pad_pairs(attrs["pads"] if "pads" in attrs else args[1], len(x.shape))
    return x if not any(a or b for a, b in pairs) else g.add(ops.Pad(pairs, (x.shape,)), x)


def _window(attrs: dict, x: Data, kernel: tuple) -> tuple[tuple, tuple, tuple]:
    """strides (h, w), pads (top, left, bottom, right), dilations (h, w) of a 2-d window op."""
    if len(x.shape) != 4 or len(kernel) != 2 or x.shape[0] != 1:
        raise ValueError(f"a 2-d window on a tensor of shape {x.shape} (need N, C, H, W)")
    if int(attrs.get("ceil_mode", 0)):
        raise ValueError("ceil_mode=1")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
    dilations = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, (-(-n // s) - 1) * s + d * (k - 1) + 1 - n)
                 for n, s, d, k in zip(x.shape[2:], strides, dilations, kernel)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        pads = (*small, *big) if auto_pad == "SAME_UPPER" else (*big, *small)
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    else:
        pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
    return strides, pads, dilations


def _symmetric(g: GraphBuilder, x: Data, pads: tuple) -> tuple[Data, tuple]:
    """(x, symmetric padding) when pads are symmetric, else (x zero-padded by a Pad node, (0, 0))."""
    top, left, bottom, right = pads
    if (top, left) == (bottom, right):
        return x, (top, left)
    return g.add(ops.Pad(((0, 0), (0, 0), (top, bottom), (left, right)), (x.shape,)), x), (0, 0)


def _conv(g: GraphBuilder, attrs: dict, args: list) -> Data:
    _data_args(args, "Conv")
    x, weight = args[0], args[1].astype(np.float64)
    bias = None if len(args) < 3 or args[2] is None else _tensor(args[2])
    strides, pads, dilations = _window(attrs, x, weight.shape[2:])
    x, padding = _symmetric(g, x, pads)
    return g.add(ops.Conv2d(_tensor(weight), bias, (x.shape,), strides, padding, dilations,
                            int(attrs.get("group", 1))), x)


def _average_pool(g: GraphBuilder, attrs: dict, args: list) -> Data:
    x, kernel = args[0], tuple(int(k) for k in attrs["kernel_shape"])
    strides, pads, _ = _window(attrs, x, kernel)
    if any(pads) and not int(attrs.get("count_include_pad", 0)):
        raise ValueError("AveragePool with padding and count_include_pad=0 (the divisor varies at the borders)")
    x, padding = _symmetric(g, x, pads)
    return g.add(ops.AvgPool2d.of(x.shape, kernel, strides, padding), x)


def _max_pool(g: GraphBuilder, attrs: dict, args: list) -> Data:
    """MaxPool rewritten exactly into ReLUs (the ops package explains why): the window entries of every output are
    gathered, padded to a power of two by repeating a valid entry (max(a, a) = a), and reduced pairwise by
    ``max(a, b) = b + relu(a - b)``, level by level."""
    x, kernel = args[0], tuple(int(k) for k in attrs["kernel_shape"])
    strides, pads, dilations = _window(attrs, x, kernel)
    _, channels, h, w = x.shape
    top, left = pads[:2]
    oh, ow = ((n + a + b - d * (k - 1) - 1) // s + 1
              for n, a, b, d, k, s in zip((h, w), pads[:2], pads[2:], dilations, kernel, strides))
    c, y, z, i, j = np.ix_(range(channels), range(oh), range(ow), range(kernel[0]), range(kernel[1]))
    row, col = y * strides[0] - top + i * dilations[0], z * strides[1] - left + j * dilations[1]
    valid = ((row >= 0) & (row < h) & (col >= 0) & (col < w)).reshape(1, oh, ow, -1)
    index = np.broadcast_to((c * h + row) * w + col, (channels, oh, ow, *kernel)).reshape(channels, oh, ow, -1)
    if not valid.any(-1).all():
        raise ValueError("MaxPool with a window that lies entirely in the padding")
    first = np.take_along_axis(index, np.broadcast_to(valid.argmax(-1)[..., None], index.shape[:3] + (1,)), -1)
    index = np.where(np.broadcast_to(valid, index.shape), index, first)
    m = 1 << (index.shape[-1] - 1).bit_length()
    windows = np.concatenate([index, np.broadcast_to(first, index.shape[:3] + (m - index.shape[-1],))], -1)
    windows, source, lead = windows.reshape(-1, m), x, (1,)
    while m > 1:
        half = m // 2
        out_shape = (*lead, channels, oh, ow, half)
        a = g.add(ops.Gather(torch.tensor(windows[:, :half].reshape(-1)), (source.shape,), out_shape), source)
        b = g.add(ops.Gather(torch.tensor(windows[:, half:].reshape(-1)), (source.shape,), out_shape), source)
        diff = g.add(ops.Sum((1.0, -1.0), (out_shape, out_shape)), a, b)
        source = g.add(ops.Sum((1.0, 1.0), (out_shape, out_shape)), g.add(ops.ReLU(out_shape), diff), b)
        windows, m = np.arange(windows.shape[0] * half).reshape(-1, half), half
    return _reshape(g, source, (*lead, channels, oh, ow))


def _gather(g: GraphBuilder, attrs: dict, args: list) -> Data:
    _data_args(args, "Gather")
    x, indices = args[0], np.asarray(args[1]).astype(np.int64)
    positions = np.take(np.arange(int(np.prod(x.shape))).reshape(x.shape), indices, axis=int(attrs.get("axis", 0)))
    return g.add(ops.Gather(torch.tensor(positions.reshape(-1)), (x.shape,), positions.shape), x)


def _dropout(g: GraphBuilder, attrs: dict, args: list) -> Data:
    return args[0]  # inference: the identity (a mask output, if any, is not supported downstream)


HANDLERS = {
    "Add": _arithmetic("Add"), "Sub": _arithmetic("Sub"), "Mul": _arithmetic("Mul"), "Div": _arithmetic("Div"),
    "Neg": _neg, "MatMul": _matmul, "Gemm": _gemm, "Relu": _relu, "Transpose": _transpose, "Concat": _concat,
    "Pad": _pad, "Conv": _conv, "AveragePool": _average_pool, "MaxPool": _max_pool,
    "BatchNormalization": _batch_norm, "Dropout": _dropout, "Gather": _gather,
    **{op: _shape_handler(op) for op in ("Flatten", "Identity", "Reshape", "Squeeze", "Unsqueeze")},
}
