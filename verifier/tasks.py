"""The work units of suites and datasets, run in worker processes (local or on a Dask cluster) or in this one.

A task is a pure function of paths, arrays and options to a result dict: the same inputs give the same answer,
so a task retried after its worker died, or redone by `--resume`, is as good as the first attempt. Networks
travel as (path, sha256): a worker loads each network file once, not once per task.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from .network import Network

NETWORK_CACHE_SIZE = 8

# The one piece of global state, on purpose: a worker process runs many tasks on few networks, and parsing the
# ONNX file for each task would cost more than a small instance takes to verify. Keyed by the file's sha256 (a
# file changed on disk is loaded again, never served stale); bounded, so a long-lived process holds at most
# NETWORK_CACHE_SIZE networks.
_NETWORKS: OrderedDict[str, Network] = OrderedDict()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (the identity of a network file, or a data file, in tasks and --out)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remember_network(sha256: str, network: Network) -> None:
    """Put an already loaded network in this process's cache (the in-process run reuses the caller's)."""
    _NETWORKS[sha256] = network
    _NETWORKS.move_to_end(sha256)
    while len(_NETWORKS) > NETWORK_CACHE_SIZE:
        _NETWORKS.popitem(last=False)


def cached_network(path: str, sha256: str) -> Network:
    """The network of the ONNX file at path, whose content must hash to sha256; loaded at most once per process."""
    if sha256 in _NETWORKS:
        _NETWORKS.move_to_end(sha256)
        return _NETWORKS[sha256]
    from .onnx import load_onnx

    if file_sha256(path) != sha256:
        raise InputError(f"{path} changed since the run started (its sha256 is no longer {sha256[:12]}...)")
    network = load_onnx(path)
    remember_network(sha256, network)
    return network


def verify_instance_task(onnx: str, onnx_sha256: str, vnnlib: str, timeout: float, seed: int = 0,
                         device: str = "cpu") -> dict:
    """One VNN-LIB instance (seed: of the attacks; device: `verify.verify`'s): {verdict, result (VNN-COMP word),
    seconds (wall, loading the network included when this process had not loaded it yet), domains, timeout (s)}."""
    from .verify import RESULT_WORDS, verify_instance

    start = time.perf_counter()
    network = cached_network(onnx, onnx_sha256)
    verdict = verify_instance(network, vnnlib, timeout, seed=seed, device=device)
    return {"verdict": verdict.status, "result": RESULT_WORDS[verdict.status],
            "seconds": round(time.perf_counter() - start, 4), "domains": verdict.stats.get("domains", 0),
            "timeout": round(timeout, 3)}


def evaluate_sample_task(model: str, model_sha256: str, x: np.ndarray, label: int, index: int, eps: float,
                         methods: list[str], clip: tuple[float, float] | None, options: dict, norm: str = "linf",
                         smoothing: dict | None = None) -> dict:
    """One sample of a dataset (x: (n_inputs,)): its record in the JSON schema of DESIGN.md
    (compare.evaluate_sample; norm and smoothing as there)."""
    from .compare import evaluate_sample

    network = cached_network(model, model_sha256)
    return evaluate_sample(network, x, label, eps, methods=methods, clip=clip, options=options, index=index,
                           norm=norm, smoothing=smoothing)


# glibc malloc settings for worker processes: keep freed blocks up to 32 MiB in the heap (M_MMAP_THRESHOLD) and
# return memory to the system only above 64 MiB free at the top (M_TRIM_THRESHOLD). Dask's nanny starts workers
# with MALLOC_TRIM_THRESHOLD_=65536, which also freezes glibc's mmap threshold at 128 KiB: every tensor above it is
# then mapped and unmapped anew, page faults included. That made a task 2.2-3x slower in a Dask worker
# (ACAS Xu 4_2 prop_2: 55 s of CPU against 18 s; with these settings 15 s, see README "Beyond one machine").
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters from glibc's malloc.h


def tune_malloc() -> bool:
    """Set the worker's glibc malloc thresholds (above); False where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
            bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


def in_worker(function, *args) -> dict:
    """Run a task in a worker process: one torch thread (the workers of a machine share its cores), glibc's malloc
    tuned (`tune_malloc`), then the task. Module-level so that Dask and process pools pickle it by reference."""
    tune_malloc()
    torch = sys.modules.get("torch")
    if torch is None:  # not imported yet (and maybe never: a worker that only sleeps in benchmarks/cluster.py)
        os.environ["OMP_NUM_THREADS"] = "1"  # read when torch starts its thread pool
    elif torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return function(*args)
