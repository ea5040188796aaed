"""Run a suite of VNN-LIB instances (a VNN-COMP ``instances.csv``) and compare with the expected verdicts.

The csv has rows ``onnx, vnnlib, timeout_s[, expected]`` with paths relative to the csv's folder, with or
without a header row (VNN-COMP's own files have none). ``expected`` is ``sat`` / ``unsat`` (anything else, e.g.
``unknown``, is not judged). A decided verdict that contradicts the expected one is WRONG: the summary counts
them, `print_summary` lists them in red, and the CLI exits with code 3.

Times are wall-clock seconds of `verify.verify_instance` (parsing the VNN-LIB file included; loading a network is
done once per file and counted for its first instance), in this process or in worker processes (`workers`).
"""
from __future__ import annotations

import csv
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from .errors import InputError

EXPECTED_STATUS = {"sat": "violated", "unsat": "holds"}
FIELDS = ["onnx", "vnnlib", "verdict", "result", "seconds", "domains", "expected", "timeout"]
DEFAULT_TIMEOUT = 60.0


def read_instances(instances_csv: str | Path) -> list[dict]:
    """Rows {onnx, vnnlib (paths from here), timeout (s), expected ("" if none), name (the two paths as written)}
    of an instances file."""
    path = Path(instances_csv)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with path.open(newline="") as handle:
        table = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if table and not table[0][0].strip().endswith((".onnx", ".onnx.gz")):  # a header row
        header = [cell.strip().lower() for cell in table[0]]
        table = table[1:]
    else:
        header = ["onnx", "vnnlib", "timeout_s", "expected"]
    col = {name: header.index(name) for name in header}
    if "onnx" not in col or "vnnlib" not in col:
        raise InputError(f"{path}: needs columns onnx and vnnlib (found {', '.join(header)})")
    timeout_col = col.get("timeout_s", col.get("timeout"))
    rows = []
    for number, row in enumerate(table, 2 if header else 1):
        cell = lambda i: row[i].strip() if i is not None and i < len(row) else ""
        try:
            timeout = float(cell(timeout_col)) if cell(timeout_col) else DEFAULT_TIMEOUT
        except ValueError:
            raise InputError(f"{path}:{number}: timeout {cell(timeout_col)!r} is not a number") from None
        rows.append({"onnx": str(path.parent / cell(col["onnx"])), "vnnlib": str(path.parent / cell(col["vnnlib"])),
                     "timeout": timeout, "expected": cell(col.get("expected")).lower(),
                     "name": (cell(col["onnx"]), cell(col["vnnlib"]))})
    return rows


class _Runner:
    """Verifies instances, keeping loaded networks (one per ONNX file) across them."""

    def __init__(self) -> None:
        self.networks: dict = {}

    def __call__(self, instance: dict, timeout_scale: float) -> dict:
        from .onnx import load_onnx
        from .verify import RESULT_WORDS, verify_instance

        start = time.perf_counter()
        if instance["onnx"] not in self.networks:
            self.networks[instance["onnx"]] = load_onnx(instance["onnx"])
        timeout = instance["timeout"] * timeout_scale
        verdict = verify_instance(self.networks[instance["onnx"]], instance["vnnlib"], timeout)
        return {"verdict": verdict.status, "result": RESULT_WORDS[verdict.status],
                "seconds": round(time.perf_counter() - start, 4), "domains": verdict.stats.get("domains", 0),
                "timeout": round(timeout, 3)}


_WORKER_RUNNER: _Runner | None = None  # one per worker process (its network cache)


def _worker_init() -> None:
    global _WORKER_RUNNER
    import torch

    torch.set_num_threads(1)  # the workers share the machine's cores
    _WORKER_RUNNER = _Runner()


def _worker_run(instance: dict, timeout_scale: float) -> dict:
    return _WORKER_RUNNER(instance, timeout_scale)


def write_rows(out: str | Path, rows: list[dict]) -> None:
    """The result rows as a csv (columns FIELDS)."""
    with Path(out).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({key: row[key] for key in FIELDS} for row in rows)


def judge(row: dict) -> str:
    """correct | wrong | unsolved | decided (decided, nothing to compare with) for a result row."""
    if row["verdict"] not in ("holds", "violated"):
        return "unsolved"
    expected = EXPECTED_STATUS.get(row["expected"])
    if expected is None:
        return "decided"
    return "correct" if row["verdict"] == expected else "wrong"


def summarize(rows: list[dict]) -> dict:
    """Counts (n, solved, correct, wrong, unsolved, holds, violated, unknown, timeout) and times."""
    seconds = [row["seconds"] for row in rows]
    verdicts = [row["verdict"] for row in rows]
    judged = [judge(row) for row in rows]
    return {"n": len(rows), "solved": sum(v in ("holds", "violated") for v in verdicts),
            "correct": judged.count("correct"), "wrong": judged.count("wrong"), "unsolved": judged.count("unsolved"),
            **{status: verdicts.count(status) for status in ("holds", "violated", "unknown", "timeout")},
            "total_seconds": round(sum(seconds), 3), "median_seconds": round(statistics.median(seconds), 4)
            if seconds else 0.0, "max_seconds": round(max(seconds), 4) if seconds else 0.0,
            "has_expected": any(row["expected"] in EXPECTED_STATUS for row in rows)}


def run_suite(instances_csv: str | Path, *, timeout_scale: float = 1.0, out: str | Path | None = None,
              workers: int = 1, progress: bool = True) -> tuple[list[dict], dict]:
    """Verify every instance of the csv; returns (rows, summary) and writes rows to `out` (csv) if given.

    rows: dicts with FIELDS (paths as written in the csv, relative to its folder); summary: see `summarize`.
    workers > 1 runs instances in that many processes (each with one torch thread). progress: a rich progress
    bar and, at the end, the summary (wrong answers in red) on stderr.
    """
    if not timeout_scale > 0:
        raise InputError(f"--timeout-scale must be > 0, got {timeout_scale}")
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    instances = read_instances(instances_csv)
    results: list[dict | None] = [None] * len(instances)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not progress) as bar:
        task = bar.add_task("verifying", total=len(instances))

        def record(i: int, result: dict) -> None:
            instance = instances[i]
            results[i] = {"onnx": instance["name"][0], "vnnlib": instance["name"][1],
                          "expected": instance["expected"], **result}
            if out is not None:  # rows as they come (a long run can be watched); rewritten in order at the end
                write_rows(out, [row for row in results if row is not None])
            bar.update(task, advance=1, description=f"{Path(instance['vnnlib']).stem}: {result['verdict']}")

        if workers == 1:
            runner = _Runner()
            for i, instance in enumerate(instances):
                record(i, runner(instance, timeout_scale))
        else:
            import multiprocessing

            context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
                futures = {pool.submit(_worker_run, instance, timeout_scale): i
                           for i, instance in enumerate(instances)}
                for future in as_completed(futures):
                    record(futures[future], future.result())
    rows = [row for row in results if row is not None]
    summary = summarize(rows)
    if progress:
        print_summary(rows, summary, console)
    return rows, summary


def print_summary(rows: list[dict], summary: dict, console) -> None:
    """One line of counts and times; wrong answers listed in red."""
    line = (f"{summary['n']} instances: {summary['solved']} solved ({summary['holds']} holds, "
            f"{summary['violated']} violated), {summary['unsolved']} unsolved; total {summary['total_seconds']:.1f} s, "
            f"median {summary['median_seconds']:.2f} s, max {summary['max_seconds']:.1f} s")
    if summary["has_expected"]:
        line += f"; {summary['correct']} correct, {summary['wrong']} wrong"
    console.print(line)
    for row in rows:
        if judge(row) == "wrong":
            console.print(f"[bold red]WRONG: {row['onnx']} {row['vnnlib']}: {row['verdict']} "
                          f"(expected {row['expected']})[/bold red]")
