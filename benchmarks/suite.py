"""Run a whole VNN-COMP suite and compare with the expected verdicts and the tools' times in verdicts.csv.

Usage: python benchmarks/suite.py SUITE_DIR [--timeout-scale S] [--workers N] [--out results.csv]
       [--select PATTERN] [--fresh-process]

SUITE_DIR holds instances.csv (onnx, vnnlib, timeout_s, expected) and, optionally, verdicts.csv with the
per-instance times of alpha-beta-CROWN and nnenum (VNN-COMP 2021/2022) and the best correct time of any sound
tool. Prints: solved / correct / wrong / unsolved, total and median time, and the same totals for the other tools
on the instances they solved; the slowest instances with the best known time beside ours. Times are wall-clock
seconds of `verify_instance` in this process (the competition's times include each tool's start-up, ~1 s for
nnenum, ~6-7 s for alpha-beta-CROWN, measured on other machines). Run with OMP_NUM_THREADS=1 (or --workers 2).
--fresh-process runs every instance through vnncomp_scripts/run_instance.sh instead, a new process each (Python
and torch start-up included, as the competition measures), `--workers` at a time.
Exit code 3 when an answer is wrong.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from verifier.suite import print_summary, read_instances, run_suite, summarize, write_rows

TOOLS = ("abcrown_2021", "abcrown_2022", "nnenum_2021", "nnenum_2022")
RUN_INSTANCE = Path(__file__).resolve().parents[1] / "vnncomp_scripts" / "run_instance.sh"
STATUS_OF = {"sat": "violated", "unsat": "holds", "unknown": "unknown", "timeout": "timeout"}


def run_fresh(instances_csv: Path, timeout_scale: float, workers: int) -> tuple[list[dict], dict]:
    """Every instance through run_instance.sh in its own process; rows and summary as `run_suite` gives them
    (seconds: the script's wall time; domains: not known)."""
    def one(instance: dict) -> dict:
        timeout = instance["timeout"] * timeout_scale
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.txt"
            start = time.perf_counter()
            subprocess.run([RUN_INSTANCE, "v1", "suite", instance["onnx"], instance["vnnlib"], result, str(timeout)],
                           capture_output=True, timeout=timeout + 60)
            seconds = time.perf_counter() - start
            words = result.read_text().split() if result.is_file() else []
        word = words[0] if words and words[0] in STATUS_OF else "unknown"
        return {"onnx": instance["name"][0], "vnnlib": instance["name"][1], "expected": instance["expected"],
                "verdict": STATUS_OF[word], "result": word, "seconds": round(seconds, 4), "domains": "",
                "timeout": round(timeout, 3)}

    with ThreadPoolExecutor(workers) as pool:
        rows = list(pool.map(one, read_instances(instances_csv)))
    summary = summarize(rows)
    print_summary(rows, summary, Console(stderr=True))
    return rows, summary


def tool_totals(verdicts: Path) -> dict:
    """Per tool: (solved, total seconds of the solved ones) from verdicts.csv, plus per-instance best times."""
    rows = list(csv.DictReader(verdicts.open()))
    totals = {}
    for tool in TOOLS:
        done = [float(r[tool + "_s"]) for r in rows if r.get(tool) in ("sat", "unsat") and r.get(tool + "_s")]
        totals[tool] = (len(done), sum(done))
    best = {(r["onnx"], r["vnnlib"]): float(r["best_time_s"]) for r in rows if r.get("best_time_s")}
    totals["best"] = (len(best), sum(best.values()))
    return {"totals": totals, "best": best}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite", type=Path, help="folder with instances.csv (and verdicts.csv)")
    parser.add_argument("--timeout-scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, help="per-instance results csv")
    parser.add_argument("--select", help="only instances whose onnx or vnnlib path contains this text")
    parser.add_argument("--fresh-process", action="store_true",
                        help="each instance through vnncomp_scripts/run_instance.sh (start-up included)")
    args = parser.parse_args(argv)
    instances = args.suite / "instances.csv"
    if args.select:  # a filtered copy of the csv, beside the original so relative paths still resolve
        lines = instances.read_text().splitlines()
        kept = [lines[0]] + [line for line in lines[1:] if args.select in line]
        if len(kept) == 1:
            parser.error(f"--select {args.select!r}: no instance of {instances} matches")
        handle = tempfile.NamedTemporaryFile("w", suffix=".csv", dir=args.suite, delete=False)
        handle.write("\n".join(kept) + "\n")
        handle.close()
        instances = Path(handle.name)
    try:
        if args.fresh_process:
            rows, summary = run_fresh(instances, args.timeout_scale, args.workers)
            if args.out:
                write_rows(args.out, rows)
        else:
            rows, summary = run_suite(instances, timeout_scale=args.timeout_scale, out=args.out,
                                      workers=args.workers)
    finally:
        if args.select:
            instances.unlink()
    console = Console()
    table = Table(title=f"{args.suite.name}: {summary['n']} instances")
    for column in ("tool", "solved", "correct", "wrong", "unsolved", "total s", "median s"):
        table.add_column(column, justify="right" if column != "tool" else "left")
    name = "verifier (this run" + (", fresh processes)" if args.fresh_process else ")")
    table.add_row(name, str(summary["solved"]), str(summary["correct"]), str(summary["wrong"]),
                  str(summary["unsolved"]), f"{summary['total_seconds']:.1f}", f"{summary['median_seconds']:.3f}")
    verdicts = args.suite / "verdicts.csv"
    best = {}
    if verdicts.is_file() and not args.select:
        known = tool_totals(verdicts)
        best = known["best"]
        for tool, (solved, seconds) in known["totals"].items():
            table.add_row(tool, str(solved), "", "", "", f"{seconds:.1f}", "")
    console.print(table)
    slow = sorted(rows, key=lambda r: -r["seconds"])[:10]
    for r in slow:
        known_best = best.get((r["onnx"], r["vnnlib"]))
        console.print(f"  {r['seconds']:8.2f} s  {r['verdict']:8s} {r['onnx']} {r['vnnlib']}"
                      + (f"  (best known {known_best:.2f} s)" if known_best is not None else ""))
    return 3 if summary["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
