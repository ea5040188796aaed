"""Values, times and memory of the certified bounds on public instances; where the LP's time goes.

Usage: python benchmarks/bounds.py [SUITE_DIR] [--repeats N] [--props 0,1,2,3,4] [--no-memory] [--backends]

SUITE_DIR (default ../shared/benchmarks) holds mnist_fc/ and acasxu/. Instances: MNIST 256x2 prop_0..prop_4 at
eps 0.03, and ACAS Xu N_1_1 prop_1. Every disjunct of these properties is one row, so the "value" printed is the
minimum over the rows of the certified lower bound: the property is proven when it is > 0.

Methods: IBP, dual (wk, adaptive, opt), LP (the dual pass's adaptive layer bounds), LP(opt) (alpha-CROWN layer
bounds) and LP-all (LP-tightened layer bounds). Times: median of N runs after one warm-up run. Memory: peak
resident memory of a spawned process running the method once, minus that of an idle spawned process (MiB).
--backends: the same LP (same layer bounds) on MNIST prop_0 with each solver backend: open (build), first solve,
median later solve, and for cvxpy its compile share (call time minus the solver's own time).
Run with OMP_NUM_THREADS=1 for comparable numbers.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
from pathlib import Path


from verifier import solvers
from verifier.bounds import dual, encode, interval, lp
from verifier.onnx import load_onnx
from verifier.vnnlib import parse_vnnlib

DEFAULT_SUITE = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
METHODS = {
    "ibp": lambda net, box, C, d: interval.bound(net, box, C, d),
    "dual wk": lambda net, box, C, d: dual.bound(net, box, C, d, slopes="wk"),
    "dual adaptive": lambda net, box, C, d: dual.bound(net, box, C, d, slopes="adaptive"),
    "dual opt": lambda net, box, C, d: dual.bound(net, box, C, d, slopes="opt"),
    "lp": lambda net, box, C, d: lp.bound(net, box, C, d),
    "lp(opt)": lambda net, box, C, d: lp.bound(net, box, C, d, slopes="opt"),
    "lp-all": lambda net, box, C, d: lp.bound(net, box, C, d, intermediate="lp"),
}


def instances(suite: Path, props: list[int]) -> list[tuple[str, Path, Path]]:
    mnist = suite / "mnist_fc"
    acas = suite / "acasxu"
    return [(f"mnist 256x2 prop_{i} 0.03", mnist / "onnx" / "mnist-net_256x2.onnx",
             mnist / "vnnlib" / f"prop_{i}_0.03.vnnlib") for i in props] + \
        [("acasxu 1_1 prop_1", acas / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx", acas / "vnnlib" / "prop_1.vnnlib")]


def load_problem(onnx_path: Path, vnnlib_path: Path):
    """(network, box, C, d): the objective rows of every disjunct (one box per file here)."""
    net = load_onnx(onnx_path)
    pairs = parse_vnnlib(vnnlib_path, net.n_inputs, net.n_outputs)
    if len(pairs) != 1 or any(C.shape[0] != 1 for C, _ in pairs[0][1].disjuncts):
        raise SystemExit(f"{vnnlib_path}: expected one box and one row per disjunct")
    box, prop = pairs[0]
    return (net, box, *prop.stacked_rows())


def timed(fn, repeats: int):
    """(median seconds over repeats runs after one warm-up, the last result)."""
    result, times = fn(), []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _child(queue, name, problem) -> None:
    if name is not None:
        METHODS[name](*problem)
    queue.put(_peak_rss_mib())


def _peak_rss_mib() -> float:
    """This process's peak resident memory (MiB): VmHWM, which starts afresh at exec, where Linux has it; else
    ru_maxrss, which a spawned child inherits from its parent's size at the fork before the exec."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(name: str | None, problem) -> float:
    """Peak RSS (MiB) of a fresh (spawned) process that runs the method once (name None: does nothing). Not a
    fork: a child forked from a process whose torch/OpenMP threads have run can hang (seen with 2 threads)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, name, problem))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def backend_table(net, box, C, d) -> None:
    bounds = dual.bound(net, box, C, d).layer_bounds
    problem, layout = encode.build_problem(net, box, bounds)
    G, g0 = encode.rows(layout, C, d)
    print(f"\nLP backends, MNIST prop_0 (same layer bounds; {problem.n} variables, "
          f"{problem.A_ub.nnz + problem.A_eq.nnz} nonzeros, {len(C)} objectives)")
    print(f"{'backend':<13}{'open s':>8}{'first s':>9}{'later s':>9}{'total s':>9}{'compile s':>11}  min value")
    for backend in solvers.BACKENDS:
        start = time.perf_counter()
        model = solvers.open_model(problem, backend)
        opened = time.perf_counter() - start
        times, values, compile_s = [], [], float("nan")
        for j in range(len(C)):
            cost = G[j].toarray().reshape(-1)
            t = time.perf_counter()
            result = model.solve(cost, float(g0[j]))
            times.append(time.perf_counter() - t)
            values.append(result.objective)
            if j == 0 and "solver_s" in result.info:
                compile_s = times[0] - result.info["solver_s"]
        print(f"{backend:<13}{opened:8.3f}{times[0]:9.3f}{statistics.median(times[1:]):9.3f}"
              f"{opened + sum(times):9.3f}{compile_s:11.3f}  {min(values):.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", type=Path, default=DEFAULT_SUITE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--props", default="0,1,2,3,4")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--backends", action="store_true")
    args = parser.parse_args()
    cases = instances(args.suite, [int(p) for p in args.props.split(",")])
    print(f"{'instance':<28}{'method':<15}{'value':>11}{'median s':>10}{'peak MiB':>10}  LP time split "
          "(bounds / build / solve / re-derive s; size)")
    for title, onnx_path, vnnlib_path in cases:
        problem = load_problem(onnx_path, vnnlib_path)
        idle = None if args.no_memory else peak_memory(None, problem)
        for name, method in METHODS.items():
            seconds, res = timed(lambda: method(*problem), args.repeats)
            memory = "" if idle is None else f"{peak_memory(name, problem) - idle:10.1f}"
            split = ""
            if name.startswith("lp"):
                info = res.info
                split = (f"  {info['bounds_s']:.3f} / {info['build_s']:.3f} / {info['solve_s']:.3f} / "
                         f"{info['rederive_s']:.3f}; {info['variables']} vars, {info['nonzeros']} nnz")
                if "lp_all" in info:
                    split += f", LP-all {info['lp_all']['lps']} LPs"
            print(f"{title:<28}{name:<15}{res.lower.min():11.5f}{seconds:10.3f}{memory:>10}{split}", flush=True)
    if args.backends:
        backend_table(*load_problem(*cases[0][1:]))


if __name__ == "__main__":
    main()
