"""Soundness stress of the VNN-LIB pipeline: `verify` on many random ONNX networks against exact answers.

Usage: python benchmarks/stress_verify.py [--seed S] [--count N] [--timeout T]

Per seed: a random ReLU net (2-30 inputs, 1-3 hidden layers of 3-15, ReLU on the output or not) saved as ONNX and
loaded back, a box, 1-3 unsafe disjuncts of 1-2 rows whose thresholds sit at the MILP's exact row minima plus a
shift in [-0.3, 0.3]. Single-row properties have an exact verdict (holds iff shift < 0); a conjunction's "holds"
is checked against 20,000 sampled points. Every "violated" must carry a counterexample inside the box that
onnxruntime, on the ONNX file, confirms. Prints each wrong or undecided case and a summary line; exit code 1 on a
wrong answer. Run with OMP_NUM_THREADS=1 (two in parallel on two cores).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from verifier.bounds import milp
from verifier.network import random_network
from verifier.onnx import load_onnx, run_onnxruntime, save_onnx
from verifier.spec import InputBox, Property
from verifier.verify import verify


def one(seed: int, folder: Path, timeout: float) -> tuple[str, str]:
    """(outcome: ok | wrong | undecided | skipped, a description) for one random problem."""
    rng = np.random.default_rng(seed)
    n = int(rng.choice([2, 3, 5, 8, 20, 30]))
    depth, width = int(rng.integers(1, 4)), int(rng.integers(3, 16))
    net = load_onnx(save_onnx(random_network([n] + [width] * depth + [4], rng,
                                             relu_on_output=bool(rng.integers(2))), folder / f"net_{seed}.onnx"))
    centre, radius = rng.uniform(-1, 1, n), rng.uniform(0.05, 0.6)
    box = InputBox(centre - radius, centre + radius)
    rows = int(rng.integers(1, 3))
    Cs = [rng.normal(size=(rows, 4)) for _ in range(int(rng.integers(1, 4)))]
    exact = [milp.bound(net, box, C, time_limit=60) for C in Cs]
    if not all(status == "optimal" for e in exact for status in e.info["status"]):
        return "skipped", "a MILP did not finish"
    shift = float(rng.uniform(-0.3, 0.3))
    if abs(shift) < 1e-3:  # below float32 resolution against onnxruntime: not decidable
        return "skipped", "threshold too close"
    prop = Property(tuple((C, e.upper + shift) for C, e in zip(Cs, exact)))
    verdict = verify(net, box, prop, timeout=timeout, seed=seed)
    about = f"seed {seed}: {verdict.status}, {n} inputs, {depth}x{width}, {len(Cs)} x {rows} rows, shift {shift:+.4f}"
    if verdict.status == "violated":
        x, _ = verdict.counterexample
        if not (box.contains(x) and prop.violated_by(run_onnxruntime(net.source, x))):
            return "wrong", about + " (counterexample not confirmed)"
        return ("ok", about) if rows > 1 or shift > 0 else ("wrong", about + " (expected holds)")
    if verdict.status != "holds":
        return "undecided", about + f" {verdict.stats.get('phases')}"
    if rows == 1:
        return ("ok", about) if shift < 0 else ("wrong", about + " (expected violated)")
    sampled = prop.violated_by(net.forward(box.sample(20_000, rng)))
    return ("wrong", about + " (a sampled point is unsafe)") if np.any(sampled) else ("ok", about)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    counts = {"ok": 0, "wrong": 0, "undecided": 0, "skipped": 0}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seed, args.seed + args.count):
            outcome, about = one(seed, Path(tmp), args.timeout)
            counts[outcome] += 1
            if outcome in ("wrong", "undecided"):
                print(f"{outcome.upper()}: {about}", flush=True)
    print(f"{args.count} problems: {counts['ok']} right, {counts['wrong']} wrong, {counts['undecided']} undecided, "
          f"{counts['skipped']} skipped; {time.perf_counter() - start:.0f} s")
    return 1 if counts["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
