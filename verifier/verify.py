"""The pipeline for VNN-LIB properties: falsify -> dual(adaptive) -> dual(opt) -> MILP -> Verdict.

A property holds when every unsafe disjunct ``C y <= d`` is ruled out, i.e. some row of ``C f(x) - d`` has a
certified lower bound > 0 over the whole box (float64, strictly). It is violated only with a counterexample that
onnxruntime, running the original ONNX file, confirms (attacks.falsify, or the MILP's minimizer).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import attacks
from .bounds import bound
from .network import Network
from .onnx import run_onnxruntime
from .spec import InputBox, Property
from .vnnlib import parse_vnnlib

HOLDS, VIOLATED, UNKNOWN, TIMEOUT = "holds", "violated", "unknown", "timeout"
RESULT_WORDS = {HOLDS: "unsat", VIOLATED: "sat", UNKNOWN: "unknown", TIMEOUT: "timeout"}
MILP_MAX_RELUS = 1000  # above this the exact phase is skipped (a MILP would rarely finish in time)


@dataclass(frozen=True)
class Verdict:
    """status: holds | violated | unknown | timeout; counterexample: (x (n_inputs,), y (n_outputs,)) when
    violated, y as onnxruntime computes it; stats: time per phase (s), bound calls, disjuncts left open."""

    status: str
    counterexample: tuple | None = None
    stats: dict = field(default_factory=dict)


def _open_disjuncts(network: Network, box: InputBox, prop: Property, open_: list[int], stats: dict,
                    **options) -> tuple[list[int], list]:
    """(the disjuncts (indices) a dual pass with these options cannot rule out, its layer bounds); one pass
    for the rows of every open disjunct."""
    rows = [prop.objective_rows(k) for k in open_]
    C, d = np.vstack([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
    result = bound(network, box, C, d, method="dual", **options)
    lower = result.lower
    stats["bound_calls"] = stats.get("bound_calls", 0) + 1
    ends = np.cumsum([r[0].shape[0] for r in rows])
    return [k for k, part in zip(open_, np.split(lower, ends[:-1])) if not np.any(part > 0)], result.layer_bounds


def verify(network: Network, box: InputBox, prop: Property, timeout: float = 60.0, *, seed: int = 0) -> Verdict:
    """Decide whether prop holds on the box within timeout seconds (module docstring)."""
    start = time.perf_counter()
    stats: dict = {"phases": {}}

    def left() -> float:
        return timeout - (time.perf_counter() - start)

    def phase(name: str, t0: float) -> None:
        stats["phases"][name] = round(time.perf_counter() - t0, 4)

    t0 = time.perf_counter()
    quick = attacks.falsify(network, box, prop, seed=seed, rounds=2, time_limit=max(min(2.0, 0.2 * timeout), 0.05))
    phase("falsify", t0)
    if quick.success:
        return _violated(network, quick.x, stats)
    open_ = list(range(len(prop.disjuncts)))
    # (phase, options, seconds it must have left to start: the optimized pass cannot be interrupted)
    for name, options, needs in (("dual_adaptive", {"slopes": "adaptive"}, 0.0),
                                 ("dual_opt", {"slopes": "opt"}, 1.0)):
        if left() <= needs:
            return Verdict(TIMEOUT, None, stats)
        t0 = time.perf_counter()
        open_, layer_bounds = _open_disjuncts(network, box, prop, open_, stats, **options)
        phase(name, t0)
        if not open_:
            return Verdict(HOLDS, None, stats)
    if network.n_relus <= MILP_MAX_RELUS and left() > 0.5:
        t0 = time.perf_counter()
        for k in list(open_):
            C, d = prop.objective_rows(k)
            # the disjunct is reachable iff min_x max_rows (C f(x) + d) <= 0; each row's minimum > 0 rules it out
            # the optimized pass's layer bounds: the MILP's own would cost another optimization
            exact = bound(network, box, C, d, method="milp", layer_bounds=layer_bounds,
                          time_limit=max(left() - 0.25, 0.01))
            stats["bound_calls"] += 1
            if np.any(exact.lower > 0):
                open_.remove(k)
            elif len(d) == 1 and exact.upper[0] <= 0:  # a single row: its minimizer is a counterexample
                found = _confirmed(network, box, prop, exact.x[0])
                if found is not None:
                    phase("milp", t0)
                    return _violated(network, found, stats)
        phase("milp", t0)
        if not open_:
            return Verdict(HOLDS, None, stats)
    stats["open_disjuncts"] = len(open_)
    if left() > 0.5:  # spend what is left on falsification
        t0 = time.perf_counter()
        more = attacks.falsify(network, box, prop, seed=seed + 1, time_limit=left() - 0.25)
        phase("falsify_more", t0)
        if more.success:
            return _violated(network, more.x, stats)
    return Verdict(TIMEOUT if left() <= 0.5 else UNKNOWN, None, stats)


def _confirmed(network: Network, box: InputBox, prop: Property, x: np.ndarray) -> np.ndarray | None:
    """x clipped into the box if onnxruntime confirms it violates prop, else None."""
    x = np.clip(x, box.lo, box.hi)
    return x if bool(prop.violated_by(run_onnxruntime(network, x))) else None


def _violated(network: Network, x: np.ndarray, stats: dict) -> Verdict:
    return Verdict(VIOLATED, (np.asarray(x, np.float64), run_onnxruntime(network, x)), stats)


def verify_instance(network: Network, vnnlib_path: str | Path, timeout: float = 60.0) -> Verdict:
    """Verify every (box, property) pair of a VNN-LIB file, sharing the time budget: violated if any pair is,
    holds only if all hold."""
    start = time.perf_counter()
    pairs = parse_vnnlib(vnnlib_path, network.n_inputs, network.n_outputs)
    stats: dict = {"boxes": len(pairs)}
    worst = HOLDS
    for box, prop in pairs:
        remaining = timeout - (time.perf_counter() - start)
        if remaining <= 0:
            return Verdict(TIMEOUT, None, stats)
        verdict = verify(network, box, prop, remaining)
        stats.setdefault("per_box", []).append(verdict.stats)
        if verdict.status == VIOLATED:
            return Verdict(VIOLATED, verdict.counterexample, stats)
        if verdict.status != HOLDS:
            worst = TIMEOUT if TIMEOUT in (worst, verdict.status) else UNKNOWN
    return Verdict(worst, None, stats)


def write_result_file(path: str | Path, verdict: Verdict) -> None:
    """VNN-COMP result file: sat / unsat / unknown / timeout, and on sat the assignment of every X_i and Y_j."""
    lines = [RESULT_WORDS[verdict.status]]
    if verdict.status == VIOLATED:
        x, y = verdict.counterexample
        cells = [f"(X_{i} {v!r})" for i, v in enumerate(map(float, x))]
        cells += [f"(Y_{j} {v!r})" for j, v in enumerate(map(float, np.ravel(y)))]
        lines.append("(" + "\n ".join(cells) + ")")
    Path(path).write_text("\n".join(lines) + "\n")
