"""The operators' shared parts: the `Linear` base (protocol: the package docstring), ReLU, Input, helpers."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

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
