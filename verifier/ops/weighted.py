"""Linear operators with weights: Dense, Conv2d, AvgPool2d, Elementwise (scale and shift per entry)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from .base import Linear, Shape, Tensor, _flat_offset, _numpy, _size


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

