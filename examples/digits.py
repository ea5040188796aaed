"""How much robustness does each training mode buy? The shipped digits MLPs side by side.

    python examples/digits.py [--limit 100] [--eps 0.02,0.05] [--smoothing]

For the standard, PGD-trained and certified-trained MLPs (models/digits_mlp*.onnx, made by models/make_digits.py)
and two L-inf radii, a table of the fraction of test samples that are

- clean: classified correctly;
- pgd-robust: not broken by the PGD attack (an upper bound on the true robust accuracy);
- exact: proved robust by the MILP (the true robust accuracy when every MILP finishes);
- dual, lp: certified by the dual pass / the triangle LP (lower bounds on it).

so clean >= pgd-robust >= exact >= lp >= dual (up to MILP time limits). Methods missing from
`verifier.bounds.METHODS` are left out. With --smoothing, a second table: randomized smoothing (noise-trained
base models) certified accuracy at L2 radii 0 .. 1 (Cohen et al. 2019).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from verifier.bounds import METHODS  # noqa: E402
from verifier.compare import evaluate_sample  # noqa: E402

MODELS = {"standard": "digits_mlp.onnx", "pgd": "digits_mlp_pgd.onnx", "certified": "digits_mlp_certified.onnx"}
COLUMNS = ["clean", "pgd-robust", "exact", "lp", "dual"]


def load(path: Path):
    from verifier.onnx import load_onnx

    return load_onnx(str(path))


def robustness_row(network, xs: np.ndarray, ys: np.ndarray, eps: float, methods: list[str]) -> dict[str, float]:
    """Fractions of samples per column (module docstring) at radius eps."""
    counts = dict.fromkeys(COLUMNS, 0)
    options = {"milp": {"time_limit": 30.0}}
    for x, y in zip(xs, ys):
        record = evaluate_sample(network, x, int(y), eps, methods=methods, options=options)
        if record["verdict"] == "misclassified":
            continue
        results = record["methods"]
        counts["clean"] += 1
        counts["pgd-robust"] += not results["pgd"]["success"]
        for column, method in (("exact", "milp"), ("lp", "lp"), ("dual", "dual")):
            if method in results:
                counts[column] += results[method]["lower"] > 0
    return {k: v / len(ys) for k, v in counts.items()}


def robustness_table(xs, ys, eps_values: list[float]) -> None:
    methods = ["pgd", *[m for m in ("dual", "lp", "milp") if m in METHODS]]
    shown = ["clean", "pgd-robust", *[c for c, m in (("exact", "milp"), ("lp", "lp"), ("dual", "dual"))
                                      if m in methods]]
    print(f"{len(ys)} digits test samples, L-inf balls clipped to [0, 1]; fractions of samples")
    print(f"{'model':<11}{'eps':>6}" + "".join(f"{c:>12}" for c in shown) + f"{'seconds':>10}")
    for name, filename in MODELS.items():
        path = ROOT / "models" / filename
        if not path.is_file():
            print(f"{name:<11} (missing {path.name}: run python models/make_digits.py)")
            continue
        network = load(path)
        for eps in eps_values:
            start = time.perf_counter()
            row = robustness_row(network, xs, ys, eps, methods)
            print(f"{name:<11}{eps:>6.3g}" + "".join(f"{row[c]:>12.3f}" for c in shown)
                  + f"{time.perf_counter() - start:>10.1f}", flush=True)


def smoothing_table(xs, ys, sigmas=(0.25, 0.5), radii=(0.0, 0.25, 0.5, 0.75, 1.0), n0=100, n=100_000,
                    alpha=0.001) -> None:
    """Certified accuracy of smoothed noise-trained MLPs: correct and certified radius >= r, per radius r."""
    import torch

    sys.path.insert(0, str(ROOT / "models"))
    from make_digits import SIZES, digits_split

    from verifier.smoothing import Smoothed
    from verifier.train import train

    x_train, _, y_train, _ = digits_split()
    print(f"\nrandomized smoothing, {len(ys)} samples, n0 {n0}, n {n}, alpha {alpha}: certified accuracy at L2 radius")
    print(f"{'sigma':<8}" + "".join(f"{r:>8.2f}" for r in radii) + f"{'abstain':>9}{'seconds':>9}")
    for sigma in sigmas:
        base = train(SIZES, x_train, y_train, objective="noise", sigma=sigma, epochs=60, batch_size=32, seed=0,
                     progress=False)
        smoothed = Smoothed(base, sigma, 10)
        start = time.perf_counter()
        results = [smoothed.certify(x, n0, n, alpha, batch=10_000, generator=torch.Generator().manual_seed(i))
                   for i, x in enumerate(xs)]
        seconds = time.perf_counter() - start
        labels = np.array([c for c, _ in results])
        radius = np.array([r for _, r in results])
        correct = labels == ys
        print(f"{sigma:<8}" + "".join(f"{np.mean(correct & (radius >= r)):>8.2f}" for r in radii)
              + f"{np.mean(labels < 0):>9.2f}{seconds:>9.1f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=100, help="number of test samples (default 100)")
    p.add_argument("--eps", default="0.02,0.05", help="comma list of L-inf radii (default 0.02,0.05)")
    p.add_argument("--smoothing", action="store_true", help="also the randomized smoothing table")
    p.add_argument("--no-robustness", action="store_true", help="skip the L-inf table")
    args = p.parse_args(argv)
    data = np.load(ROOT / "models" / "digits.npz")
    xs, ys = data["x"][:args.limit].astype(np.float64), data["y"][:args.limit]
    if not args.no_robustness:
        robustness_table(xs, ys, [float(e) for e in args.eps.split(",")])
    if args.smoothing:
        smoothing_table(xs, ys)


if __name__ == "__main__":
    main()
