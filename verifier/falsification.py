"""Falsification of VNN-LIB properties: a point of the box where the outputs reach an unsafe conjunction.

Projected descent on the batched cores of attacks.py (all disjuncts of a property in one batch, many restarts
each); a point counts only after onnxruntime agrees (attacks._finish: soundness rule 3 of DESIGN.md).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from .attacks import AttackResult, _fgsm_core, _finish, _Forward, _pgd_core
from .network import Network
from .spec import InputBox, Property, SpecError

ROUND_STEP_SCALES = (1.0, 5.0, 0.2)  # falsify's rounds cycle through step sizes times these (5: image nets)
ROUND_WORK = 2 ** 23  # falsify's default restarts: about this many multiply-adds per network pass and step
MAX_RESTARTS = 512
BASE_STEPS, STEPS_PER_DOUBLING = 60, 15  # falsify's default steps: 60 for 5 inputs (ACAS Xu), ~170 for 784


def _violation(C: torch.Tensor, d: torch.Tensor, valid: torch.Tensor, hinge: bool = False) -> Callable:
    """Objective ``max_rows (C_b y - d_b)`` of a padded stack of conjunctions C (B, m, k), d (B, m), valid (B, m);
    with hinge, the descent's loss ``sum_rows max(C_b y - d_b, 0)`` instead: it pushes every row still above 0 at
    once, where the maximum's gradient follows one row at a time and zigzags between rows that trade places (measured
    on marabou_cifar10 large index 6413 target 7, a conjunction of 9 rows: 50 restarts x 300 steps from three seeds,
    the maximum's descent ended 0.04-0.08 above 0, the hinge's below 0 every time)."""
    def objective(out: torch.Tensor) -> torch.Tensor:
        rows = torch.einsum("brk,bmk->brm", out, C) - d[:, None, :]
        if hinge:
            return rows.clamp(min=0).masked_fill(~valid[:, None, :], 0).sum(-1)
        return rows.masked_fill(~valid[:, None, :], -torch.inf).amax(-1)
    return objective


def falsify(network: Network, box: InputBox, prop: Property, *, restarts: int | None = None,
            steps: int | None = None, step_size: float = 0.1, final_step: float = 0.001, leak: float = 0.1,
            seed: int = 0, time_limit: float = 10.0, rounds: int | None = None, device="cpu", dtype=None,
            check: bool = True, first_round: int = 0, step_scale: float | None = None) -> AttackResult:
    """Search the box for a point whose outputs reach an unsafe conjunction of prop.

    Tries, in order: the box centre; the FGSM corner of each disjunct (gradient sign at the centre); then rounds
    of PGD, all disjuncts in one batch with `restarts` starts each, minimising the violation
    ``max_rows (C_k y - d_k)`` of each disjunct k (descending the hinge ``sum_rows max(C_k y - d_k, 0)``:
    `_violation`). Round r uses seed + first_round + r; rounds continue until a
    point is confirmed, `rounds` rounds ran (None = no limit), or time_limit seconds passed; rounds cycle through
    step sizes (ROUND_STEP_SCALES, from index first_round: a caller's successive short calls cycle too), or take
    step_scale times step_size and final_step in every round.
    restarts/steps default to a size-dependent choice (ROUND_WORK, BASE_STEPS), tuned on ACAS Xu and MNIST
    (benchmarks/attacks.py). value =
    ``prop.unsafe_value(f(x))`` of our float64 forward (<= 0: violated); success only once onnxruntime agrees
    and x lies in the box. Without a success, x is the point of least value seen.
    """
    start = time.perf_counter()
    deadline = start + time_limit
    if box.n != network.n_inputs:
        raise SpecError(f"input box has {box.n} entries, the network takes {network.n_inputs} inputs")
    dtype = dtype or torch.float64
    as_t = lambda a: torch.tensor(np.asarray(a, np.float64), dtype=dtype, device=device)
    K, width = len(prop.disjuncts), max(C.shape[0] for C, _ in prop.disjuncts)
    C_pad, d_pad, valid = np.zeros((K, width, network.n_outputs)), np.zeros((K, width)), np.zeros((K, width), bool)
    for k, (C, d) in enumerate(prop.disjuncts):
        C_pad[k, :C.shape[0]], d_pad[k, :C.shape[0]], valid[k, :C.shape[0]] = C, d, True
    objective = _violation(as_t(C_pad), as_t(d_pad), torch.as_tensor(valid, device=device))
    loss = _violation(as_t(C_pad), as_t(d_pad), torch.as_tensor(valid, device=device), hinge=True)
    forward = _Forward(network, device, dtype)
    lo, hi = as_t(np.repeat(box.lo[None], K, 0)), as_t(np.repeat(box.hi[None], K, 0))
    centre = (lo + hi) / 2
    value_of = lambda y: float(prop.unsafe_value(y))
    if restarts is None:  # cheap nets get many restarts (narrow counterexamples), big ones more rounds instead
        work = K * network.multiply_adds()
        restarts = int(np.clip(ROUND_WORK // work, 8, MAX_RESTARTS))
    if steps is None:  # sign steps need longer runs to cross (and explore) boxes of more dimensions
        steps = int(round(BASE_STEPS + STEPS_PER_DOUBLING * max(0.0, np.log2(network.n_inputs / 5))))
    info: dict = {"rounds": 0, "stage": None, "restarts": restarts, "steps": steps}
    best: tuple[float, np.ndarray] = (np.inf, box.center)
    rejected: list[dict] = []

    def consider(xs: np.ndarray, stage: str) -> AttackResult | None:
        """Try candidate points (any number, (M, n)) from the most violating; return a confirmed result."""
        nonlocal best
        values = prop.unsafe_value(network.forward(xs).reshape(len(xs), -1))  # (1, n) may read as one sample
        for i in np.argsort(values, kind="stable"):
            if values[i] < best[0]:
                best = (float(values[i]), xs[i])
            if values[i] > 0:
                break
            result = _finish(network, box, xs[i], value_of, True, check, start, dict(info, stage=stage))
            if result.success or not check:
                return result
            rejected.append(result.info)
        return None

    found = consider(box.center[None], "centre")
    if found is None:
        corners = _fgsm_core(forward, lo, hi, objective, start=centre, norm="linf", radius=None)
        found = consider(np.clip(corners.cpu().numpy().astype(np.float64), box.lo, box.hi), "fgsm")
    round_index = 0
    while found is None and time.perf_counter() < deadline and (rounds is None or round_index < rounds):
        generator = torch.Generator().manual_seed(int(seed) + first_round + round_index)
        size = ROUND_STEP_SCALES[(first_round + round_index) % len(ROUND_STEP_SCALES)] if step_scale is None \
            else step_scale
        x, _, _ = _pgd_core(forward, lo, hi, objective, loss, start=centre, norm="linf", radius=None,
                            restarts=restarts, steps=steps, step_size=step_size * size,
                            final_step=final_step * size, generator=generator, stop="any", leak=leak,
                            inclusive=True, deadline=deadline)
        round_index += 1
        info["rounds"] = round_index
        found = consider(np.clip(x.cpu().numpy().astype(np.float64), box.lo, box.hi), f"pgd round {round_index}")
    if found is not None:
        found.info["rounds"] = info["rounds"]
        return AttackResult(found.x, found.value, found.success, time.perf_counter() - start, found.info)
    info.update(reason="no violating point found" if not rejected else rejected[-1]["reason"],
                rejected=len(rejected), confirmed=False)
    x = best[1]
    return AttackResult(x, value_of(network.forward(x)), False, time.perf_counter() - start, info)
