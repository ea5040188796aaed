"""Make models/toy2d.npz and models/toy2d.onnx: two interleaved half-moons in [0, 1]^2 and a 2-100-100-100-2 net.

Run from the repository root: ``python models/make_toy2d.py``. Reproducible: seeded data and torch seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SEED = 0


def toy2d_points(n: int, rng: np.random.Generator, noise: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """n points (n, 2) float32 in [0, 1]^2 from two interleaved half-moons, labels (n,) int64 in {0, 1}."""
    y = rng.integers(0, 2, size=n)
    angle = rng.uniform(0.0, np.pi, size=n)
    # class 0: upper arc centred at (0, 0); class 1: lower arc centred at (1, 0.5), interleaved with it
    x = np.where(y[:, None] == 0,
                 np.stack([np.cos(angle), np.sin(angle)], 1),
                 np.stack([1.0 - np.cos(angle), 0.5 - np.sin(angle)], 1))
    x = x + rng.normal(scale=noise * 2.5, size=x.shape)  # noise in the unscaled frame (span ~3 x 1.5)
    x = (x - np.array([-1.2, -0.85])) / np.array([3.4, 2.2])  # map the moons' bounding box into [0, 1]^2
    return np.clip(x, 0.0, 1.0).astype(np.float32), y.astype(np.int64)


def toy2d_split(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train (300, 2), y_train, x_test (200, 2), y_test from one seeded generator."""
    rng = np.random.default_rng(seed)
    x_train, y_train = toy2d_points(300, rng)
    x_test, y_test = toy2d_points(200, rng)
    return x_train, y_train, x_test, y_test


def main() -> None:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, x_test, y_test = toy2d_split()
    model = torch.nn.Sequential(torch.nn.Linear(2, 100), torch.nn.ReLU(), torch.nn.Linear(100, 100), torch.nn.ReLU(),
                                torch.nn.Linear(100, 100), torch.nn.ReLU(), torch.nn.Linear(100, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(200):
        for idx in torch.randperm(len(xt), generator=gen).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
        train_acc = (model(xt).argmax(1).numpy() == y_train).mean()
    np.savez_compressed(HERE / "toy2d.npz", x=x_test, y=y_test, x_train=x_train, y_train=y_train)
    torch.onnx.export(model, (torch.zeros(1, 2),), str(HERE / "toy2d.onnx"), input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      dynamo=False)
    print(f"toy2d.onnx: train accuracy {train_acc:.4f}, test accuracy {acc:.4f} on {len(y_test)} samples")


if __name__ == "__main__":
    main()
