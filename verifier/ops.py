"""Operators of a network graph: linear maps behind one protocol, and ReLU.

Shapes never include the batch: an operator with ``in_shapes = ((1, 3, 32, 32),)`` takes a tensor
(N, 1, 3, 32, 32). Shapes are the ONNX ones (a leading ONNX batch axis of 1 stays part of the shape), so every ONNX
attribute (axes, perms, pads) applies to them unchanged; an image operator reads the last three axes as C, H, W.

The protocol of a linear operator (`Linear`), for inputs x_1..x_m of `in_shapes` and the output of `out_shape`:

- ``forward(*xs)``: the map with its offset, on a batch: (N, *in_shapes[i]) each -> (N, *out_shape);
- ``linear(*xs)``: the map without its offset, ``op(x) - op(0)`` (symbolic bounds push linear functions of the
  network input through it);
- ``backward(A)``: the transpose of the linear part applied to a batch of rows: A (M, *out_shape) -> a tuple of
  (M, *in_shapes[i]), one per input, with ``<A, op(x) - op(0)> = sum_i <backward(A)[i], x_i>`` (convolutions use
  ``conv_transpose2d``: no operator is ever expanded into a dense matrix here);
- ``forward_abs(*xs)``: the map with every coefficient replaced by its absolute value and no offset (interval
  arithmetic: radius of the output from the radii of the inputs);
- ``offset``: op(0), a tensor broadcastable to out_shape, or None when it is zero;
- ``sparse()``: (scipy CSR matrix (n_out, sum of n_in), offset (n_out,) float64) of the map on flat C-order
  vectors (inputs stacked in order), for LP/MILP encodings and tests.

MaxPool is not an operator here: the loader rewrites it exactly into ReLUs, ``max(a, b) = b + relu(a - b)``, a
balanced tree over each window (`maxpool_tree` in onnx.py). Why the exact rewrite rather than a relaxation: every
method then handles MaxPool with no new code and stays exact where it is exact (MILP, ReLU splitting in branch and
bound), the backward bound pass only knows ReLUs, and the relaxation it induces (triangles of the differences,
with their own back-substituted bounds) is about as tight as a dedicated max relaxation. The cost: log2(k) ReLU
levels per k-window, and interval arithmetic alone is looser on it than on a native max.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Shape = tuple


def _size(shape: Shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def _flat_offset(offset: Tensor | None, shape: Shape) -> np.ndarray:
    if offset is None:
        return np.zeros(_size(shape))
    return np.broadcast_to(_numpy(offset), shape).reshape(-1).copy()


def _selection(index: np.ndarray, n_in: int) -> sp.csr_matrix:
    """The 0/1 matrix with out[i] = x[index[i]] (a zero row where index[i] < 0)."""
    rows = np.flatnonzero(index >= 0)
    return sp.csr_matrix((np.ones(rows.size), (rows, index[rows])), shape=(index.size, n_in))


@dataclass(frozen=True, eq=False)
class Linear:
    """Base of the linear operators (see the module docstring for the protocol)."""

    def to(self, device=None, dtype=None) -> "Linear":
        """The same operator with its floating-point tensors moved/cast (index tensors only moved)."""
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
        return dataclasses.replace(self, **changes)

    @property
    def in_shape(self) -> Shape:
        """The shape of the only input (single-input operators)."""
        (shape,) = self.in_shapes
        return shape

    @property
    def offset(self) -> Tensor | None:
        return None

    def linear(self, *xs: Tensor) -> Tensor:  # operators with an offset override this
        if self.offset is not None:
            raise NotImplementedError(f"{type(self).__name__} has an offset: it must define linear()")
        return self.forward(*xs)

    def forward_abs(self, *xs: Tensor) -> Tensor:  # for maps whose coefficients are all >= 0 (selections)
        return self.forward(*xs)


@dataclass(frozen=True, eq=False)
class Dense(Linear):
    """``W @ flat(x) + b``: Gemm / MatMul. weight (n_out, n_in), bias (n_out,) or None."""

    weight: Tensor
    bias: Tensor | None
    in_shapes: tuple
    out_shape: Shape

    def forward(self, x: Tensor) -> Tensor:
        y = x.reshape(x.shape[0], -1) @ self.weight.T
        return (y if self.bias is None else y + self.bias).reshape(x.shape[0], *self.out_shape)

    def linear(self, x: Tensor) -> Tensor:
        return (x.reshape(x.shape[0], -1) @ self.weight.T).reshape(x.shape[0], *self.out_shape)

    def backward(self, A: Tensor) -> tuple[Tensor]:
        return ((A.reshape(A.shape[0], -1) @ self.weight).reshape(A.shape[0], *self.in_shape),)

    def forward_abs(self, x: Tensor) -> Tensor:
        return (x.reshape(x.shape[0], -1) @ self.weight.abs().T).reshape(x.shape[0], *self.out_shape)

    @property
    def offset(self) -> Tensor | None:
        return None if self.bias is None else self.bias.reshape(self.out_shape)

    def sparse(self) -> tuple[sp.csr_matrix, np.ndarray]:
        return sp.csr_matrix(_numpy(self.weight)), _flat_offset(self.offset, self.out_shape)

    def rows(self, idx: Tensor) -> Tensor:
        """Rows idx (m,) of the map's matrix (m, *in_shape): the backward of the rows e_i, without a product."""
        return self.weight[idx].reshape(len(idx), *self.in_shape)


def _conv_out(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True, eq=False)
class Conv2d(Linear):
    """2-d convolution over the last three axes (C, H, W) of the input; leading axes must all be 1.

    weight (O, C / groups, kh, kw), bias (O,) or None; stride, padding (symmetric, zeros), dilation: (h, w) pairs.
    """

    weight: Tensor
    bias: Tensor | None
    in_shapes: tuple
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        *lead, channels, _, _ = self.in_shape
        if _size(tuple(lead)) != 1 or channels != self.weight.shape[1] * self.groups:
            raise ValueError(f"convolution of weight {tuple(self.weight.shape)} (groups {self.groups}) on an input "
                             f"of shape {self.in_shape}")
        if min(self.out_shape[-2:]) < 1:
            raise ValueError(f"convolution output {self.out_shape} is empty")

    @cached_property
    def out_shape(self) -> Shape:
        *lead, _, h, w = self.in_shape
        kh, kw = self.weight.shape[-2:]
        return (*lead, self.weight.shape[0],
                _conv_out(h, kh, self.stride[0], self.padding[0], self.dilation[0]),
                _conv_out(w, kw, self.stride[1], self.padding[1], self.dilation[1]))

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        y = F.conv2d(x.reshape(-1, *self.in_shape[-3:]), weight, bias, self.stride, self.padding, self.dilation,
                     self.groups)
        return y.reshape(x.shape[0], *self.out_shape)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight, self.bias)

    def linear(self, x: Tensor) -> Tensor:
        return self.forward(x) if self.bias is None else self._conv(x, self.weight, None)

    def forward_abs(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight.abs(), None)

    def backward(self, A: Tensor) -> tuple[Tensor]:
        kh, kw = self.weight.shape[-2:]
        # rows/columns of the input that the last window does not reach need an output padding to be restored
        extra = tuple(size - ((out - 1) * s - 2 * p + d * (k - 1) + 1) for size, out, s, p, d, k in
                      zip(self.in_shape[-2:], self.out_shape[-2:], self.stride, self.padding, self.dilation,
                          (kh, kw)))
        x = F.conv_transpose2d(A.reshape(-1, *self.out_shape[-3:]), self.weight, None, self.stride, self.padding,
                               extra, self.groups, self.dilation)
        return (x.reshape(A.shape[0], *self.in_shape),)

    @property
    def offset(self) -> Tensor | None:
        return None if self.bias is None else self.bias.reshape(-1, 1, 1)

    def sparse(self) -> tuple[sp.csr_matrix, np.ndarray]:
        weight = _numpy(self.weight)
        n_out, per_group, kh, kw = weight.shape
        channels, h, w = self.in_shape[-3:]
        _, oh, ow = self.out_shape[-3:]
        o, y, x, c, i, j = np.ix_(range(n_out), range(oh), range(ow), range(per_group), range(kh), range(kw))
        row = y * self.stride[0] - self.padding[0] + i * self.dilation[0]
        col = x * self.stride[1] - self.padding[1] + j * self.dilation[1]
        channel = (o // (n_out // self.groups)) * per_group + c
        shape = (n_out, oh, ow, per_group, kh, kw)
        valid = np.broadcast_to((row >= 0) & (row < h) & (col >= 0) & (col < w), shape)
        out_index = np.broadcast_to((o * oh + y) * ow + x, shape)[valid]
        in_index = np.broadcast_to((channel * h + row) * w + col, shape)[valid]
        values = np.broadcast_to(weight[:, None, None], shape)[valid]
        matrix = sp.csr_matrix((values, (out_index, in_index)), shape=(n_out * oh * ow, channels * h * w))
        return matrix, _flat_offset(self.offset, self.out_shape)

    @cached_property
    def _matrix(self) -> sp.csr_matrix:
        return self.sparse()[0]

    def rows(self, idx: Tensor) -> Tensor:
        """Rows idx (m,) of the map's matrix (m, *in_shape): the backward of the rows e_i, each a kernel placed in
        an input-sized map (as dense as `backward`'s output, and no transposed convolution to compute)."""
        dense = self._matrix[idx.cpu().numpy()].toarray()
        return torch.from_numpy(dense).to(self.weight).reshape(len(idx), *self.in_shape)


@dataclass(frozen=True, eq=False)
class AvgPool2d(Conv2d):
    """Average pooling (zero padding counted in the divisor): a per-channel convolution with weight 1/(kh kw).
    Build it with `AvgPool2d.of`; kept as its own type so that it is saved back as AveragePool."""

    @staticmethod
    def of(in_shape: Shape, kernel: tuple, stride: tuple, padding: tuple, dtype=torch.float64) -> "AvgPool2d":
        channels = in_shape[-3]
        weight = torch.full((channels, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=dtype)
        return AvgPool2d(weight, None, (tuple(in_shape),), tuple(stride), tuple(padding), (1, 1), channels)

    @property
    def kernel(self) -> tuple:
        return tuple(self.weight.shape[-2:])

    # torch's pooling kernels: ~20x faster than a float64 depthwise convolution on CPU
    def forward(self, x: Tensor) -> Tensor:
        y = F.avg_pool2d(x.reshape(-1, *self.in_shape[-3:]), self.kernel, self.stride, self.padding, False, True)
        return y.reshape(x.shape[0], *self.out_shape)

    def forward_abs(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def backward(self, A: Tensor) -> tuple[Tensor]:
        rows = A.reshape(-1, *self.out_shape[-3:])
        like = A.new_zeros(1).expand(rows.shape[0], *self.in_shape[-3:])  # only its shape is read
        x = torch.ops.aten.avg_pool2d_backward(rows, like, list(self.kernel), list(self.stride), list(self.padding),
                                               False, True, None)
        return (x.reshape(A.shape[0], *self.in_shape),)


@dataclass(frozen=True, eq=False)
class Elementwise(Linear):
    """``x * scale + shift`` (normalisation, batch norm, constant Add/Sub/Mul/Div/Neg); scale and shift are
    tensors broadcastable to the shape, or None (1 and 0)."""

    scale: Tensor | None
    shift: Tensor | None
    in_shapes: tuple

    @property
    def out_shape(self) -> Shape:
        return self.in_shape

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.scale is None else x * self.scale
        return y if self.shift is None else y + self.shift

    def linear(self, x: Tensor) -> Tensor:
        return x if self.scale is None else x * self.scale

    def backward(self, A: Tensor) -> tuple[Tensor]:
        return (A if self.scale is None else A * self.scale,)

    def forward_abs(self, x: Tensor) -> Tensor:
        return x if self.scale is None else x * self.scale.abs()

    @property
    def offset(self) -> Tensor | None:
        return self.shift

    def sparse(self) -> tuple[sp.csr_matrix, np.ndarray]:
        scale = np.ones(_size(self.in_shape)) if self.scale is None else _flat_offset(self.scale, self.in_shape)
        return sp.diags(scale, format="csr"), _flat_offset(self.shift, self.in_shape)


@dataclass(frozen=True, eq=False)
class Reshape(Linear):
    """A new shape for the same C-order entries (Flatten, Reshape, Squeeze, Unsqueeze, Identity)."""

    in_shapes: tuple
    out_shape: Shape

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def backward(self, A: Tensor) -> tuple[Tensor]:
        return (A.reshape(A.shape[0], *self.in_shape),)

    def sparse(self) -> tuple[sp.csr_matrix, np.ndarray]:
        n = _size(self.in_shape)
        return sp.identity(n, format="csr"), np.zeros(n)


@dataclass(frozen=True, eq=False)
class Transpose(Linear):
    """A permutation of the axes (ONNX Transpose: output axis i is input axis perm[i])."""

    perm: tuple
    in_shapes: tuple

    @property
    def out_shape(self) -> Shape:
        return tuple(self.in_shape[p] for p in self.perm)

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, *(p + 1 for p in self.perm))

    def backward(self, A: Tensor) -> tuple[Tensor]:
        return (A.permute(0, *(int(p) + 1 for p in np.argsort(self.perm))),)

    def sparse(self) -> tuple[sp.csr_matrix, np.ndarray]:
        n = _size(self.in_shape)
        return _selection(np.arange(n).reshape(self.in_shape).transpose(self.perm).reshape(-1), n), np.zeros(n)


@dataclass(frozen=True, eq=False)
class Pad(Linear):
    """Constant zero padding; pads ((before, after) per axis of the input), all >= 0."""

    pads: tuple
    in_shapes: tuple

    @property
    def out_shape(self) -> Shape:
        return tuple(s + a + b for s, (a, b) in zip(self.in_shape, self.pads))

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, [p for pair in reversed(self.pads) for p in pair])

    def backward(self, A: Tensor) -> tuple[Tensor]:
        inner = tuple(slice(a, a + s) for s, (a, _) in zip(self.in_shape, self.pads))
        return (A[(slice(None), *inner)],)

    def sparse(self) -> tuple[sp.csr_matrix, np.ndarray]:
        n_in = _size(self.in_shape)
        index = np.full(self.out_shape, -1, dtype=np.int64)
        index[tuple(slice(a, a + s) for s, (a, _) in zip(self.in_shape, self.pads))] = \
            np.arange(n_in).reshape(self.in_shape)
        return _selection(index.reshape(-1), n_in), np.zeros(index.size)


@dataclass(frozen=True, eq=False)
class Gather(Linear):
    """A selection of entries: ``flat(out)[i] = flat(x)[index[i]]``, 0 where index[i] == -1; index (n_out,) int64.
    Used for the windows of the MaxPool rewrite; entries may repeat."""

    index: Tensor
    in_shapes: tuple
    out_shape: Shape

    @cached_property
    def _reads_zero(self) -> bool:
        return bool((self.index < 0).any())

    @cached_property
    def _positions(self) -> Tensor:
        """The index into flat(x), with -1 turned into the position of an appended zero column."""
        return self.index % (_size(self.in_shape) + 1)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        if self._reads_zero:
            flat = torch.cat([flat, flat.new_zeros(x.shape[0], 1)], 1)
        return flat.index_select(1, self._positions).reshape(x.shape[0], *self.out_shape)

    def backward(self, A: Tensor) -> tuple[Tensor]:
        n_in = _size(self.in_shape)
        rows = A.new_zeros(A.shape[0], n_in + 1).index_add_(1, self._positions, A.reshape(A.shape[0], -1))
        return (rows[:, :n_in].reshape(A.shape[0], *self.in_shape),)

    def sparse(self) -> tuple[sp.csr_matrix, np.ndarray]:
        index = self.index.cpu().numpy()
        return _selection(index, _size(self.in_shape)), np.zeros(index.size)


@dataclass(frozen=True, eq=False)
class Concat(Linear):
    """Concatenation of several inputs along `axis` (an axis of the shapes, batch excluded)."""

    axis: int
    in_shapes: tuple

    @property
    def out_shape(self) -> Shape:
        shape = list(self.in_shapes[0])
        shape[self.axis] = sum(s[self.axis] for s in self.in_shapes)
        return tuple(shape)

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=self.axis + 1)

    def backward(self, A: Tensor) -> tuple[Tensor, ...]:
        return torch.split(A, [s[self.axis] for s in self.in_shapes], dim=self.axis + 1)

    def sparse(self) -> tuple[sp.csr_matrix, np.ndarray]:
        starts = np.cumsum([0] + [_size(s) for s in self.in_shapes])
        index = np.concatenate([(start + np.arange(_size(s))).reshape(s) for start, s in
                                zip(starts, self.in_shapes)], axis=self.axis)
        return _selection(index.reshape(-1), int(starts[-1])), np.zeros(index.size)


@dataclass(frozen=True, eq=False)
class Sum(Linear):
    """``sum_i coefficients[i] * x_i`` of inputs of one shape (residual Add, Sub of two activations)."""

    coefficients: tuple
    in_shapes: tuple

    @property
    def out_shape(self) -> Shape:
        return self.in_shapes[0]

    def forward(self, *xs: Tensor) -> Tensor:
        return sum(c * x for c, x in zip(self.coefficients, xs))

    def backward(self, A: Tensor) -> tuple[Tensor, ...]:
        return tuple(c * A for c in self.coefficients)

    def forward_abs(self, *xs: Tensor) -> Tensor:
        return sum(abs(c) * x for c, x in zip(self.coefficients, xs))

    def sparse(self) -> tuple[sp.csr_matrix, np.ndarray]:
        n = _size(self.out_shape)
        return sp.hstack([c * sp.identity(n) for c in self.coefficients], format="csr"), np.zeros(n)


@dataclass(frozen=True, eq=False)
class ReLU:
    """Elementwise max(x, 0) on a tensor of `shape`."""

    shape: Shape

    @property
    def in_shapes(self) -> tuple:
        return (self.shape,)

    @property
    def out_shape(self) -> Shape:
        return self.shape

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)

    def to(self, device=None, dtype=None) -> "ReLU":
        return self


@dataclass(frozen=True, eq=False)
class Input:
    """The network input (node 0 of every graph), of `shape`."""

    shape: Shape

    @property
    def in_shapes(self) -> tuple:
        return ()

    @property
    def out_shape(self) -> Shape:
        return self.shape

    def to(self, device=None, dtype=None) -> "Input":
        return self
