"""Falsification on VNN-COMP suites: how many expected-sat instances `falsify` finds, and how fast.

Usage: python benchmarks/attacks.py [SUITE_DIR] [--time-limit S] [--restarts R] [--steps T] [--seed K]
       [--acasxu-all] [--device cuda]

SUITE_DIR (default ../shared/benchmarks beside the checkout) holds acasxu/ and mnist_fc/ with instances.csv.
Runs falsify on every ACAS Xu instance expected sat (with --acasxu-all: every instance) and on every mnist_fc
instance; prints one row per instance and a summary per suite: falsified / expected sat, median and max time of
the falsified ones, and the count of instances expected unsat that were reported sat, which must be 0 (the
script exits with status 1 otherwise).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

from verifier.falsification import falsify
from verifier.onnx import load_onnx
from verifier.vnnlib import parse_vnnlib

ROOT = Path(__file__).resolve().parents[1]


def run_instance(net, vnnlib_path: Path, time_limit: float, options: dict) -> tuple[bool, float, str]:
    """Falsify every (box, property) pair of one instance within one time budget; (sat, seconds, detail)."""
    start = time.perf_counter()
    detail = ""
    for box, prop in parse_vnnlib(vnnlib_path, net.n_inputs, net.n_outputs):
        left = time_limit - (time.perf_counter() - start)
        if left <= 0:
            break
        result = falsify(net, box, prop, time_limit=left, **options)
        detail = f"value {result.value:+.4g}, {result.info.get('stage') or result.info.get('reason')}"
        if result.success:
            return True, time.perf_counter() - start, detail
    return False, time.perf_counter() - start, detail


def run_suite(suite: Path, time_limit: float, options: dict, only_sat: bool) -> dict:
    """Every instance of suite/instances.csv (only expected sat ones when only_sat); prints rows, returns totals."""
    with open(suite / "instances.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    nets: dict = {}
    falsified_times, false_sat, expected_sat, missed = [], [], 0, []
    print(f"\n== {suite.name}: {'expected-sat instances' if only_sat else 'all instances'}")
    print(f"{'onnx':<36} {'vnnlib':<24} {'expected':<8} {'result':<7} {'seconds':>8}  detail")
    for row in rows:
        expected = row["expected"]
        if only_sat and expected != "sat":
            continue
        onnx_path = suite / row["onnx"]
        if onnx_path not in nets:
            nets[onnx_path] = load_onnx(onnx_path)
        sat, seconds, detail = run_instance(nets[onnx_path], suite / row["vnnlib"], time_limit, options)
        expected_sat += expected == "sat"
        if sat and expected == "sat":
            falsified_times.append(seconds)
        elif sat and expected == "unsat":
            false_sat.append(row)
        elif expected == "sat":
            missed.append(row)
        print(f"{Path(row['onnx']).stem[:36]:<36} {Path(row['vnnlib']).stem[:24]:<24} {expected:<8} "
              f"{'sat' if sat else '-':<7} {seconds:8.3f}  {detail}", flush=True)
    return {"suite": suite.name, "expected_sat": expected_sat, "falsified": len(falsified_times),
            "times": falsified_times, "false_sat": false_sat, "missed": missed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite_dir", nargs="?", default=str(ROOT.parent / "shared" / "benchmarks"))
    parser.add_argument("--time-limit", type=float, default=5.0, help="seconds per instance (default 5)")
    parser.add_argument("--restarts", type=int, default=None, help="PGD restarts per disjunct and round")
    parser.add_argument("--steps", type=int, default=None, help="PGD steps per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--acasxu-all", action="store_true", help="also run the ACAS Xu instances expected unsat")
    args = parser.parse_args(argv)
    options = {"seed": args.seed, "device": args.device}
    options.update({k: v for k, v in (("restarts", args.restarts), ("steps", args.steps)) if v is not None})
    suites = Path(args.suite_dir)
    totals = [run_suite(suites / "acasxu", args.time_limit, options, only_sat=not args.acasxu_all),
              run_suite(suites / "mnist_fc", args.time_limit, options, only_sat=False)]
    print("\n== summary")
    for t in totals:
        times = t["times"]
        timing = f"median {statistics.median(times):.3f} s, max {max(times):.3f} s" if times else "no time"
        print(f"{t['suite']:<9} falsified {t['falsified']}/{t['expected_sat']} expected-sat ({timing}); "
              f"expected-unsat reported sat: {len(t['false_sat'])}")
        for row in t["missed"]:
            print(f"          missed: {row['onnx']} {row['vnnlib']}")
        for row in t["false_sat"]:
            print(f"          UNSOUND: {row['onnx']} {row['vnnlib']} is expected unsat but was reported sat")
    unsound = sum(len(t["false_sat"]) for t in totals)
    print("no instance expected unsat was reported sat" if not unsound else f"{unsound} UNSOUND results")
    return 1 if unsound else 0


if __name__ == "__main__":
    sys.exit(main())
