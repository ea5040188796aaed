"""The MILP inside branch and bound (bab.py): the slot a search gives it as its interlude (`milp_slot`), and the
phase that hands it what a search leaves open (`milp_phase`); both on the big-M MILP of bounds/milp.py (HiGHS).
A disjunct it rules out rests on HiGHS's answer (a certificate counts it as a trusted leaf); a point it finds is a
counterexample only once the caller's `confirm` agrees.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from .bounds.base import proves
from .network import Network
from .spec import HOLDS, TIMEOUT, UNKNOWN, VIOLATED, InputBox, Property


def milp_slot(network: Network, box: InputBox, prop: Property, open_: list[int], layer_bounds: list | None,
              share: float, deadline: float, confirm: Callable, progress: Callable | None, stats: dict,
              trace: dict | None = None) -> Callable[[list[int]], tuple[torch.Tensor | None, list[int]]]:
    """The MILP slot, as a search's interlude (`relu_bab.search`): pending (positions in open_) -> (the MILP's
    confirmed point (1, n) or None, the pending disjuncts it ruled out, each on its own), `milp_phase` for `share` of
    the time left before deadline. Its stats go to stats["milp_slot"]; what it rules out, to trace["milp"]."""

    def interlude(pending: list[int]) -> tuple[torch.Tensor | None, list[int]]:
        now, still = time.perf_counter(), [open_[k] for k in pending]
        status, x, milp_stats, ruled_out = milp_phase(network, box, prop, still, layer_bounds,
                                                      now + share * (deadline - now), confirm, progress)
        stats["milp_slot"] = dict(milp_stats, status=status, ruled_out=len(ruled_out),
                                  seconds=round(time.perf_counter() - now, 4))
        if trace is not None:
            trace["milp"] += ruled_out
        point = None if x is None else torch.as_tensor(x, device="cpu")[None]
        return point, [k for k in pending if open_[k] in ruled_out]

    return interlude


def milp_phase(network: Network, box: InputBox, prop: Property, open_: list[int], layer_bounds: list | None,
               deadline: float, confirm: Callable, progress: Callable | None = None):
    """Phase 2 of bab.relu_split, and the MILP slots (progress: reported once, phase "MILP", the disjuncts open;
    layer_bounds None: alpha-CROWN's). Returns (status, x, stats, the disjuncts of open_ ruled out: all of them when
    status is HOLDS, and those decided before the time ran out otherwise)."""
    from .bounds import milp  # HiGHS is only loaded when this path runs

    if progress is not None:
        progress("MILP", 0, len(open_), None)
    stats = {"domains": 0, "bound_calls": 0, "nodes": 0}
    single = [k for k in open_ if prop.disjuncts[k][0].shape[0] == 1]
    groups = ([("decide", single)] if single else []) + [("conjunction", [k]) for k in open_ if k not in single]
    undecided, ruled_out = False, []
    for mode, members in groups:
        left = deadline - time.perf_counter()
        if left <= 0:
            return TIMEOUT, None, stats, ruled_out
        C, d = prop.stacked_rows(members)
        limit = max(left - 0.25, 0.01)
        if mode == "decide":  # some single row below 0 somewhere? (one row per member)
            result = milp.bound(network, box, C, d, layer_bounds=layer_bounds, time_limit=limit, decide=0.0)
            candidates = [result.x[j] for j in np.argsort(result.upper) if result.upper[j] <= 0]
            ruled = [k for k, lower in zip(members, result.lower) if proves(lower)]
            timed_out = "time_limit" in result.info.get("status", [])
            stats["nodes"] += int(result.info.get("nodes", 0))
        else:  # all rows of the conjunction below 0 at one point?
            lower, upper, x, status = milp.min_max(network, box, C, d, layer_bounds=layer_bounds, time_limit=limit,
                                                   decide=0.0)
            candidates, timed_out = ([x] if upper <= 0 else []), status == "time_limit"
            ruled = members if proves(lower) else []
        stats["bound_calls"] += 1
        stats["domains"] += 1
        for x in candidates:
            if confirm(x):
                return VIOLATED, x, stats, ruled_out
        ruled_out += ruled
        if len(ruled) < len(members):
            if timed_out or time.perf_counter() > deadline:
                return TIMEOUT, None, stats, ruled_out
            undecided = True
    return (UNKNOWN if undecided else HOLDS), None, stats, ruled_out
