"""Where tighter layer bounds would pay: each unstable entry's leverage on the rows' bound, after a refinement stage.

    python benchmarks/leverage.py SUITE_DIR --select TEXT [TEXT ...] [--refine-seconds 60] [--top 4]

For each instance of SUITE_DIR/instances.csv whose "onnx,vnnlib" paths contain one of the --select texts (the
first (box, property) of its vnnlib): alpha-CROWN bounds the layers, one refinement stage
(`refine.refine_layer_bounds`, --refine-seconds) tightens them, and signed-gradient points give each entry a seen
range (inside its true range). An entry's leverage: the rows' adaptive-pass lower bound with that entry alone set
to its seen range, minus the bound without (one pass per entry left unstable). Prints per ReLU layer the --top
entries of highest (positive) leverage with their bounds and seen ranges, then the rows' alpha-CROWN bound with the
1, 2, 4 and all entries of highest leverage set to their seen ranges. Those last bounds are optimistic, not sound
(the seen ranges are inside the true ones): they say which entries a proof would need. alpha-CROWN's optimization
is not monotone in the bounds, so more entries at their seen ranges can come out a little lower. docs/search.md,
"A refinement stage focused by leverage". Run with OMP_NUM_THREADS=1 to match the suite runs.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from verifier.bounds import dual
from verifier.bounds.refine import extreme_points, pre_activations, refine_layer_bounds
from verifier.onnx import load_onnx
from verifier.suite import read_instances
from verifier.vnnlib import parse_vnnlib


def with_seen(bounds: list, seen: list, picks: list) -> list:
    """A copy of bounds [(l, u)] with the entries picks [(layer, entry)] narrowed to their seen ranges; seen: per
    layer the pre-activations (N, n) at the known points."""
    out = [(l.copy(), u.copy()) for l, u in bounds]
    for t, i in picks:
        l, u = out[t]
        l[i], u[i] = max(l[i], seen[t][:, i].min()), min(u[i], seen[t][:, i].max())
    return out


def report(onnx: Path, vnnlib: Path, refine_seconds: float, top: int) -> None:
    """Print the leverage table of one instance (module docstring)."""
    network = load_onnx(onnx)
    box, prop = parse_vnnlib(vnnlib, network.n_inputs, network.n_outputs)[0]
    C, d = prop.stacked_rows()

    def rows(bounds: list, slopes: str) -> float:
        return float(dual.bound(network, box, C, d, slopes=slopes, reference=bounds).lower.min())

    n = len(network.relu_nodes)
    root = dual.bound(network, box, C, d, slopes="opt")
    open_ = np.concatenate([(l < 0) & (u > 0) for l, u in root.layer_bounds[:n]])
    seen = pre_activations(network, np.concatenate([box.center[None],
                                                    extreme_points(network, box, np.flatnonzero(open_))]))
    refined, info = refine_layer_bounds(network, box, root.layer_bounds, objective=(C, d),
                                        deadline=time.perf_counter() + refine_seconds)
    start, base = time.perf_counter(), rows(refined, "adaptive")
    unstable = [np.flatnonzero((l < 0) & (u > 0)) for l, u in refined[:n]]
    lever = sorted(((rows(with_seen(refined, seen, [(t, i)]), "adaptive") - base, t, int(i))
                    for t in range(n) for i in unstable[t]), reverse=True)
    print(f"\n{onnx.stem} {vnnlib.stem}: rows {root.lower.min():.3f} (alpha-CROWN), {rows(refined, 'opt'):.3f} after "
          f"a stage of {info['seconds']:.0f} s; unstable per layer {info['unstable_before']} -> "
          f"{info['unstable_after']}; leverage of {len(lever)} entries in {time.perf_counter() - start:.1f} s\n")
    print("| layer | entry | bounds | seen | leverage |")
    print("| --- | --- | --- | --- | --- |")
    for t in range(n):
        for gain, _, i in [x for x in lever if x[1] == t and x[0] > 0][:top]:
            (l, u), s = refined[t], seen[t][:, i]
            print(f"| {t + 1} | {i} | [{l[i]:.3f}, {u[i]:.3f}] | [{s.min():.3f}, {s.max():.3f}] | {gain:+.3f} |")
    print("\nthe rows' alpha-CROWN bound with the entries of highest leverage at their seen ranges (optimistic):")
    for m in sorted({1, 2, 4, len(lever)}):
        print(f"- {m}: {rows(with_seen(refined, seen, [(t, i) for _, t, i in lever[:m]]), 'opt'):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--select", nargs="+", required=True)
    parser.add_argument("--refine-seconds", type=float, default=60.0)
    parser.add_argument("--top", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for row in read_instances(args.suite / "instances.csv"):
        if any(s in ",".join(row["name"]) for s in args.select):
            report(Path(row["onnx"]), Path(row["vnnlib"]), args.refine_seconds, args.top)


if __name__ == "__main__":
    main()
