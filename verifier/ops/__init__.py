"""Operators of a network graph: linear maps behind one protocol, and ReLU (base.py: the base, ReLU, Input;
weighted.py: Dense, Conv2d, AvgPool2d, Elementwise; moves.py: Reshape, Transpose, Pad, Gather, Concat, Sum).

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
balanced tree over each window (`_max_pool` in onnx_handlers.py). Why the exact rewrite rather than an operator:
every method then handles MaxPool with no new code and stays exact where it is exact (MILP, ReLU splitting in
branch and bound). The cost: log2(k) ReLU levels per k-window, and the relaxation the tree induces (triangles of
the differences) has upper lines that are convex combinations of the entries, which can be far above the
maximum. Two places see the tree as a whole: interval arithmetic (the maximum of the entries' intervals,
`interval.interval_step`) and the bound engine, which bounds each pool's maximum from above by a line over its
window's entries when that line is lower (`bounds/windows.py`).
"""
from .base import Input, Linear, ReLU, Shape, Tensor
from .moves import Concat, Gather, Pad, Reshape, Sum, Transpose
from .weighted import AvgPool2d, Conv2d, Dense, Elementwise

__all__ = ["AvgPool2d", "Concat", "Conv2d", "Dense", "Elementwise", "Gather", "Input", "Linear", "Pad", "ReLU",
           "Reshape", "Shape", "Sum", "Tensor", "Transpose"]
