"""Certificates of the holds instances of VNN-COMP suites: written, size, time to write, time to check.

Usage: python benchmarks/certificates.py SUITE_DIR [SUITE_DIR ...] [--limit N] [--select PATTERN] [--every K]
       [--timeout T]

For every instance whose expected verdict is unsat (instances.csv), runs `verify_instance` with a certificate,
then the independent checker (`check.check`) on it. Prints one row per instance and a total per suite: verify
seconds, certificate written (or why not), leaves, MILP-trusted leaves, bytes, seconds to write, seconds to
check. Run with OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from verifier import check
from verifier.onnx import load_onnx
from verifier.verify import verify_instance


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("suites", nargs="+", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="holds instances per suite at most")
    parser.add_argument("--select", default="", help="only instances whose onnx or vnnlib path contains this")
    parser.add_argument("--every", type=int, default=1, help="every k-th holds instance only (a spread subset)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per instance (default the suite's)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    print("suite | instance | verify s | written | leaves | MILP-trusted | bytes | write s | check s | check")
    for suite in args.suites:
        rows = [r for r in csv.DictReader(open(suite / "instances.csv")) if r.get("expected") == "unsat"
                and (args.select in r["onnx"] or args.select in r["vnnlib"])][::args.every][:args.limit]
        total = {"n": 0, "written": 0, "valid": 0, "leaves": 0, "trusted": 0, "bytes": 0, "verify": 0.0,
                 "write": 0.0, "check": 0.0}
        for r in rows:
            model, vnnlib = suite / r["onnx"], suite / r["vnnlib"]
            cert = folder / "c.npz"
            cert.unlink(missing_ok=True)
            start = time.perf_counter()
            verdict = verify_instance(load_onnx(model), vnnlib, args.timeout or float(r["timeout_s"]),
                                      certificate=cert)
            took = time.perf_counter() - start
            info = verdict.stats.get("certificate", {"written": False, "why": verdict.status})
            name = f"{Path(r['onnx']).stem} {Path(r['vnnlib']).stem}"
            total["n"] += 1
            if not info["written"]:
                print(f"{suite.name} | {name} | {took:.2f} | no: {info['why']}", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                leaves, trusted = check.check(model, vnnlib, cert)
                result = "valid"
            except (check.Invalid, check.BadInput) as exc:
                leaves, trusted, result = 0, 0, f"INVALID: {exc}"
            seconds = time.perf_counter() - t0
            total.update(written=total["written"] + 1, valid=total["valid"] + (result == "valid"),
                         leaves=total["leaves"] + leaves, trusted=total["trusted"] + trusted,
                         bytes=total["bytes"] + info["bytes"], verify=total["verify"] + took - info["seconds"],
                         write=total["write"] + info["seconds"], check=total["check"] + seconds)
            print(f"{suite.name} | {name} | {took - info['seconds']:.2f} | yes | {leaves} | {trusted} | "
                  f"{info['bytes']} | {info['seconds']:.2f} | {seconds:.2f} | {result}", flush=True)
        print(f"TOTAL {suite.name}: {total['n']} holds instances, {total['written']} certificates written, "
              f"{total['valid']} valid, {total['leaves']} leaves, {total['trusted']} MILP-trusted, "
              f"{total['bytes'] / 1e6:.2f} MB, verify {total['verify']:.1f} s, write {total['write']:.1f} s, "
              f"check {total['check']:.1f} s (over the written ones)", flush=True)


if __name__ == "__main__":
    main()
