"""Certified and exact bound methods behind one signature.

``bound(network, box, C, d=None, *, layer_bounds=None, **options) -> BoundResult`` lower-bounds ``C @ f(x) + d``
over the box. `METHODS` is the only place the CLI and the pipeline look methods up.
"""
from __future__ import annotations

from . import dual, interval, lp, milp
from .base import BoundResult, check_problem

METHODS = {
    "ibp": interval.bound,
    "dual": dual.bound,
    "lp": lp.bound,
    "milp": milp.bound,
}


def bound(network, box, C, d=None, *, method: str = "dual", **options) -> BoundResult:
    """Dispatch to ``METHODS[method]`` (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r}; available: {', '.join(METHODS)}")
    return METHODS[method](network, box, C, d, **options)


__all__ = ["METHODS", "BoundResult", "bound", "check_problem"]
