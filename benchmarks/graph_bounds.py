"""Load, forward and certified bounds (IBP, the engine's CROWN) on the convolutional public instances.

Usage: python benchmarks/graph_bounds.py [SUITE_DIR] [--repeats N] [--methods ibp,dual adaptive] [--no-memory]

SUITE_DIR (default ../shared/benchmarks-conv) holds marabou_cifar10/ and verivital/. Instances: the index-1189
eps-0.012 property of each cifar10 net and prop_0 of each verivital net. "value": over the property's disjuncts,
the minimum of the best certified row bound of each (the property is proven when > 0). Times: median of N runs
after one warm-up; memory: peak RSS of a spawned process running the method once minus an idle one (MiB), as
benchmarks/bounds.py.
Run with OMP_NUM_THREADS=1 for comparable numbers.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from bounds import METHODS, peak_memory, timed

from verifier.onnx import load_onnx
from verifier.vnnlib import parse_vnnlib

DEFAULT_SUITE = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks-conv"


def instances(suite: Path) -> list[tuple[str, Path, Path]]:
    cifar, vv = suite / "marabou_cifar10", suite / "verivital"
    cases = [(f"cifar10 {size} idx1189", cifar / "onnx" / f"cifar10_{size}.onnx",
              cifar / "vnnlib" / f"networkcifar10_{size}_index1189_eps0.012_target1_orig0.vnnlib")
             for size in ("small", "medium", "large")]
    return cases + [(f"verivital {pool} prop_0", vv / "onnx" / f"Convnet_{pool}.onnx", vv / "vnnlib" / name)
                    for pool, name in (("avgpool", "prop_0_0.02.vnnlib"), ("maxpool", "prop_0_0.004.vnnlib"))]


def load_problem(onnx_path: Path, vnnlib_path: Path):
    """(network, box, C, d) with the objective rows of every disjunct, and the disjunct of each row."""
    net = load_onnx(onnx_path)
    (box, prop), = parse_vnnlib(vnnlib_path, net.n_inputs, net.n_outputs)
    rows = [prop.objective_rows(k) for k in range(len(prop.disjuncts))]
    owner = np.concatenate([np.full(len(C), k) for k, (C, _) in enumerate(rows)])
    return (net, box, np.concatenate([C for C, _ in rows]), np.concatenate([d for _, d in rows])), owner


def proof_value(lower: np.ndarray, owner: np.ndarray) -> float:
    """min over the disjuncts of the best row bound (a disjunct is ruled out when one of its rows is > 0)."""
    return float(min(lower[owner == k].max() for k in np.unique(owner)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", type=Path, default=DEFAULT_SUITE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="ibp,dual wk,dual adaptive")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    print(f"{'instance':<26}{'nodes':>6}{'ReLUs':>7}{'load s':>8}{'fwd 100 s':>10}  {'method':<15}{'value':>11}"
          f"{'median s':>10}{'peak MiB':>10}")
    for title, onnx_path, vnnlib_path in instances(args.suite):
        start = time.perf_counter()
        net = load_onnx(onnx_path)
        loaded = time.perf_counter() - start
        x = np.random.default_rng(0).uniform(0, 1, size=(100, net.n_inputs))
        forward, _ = timed(lambda: net.forward(x), args.repeats)
        problem, owner = load_problem(onnx_path, vnnlib_path)
        idle = None if args.no_memory else peak_memory(None, problem)
        head = f"{title:<26}{len(net.nodes) - 1:6d}{net.n_relus:7d}{loaded:8.3f}{forward:10.3f}"
        for name in args.methods.split(","):
            seconds, res = timed(lambda: METHODS[name](*problem), args.repeats)
            memory = "" if idle is None else f"{peak_memory(name, problem) - idle:10.1f}"
            print(f"{head}  {name:<15}{proof_value(res.lower, owner):11.5f}{seconds:10.3f}{memory:>10}", flush=True)
            head = " " * len(head)


if __name__ == "__main__":
    main()
