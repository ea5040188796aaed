"""Interval bound propagation (IBP): the loosest and cheapest certified bound."""
from __future__ import annotations

import time

import numpy as np

from ..network import Network
from ..spec import InputBox
from .base import BoundResult, check_problem


def interval_layer_bounds(network: Network, lo: np.ndarray, hi: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-activation bounds [(l, u)] of every affine layer for inputs in [lo, hi] (each (width,) float64)."""
    bounds = []
    for affine, relu in zip(network.affines, network.relu_after):
        center, radius = (lo + hi) / 2, (hi - lo) / 2
        mid = affine.weight @ center + affine.bias
        rad = np.abs(affine.weight) @ radius
        l, u = mid - rad, mid + rad
        bounds.append((l, u))
        lo, hi = (np.maximum(l, 0.0), np.maximum(u, 0.0)) if relu else (l, u)
    return bounds


def bound(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray | None = None, *,
          layer_bounds: list | None = None) -> BoundResult:
    """IBP lower bounds of ``C @ f(x) + d`` over the box; C (k, n_outputs), d (k,).

    The last layer's interval is pushed through C directly (tighter than bounding f first).
    Given layer_bounds are intersected with the computed ones.
    """
    start = time.perf_counter()
    C, d = check_problem(network, box, C, d)
    bounds = interval_layer_bounds(network, box.lo, box.hi)
    if layer_bounds is not None:
        bounds = [(np.maximum(l, gl), np.minimum(u, gu)) for (l, u), (gl, gu) in zip(bounds, layer_bounds)]
    if network.relu_after[-1]:  # outputs are clipped at 0: bound C y over the outputs' own interval
        lo, hi = np.maximum(bounds[-1][0], 0.0), np.maximum(bounds[-1][1], 0.0)
        weight, offset = C, d
    else:  # push the last affine map through C first: tighter than bounding the outputs
        lo, hi = (box.lo, box.hi) if len(bounds) == 1 else (np.maximum(bounds[-2][0], 0.0),
                                                            np.maximum(bounds[-2][1], 0.0))
        last = network.affines[-1]
        weight, offset = C @ last.weight, C @ last.bias + d
    lower = weight.clip(min=0) @ lo + weight.clip(max=0) @ hi + offset
    return BoundResult(lower, bounds, "ibp", time.perf_counter() - start)
