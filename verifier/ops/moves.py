"""Linear operators that move, select, join or add entries: Reshape, Transpose, Pad, Gather, Concat, Sum."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from .base import Linear, Shape, Tensor, _selection, _size


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

