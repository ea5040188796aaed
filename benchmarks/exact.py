"""Exact answers by MILP on MNIST 256x2 (mnist_fc prop_0..prop_4, eps 0.03): time and verdict vs instances.csv.

Usage: python benchmarks/exact.py [SUITE_DIR] [--props 0,1,2,3,4] [--time-limit 60] [--compare]

SUITE_DIR (default ../shared/benchmarks) holds mnist_fc/. Each property is a robustness property: one unsafe
disjunct ``y_label - y_j <= 0`` per j, so it holds (VNN-COMP "unsat") iff the minimum over the rows of the MILP's
lower bound is > 0, and is violated ("sat") iff a point has a row < 0 (re-checked by onnxruntime on the ONNX file).

Default run: the configuration for a verdict, `milp.bound(decide=0)` with alpha-CROWN layer bounds: rows the
dual pass already puts above 0 need no MILP, the others are solved most suspicious first, each MILP constrained to
values <= 1e-6 (so that infeasibility proves the row > 0), and the search stops at the first row below 0.
--compare also times the exact minimum margin (no early stop) with every `objective` ("min", "rows",
"min-selector") and with LP-all layer bounds (intermediate="lp"). Run with OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from verifier.bounds import milp
from verifier.onnx import load_onnx, run_onnxruntime
from verifier.vnnlib import parse_vnnlib

DEFAULT_SUITE = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
NET = "onnx/mnist-net_256x2.onnx"


def expected_verdicts(suite: Path) -> dict[str, str]:
    with open(suite / "mnist_fc" / "instances.csv", newline="") as f:
        return {row["vnnlib"]: row["expected"] for row in csv.DictReader(f) if row["onnx"] == NET}


def load(suite: Path, prop: int):
    net = load_onnx(suite / "mnist_fc" / NET)
    [(box, spec)] = parse_vnnlib(suite / "mnist_fc" / "vnnlib" / f"prop_{prop}_0.03.vnnlib", net.n_inputs,
                                 net.n_outputs)
    return (net, box, *spec.stacked_rows())


def verdict(res, onnx_path: Path, C: np.ndarray, d: np.ndarray) -> str:
    """unsat (holds) / sat (violated, confirmed by onnxruntime) / unknown."""
    if res.lower.min() > 0:
        return "unsat"
    j = int(np.argmin(res.upper))
    if res.upper[j] < 0:
        value = float(C[j] @ run_onnxruntime(onnx_path, res.x[j]) + d[j])
        return "sat" if value < 0 else "unknown (onnxruntime disagrees)"
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", type=Path, default=DEFAULT_SUITE)
    parser.add_argument("--props", default="0,1,2,3,4")
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    expected = expected_verdicts(args.suite)
    props = [int(p) for p in args.props.split(",")]
    onnx_path = args.suite / "mnist_fc" / NET
    print(f"{'property':<18}{'seconds':>9}{'bounds s':>10}{'binaries':>9}{'min lower':>11}{'min upper':>11}"
          f"  {'verdict':<9}{'expected':<9}row status")
    for p in props:
        net, box, C, d = load(args.suite, p)
        start = time.perf_counter()
        res = milp.bound(net, box, C, d, decide=0.0, time_limit=args.time_limit)
        seconds = time.perf_counter() - start
        got = verdict(res, onnx_path, C, d)
        want = expected.get(f"vnnlib/prop_{p}_0.03.vnnlib", "?")
        counts = {s: res.info["status"].count(s) for s in dict.fromkeys(res.info["status"])}
        print(f"prop_{p}_0.03{'':<6}{seconds:9.2f}{res.info['seconds_bounds']:10.2f}{res.info['binaries']:9d}"
              f"{res.lower.min():11.5f}{res.upper.min():11.5f}  {got:<9}{want:<9}{counts}"
              f"{'' if got == want else '  MISMATCH'}", flush=True)
    if not args.compare:
        return
    configs = [("min", "dual"), ("rows", "dual"), ("min-selector", "dual"), ("min", "lp")]
    print("\nExact minimum margin (no early stop), seconds per configuration (objective / layer bounds):")
    print(f"{'property':<18}" + "".join(f"{o + '/' + i:>18}" for o, i in configs) + "   min margin")
    for p in props:
        net, box, C, d = load(args.suite, p)
        cells, margins = [], []
        for objective, intermediate in configs:
            start = time.perf_counter()
            res = milp.bound(net, box, C, d, objective=objective, intermediate=intermediate,
                             time_limit=args.time_limit)
            status = "" if res.info["min_status"] == "optimal" else "*"
            cells.append(f"{time.perf_counter() - start:17.2f}{status or ' '}")
            margins.append(res.lower.min())
        print(f"prop_{p}_0.03{'':<6}" + "".join(cells) + f"   {min(margins):.5f}", flush=True)
    print("(* = not solved to optimality within the time limit)")


if __name__ == "__main__":
    main()
