"""The pipeline for VNN-LIB properties: falsify -> bound -> branch and bound -> Verdict.

A property holds when every unsafe disjunct ``C y <= d`` is ruled out on the whole box: some row of
``C f(x) - d`` has a certified lower bound > 0 (float64; strictly: above PROOF_MARGIN = 1e-9, bounds.proves, so
that rounding cannot prove an exact tie), on every piece of a branch-and-bound split.
It is violated only with a counterexample that onnxruntime, running the ORIGINAL ONNX file, confirms: the point is
rounded to float32 (what the model computes on) inside the box, and onnxruntime's outputs reach an unsafe
conjunction (``<=``, VNN-LIB semantics).

Phases (`verify`): a short falsification (PGD, falsification.falsify); then, for networks with few inputs
(<= INPUT_SPLIT_MAX_INPUTS, e.g. ACAS Xu), input-splitting branch and bound (bab.input_split: its root bound is
the dual/CROWN bound of the whole box; it checks candidate points as it splits, and a full falsification runs
beside it now and then; on a network with at most bab.MILP_SLOT_SPLITTABLE ReLUs and no certificate asked, still
open after bab.MILP_SLOT_AFTER of the time, the MILP for at most MILP_SLOT_SHARE of the time left, then input
splitting goes on to the deadline); for larger inputs the dual pass with adaptive then optimized slopes (the latter
stops after OPT_SHARE of the time left; on nets whose adaptive pass takes over EARLY_ATTACK_AFTER, one falsification
round first), then branch and bound on ReLUs (bab.relu_split: the optimized, batched search
of relu_bab.py with falsification rounds beside it, then the MILP for what it cannot split further). Any network
graph (convolutions, pooling, residual blocks) takes the same path.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import bab, falsification
from .bab_milp import milp_slot
from .bounds import bound, proves
from .network import Network
from .onnx import OnnxRunner
from .spec import HOLDS, TIMEOUT, UNKNOWN, VIOLATED, InputBox, Property, SpecError
from .vnnlib import parse_vnnlib

RESULT_WORDS = {HOLDS: "unsat", VIOLATED: "sat", UNKNOWN: "unknown", TIMEOUT: "timeout"}
INPUT_SPLIT_MAX_INPUTS = 16  # input splitting pays off only while a box has few dimensions to bisect
QUICK_FALSIFY = 0.3  # seconds of PGD before any bound (at most 10% of the timeout)
EARLY_ATTACK_AFTER = 0.1  # an adaptive dual pass slower than this (conv nets): a falsification round before alpha
SIDE_ATTACK_FIRST = 0.5  # falsification during input splitting: first at 0.5 s
OPT_SHARE = 0.25  # the optimized dual pass stops its iterations after this share of the time left


@dataclass(frozen=True)
class Verdict:
    """status: holds | violated | unknown (undecided, nothing left to try) | timeout (out of time);
    counterexample: (x (n_inputs,), y (n_outputs,)) when violated, x exactly representable in float32 and y as
    onnxruntime computes it; stats: seconds per phase ("phases"), "domains", "bound_calls", details."""

    status: str
    counterexample: tuple | None = None
    stats: dict = field(default_factory=dict)


class Checker:
    """Confirms candidate counterexamples on the original model with onnxruntime (one session, reused)."""

    def __init__(self, network: Network) -> None:
        self.runner = OnnxRunner(network)

    def __call__(self, box: InputBox, prop: Property, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(x32, y) when x, rounded to float32 inside the box, is a counterexample onnxruntime agrees on."""
        x32 = float32_inside(np.asarray(x, np.float64).reshape(-1), box)
        if x32 is None:
            return None
        y = self.runner(x32)
        return (x32, y) if bool(prop.violated_by(y)) else None


def float32_inside(x: np.ndarray, box: InputBox) -> np.ndarray | None:
    """The float32 values nearest x (n,) that lie in the box, as float64; None when some coordinate's interval
    holds no float32 number (the model could not be run at a point of the box)."""
    x32 = np.clip(x, box.lo, box.hi).astype(np.float32)
    x32 = np.where(x32.astype(np.float64) < box.lo, np.nextafter(x32, np.float32(np.inf)), x32)
    x32 = np.where(x32.astype(np.float64) > box.hi, np.nextafter(x32, np.float32(-np.inf)), x32)
    out = x32.astype(np.float64)
    return out if box.contains(out) else None


def verify(network: Network, box: InputBox, prop: Property, timeout: float = 60.0, *, seed: int = 0,
           checker: Checker | None = None, trace: dict | None = None, progress: bab.Progress | None = None,
           device: str = "cpu") -> Verdict:
    """Decide whether prop holds on the box within about timeout seconds (module docstring).

    checker: a `Checker` to reuse (verify_instance shares one across boxes); made here otherwise. Boxes only
    (L-inf, VNN-LIB): for an L2/L1 `InputBall` use the certified methods, the attacks and (L1) the MILP.
    trace: a dict that gets what proved it (kind "input": the search's events; "relu": bab.relu_split's trace,
    "open" [] when the dual passes ruled everything out), for certificates (certificate.py). progress: the branch
    and bound's (`bab.Progress`). device: torch device of the falsification, the dual passes and the ReLU-split
    search (input splitting, for few inputs, and every check of a counterexample run on the CPU).
    """
    if not isinstance(box, InputBox):
        raise SpecError("verify decides properties over boxes (L-inf, VNN-LIB) only; for an L2/L1 ball use "
                        "bound(...) (ibp, dual, lp; milp for L1) and attack(...)")
    start = time.perf_counter()
    deadline = start + timeout
    checker = checker or Checker(network)
    stats: dict = {"phases": {}, "domains": 0, "bound_calls": 0}

    def phase(name: str, t0: float) -> None:
        stats["phases"][name] = round(stats["phases"].get(name, 0.0) + time.perf_counter() - t0, 4)

    def violated(x: np.ndarray) -> Verdict | None:
        found = checker(box, prop, x)
        return None if found is None else Verdict(VIOLATED, found, stats)

    t0 = time.perf_counter()
    quick = falsification.falsify(network, box, prop, seed=seed, rounds=1, restarts=64, steps=40,
                                   time_limit=min(QUICK_FALSIFY, 0.1 * timeout), device=device)
    phase("falsify", t0)
    if quick.success and (found := violated(quick.x)) is not None:
        return found
    if network.n_inputs <= INPUT_SPLIT_MAX_INPUTS:
        t0 = time.perf_counter()
        if trace is not None:
            trace.update(kind="input", events=[])
        confirm = lambda x: checker(box, prop, x) is not None
        small = trace is None and network.n_relus <= bab.MILP_SLOT_SPLITTABLE  # the MILP slot: bab.relu_split's
        slot = milp_slot(network, box, prop, list(range(len(prop.disjuncts))), None, bab.MILP_SLOT_SHARE, deadline,
                         confirm, progress, stats)
        result = bab.input_split(network, box, prop, deadline=deadline, confirm=confirm,
                                 side_attack=_SideAttack(network, box, prop, seed, deadline),
                                 trace=None if trace is None else trace["events"], progress=progress,
                                 interlude=slot if small else None, interlude_at=bab.MILP_SLOT_AFTER * timeout)
        phase("input_split", t0)
        return _from_bab(result, box, prop, checker, stats)
    if trace is not None:
        trace.update(kind="relu", open=[])
    return _high_dimensional(network, box, prop, deadline, seed, checker, stats, phase, trace, progress, device)


class _SideAttack:
    """Full falsification rounds while branch and bound runs (the `side_attack` of bab's searches): from `first`
    seconds on, then at doubling intervals, one whole round each (at most a tenth of the time left: a quick PGD
    misses narrow counterexamples that a longer one finds; the search may need long); successive rounds cycle
    through falsify's step sizes (falsification.ROUND_STEP_SCALES: the quick falsification's suits ACAS Xu and
    MNIST, a 5x larger one the CIFAR-10 nets), once each; after that, two rounds of every three take the scale whose
    rounds came closest to a violation (least unsafe value), the third the scales in turn. Rounds were cut at 1 s
    before: on marabou_cifar10 large (a round takes 2-3 s) index 6413 target 7 stayed open at 300 s, while whole
    rounds find it in 5-8 rounds. There, rounds of scale 1 / 5 / 0.2 ended 0.13-0.14 / -0.002-0.017 / 2.4 above a
    violation (seeds 0 and 1), and scale-5 rounds from ten other seeds found one 7 times out of 10."""

    def __init__(self, network: Network, box: InputBox, prop: Property, seed: int, deadline: float,
                 first: float = SIDE_ATTACK_FIRST, device: str = "cpu") -> None:
        self.network, self.box, self.prop, self.seed, self.deadline = network, box, prop, seed, deadline
        self.device = device
        self.next_at, self.rounds = first, 0
        self.closest: dict = {}  # step scale -> least unsafe value its rounds reached

    def __call__(self, elapsed: float) -> np.ndarray | None:
        if elapsed < self.next_at:
            return None
        self.rounds += 1
        self.next_at = 2 * elapsed
        left = self.deadline - time.perf_counter()
        scales = falsification.ROUND_STEP_SCALES
        if self.rounds <= len(scales) or self.rounds % 3 == 0:
            scale = scales[(self.rounds if self.rounds <= len(scales) else self.rounds // 3) % len(scales)]
        else:
            scale = min(self.closest, key=self.closest.get)
        result = falsification.falsify(self.network, self.box, self.prop, seed=self.seed, rounds=1,
                                       first_round=self.rounds, time_limit=max(0.0, 0.1 * left), step_scale=scale,
                                       device=self.device)
        self.closest[scale] = min(self.closest.get(scale, np.inf), float(result.value))
        return result.x if result.success else None


def _high_dimensional(network, box, prop, deadline, seed, checker, stats, phase, trace=None, progress=None,
                      device="cpu") -> Verdict:
    """Dual passes (adaptive, then optimized slopes), then ReLU branch and bound (falsification rounds beside it)."""
    open_ = list(range(len(prop.disjuncts)))
    side_attack = _SideAttack(network, box, prop, seed, deadline, first=0.0, device=device)
    # (phase, slopes, seconds it must have left to start)
    for name, slopes, needs in (("dual_adaptive", "adaptive", 0.0), ("dual_opt", "opt", 1.0)):
        if deadline - time.perf_counter() <= needs:
            return Verdict(TIMEOUT, None, stats)
        if name == "dual_opt" and stats["phases"]["dual_adaptive"] > EARLY_ATTACK_AFTER:
            t0 = time.perf_counter()  # an expensive net: its optimized pass takes long; a falsification round first
            x = side_attack(0.0)
            phase("falsify", t0)
            if x is not None and (found := checker(box, prop, x)) is not None:
                return Verdict(VIOLATED, found, stats)
        if progress is not None:  # the disjuncts still open; these passes take seconds on conv nets
            progress(f"dual pass ({slopes} slopes)", 0, len(open_), None)
        t0 = time.perf_counter()
        limit = None if slopes != "opt" else OPT_SHARE * (deadline - time.perf_counter())
        open_, layer_bounds = _open_disjuncts(network, box, prop, open_, slopes, limit, device)
        stats["bound_calls"] += 1
        phase(name, t0)
        if not open_:
            return Verdict(HOLDS, None, stats)
    t0 = time.perf_counter()
    result = bab.relu_split(network, box, prop, open_, deadline=deadline, layer_bounds=layer_bounds,
                            confirm=lambda x: checker(box, prop, x) is not None,
                            side_attack=side_attack, trace=trace, progress=progress, device=device)
    phase("relu_split", t0)
    return _from_bab(result, box, prop, checker, stats)


def _open_disjuncts(network: Network, box: InputBox, prop: Property, open_: list[int], slopes: str,
                    time_limit: float | None = None, device: str = "cpu") -> tuple[list[int], list]:
    """The disjuncts (indices) one dual pass over all their rows cannot rule out, and its layer bounds."""
    C, d = prop.stacked_rows(open_)
    options = {"device": device} if time_limit is None else {"time_limit": time_limit, "device": device}
    result = bound(network, box, C, d, method="dual", slopes=slopes, **options)
    ends = np.cumsum([len(prop.disjuncts[k][1]) for k in open_])[:-1]
    return ([k for k, part in zip(open_, np.split(result.lower, ends)) if not np.any(proves(part))],
            result.layer_bounds)


def _from_bab(result: bab.BabResult, box, prop, checker, stats: dict) -> Verdict:
    for key in ("domains", "bound_calls"):
        stats[key] += result.stats.get(key, 0)
    stats["bab"] = result.stats
    if result.status == VIOLATED:  # bab confirmed it with the same checker: this re-run returns the same point
        found = checker(box, prop, result.x)
        return Verdict(VIOLATED, found, stats) if found is not None else Verdict(UNKNOWN, None, stats)
    return Verdict(result.status, None, stats)


def verify_instance(network: Network, vnnlib_path: str | Path, timeout: float = 60.0, *, seed: int = 0,
                    certificate: str | Path | None = None, progress: bab.Progress | None = None,
                    device: str = "cpu") -> Verdict:
    """Verify every (box, property) pair of a VNN-LIB file within timeout seconds in all: violated if any pair
    is, holds only if all hold (the budget left passes from pair to pair).

    certificate: on holds, write a certificate there (certificate.py; dense ReLU chains loaded from ONNX only,
    else UnsupportedNetwork before anything runs); stats["certificate"] says what was written, or why not.
    progress: the branch and bound's, every box (`bab.Progress`). device: `verify`'s."""
    start = time.perf_counter()
    if certificate is not None:
        from .certificate import require_certifiable

        require_certifiable(network)
    pairs = parse_vnnlib(vnnlib_path, network.n_inputs, network.n_outputs)
    traces: list = []
    checker = Checker(network)
    stats: dict = {"boxes": len(pairs), "domains": 0, "bound_calls": 0, "phases": {}}
    worst = HOLDS
    for box, prop in pairs:
        remaining = timeout - (time.perf_counter() - start)
        if remaining <= 0:
            return Verdict(TIMEOUT, None, stats)
        traces.append({})
        verdict = verify(network, box, prop, remaining, seed=seed, checker=checker,
                         trace=None if certificate is None else traces[-1], progress=progress, device=device)
        for key in ("domains", "bound_calls"):
            stats[key] += verdict.stats.get(key, 0)
        for name, seconds in verdict.stats.get("phases", {}).items():
            stats["phases"][name] = round(stats["phases"].get(name, 0.0) + seconds, 4)
        if "bab" in verdict.stats:  # the branch and bound's own counters, one entry per box that needed it
            stats.setdefault("bab", []).append(verdict.stats["bab"])
        if verdict.status == VIOLATED:
            return Verdict(VIOLATED, verdict.counterexample, stats)
        if verdict.status == TIMEOUT:
            return Verdict(TIMEOUT, None, stats)
        if verdict.status == UNKNOWN:
            worst = UNKNOWN
    if certificate is not None and worst == HOLDS:
        from .certificate import write_certificate

        stats["certificate"] = write_certificate(network, vnnlib_path, pairs, traces, certificate,
                                                 time_limit=max(30.0, timeout))
    return Verdict(worst, None, stats)


def write_result_file(path: str | Path, verdict: Verdict, n_inputs: int | None = None) -> None:
    """VNN-COMP result file: ``sat`` / ``unsat`` / ``unknown`` / ``timeout``; on sat the assignment
    ``((X_0 v0)\\n (X_1 v1)\\n ... (Y_0 w0)\\n ...)`` with every float at full precision (repr round-trips).
    n_inputs, when given, must match the counterexample's size."""
    lines = [RESULT_WORDS[verdict.status]]
    if verdict.status == VIOLATED:
        x, y = (np.ravel(v).astype(np.float64) for v in verdict.counterexample)
        if n_inputs is not None and x.size != n_inputs:
            raise ValueError(f"the counterexample has {x.size} inputs, the model {n_inputs}")
        cells = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x)] + [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y)]
        lines.append("(" + "\n ".join(cells) + ")")
    Path(path).write_text("\n".join(lines) + "\n")
