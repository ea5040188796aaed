"""Soundness stress of the VNN-LIB pipeline: `verify` on many random ONNX networks against exact answers.

Usage: python benchmarks/stress_verify.py [--seed S] [--count N] [--timeout T] [--graphs]

Per seed: a random ReLU net (2-30 inputs, 1-3 hidden layers of 3-15, ReLU on the output or not) saved as ONNX and
loaded back, a box, 1-3 unsafe disjuncts of 1-2 rows whose thresholds sit at the MILP's exact row minima plus a
shift in [-0.3, 0.3]. With --graphs the net is instead one of the test suite's random ONNX graphs
(tests/graph_models.py `KINDS`, in turn: convolutions with batch norm, pooling, padding, concatenation, residual
additions, NHWC input; 5-324 inputs, 24-720 ReLUs, so mostly the ReLU-split path), the box of radius 0.01-0.1 and
the shift in [-0.1, 0.1]. Single-row properties have an exact verdict (holds iff shift < 0); a conjunction's "holds"
is checked against 20,000 sampled points and the MILPs' minimizers. Every "violated" must carry a counterexample
inside the box that onnxruntime, on the ONNX file, confirms. Where a MILP of the oracle runs out of its 60 s, its
row's upper bound (the value at a point) and proved lower bound still decide a single-row property when the
threshold lies outside them (shift > 0: violated; every threshold below its row's lower bound: holds); otherwise a
"holds" is checked like a conjunction's. Prints each wrong or undecided case and a summary line; exit code 1 on a
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.graph_models
from tests.graph_models import KINDS, random_graph_file  # noqa: E402


def one(seed: int, folder: Path, timeout: float, graphs: bool = False) -> tuple[str, str, bool]:
    """(outcome: ok | wrong | undecided | skipped, a description, whether the oracle's MILPs finished) for one
    random problem."""
    rng = np.random.default_rng(seed)
    if graphs:
        kind = KINDS[seed % len(KINDS)]
        net = load_onnx(random_graph_file(kind, folder, seed))
        centre, radius, spread, shape = rng.uniform(0, 1, net.n_inputs), rng.uniform(0.01, 0.1), 0.1, kind
    else:
        n = int(rng.choice([2, 3, 5, 8, 20, 30]))
        depth, width = int(rng.integers(1, 4)), int(rng.integers(3, 16))
        net = load_onnx(save_onnx(random_network([n] + [width] * depth + [4], rng,
                                                 relu_on_output=bool(rng.integers(2))), folder / f"net_{seed}.onnx"))
        centre, radius, spread, shape = rng.uniform(-1, 1, n), rng.uniform(0.05, 0.6), 0.3, f"{depth}x{width}"
    box = InputBox(centre - radius, centre + radius)
    rows = int(rng.integers(1, 3))
    Cs = [rng.normal(size=(rows, net.n_outputs)) for _ in range(int(rng.integers(1, 4)))]
    exact = [milp.bound(net, box, C, time_limit=60) for C in Cs]
    finished = all(status == "optimal" for e in exact for status in e.info["status"])
    shift = float(rng.uniform(-spread, spread))
    if abs(shift) < 1e-3:  # below float32 resolution against onnxruntime: not decidable
        return "skipped", "threshold too close", finished
    prop = Property(tuple((C, e.upper + shift) for C, e in zip(Cs, exact)))
    # the truth where it is known: every row's upper bound is its value at a point (e.x), its lower bound proved
    truth = None
    if rows == 1 and shift > 0:
        truth = "violated"
    elif rows == 1 and all(np.all(e.lower > e.upper + shift) for e in exact):  # finished: lower == upper
        truth = "holds"
    verdict = verify(net, box, prop, timeout=timeout, seed=seed)
    about = f"seed {seed}: {verdict.status}, {net.n_inputs} inputs, {shape}, {len(Cs)} x {rows} rows, " \
        f"shift {shift:+.4f}" + ("" if finished else ", oracle unfinished")
    if verdict.status == "violated":
        x, _ = verdict.counterexample
        if not (box.contains(x) and prop.violated_by(run_onnxruntime(net.source, x))):
            return "wrong", about + " (counterexample not confirmed)", finished
        return ("wrong", about + " (expected holds)", finished) if truth == "holds" else ("ok", about, finished)
    if verdict.status != "holds":
        return "undecided", about + f" {verdict.stats.get('phases')}", finished
    if truth is not None:
        return ("ok", about, finished) if truth == "holds" else ("wrong", about + " (expected violated)", finished)
    points = np.concatenate([box.sample(20_000, rng)] + [e.x for e in exact])  # and the oracle's minimizers
    sampled = prop.violated_by(net.forward(points))
    return ("wrong", about + " (a sampled point is unsafe)", finished) if np.any(sampled) else ("ok", about, finished)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--graphs", action="store_true", help="the test suite's random ONNX graphs, not dense nets")
    args = parser.parse_args()
    counts = {"ok": 0, "wrong": 0, "undecided": 0, "skipped": 0}
    unfinished, start = 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seed, args.seed + args.count):
            outcome, about, finished = one(seed, Path(tmp), args.timeout, args.graphs)
            counts[outcome] += 1
            unfinished += not finished
            if outcome in ("wrong", "undecided"):
                print(f"{outcome.upper()}: {about}", flush=True)
    print(f"{args.count} problems: {counts['ok']} right, {counts['wrong']} wrong, {counts['undecided']} undecided, "
          f"{counts['skipped']} skipped ({unfinished} with an oracle MILP out of its 60 s); "
          f"{time.perf_counter() - start:.0f} s")
    return 1 if counts["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
