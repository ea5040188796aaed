"""Run a suite of VNN-LIB instances (a VNN-COMP ``instances.csv``) and compare with the expected verdicts.

The csv has rows ``onnx, vnnlib, timeout_s[, expected]`` with paths relative to the csv's folder, with or
without a header row (VNN-COMP's own files have none). ``expected`` is ``sat`` / ``unsat`` (anything else, e.g.
``unknown``, is not judged). A decided verdict that contradicts the expected one is WRONG: the summary counts
them, `print_summary` lists them in red, and the CLI exits with code 3.

Instances run through `jobs.run_tasks`: in this process, in local worker processes or on a Dask cluster, rows
appended to `--out` as they finish, `--resume` to finish an interrupted run. Times are wall-clock seconds of
`verify.verify_instance` (parsing the VNN-LIB file included; loading a network is done once per file and process
and counted for the first instance that needed it).
"""
from __future__ import annotations

import csv
import statistics
from pathlib import Path

from .errors import InputError
from .jobs import ResultFile, Task, run_in_order
from .tasks import file_sha256, verify_instance_task

EXPECTED_STATUS = {"sat": "violated", "unsat": "holds"}
FIELDS = ["onnx", "vnnlib", "verdict", "result", "seconds", "domains", "expected", "timeout", "error"]
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


def write_rows(out: str | Path, rows: list[dict]) -> None:
    """The result rows as a csv (columns FIELDS)."""
    ResultFile(out, fields=FIELDS).finish(rows)


def judge(row: dict) -> str:
    """correct | wrong | unsolved | decided (decided, nothing to compare with) for a result row."""
    if row["verdict"] not in ("holds", "violated"):
        return "unsolved"
    expected = EXPECTED_STATUS.get(row["expected"])
    if expected is None:
        return "decided"
    return "correct" if row["verdict"] == expected else "wrong"


def summarize(rows: list[dict]) -> dict:
    """Counts (n, solved, correct, wrong, unsolved, holds, violated, unknown, timeout, error) and times."""
    seconds = [row["seconds"] for row in rows]
    verdicts = [row["verdict"] for row in rows]
    judged = [judge(row) for row in rows]
    return {"n": len(rows), "solved": sum(v in ("holds", "violated") for v in verdicts),
            "correct": judged.count("correct"), "wrong": judged.count("wrong"), "unsolved": judged.count("unsolved"),
            **{status: verdicts.count(status) for status in ("holds", "violated", "unknown", "timeout", "error")},
            "total_seconds": round(sum(seconds), 3), "median_seconds": round(statistics.median(seconds), 4)
            if seconds else 0.0, "max_seconds": round(max(seconds), 4) if seconds else 0.0,
            "has_expected": any(row["expected"] in EXPECTED_STATUS for row in rows)}


def run_suite(instances_csv: str | Path, *, timeout_scale: float = 1.0, out: str | Path | None = None,
              workers: int = 1, client=None, resume: bool = False, backend: str = "auto",
              progress: bool = True, seed: int = 0, device: str = "cpu") -> tuple[list[dict], dict]:
    """Verify every instance of the csv; returns (rows, summary) and writes rows to `out` (csv) if given.

    rows: dicts with FIELDS (paths as written in the csv, relative to its folder), in the csv's order; an
    instance whose task failed has verdict "error" and the reason in "error". summary: see `summarize` (plus
    "interrupted": Ctrl-C stopped the run, rows hold what was done). Who runs the instances: `client` (a
    distributed.Client), else this process (workers 1), else `workers` local processes with one torch thread
    each (jobs.run_tasks: a process pool; backend "dask" a local Dask cluster instead). out: rows
    appended as they finish, rewritten in order at the end; resume: keep the rows already in `out` (same
    instance and timeout) and verify only the others. progress: a progress bar and the summary on stderr. seed:
    of the attacks, every instance; device: torch device of every instance (`verify.verify`).
    """
    if not timeout_scale > 0:
        raise InputError(f"--timeout-scale must be > 0, got {timeout_scale}")
    if resume and out is None:
        raise InputError("--resume needs --out (the results file to resume)")
    instances = read_instances(instances_csv)
    hashes = {path: file_sha256(path) for path in {instance["onnx"] for instance in instances}}
    missing = [instance["vnnlib"] for instance in instances if not Path(instance["vnnlib"]).is_file()]
    if missing:
        raise InputError(f"{missing[0]}: no such file")
    tasks = [Task(instance["name"], verify_instance_task,
                  (str(Path(instance["onnx"]).resolve()), hashes[instance["onnx"]],
                   str(Path(instance["vnnlib"]).resolve()), instance["timeout"] * timeout_scale, seed, device))
             for instance in instances]
    by_key = {instance["name"]: instance for instance in instances}
    results_file = ResultFile(out, fields=FIELDS) if out is not None else None
    if resume and len(by_key) != len(instances):
        raise InputError(f"{instances_csv} lists an instance twice; --resume needs each once")
    previous = _resumed_rows(results_file, by_key, timeout_scale, instances_csv) if resume else {}
    if results_file is not None:
        results_file.start(list(previous.values()))

    def make_row(task: Task, result: dict | None, error: str | None) -> dict:
        instance = by_key[task.key]
        if result is None:
            result = {"verdict": "error", "result": "error", "seconds": 0.0, "domains": 0,
                      "timeout": round(instance["timeout"] * timeout_scale, 3)}
        return {"onnx": task.key[0], "vnnlib": task.key[1], "expected": instance["expected"], **result,
                "error": error or ""}

    from rich.console import Console

    console = Console(stderr=True)
    rows, interrupted = run_in_order(tasks, make_row, results_file, previous=previous, client=client,
                                     workers=workers, backend=backend, progress=progress, console=console)
    summary = {**summarize(rows), "interrupted": interrupted}
    if progress:
        print_summary(rows, summary, console)
        if interrupted:
            console.print(f"[yellow]interrupted: {len(rows)} of {len(tasks)} instances done"
                          + (f", in {out}: rerun with --resume to finish[/yellow]" if out else "[/yellow]"))
    return rows, summary


def _resumed_rows(results_file: ResultFile, by_key: dict, timeout_scale: float, instances_csv) -> dict:
    """{instance name: row} of the rows already in --out; error rows are dropped (they are verified again).
    InputError when a row is no instance of this suite or was verified with another timeout."""
    previous = {}
    for row in results_file.previous_rows():
        key = (row["onnx"], row["vnnlib"])
        if key not in by_key:
            raise InputError(f"{results_file.path} holds a row for {key[0]} {key[1]}, no instance of "
                             f"{instances_csv}; use another --out")
        timeout = round(by_key[key]["timeout"] * timeout_scale, 3)
        try:
            typed = {**row, "seconds": float(row["seconds"]), "domains": int(row["domains"] or 0),
                     "timeout": float(row["timeout"])}
        except ValueError:
            continue  # a damaged row: verify the instance again
        if abs(typed["timeout"] - timeout) > 1e-6:
            raise InputError(f"{results_file.path} holds results for another timeout ({typed['timeout']} s for "
                             f"{key[1]}, {timeout} s now); use the same --timeout-scale, or another --out")
        if row["verdict"] != "error":
            previous[key] = typed
    return previous


def print_summary(rows: list[dict], summary: dict, console) -> None:
    """One line of counts and times; wrong answers listed in red."""
    line = (f"{summary['n']} instances: {summary['solved']} solved ({summary['holds']} holds, "
            f"{summary['violated']} violated), {summary['unsolved']} unsolved; total {summary['total_seconds']:.1f} s, "
            f"median {summary['median_seconds']:.2f} s, max {summary['max_seconds']:.1f} s")
    if summary["has_expected"]:
        line += f"; {summary['correct']} correct, {summary['wrong']} wrong"
    if summary["error"]:
        line += f"; {summary['error']} failed (verdict error)"
    console.print(line)
    for row in rows:
        if row["verdict"] == "error":
            console.print(f"[bold red]ERROR: {row['onnx']} {row['vnnlib']}: {row['error']}[/bold red]",
                          highlight=False)
        if judge(row) == "wrong":
            console.print(f"[bold red]WRONG: {row['onnx']} {row['vnnlib']}: {row['verdict']} "
                          f"(expected {row['expected']})[/bold red]")
