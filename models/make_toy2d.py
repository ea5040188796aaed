"""Make models/toy2d.npz and the toy nets 2-100-100-100-2 (ReLU) on two interleaved half-moons in [0, 1]^2.

    python models/make_toy2d.py [standard] [pgd] [certified]     (default: all three, ~1.5 min on one core)

toy2d.onnx: standard training; toy2d_pgd.onnx: PGD adversarial training at EPS; toy2d_certified.onnx: certified
training (dual bounds) at EPS. Adam, lr 1e-3. Reproducible: seeded data, init and batches (byte-identical files).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from verifier.train import accuracy, save_model, train

HERE = Path(__file__).resolve().parent
SEED = 0
EPS = 0.08  # L-inf radius of the robust models (the noisy moons overlap: ~16% of test points lie within 0.1
#            of a training point of the other class, so robustness much beyond this is out of reach)
SIZES = [2, 100, 100, 100, 2]


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


def standard_model() -> torch.nn.Sequential:
    """The first shipped toy2d.onnx was made from torch's default init after seeding; kept so it stays the same."""
    torch.manual_seed(SEED)
    layers: list[torch.nn.Module] = []
    for n_in, n_out in zip(SIZES, SIZES[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


RECIPES = {  # name -> (file, training keyword arguments); certified steps cost ~15x more: fewer epochs
    "standard": ("toy2d.onnx", dict(objective="standard", epochs=200)),
    "pgd": ("toy2d_pgd.onnx", dict(objective="pgd", eps=EPS, pgd_steps=10, epochs=200)),
    "certified": ("toy2d_certified.onnx", dict(objective="certified", eps=EPS, eps_ramp_epochs=50, epochs=100)),
}


def main(which: list[str]) -> None:
    x_train, y_train, x_test, y_test = toy2d_split()
    np.savez_compressed(HERE / "toy2d.npz", x=x_test, y=y_test, x_train=x_train, y_train=y_train)
    for name in which:
        filename, kwargs = RECIPES[name]
        start = time.perf_counter()
        model = standard_model() if name == "standard" else SIZES
        net = train(model, x_train, y_train, lr=1e-3, batch_size=32, seed=SEED, **kwargs)
        seconds = time.perf_counter() - start
        save_model(net, HERE / filename)
        print(f"{filename}: {name} eps {kwargs.get('eps', 0)}, train accuracy {accuracy(net, x_train, y_train):.4f}, "
              f"test accuracy {accuracy(net, x_test, y_test):.4f}, {seconds:.1f} s")


if __name__ == "__main__":
    unknown = sorted(set(sys.argv[1:]) - set(RECIPES))
    if unknown:
        sys.exit(f"make_toy2d.py: unknown model(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    main(sys.argv[1:] or list(RECIPES))
