"""Certified and exact bound methods behind one signature.

``bound(network, box, C, d=None, *, layer_bounds=None, **options) -> BoundResult`` lower-bounds ``C @ f(x) + d``
over the box. `METHODS` is the only place the CLI and the pipeline look methods up.
"""
from __future__ import annotations

import inspect

from . import dual, interval, lp, milp
from .base import PROOF_MARGIN, BoundResult, check_problem, proves

METHODS = {
    "ibp": interval.bound,
    "dual": dual.bound,
    "lp": lp.bound,
    "milp": milp.bound,
}


def accepted_options(method: str) -> list[str]:
    """The keyword options ``METHODS[method]`` takes (layer_bounds included)."""
    parameters = inspect.signature(METHODS[method]).parameters.values()
    return [p.name for p in parameters if p.kind == inspect.Parameter.KEYWORD_ONLY]


def bound(network, box, C, d=None, *, method: str = "dual", **options) -> BoundResult:
    """Dispatch to ``METHODS[method]`` (see the module docstring). An option the method does not take (a misspelt
    ``slope="opt"``) is a ValueError naming the method's options, never silently ignored."""
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r}; available: {', '.join(METHODS)}")
    accepted = accepted_options(method)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"method {method!r} has no option {unknown[0]!r}; its options: {', '.join(accepted)}")
    return METHODS[method](network, box, C, d, **options)


__all__ = ["METHODS", "PROOF_MARGIN", "BoundResult", "accepted_options", "bound", "check_problem", "proves"]
