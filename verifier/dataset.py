"""The samples of a dataset, one task each (`verify MODEL --data D.npz --eps E`): in this process, in local
worker processes or on a Dask cluster, records appended to `--out` (JSON lines) as they finish, resumable.

The --out file's first line is {"header": {...}}: the options that change the answers (the model's sha256, the
data's identity, eps, clip, methods and their options); each further line is one record (compare.py's JSON
schema, with its sample index). `--resume` keeps the records already there when the header matches this run's
and evaluates only the other samples; records whose task failed (verdict "error") are evaluated again.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .jobs import ResultFile, Task, run_in_order
from .network import Network
from .tasks import evaluate_sample_task, file_sha256, remember_network


def answer_options(network_sha256: str, eps: float, clip, methods: list[str], options: dict,
                   data_id: str | None, norm: str = "linf", smoothing: dict | None = None) -> dict:
    """The header of a dataset's --out file: everything besides the sample that changes a record (the norm and
    smoothing only when used, so L-inf files written before them still resume)."""
    header = {"model_sha256": network_sha256, "data": data_id, "eps": float(eps),
              "clip": None if clip is None else [float(c) for c in clip], "methods": list(methods),
              "options": {m: options.get(m, {}) for m in methods}}
    if norm != "linf":
        header["norm"] = norm
    if smoothing is not None:
        header["smoothing"] = dict(smoothing)
    return header


def run_dataset(network: Network, xs: np.ndarray, labels: np.ndarray, eps: float, *, methods: list[str],
                clip=(0.0, 1.0), options: dict | None = None, start: int = 0, out: str | Path | None = None,
                resume: bool = False, data_id: str | None = None, client=None, workers: int = 1,
                backend: str = "auto", progress: bool = True, console=None, norm: str = "linf",
                smoothing: dict | None = None) -> tuple[list[dict], bool]:
    """Evaluate samples xs (N, n_inputs) with labels (N,), indices start..start+N-1; returns (records in index
    order, interrupted by Ctrl-C).

    Records are compare.evaluate_sample's; a sample whose task failed gets {"index", "label", "prediction":
    None, "methods": {}, "verdict": "error", "error": reason}. Workers (client, workers > 1) load the network
    from its ONNX file (network.source). data_id: identifies the data in --out's header (e.g. the data file's
    sha256), so that --resume refuses another data set's records. norm, smoothing: as compare.evaluate_sample.
    """
    options = options or {}
    if resume and out is None:
        raise InputError("--resume needs --out (the results file to resume)")
    remote = client is not None or workers > 1
    if network.source:
        sha256 = file_sha256(network.source)
    elif remote or out is not None:
        raise InputError("the network has no ONNX file (network.source): save it with verifier.save_onnx to run "
                         "it in workers or to record its results")
    else:
        sha256 = f"in-memory-{id(network)}"
    remember_network(sha256, network)  # this process evaluates with the network it already has
    source = str(Path(network.source).resolve()) if network.source else ""
    clip = None if clip is None else tuple(float(c) for c in clip)
    tasks = [Task(start + offset, evaluate_sample_task,
                  (source, sha256, np.asarray(x, dtype=np.float64).reshape(-1), int(label), start + offset,
                   float(eps), list(methods), clip, options, norm, smoothing))
             for offset, (x, label) in enumerate(zip(xs, labels))]
    labels_of = {task.key: task.args[3] for task in tasks}
    results_file = None
    previous: dict = {}
    if out is not None:
        results_file = ResultFile(out, header=answer_options(sha256, eps, clip, methods, options, data_id, norm,
                                                             smoothing))
        if resume:
            for record in results_file.previous_rows():
                if record.get("index") not in labels_of:
                    raise InputError(f"{out} holds sample {record.get('index')}, not one of this run's samples "
                                     f"{start}..{start + len(tasks) - 1}; use another --out")
                if record.get("verdict") != "error":
                    previous[record["index"]] = record
        results_file.start(list(previous.values()))

    def make_row(task: Task, record: dict | None, error: str | None) -> dict:
        if record is None:
            return {"index": task.key, "label": labels_of[task.key], "prediction": None, "methods": {},
                    "verdict": "error", "error": error}
        return record

    return run_in_order(tasks, make_row, results_file, previous=previous, client=client, workers=workers,
                        backend=backend, progress=progress, console=console)
