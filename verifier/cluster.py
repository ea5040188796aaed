"""Dask distributed plumbing: connect to a scheduler (`--cluster ADDRESS`), start a local cluster
(`--workers N`), and run tasks on either, yielding results as they finish.

Imported only when a run uses Dask, so that `import verifier` and `verify --help` never import it (VNN-COMP
starts a process per instance). Dask is the optional extra `verifier[cluster]`.
"""
from __future__ import annotations

import contextlib
import logging
import signal
from typing import Iterator

from .errors import InputError
from .jobs import describe_error
from .tasks import in_worker

CONNECT_TIMEOUT = "3s"  # a wrong address fails in seconds, not after Dask's default 30 s
INSTALL_HINT = "pip install 'verifier[cluster]'"


def _distributed():
    try:
        import distributed
    except ImportError:
        raise InputError(f"--cluster needs Dask distributed, which is not installed: {INSTALL_HINT}") from None
    return distributed


@contextlib.contextmanager
def connect(address: str, timeout: str = CONNECT_TIMEOUT):
    """A distributed.Client of the running scheduler at address (e.g. tcp://10.0.0.1:8786), closed on exit;
    the cluster itself keeps running. InputError when Dask is missing or the scheduler cannot be reached."""
    distributed = _distributed()
    try:
        client = distributed.Client(address, timeout=timeout)
    except (OSError, ValueError, TypeError) as exc:  # refused, unknown host, timed out, malformed address
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"cannot connect to a Dask scheduler at {address!r}: {reason}") from None
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def local_client(workers: int):
    """A Client of a LocalCluster with `workers` processes of one thread each, shut down on exit."""
    distributed = _distributed()
    # Ctrl-C reaches every process of the terminal's group: this process stops the run and shuts the cluster
    # down; worker processes started while SIGINT is ignored inherit that, instead of dying with tracebacks
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # silent workers: a task's failure is reported once, in its row, not also as a log traceback
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=":0", silence_logs=logging.CRITICAL)
    finally:
        signal.signal(signal.SIGINT, handler)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def describe_client(client) -> str:
    """One line: workers, threads and the dashboard address."""
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    return f"Dask: {len(workers)} workers, {threads} threads; dashboard {client.dashboard_link}"


def run_on_client(client, tasks: list) -> Iterator[tuple[int, dict | None, str | None]]:
    """Submit tasks (jobs.Task, all with as many arguments) to the cluster and yield (task position, result,
    None) or (position, None, reason) as each finishes, in completion order. A worker lost mid-task makes the
    scheduler run the task again elsewhere (up to distributed.scheduler.allowed-failures times, then
    KilledWorker: an error here). Closing the iterator early (Ctrl-C) cancels what is left."""
    distributed = _distributed()
    if not tasks:
        return
    # one graph for all tasks (client.map), not a message to the scheduler per task; columns of arguments
    columns = list(zip(*[(task.function, *task.args) for task in tasks]))
    futures = {future: i for i, future in enumerate(client.map(in_worker, *columns, pure=False))}
    try:
        # results come with the completion events (twice the throughput of asking for each result)
        for future, result in distributed.as_completed(futures, with_results=True, raise_errors=False):
            position = futures[future]
            if future.status == "error":
                yield position, None, describe_error(future.exception())
            else:
                yield position, result, None
            future.release()
    finally:
        pending = [future for future in futures if not future.done()]
        if pending:
            client.cancel(pending)
