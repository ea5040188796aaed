"""Parse every .vnnlib of VNN-COMP suites and print how long it takes.

Usage: python benchmarks/vnnlib_parse.py [SUITE_DIR ...] [--runs N]
A SUITE_DIR holds instances.csv (onnx,vnnlib,...) or sub-folders that do; the default is ../shared/benchmarks.
Network sizes come from the ONNX graphs' declared input/output shapes (read with `onnx` directly).
Columns: file, input boxes, unsafe disjuncts (all boxes), rows of C y <= d (all disjuncts), input count, median
parse time in ms over --runs runs, wall clock and process CPU time (the CPU column is steadier on a busy machine).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import numpy as np
import onnx

from verifier.vnnlib import parse_vnnlib

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


def io_sizes(onnx_path: Path) -> tuple[int, int]:
    """Flat sizes of the first graph input that is not a weight, and of the first output (symbolic dims -> 1)."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}

    def size(value) -> int:
        return int(np.prod([d.dim_value if d.dim_value > 0 else 1 for d in value.type.tensor_type.shape.dim]))

    return size(next(i for i in graph.input if i.name not in weights)), size(graph.output[0])


def suites(paths: list[Path]) -> list[Path]:
    """The folders holding an instances.csv, given folders that are suites or hold suites."""
    found = []
    for path in paths:
        if (path / "instances.csv").is_file():
            found.append(path)
        else:
            found += sorted(csv_path.parent for csv_path in path.glob("*/instances.csv"))
    return found


def files_of(suite: Path) -> list[tuple[Path, int, int]]:
    """Each distinct .vnnlib of a suite with the sizes of the first network it is paired with."""
    nets: dict[str, str] = {}
    with (suite / "instances.csv").open() as handle:
        for row in csv.reader(handle):
            if row and row[0] != "onnx":  # header
                nets.setdefault(row[1].strip(), row[0].strip())
    sizes = {net: io_sizes(suite / net) for net in set(nets.values())}
    return [(suite / vnn, *sizes[net]) for vnn, net in sorted(nets.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite_dirs", nargs="*", type=Path, default=[DEFAULT])
    parser.add_argument("--runs", type=int, default=5, help="parses per file; the median is shown")
    args = parser.parse_args()
    found = suites(args.suite_dirs)
    if not found:
        parser.error(f"no instances.csv in or under {', '.join(map(str, args.suite_dirs))}")
    print(f"{'file':<36} {'boxes':>5} {'disjuncts':>9} {'rows':>5} {'inputs':>6} {'median ms':>9} {'cpu ms':>7}")
    medians, cpu_medians = [], []
    for suite in found:
        for path, n_inputs, n_outputs in files_of(suite):
            times, cpu_times = [], []
            for _ in range(args.runs):
                start, cpu_start = time.perf_counter(), time.process_time()
                pairs = parse_vnnlib(path, n_inputs, n_outputs)
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
            disjuncts = sum(len(prop.disjuncts) for _, prop in pairs)
            rows = sum(C.shape[0] for _, prop in pairs for C, _ in prop.disjuncts)
            medians.append(statistics.median(times) * 1e3)
            cpu_medians.append(statistics.median(cpu_times) * 1e3)
            name = f"{suite.name}/{path.name}"
            print(f"{name:<36} {len(pairs):>5} {disjuncts:>9} {rows:>5} {n_inputs:>6} {medians[-1]:>9.2f} "
                  f"{cpu_medians[-1]:>7.2f}")
    print(f"{len(medians)} files; wall ms: median {statistics.median(medians):.2f}, max {max(medians):.2f}; "
          f"cpu ms: median {statistics.median(cpu_medians):.2f}, max {max(cpu_medians):.2f}")


if __name__ == "__main__":
    main()
