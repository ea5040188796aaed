"""Many independent tasks (the instances of a suite, the samples of a dataset), run with nothing lost.

One code path for results, whatever runs the tasks (this process, `workers` local processes, a Dask cluster):
each finished task becomes a row, appended to the `--out` file and flushed at once (CSV for suites, JSON lines
for datasets) and counted in the progress line (done / total, counts per verdict, elapsed, ETA). `--resume`
reads the rows already in `--out` and runs only the tasks without one. A task that fails (an exception, or
every worker that tried it died) becomes a row with verdict `error` and the reason; the others go on. Ctrl-C
stops the run with every finished row on disk.
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterator

from .errors import InputError

BACKENDS = ("auto", "serial", "pool", "dask")
PLAIN_PROGRESS_EVERY = 30.0  # seconds between progress lines when stderr is no terminal (a batch job's log)


@dataclass(frozen=True)
class Task:
    """key: the unit's identity across runs (instance paths, sample index), matched against rows in --out;
    function: a module-level function (picklable by reference) of args returning the result dict."""

    key: Hashable
    function: Callable[..., dict]
    args: tuple


def describe_error(exc: BaseException) -> str:
    """The reason a task failed, on one line (type and message, at most 300 characters)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


class ResultFile:
    """An --out file of rows: CSV with the columns `fields`, or (fields None) JSON lines whose first line is
    {"header": header}, the options that change the answers (a resumed run must have the same)."""

    def __init__(self, path: str | Path, *, fields: list[str] | None = None, header: dict | None = None) -> None:
        self.path = Path(path)
        self.fields = fields
        self.header = json.loads(json.dumps(header or {}))  # as it reads back (tuples become lists)
        self.handle = None

    def previous_rows(self) -> list[dict]:
        """The complete rows of an earlier run (a last line cut short by a kill is dropped; CSV values are
        strings). InputError when the JSON header holds other options than this run's."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text().splitlines(keepends=True)
        lines = [line for line in lines if line.endswith("\n") and line.strip()]
        if self.fields is not None:
            reader = csv.DictReader(lines)
            if lines and set(self.fields) - set(reader.fieldnames or []):
                raise InputError(f"{self.path}: not a results file of this tool (its columns are not "
                                 f"{','.join(self.fields)}); use another --out")
            return [row for row in reader if None not in row.values() and None not in row]
        if not lines:
            return []
        try:
            header = json.loads(lines[0]).get("header")
        except (ValueError, AttributeError):
            header = None
        if header is None:
            raise InputError(f"{self.path}: not a results file of this tool (no header line); use another --out")
        for key in sorted(set(header) | set(self.header)):
            if header.get(key) != self.header.get(key):
                raise InputError(f"{self.path} holds results for other options ({key}: {_short(header.get(key))} "
                                 f"there, {_short(self.header.get(key))} now); use another --out, or run without "
                                 f"--resume to overwrite it")
        rows = []
        for line in lines[1:]:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows

    def start(self, kept: list[dict]) -> None:
        """Rewrite the file with the kept rows only (and its header), then keep it open to append."""
        self._rewrite(kept)
        self.handle = self.path.open("a", newline="")

    def append(self, row: dict) -> None:
        """Write one row and flush it: a kill after this returns loses nothing."""
        self.handle.write(self._format(row))
        self.handle.flush()

    def finish(self, rows: list[dict]) -> None:
        """Close; the file becomes the rows in this order (written to a temporary file renamed over it)."""
        self.close()
        self._rewrite(rows)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def _format(self, row: dict) -> str:
        if self.fields is None:
            return json.dumps(row) + "\n"
        import io

        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        return buffer.getvalue()

    def _rewrite(self, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w", newline="") as handle:
            if self.fields is None:
                handle.write(json.dumps({"header": self.header}) + "\n")
            else:
                handle.write(",".join(self.fields) + "\r\n")
            handle.writelines(self._format(row) for row in rows)
        os.replace(temporary, self.path)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def run_tasks(tasks: list[Task], make_row: Callable[[Task, dict | None, str | None], dict], *,
              previous: dict | None = None, out: ResultFile | None = None, client=None, workers: int = 1,
              backend: str = "auto", progress: bool = True, title: str = "verifying", console=None,
              status_of: Callable[[dict], str] = lambda row: row.get("verdict", "?")) -> tuple[dict, bool]:
    """Run the tasks that have no row in `previous` ({key: row}, e.g. from --resume); returns ({key: row} of
    every task done, previous ones included; interrupted by Ctrl-C).

    make_row(task, result, error): the row of a finished task (result None and error the reason if it failed).
    Who runs the tasks: `client` (a distributed.Client) when given; else this process when workers == 1; else
    a process pool of `workers` processes (backend "pool", the default) or a local Dask cluster (backend
    "dask"). The pool is the local default because the same ACAS Xu instance took 17-20 s in a pool process or a
    plain thread and 37-44 s in a Dask worker (measured; the worker's own threads take about half the GIL time,
    cause not found yet). out: rows appended as they come (started by the caller).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    rows = dict(previous or {})
    todo = [task for task in tasks if task.key not in rows]
    from rich.console import Console

    console = console or Console(stderr=True)
    results = _execute(todo, client, workers, backend, console if progress else None)
    interrupted = False
    try:
        with RunProgress(len(tasks), list(rows.values()), status_of, title, console, progress) as bar:
            for position, result, error in results:
                task = todo[position]
                rows[task.key] = make_row(task, result, error)
                if out is not None:
                    out.append(rows[task.key])
                bar.advance(rows[task.key])
    except KeyboardInterrupt:
        interrupted = True
    finally:
        results.close()  # cancels what is left and shuts a local cluster down
    return rows, interrupted


def run_in_order(tasks: list[Task], make_row: Callable, results_file: ResultFile | None, **options
                 ) -> tuple[list[dict], bool]:
    """`run_tasks` with `out=results_file`, then (the rows in the tasks' order, interrupted); the file is closed,
    and rewritten in that order when the run was not interrupted."""
    try:
        done, interrupted = run_tasks(tasks, make_row, out=results_file, **options)
    finally:
        if results_file is not None:
            results_file.close()
    rows = [done[task.key] for task in tasks if task.key in done]
    if results_file is not None and not interrupted:
        results_file.finish(rows)
    return rows, interrupted


def _execute(tasks: list[Task], client, workers: int, backend: str, console) -> Iterator[tuple]:
    """(position in tasks, result, None) or (position, None, reason), in the order tasks finish."""
    if not tasks:  # everything was resumed: no cluster to start
        return
    if client is None and (workers == 1 or backend == "serial"):
        for position, task in enumerate(tasks):
            try:
                result = task.function(*task.args)
            except Exception as exc:  # the task's failure is its row; KeyboardInterrupt stops the run
                yield position, None, describe_error(exc)
            else:
                yield position, result, None
        return
    if client is None and backend in ("pool", "auto"):
        yield from _run_pool(tasks, workers)
        return
    from . import cluster

    if client is not None:
        if console is not None:
            console.print(cluster.describe_client(client))
        yield from cluster.run_on_client(client, tasks)
        return
    with cluster.local_client(workers) as local:
        if console is not None:
            console.print(cluster.describe_client(local))
        yield from cluster.run_on_client(local, tasks)


def _run_pool(tasks: list[Task], workers: int) -> Iterator[tuple]:
    """The local process pool (`--workers N`): a worker lost mid-task fails the tasks it leaves."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from .tasks import in_worker

    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    pool = ProcessPoolExecutor(workers, mp_context=context)
    try:
        futures = {pool.submit(in_worker, task.function, *task.args): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            error = future.exception()
            yield (futures[future], None, describe_error(error)) if error else (futures[future], future.result(), None)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


class RunProgress:
    """done / total, counts per status, elapsed and ETA for the whole run: a live bar on a terminal, a plain
    line every PLAIN_PROGRESS_EVERY seconds otherwise. done_rows: rows already there (resumed)."""

    def __init__(self, total: int, done_rows: list[dict], status_of, title: str, console, enabled: bool) -> None:
        self.total, self.resumed, self.new = total, len(done_rows), 0
        self.status_of, self.title, self.console, self.enabled = status_of, title, console, enabled
        self.counts: dict[str, int] = {}
        for row in done_rows:
            self._count(row)
        self.start = self.last_line = time.monotonic()
        self.bar = None

    def __enter__(self) -> "RunProgress":
        if self.enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[status]}"), console=self.console, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.title, total=self.total, completed=self.resumed, status=self.line())
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def _count(self, row: dict) -> None:
        status = self.status_of(row)
        self.counts[status] = self.counts.get(status, 0) + 1

    def advance(self, row: dict) -> None:
        self.new += 1
        self._count(row)
        if self.bar is not None:
            self.bar.update(self.task, advance=1, status=self.line())
        elif self.enabled and (time.monotonic() - self.last_line >= PLAIN_PROGRESS_EVERY
                               or self.resumed + self.new == self.total):
            self.last_line = time.monotonic()
            self.console.print(f"{self.title}: {self.resumed + self.new}/{self.total} done; {self.line()}",
                               highlight=False)

    def line(self) -> str:
        """Counts per status, elapsed and ETA (from this run's throughput)."""
        elapsed = time.monotonic() - self.start
        left = self.total - self.resumed - self.new
        eta = _clock(elapsed / self.new * left) if self.new else "?"
        counts = ", ".join(f"{status} {n}" for status, n in sorted(self.counts.items()))
        return f"{counts or 'nothing yet'}; elapsed {_clock(elapsed)}, ETA {eta}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
