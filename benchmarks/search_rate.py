"""How fast the ReLU-split search bounds domains: domains per second over a fixed time, from alpha-CROWN's root.

    python benchmarks/search_rate.py SUITE_DIR [--select TEXT ...] [--seconds 60] [--repeat 3]

For each instance of SUITE_DIR/instances.csv whose "onnx,vnnlib" paths contain one of the --select texts
(default: the first three), alpha-CROWN bounds the root, then `relu_bab.search` runs for --seconds with no
falsification beside it (its candidates are not checked), --repeat times. Prints a table: the splittable neurons
at the root, the domains bounded per run and their median rate. Run with OMP_NUM_THREADS=1 to match the suite
runs; compare two versions of the code by running this script with PYTHONPATH set to each.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from verifier import relu_bab
from verifier.bounds import dual
from verifier.bounds.interval import by_node
from verifier.objective_rows import ObjectiveRows
from verifier.onnx import load_onnx
from verifier.suite import read_instances
from verifier.vnnlib import parse_vnnlib


def rate(onnx: Path, vnnlib: Path, seconds: float) -> tuple[int, int]:
    """(splittable neurons at the root, domains bounded in `seconds`) for the first (box, property) of vnnlib."""
    network = load_onnx(onnx).to("cpu", torch.float64)
    box, prop = parse_vnnlib(vnnlib, network.n_inputs, network.n_outputs)[0]
    C, d = prop.stacked_rows()
    layer_bounds = dual.bound(network, box, C, d, slopes="opt").layer_bounds
    lo, hi = (torch.tensor(x, dtype=torch.float64).unsqueeze(0) for x in (box.lo, box.hi))
    result = relu_bab.search(network, lo, hi, ObjectiveRows.of(prop, network.n_outputs), by_node(network, layer_bounds),
                             deadline=time.perf_counter() + seconds, check=lambda points: None)
    return result.stats["splittable"], result.stats["domains"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--select", nargs="*", default=None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = read_instances(args.suite / "instances.csv")
    rows = [r for r in rows if any(s in ",".join(r["name"]) for s in args.select)] if args.select else rows[:3]
    print(f"| instance | splittable | domains in {args.seconds:g} s (each run) | median domains / s |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        runs = [rate(Path(row["onnx"]), Path(row["vnnlib"]), args.seconds) for _ in range(args.repeat)]
        counts = [domains for _, domains in runs]
        name = f"{Path(row['onnx']).stem} {Path(row['vnnlib']).stem}"
        print(f"| {name} | {runs[0][0]} | {', '.join(map(str, counts))} | "
              f"{statistics.median(counts) / args.seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
