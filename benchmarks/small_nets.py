"""`verify` on random small dense networks, with and without the MILP slots (bab.MILP_SLOT_*, MILP_PROBE_SHARE).

Usage: python benchmarks/small_nets.py [--seed S] [--count N] [--timeout T] [--widths LO HI] [--inputs N ...]

Per seed: a random ReLU net (20, 50 or 100 inputs by default, so the ReLU-split path; `--inputs` of at most 16 give
input splitting, whose slot takes nets of at most 100 ReLUs; 1-4 hidden layers of LO..HI), a box of radius
0.05-0.6, one random output row whose threshold is 0-10 % of its sampled range below the best value that 1 s of
`falsify` reaches (tight thresholds: many of them are hard). Each problem runs twice in this process, the slots off
(MILP_SLOT_SPLITTABLE and MILP_PROBE_SHARE 0) then on (the defaults). Prints one table row per net (the root's
unstable ReLUs as the ReLU-split search counted them, "-" where the dual passes decided first or input splitting
ran; each run's verdict and seconds), then per setting the problems decided and the seconds in all. Two decided
verdicts that disagree are printed as such (exit code 1). Run with OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from verifier import bab
from verifier.falsification import falsify
from verifier.network import random_network
from verifier.onnx import load_onnx, save_onnx
from verifier.spec import InputBox, Property
from verifier.verify import verify


def problem(seed: int, widths: tuple[int, int], inputs: list[int], folder: Path):
    """(net, box, property, a description) for one seed."""
    rng = np.random.default_rng(seed)
    n, depth, width = int(rng.choice(inputs)), int(rng.integers(1, 5)), int(rng.integers(*widths))
    net = load_onnx(save_onnx(random_network([n] + [width] * depth + [4], rng), folder / f"net_{seed}.onnx"))
    centre, radius = rng.uniform(-1, 1, n), rng.uniform(0.05, 0.6)
    box = InputBox(centre - radius, centre + radius)
    C = rng.normal(size=(1, 4))
    sampled = net.forward(box.sample(2000, rng)) @ C.T
    far = float(sampled.min()) - 1000.0  # far below: falsify minimizes C f - far for its full second
    best = falsify(net, box, Property(((C, np.array([far])),)), time_limit=1.0, check=False, seed=seed).value + far
    threshold = best - rng.uniform(0, 0.1) * float(sampled.max() - sampled.min())
    return net, box, Property(((C, np.array([threshold])),)), f"{n} inputs, {depth}x{width}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--widths", type=int, nargs=2, default=(5, 41), metavar=("LO", "HI"))
    parser.add_argument("--inputs", type=int, nargs="+", default=[20, 50, 100], help="input counts to draw from")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = {"slot off": (0, 0.0), "slot on": (bab.MILP_SLOT_SPLITTABLE, bab.MILP_PROBE_SHARE)}
    totals = {name: [0, 0.0] for name in settings}
    disagreements = 0
    print(f"| seed | net | {' | '.join(settings)} |\n| --- | --- |{' --- |' * len(settings)}")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seed, args.seed + args.count):
            net, box, prop, about = problem(seed, tuple(args.widths), args.inputs, Path(tmp))
            cells, decided, unstable = [], set(), "-"
            for name, (splittable, probe) in settings.items():
                bab.MILP_SLOT_SPLITTABLE, bab.MILP_PROBE_SHARE = splittable, probe
                start = time.perf_counter()
                verdict = verify(net, box, prop, timeout=args.timeout, seed=seed)
                seconds, status = time.perf_counter() - start, verdict.status
                unstable = verdict.stats.get("bab", {}).get("splittable", unstable)
                cells.append(f"{status} {seconds:.2f} s")
                totals[name][0] += status in ("holds", "violated")
                totals[name][1] += seconds
                decided |= {status} if status in ("holds", "violated") else set()
            disagreements += len(decided) > 1
            flag = " DISAGREE" if len(decided) > 1 else ""
            print(f"| {seed} | {about}, {unstable} unstable | {' | '.join(cells)} |{flag}", flush=True)
    for name, (count, seconds) in totals.items():
        print(f"{name}: {count} of {args.count} decided, {seconds:.1f} s in all")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
