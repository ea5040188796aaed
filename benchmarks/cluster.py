"""Suites on Dask: what Dask costs per task on this machine, how it scales, and what a large cluster would take.

Usage: python benchmarks/cluster.py scaling [SUITE_DIR] [--timeout-scale S] [--modes serial,dask1,dask2,pool2]
                                             [--repeat R] [--out-dir DIR]
       python benchmarks/cluster.py simulate [--times results.csv] [--workers 16,32,64] [--tasks-per-worker 30]
                                             [--time-scale 1.0]

scaling: the suite (SUITE_DIR/instances.csv, default ../shared/benchmarks/acasxu) run by `run_suite` in this
process (serial), on a local Dask cluster of 1 and 2 worker processes (dask1, dask2: how a Dask cluster runs them)
and on the process pool that `--workers 2` runs (pool2). Per mode: verdicts, start (s: starting the Dask
cluster, paid once per run; the pool starts inside its run), wall (s, the run itself), task s (the tasks' own
seconds, summed), overhead per task = (wall x workers - task s) / tasks (ms: scheduling, transfers, imports in
fresh workers and, with 2 workers, the idle tail), speed-up = dask1's wall / this wall. Each run's rows go to
DIR/<mode>-<k>.csv (a `--times` file for simulate).

simulate: a scheduler and N worker processes (one thread each) on this machine, running tasks that only sleep,
for durations drawn (seeded) from a suite's measured times (the `seconds` of a results csv, x --time-scale),
N x --tasks-per-worker of them, through the same `jobs.run_tasks` as real runs (rows appended to an --out file).
Per N: start (s), throughput of empty tasks (tasks/s: the scheduler's ceiling), wall of the sleep tasks against
the ideal sum(d) / N, overhead per task = (wall x N - sum(d)) / tasks (ms), and efficiency = ideal / wall.
"""
from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from verifier.jobs import ResultFile, Task, run_tasks
from verifier.suite import read_instances, run_suite

DEFAULT_SUITE = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "acasxu"
EMPTY_TASKS = 1000


def local_cluster(workers: int):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.CRITICAL)
    return cluster, Client(cluster)


def scaling(args) -> None:
    import torch

    torch.set_num_threads(1)  # serial too: every mode computes with one torch thread per process
    instances = args.suite / "instances.csv"
    n = len(read_instances(instances))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"{args.suite.name}: {n} instances, timeout scale {args.timeout_scale}")
    for column in ("mode", "run", "solved", "wrong", "start s", "wall s", "task s", "overhead / task ms",
                   "speed-up"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    dask1_walls = []
    for k in range(args.repeat):
        for mode in args.modes.split(","):
            workers = 1 if mode == "serial" else int(mode[-1])
            start = time.perf_counter()
            cluster, client = local_cluster(workers) if mode.startswith("dask") else (None, None)
            started = time.perf_counter() - start if client else 0.0
            begin = time.perf_counter()
            rows, summary = run_suite(instances, timeout_scale=args.timeout_scale, client=client, workers=workers,
                                      backend="pool" if mode.startswith("pool") else "dask",
                                      out=args.out_dir / f"{mode}-{k}.csv", progress=False)
            wall = time.perf_counter() - begin
            if client:
                client.close()
                cluster.close()
            task_seconds = sum(row["seconds"] for row in rows)
            if mode == "dask1":
                dask1_walls.append(wall)
            speedup = f"{statistics.median(dask1_walls) / wall:.2f}" if dask1_walls else ""
            table.add_row(mode, str(k), str(summary["solved"]), str(summary["wrong"]), f"{started:.1f}",
                          f"{wall:.1f}", f"{task_seconds:.1f}", f"{(wall * workers - task_seconds) / n * 1e3:.1f}",
                          speedup)
            Console(stderr=True).print(f"{mode} run {k}: wall {wall:.1f} s, tasks {task_seconds:.1f} s")
    Console(width=160).print(table)


def sleep_task(seconds: float) -> dict:
    """A stand-in for an instance that takes `seconds` and uses no CPU: only the machinery around it costs."""
    time.sleep(seconds)
    return {"verdict": "slept", "seconds": seconds}


def simulate(args) -> None:
    import csv

    with args.times.open(newline="") as handle:
        measured = [float(row["seconds"]) * args.time_scale for row in csv.DictReader(handle)]
    rng = random.Random(0)
    table = Table(title=f"sleep tasks with the durations of {args.times.name} (n {len(measured)}, mean "
                        f"{statistics.mean(measured):.3f} s, median {statistics.median(measured):.3f} s, "
                        f"max {max(measured):.1f} s)")
    for column in ("workers", "start s", "empty tasks / s", "tasks", "sum(d) s", "ideal s", "wall s",
                   "overhead / task ms", "efficiency"):
        table.add_column(column, justify="right")
    make_row = lambda task, result, error: result or {"verdict": "error", "error": error}  # noqa: E731
    for workers in (int(w) for w in args.workers.split(",")):
        start = time.perf_counter()
        cluster, client = local_cluster(workers)
        started = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            empty = [Task(i, sleep_task, (0.0,)) for i in range(EMPTY_TASKS)]
            begin = time.perf_counter()
            run_tasks(empty, make_row, client=client, progress=False, out=_started(Path(tmp) / "empty.jsonl"))
            rate = EMPTY_TASKS / (time.perf_counter() - begin)
            durations = [rng.choice(measured) for _ in range(workers * args.tasks_per_worker)]
            tasks = [Task(i, sleep_task, (d,)) for i, d in enumerate(durations)]
            begin = time.perf_counter()
            rows, _ = run_tasks(tasks, make_row, client=client, progress=False, out=_started(Path(tmp) / "s.jsonl"))
            wall = time.perf_counter() - begin
        client.close()
        cluster.close()
        assert all(row["verdict"] == "slept" for row in rows.values()) and len(rows) == len(tasks)
        ideal = max(sum(durations) / workers, max(durations))
        cells = (str(workers), f"{started:.1f}", f"{rate:.0f}", str(len(tasks)), f"{sum(durations):.0f}",
                 f"{ideal:.1f}", f"{wall:.1f}", f"{(wall * workers - sum(durations)) / len(tasks) * 1e3:.1f}",
                 f"{ideal / wall:.2f}")
        table.add_row(*cells)
        Console(stderr=True).print(" | ".join(cells))  # each row as soon as it is measured
    Console(width=160).print(table)


def _started(path: Path) -> ResultFile:
    results = ResultFile(path, header={"benchmark": "sleep"})
    results.start([])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    scale = sub.add_parser("scaling", help="a suite on 1 and 2 local Dask workers and on the process pool")
    scale.add_argument("suite", type=Path, nargs="?", default=DEFAULT_SUITE)
    scale.add_argument("--timeout-scale", type=float, default=1.0)
    scale.add_argument("--modes", default="serial,dask1,dask2,pool2")
    scale.add_argument("--repeat", type=int, default=1)
    scale.add_argument("--out-dir", type=Path, default=Path("cluster-bench"))
    sim = sub.add_parser("simulate", help="a scheduler and many workers running sleep tasks of a suite's times")
    sim.add_argument("--times", type=Path, required=True, help="a results csv (verify --instances --out)")
    sim.add_argument("--workers", default="16,32,64")
    sim.add_argument("--tasks-per-worker", type=int, default=30)
    sim.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    scaling(args) if args.what == "scaling" else simulate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
