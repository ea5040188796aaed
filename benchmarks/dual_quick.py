"""Speed and values of the dual pass (wk, adaptive, opt) and IBP on one mnist_fc instance.

Usage: python benchmarks/dual_quick.py [ONNX] [VNNLIB] [--repeats N] [--iterations T] [--device cuda]

Defaults: ../shared/benchmarks/mnist_fc/onnx/mnist-net_256x2.onnx with prop_0_0.03.vnnlib (784 inputs, the box
``[max(0, p - eps), min(1, p + eps)]`` and the 9 rows ``y_label - y_j``). Prints, per method, the median time of
N runs, the smallest row bound, and the count of rows certified > 0 (for mnist_fc each row is its own
unsafe disjunct, so the property holds when all are).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from verifier.bounds import dual, interval
from verifier.network import Affine, Network, ReLU
from verifier.vnnlib import parse_vnnlib

SUITE = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "mnist_fc"


def load(path: Path) -> Network:
    """verifier.onnx.load_onnx when it exists; else a plain reader for Flatten/Gemm(transB=1)/Relu graphs."""
    try:
        from verifier.onnx import load_onnx
    except ImportError:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
        layers: list = []
        for node in model.graph.node:
            if node.op_type == "Gemm":
                layers.append(Affine(init[node.input[1]], init[node.input[2]]))
            elif node.op_type == "Relu":
                layers.append(ReLU())
        return Network(tuple(layers))
    return load_onnx(str(path))


def timed(fn, repeats: int):
    """(median seconds, last result) over repeats runs after one warm-up run."""
    result, times = fn(), []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", nargs="?", default=SUITE / "onnx" / "mnist-net_256x2.onnx", type=Path)
    parser.add_argument("vnnlib", nargs="?", default=SUITE / "vnnlib" / "prop_0_0.03.vnnlib", type=Path)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    net = load(args.onnx)
    (box, prop), = parse_vnnlib(args.vnnlib, net.n_inputs, net.n_outputs)
    C, d = prop.stacked_rows()
    print(f"{args.onnx.name} {args.vnnlib.name}: {net.summary()}, {C.shape[0]} rows, "
          f"box width {np.max(box.hi - box.lo):.4f}")
    runs = {
        "ibp": lambda: interval.bound(net, box, C, d),
        "dual wk": lambda: dual.bound(net, box, C, d, slopes="wk", device=args.device),
        "dual adaptive": lambda: dual.bound(net, box, C, d, slopes="adaptive", device=args.device),
        "dual opt": lambda: dual.bound(net, box, C, d, slopes="opt", iterations=args.iterations,
                                       device=args.device),
    }
    print(f"{'method':<15} {'median ms':>10} {'min row':>10} {'rows > 0':>9}  unstable per ReLU layer")
    for name, fn in runs.items():
        repeats = max(1, args.repeats // 3) if name == "dual opt" else args.repeats
        seconds, res = timed(fn, repeats)
        unstable = [int(np.sum((l < 0) & (u > 0))) for (l, u), relu in zip(res.layer_bounds, net.relu_after)
                    if relu]
        print(f"{name:<15} {seconds * 1e3:>10.2f} {res.lower.min():>10.4f} {int(np.sum(res.lower > 0)):>5}/"
              f"{len(res.lower):<3}  {unstable}")
        print(f"{'':<15} rows: {np.array2string(res.lower, precision=4, max_line_width=200)}")


if __name__ == "__main__":
    main()
