"""Deterministic vs probabilistic L2 certificates on the shipped digits models, side by side.

Usage: python benchmarks/norms.py [--limit 50] [--radii 0.25,0.5] [--sigma 0.25] [--n 10000] [--models ...]
       [--slopes adaptive] [--lp-intermediate dual]

For each model (models/digits_mlp*.onnx) and each L2 radius r, over the first --limit test samples of
models/digits.npz (the ball clipped to [0, 1]): clean accuracy; PGD-robust accuracy (an upper bound on the true
robust accuracy: samples PGD could not attack); certified accuracy of the dual pass (slopes --slopes) and of the
conic LP (the triangle SOCP, re-derived soundly); and the smoothed classifier's certified accuracy at r
(Cohen et al.: class = label and certified radius > r, with n noise samples at confidence 1 - alpha; a
probabilistic certificate of another classifier, the Gaussian-smoothed one). Seconds per sample per method
(mean). Deterministic certified <= true robust <= PGD-robust always holds; the smoothed column may be higher or
lower (another classifier).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from verifier.attacks import attack
from verifier.bounds import bound, proves
from verifier.compare import smoothed_entry
from verifier.onnx import load_onnx
from verifier.spec import ball, margin_rows

MODELS = Path(__file__).resolve().parents[1] / "models"


def evaluate(network, xs, labels, radius: float, args) -> dict:
    """Counts and seconds per method over the samples at one radius."""
    counts = {m: 0 for m in ("clean", "pgd", "dual", "lp", "smoothed")}
    seconds = {m: 0.0 for m in ("pgd", "dual", "lp", "smoothed")}
    for index, (x, label) in enumerate(zip(xs, labels)):
        entry = smoothed_entry(network, x, int(label), radius, sigma=args.sigma, n=args.n, n0=args.n0,
                               alpha=args.alpha, seed=0, index=index)
        counts["smoothed"] += entry["certified"]
        seconds["smoothed"] += entry["seconds"]
        if int(np.argmax(network.forward(x))) != label:
            continue
        counts["clean"] += 1
        input_set = ball(x, radius, 2, (0.0, 1.0))
        C, d = margin_rows(int(label), network.n_outputs)
        result = attack(network, input_set, int(label), restarts=args.restarts, steps=args.steps, check=True)
        seconds["pgd"] += result.seconds
        if result.success:
            continue  # attacked: no certificate can exist (and none is attempted)
        counts["pgd"] += 1
        start = time.perf_counter()
        dual_lower = bound(network, input_set, C, d, method="dual", slopes=args.slopes).lower
        seconds["dual"] += time.perf_counter() - start
        counts["dual"] += bool(proves(dual_lower.min()))
        start = time.perf_counter()
        lp = bound(network, input_set, C, d, method="lp", intermediate=args.lp_intermediate, slopes=args.slopes)
        seconds["lp"] += time.perf_counter() - start
        counts["lp"] += bool(proves(lp.lower.min()))
        if proves(lp.lower.min()) and not proves(dual_lower.min()) and not np.all(np.isfinite(lp.lower)):
            raise AssertionError("an LP bound that is not finite certified a sample")
    return {"counts": counts, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits_mlp,digits_mlp_pgd,digits_mlp_certified")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--radii", default="0.25,0.5")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--slopes", default="adaptive", choices=["wk", "adaptive", "opt"])
    parser.add_argument("--lp-intermediate", default="dual", choices=["dual", "lp"])
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    data = np.load(MODELS / "digits.npz")
    xs, labels = data["x"][:args.limit].astype(np.float64), data["y"][:args.limit]
    radii = [float(r) for r in args.radii.split(",")]
    print(f"L2 balls clipped to [0, 1], first {len(xs)} test samples of digits.npz; dual slopes {args.slopes}, LP "
          f"layer bounds {args.lp_intermediate}; smoothing sigma {args.sigma}, n {args.n}, n0 {args.n0}, "
          f"alpha {args.alpha}; accuracies in % of all samples, seconds per sample per method")
    header = ("| model | radius | clean | PGD-robust (upper) | dual | LP (SOCP) | smoothed | s pgd | s dual | s LP | "
              "s smoothed |")
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for name in args.models.split(","):
        network = load_onnx(MODELS / f"{name}.onnx")
        for radius in radii:
            result = evaluate(network, xs, labels, radius, args)
            c, s, n = result["counts"], result["seconds"], len(xs)
            tested = max(c["clean"], 1)
            robust = max(c["pgd"], 1)
            print(f"| {name} | {radius} | {100 * c['clean'] / n:.0f} | {100 * c['pgd'] / n:.0f} | "
                  f"{100 * c['dual'] / n:.0f} | {100 * c['lp'] / n:.0f} | {100 * c['smoothed'] / n:.0f} | "
                  f"{s['pgd'] / tested:.3f} | {s['dual'] / robust:.3f} | {s['lp'] / robust:.3f} | "
                  f"{s['smoothed'] / n:.3f} |", flush=True)


if __name__ == "__main__":
    main()
