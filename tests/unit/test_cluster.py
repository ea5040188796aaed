"""Suites and datasets on Dask (verifier/jobs.py, cluster.py, dataset.py), with a real LocalCluster of two worker
processes: the same answers as one process, a worker killed mid-task costs nothing, --resume finishes an
interrupted run, failures become `error` rows, a bad --cluster address is a one-line error."""
from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")  # the optional extra verifier[cluster]

from verifier.cli import main  # noqa: E402
from verifier.dataset import run_dataset  # noqa: E402
from verifier.onnx import load_onnx  # noqa: E402
from verifier.suite import FIELDS, run_suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
VERIFY = [sys.executable, "-m", "verifier.cli"]
ACAS = "instances/onnx/ACASXU_run2a_{}_batch_2000.onnx"
# decided in well under a second each (tests/data/instances/README.md)
QUICK = [("test_nano.onnx", "vnnlib/test_nano.vnnlib", 20, "unsat"),
         ("test_tiny.onnx", "vnnlib/test_tiny.vnnlib", 20, "unsat"),
         ("test_small.onnx", "vnnlib/test_small.vnnlib", 20, "unsat"),
         ("test_sat.onnx", "vnnlib/test_prop.vnnlib", 20, "sat"),
         ("test_unsat.onnx", "vnnlib/test_prop.vnnlib", 20, "unsat"),
         (ACAS.format("2_9"), "instances/vnnlib/acasxu_prop_2.vnnlib", 20, "sat"),
         (ACAS.format("1_9"), "instances/vnnlib/acasxu_prop_3.vnnlib", 20, "sat"),
         ("ACASXU_run2a_1_1_batch_2000.onnx", "instances/vnnlib/acasxu_prop_4.vnnlib", 20, "unsat")]
# ~12 s on one core (the timeout test's instance): with a timeout of a second or two it ends `timeout` after it
HARD = (ACAS.format("4_2"), "instances/vnnlib/acasxu_prop_2.vnnlib")
STABLE = ("onnx", "vnnlib", "verdict", "result", "expected", "timeout", "error")  # all but seconds and domains


def suite_csv(path: Path, rows: list[tuple]) -> Path:
    """An instances file of (onnx, vnnlib, timeout, expected) rows, paths relative to tests/data."""
    path.write_text("onnx,vnnlib,timeout_s,expected\n"
                    + "".join(f"{DATA / onnx},{DATA / vnnlib},{timeout},{expected}\n"
                              for onnx, vnnlib, timeout, expected in rows))
    return path


def hard_instances(tmp_path: Path, n: int, timeout: float) -> list[tuple]:
    """n distinct instances (copies of HARD's property file) that each take `timeout` seconds and end `timeout`."""
    copies = []
    for i in range(n):
        copy = tmp_path / f"hard_{i}.vnnlib"
        copy.write_bytes((DATA / HARD[1]).read_bytes())
        copies.append((HARD[0], str(copy), timeout, ""))  # DATA / an absolute path is that path
    return copies


def stable(rows: list[dict]) -> list[tuple]:
    return sorted(tuple(str(row[key]) for key in STABLE) for row in rows)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def without_seconds(value):
    """A record or document without its wall times (the only thing two runs may differ in)."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


@pytest.fixture(autouse=True)
def one_torch_thread():
    """This process computes with one torch thread as the workers do: answers then agree to the last bit (and
    two threads on a loaded 2-core machine are ten times slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                                       silence_logs=logging.ERROR)
    with distributed.Client(cluster) as dask_client:
        yield dask_client
    cluster.close()


def executing_tasks(dask_worker) -> int:
    """Run on a worker by client.run: how many tasks it is executing now."""
    return len(dask_worker.state.executing)


def kill_a_busy_worker(client, deadline: float = 60.0) -> int:
    """SIGKILL the process of a worker while it executes a task; returns its pid."""
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        busy = [address for address, n in client.run(executing_tasks).items() if n]
        if busy:
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.05)
    raise AssertionError("no worker ever executed a task")


def test_suite_on_two_worker_processes_equals_one_process(tmp_path, client):
    instances = suite_csv(tmp_path / "instances.csv", QUICK)
    alone, _ = run_suite(instances, progress=False)
    out = tmp_path / "results.csv"
    spread, summary = run_suite(instances, client=client, out=out, progress=False)
    assert stable(spread) == stable(alone)
    assert [row["verdict"] for row in spread] == [{"sat": "violated", "unsat": "holds"}[e] for *_, e in QUICK]
    assert summary["correct"] == len(QUICK) and summary["error"] == 0
    written = read_csv(out)  # rewritten in the csv's order at the end
    assert list(written[0]) == FIELDS and [(w["onnx"], w["vnnlib"]) for w in written] == \
        [(row["onnx"], row["vnnlib"]) for row in spread]


def test_dataset_on_two_worker_processes_equals_one_process(tmp_path, client):
    network = load_onnx(ROOT / "models" / "digits_mlp.onnx")
    data = np.load(ROOT / "models" / "digits.npz")
    xs, labels = data["x"][:6].reshape(6, -1), data["y"][:6]
    options = {"pgd": {"seed": 0}, "dual": {"slopes": "adaptive"}}
    common = dict(methods=["pgd", "ibp", "dual"], clip=(0.0, 1.0), options=options, start=0, progress=False)
    alone, interrupted = run_dataset(network, xs, labels, 0.05, **common)
    spread, _ = run_dataset(network, xs, labels, 0.05, client=client, out=tmp_path / "r.jsonl", **common)
    assert not interrupted and [r["index"] for r in spread] == list(range(6))
    assert {r["verdict"] for r in alone} >= {"certified", "attacked"}  # both kinds of answer are compared
    assert without_seconds(spread) == without_seconds(alone)  # verdicts, bounds, attack points: all equal
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["header"]["eps"] == 0.05 and len(lines) == 7


def test_a_worker_killed_mid_task_costs_nothing(tmp_path, client):
    """The scheduler gives the dead worker's task to another worker: every instance ends with one real row."""
    instances = suite_csv(tmp_path / "instances.csv", hard_instances(tmp_path, 3, 1.5) + QUICK[:3])
    out = tmp_path / "results.csv"
    finished: dict = {}
    run = threading.Thread(target=lambda: finished.update(
        zip(("rows", "summary"), run_suite(instances, client=client, out=out, progress=False))))
    run.start()
    pid = kill_a_busy_worker(client)
    run.join(timeout=120)
    assert not run.is_alive()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    rows = finished["rows"]
    assert len(rows) == 3 + 3 and finished["summary"]["error"] == 0
    written = read_csv(out)
    assert sorted((w["onnx"], w["vnnlib"]) for w in written) == sorted((r["onnx"], r["vnnlib"]) for r in rows)
    assert len({(w["onnx"], w["vnnlib"]) for w in written}) == len(written)  # none twice
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed one


def test_when_every_try_of_a_task_dies_its_row_says_error_and_the_rest_is_kept(tmp_path):
    import dask

    instances = suite_csv(tmp_path / "instances.csv", [(*HARD, 5, "")] + QUICK[:3])
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # the first death is the last try
        cluster = distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1,
                                           dashboard_address=":0", silence_logs=logging.CRITICAL)
    with cluster, distributed.Client(cluster) as one_worker:
        finished: dict = {}
        run = threading.Thread(target=lambda: finished.update(
            zip(("rows", "summary"), run_suite(instances, client=one_worker, progress=False))))
        run.start()
        kill_a_busy_worker(one_worker)
        run.join(timeout=120)
    rows = finished["rows"]
    assert rows[0]["verdict"] == "error" and "KilledWorker" in rows[0]["error"]
    # a task queued on the worker when it died is a suspect too (Dask counts it): the rest are kept, decided
    errors = [row for row in rows if row["verdict"] == "error"]
    assert len(rows) == 4 and finished["summary"]["error"] == len(errors) < 4
    assert all(row["verdict"] == "holds" for row in rows if row not in errors)


def test_failed_tasks_are_error_rows_and_exit_code_four(tmp_path, capsys):
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(assert (<= X_0 oops\n")
    instances = suite_csv(tmp_path / "instances.csv", QUICK[:2] + [("test_nano.onnx", str(bad), 20, "unsat")])
    out = tmp_path / "results.csv"
    assert main(["--instances", str(instances), "--out", str(out)]) == 4
    written = read_csv(out)
    assert [w["verdict"] for w in written] == ["holds", "holds", "error"] and "Error" in written[2]["error"]
    assert "ERROR" in capsys.readouterr().err


def lines_in(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


# the CLI as started from a terminal: Ctrl-C neither ignored nor blocked, whatever this test process's state
AS_FROM_A_TERMINAL = [sys.executable, "-c", "import signal, sys; "
                      "signal.signal(signal.SIGINT, signal.default_int_handler); "
                      "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
                      "from verifier.cli import main; sys.exit(main(sys.argv[1:]))"]


def interrupt(command: list[str], out: Path, rows: int, sig: int) -> subprocess.CompletedProcess:
    """Run the CLI (arguments) and send sig to its process group (it and its workers) once `out` holds `rows`
    lines."""
    process = subprocess.Popen([*AS_FROM_A_TERMINAL, *command], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    stop = time.monotonic() + 120
    while lines_in(out) < rows and process.poll() is None and time.monotonic() < stop:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be interrupted"
    os.killpg(process.pid, sig)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_resume_after_the_client_was_killed_finishes_only_what_is_missing(tmp_path, client):
    hard = hard_instances(tmp_path, 3, 1.0)
    rows = [QUICK[0], hard[0], QUICK[1], hard[1], QUICK[5], hard[2], QUICK[3], QUICK[7], QUICK[4]]
    instances = suite_csv(tmp_path / "instances.csv", rows)
    out = tmp_path / "results.csv"
    killed = interrupt(["--instances", str(instances), "--out", str(out), "--workers", "2"], out,
                       rows=1 + 3, sig=signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    before = read_csv(out)
    assert 3 <= len(before) < len(rows)
    resumed = subprocess.run([*VERIFY, "--instances", str(instances), "--out", str(out), "--resume"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    after = read_csv(out)
    assert all(row in after for row in before)  # kept as they were (their seconds too): not verified again
    reference, _ = run_suite(instances, client=client, progress=False)
    assert stable(after) == stable(reference) and len(after) == len(rows)


def test_dataset_resume_after_ctrl_c_gives_the_uninterrupted_document(tmp_path, capsys):
    out = tmp_path / "records.jsonl"
    n = 40  # ~70 ms each on a quiet core: time to interrupt after the first records
    args = ["models/digits_mlp.onnx", "--eps", "0.05", "--limit", str(n), "--method", "pgd,ibp,dual", "--out", str(out)]
    stopped = interrupt(args, out, rows=1 + 2, sig=signal.SIGINT)
    assert stopped.returncode == 130 and b"--resume" in stopped.stderr
    done = lines_in(out) - 1
    assert 2 <= done < n and all(json.loads(line) for line in out.read_text().splitlines())
    assert main([*args, "--resume", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert main([*args[:-2], "--json"]) == 0
    uninterrupted = json.loads(capsys.readouterr().out)
    assert without_seconds(resumed) == without_seconds(uninterrupted)
    assert [s["index"] for s in resumed["samples"]] == list(range(n))
    assert main([*args[:2], "0.06", *args[3:], "--resume"]) == 2  # other options: refused, file untouched
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("verify: error:") and "eps" in err[-1] and "Traceback" not in err
    assert lines_in(out) == n + 1


def test_a_bad_cluster_address_is_a_one_line_error_within_seconds(tmp_path, capsys):
    instances = suite_csv(tmp_path / "instances.csv", QUICK[:1])
    start = time.monotonic()  # in this process: the connection attempt, without Python's and torch's start-up
    assert main(["--instances", str(instances), "--cluster", "tcp://127.0.0.1:1"]) == 2
    assert time.monotonic() - start < 10
    assert capsys.readouterr().err.startswith("verify: error: cannot connect to a Dask scheduler")
    failed = subprocess.run([*VERIFY, "--instances", str(instances), "--cluster", "tcp://127.0.0.1:1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
    assert failed.stderr.startswith("verify: error: cannot connect") and "tcp://127.0.0.1:1" in failed.stderr
    assert main(["--instances", str(instances), "--cluster", "tcp://127.0.0.1:1", "--workers", "2"]) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_workers_set_glibc_malloc_thresholds_even_under_dasks_environment():
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (a 2-3x slowdown of our tasks, README); every
    worker sets the thresholds itself. mallopt answers 0 for a parameter it rejects."""
    script = ("import os; from verifier.tasks import tune_malloc, MMAP_THRESHOLD; "
              "assert os.environ['MALLOC_TRIM_THRESHOLD_'] == '65536'; print(tune_malloc())")
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
