"""Decision regions of the toy nets, with the eps-square around training points coloured by what we can say.

    python examples/toy2d.py toy2d.png [--eps 0.08] [--limit 60]

One panel per shipped toy model (standard, PGD-trained and certified-trained; models/make_toy2d.py). Each square
is the L-inf ball of radius eps around a training point (clipped to [0, 1]^2), coloured

- green: certified by the dual pass (a lower bound on the robust margin > 0);
- blue: robust, proved by the exact MILP only (the dual bound was too loose);
- red: attacked: PGD found a point of the square classified otherwise (confirmed by onnxruntime);
- grey: unknown (no method decided), black: the point itself is misclassified.

Methods missing from `verifier.bounds.METHODS` (e.g. the MILP) are left out. Prints the counts per model.
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
from verifier.onnx import load_onnx  # noqa: E402

MODELS = {"standard": "toy2d.onnx", "PGD-trained": "toy2d_pgd.onnx", "certified-trained": "toy2d_certified.onnx"}
COLOURS = {"certified": "#2ca02c", "robust": "#1f77b4", "attacked": "#d62728", "unknown": "#7f7f7f",
           "misclassified": "#000000"}


def verdicts(network, xs: np.ndarray, ys: np.ndarray, eps: float) -> list[str]:
    """The comparison verdict of every sample (certified / robust / attacked / unknown / misclassified)."""
    methods = ["pgd", "dual", *(["milp"] if "milp" in METHODS else [])]
    options = {"milp": {"time_limit": 20.0}}
    return [evaluate_sample(network, x, int(y), eps, methods=methods, options=options)["verdict"]
            for x, y in zip(xs, ys)]


def draw_panel(ax, network, title: str, x_train, y_train, xs, verdict_list, eps: float) -> None:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    grid = np.linspace(0.0, 1.0, 301)
    gx, gy = np.meshgrid(grid, grid)
    out = network.forward(np.stack([gx.ravel(), gy.ravel()], 1))
    region = (out[:, 1] > out[:, 0]).reshape(gx.shape)
    ax.contourf(gx, gy, region, levels=[-0.5, 0.5, 1.5], cmap=ListedColormap(["#fde0c5", "#d4e6f4"]))
    ax.contour(gx, gy, (out[:, 1] - out[:, 0]).reshape(gx.shape), levels=[0.0], colors="k", linewidths=0.8)
    ax.scatter(x_train[:, 0], x_train[:, 1], c=np.where(y_train == 1, "#3b75af", "#e1812c"), s=4, alpha=0.5)
    for (px, py), verdict in zip(xs, verdict_list):
        lo = np.clip([px - eps, py - eps], 0.0, 1.0)
        hi = np.clip([px + eps, py + eps], 0.0, 1.0)
        ax.add_patch(Rectangle(lo, *(hi - lo), fill=False, edgecolor=COLOURS[verdict], linewidth=1.3))
    counts = {v: verdict_list.count(v) for v in COLOURS if v in verdict_list}
    ax.set_title(f"{title}\n" + ", ".join(f"{k} {v}" for k, v in counts.items()), fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="PNG file to write")
    p.add_argument("--eps", type=float, default=0.08, help="L-inf radius (default 0.08, the training eps)")
    p.add_argument("--limit", type=int, default=60, help="training points with a square (default 60)")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.load(ROOT / "models" / "toy2d.npz")
    x_train, y_train = data["x_train"].astype(np.float64), data["y_train"]
    pick = np.random.default_rng(0).choice(len(y_train), size=min(args.limit, len(y_train)), replace=False)
    xs, ys = x_train[pick], y_train[pick]
    available = {k: ROOT / "models" / f for k, f in MODELS.items() if (ROOT / "models" / f).is_file()}
    fig, axes = plt.subplots(1, len(available), figsize=(4.2 * len(available), 4.6), squeeze=False)
    for ax, (title, path) in zip(axes[0], available.items()):
        network = load_onnx(path)
        start = time.perf_counter()
        verdict_list = verdicts(network, xs, ys, args.eps)
        print(f"{title:<18} " + "  ".join(f"{v} {verdict_list.count(v):>3}" for v in COLOURS)
              + f"  ({time.perf_counter() - start:.1f} s)", flush=True)
        draw_panel(ax, network, f"{title} ({path.name}), eps {args.eps:g}", x_train, y_train, xs, verdict_list,
                   args.eps)
    fig.suptitle("green certified (dual) / blue robust (MILP) / red attacked (PGD) / grey unknown", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
