"""Make models/digits.npz and the digits MLPs 64-32-32-10 (ReLU) on scikit-learn's 8x8 digits (no download).

    python models/make_digits.py [standard] [pgd] [certified]     (default: all three, ~50 s on one core)

digits_mlp.onnx: standard training; digits_mlp_pgd.onnx: PGD adversarial training at EPS; digits_mlp_certified.onnx:
certified training (dual bounds) at EPS. Adam, lr 1e-3. Reproducible: fixed split, seeded init and batches.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from verifier.train import accuracy, save_model, train

HERE = Path(__file__).resolve().parent
SEED = 0
EPS = 0.05  # L-inf radius of the robust models (pixels in [0, 1]; one grey level is 1/16)
SIZES = [64, 32, 32, 10]


def digits_split(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train, x_test (N, 64) float32 in [0, 1] (exact: pixels are k/16), y_train, y_test (N,) int64."""
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def standard_model() -> torch.nn.Sequential:
    """The first shipped digits_mlp.onnx was made from torch's default init after seeding; kept so it stays the same."""
    torch.manual_seed(SEED)
    layers: list[torch.nn.Module] = []
    for n_in, n_out in zip(SIZES, SIZES[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


RECIPES = {  # name -> (file, training keyword arguments)
    "standard": ("digits_mlp.onnx", dict(objective="standard")),
    "pgd": ("digits_mlp_pgd.onnx", dict(objective="pgd", eps=EPS, pgd_steps=10)),
    "certified": ("digits_mlp_certified.onnx", dict(objective="certified", eps=EPS, eps_ramp_epochs=20)),
}


def main(which: list[str]) -> None:
    x_train, x_test, y_train, y_test = digits_split()
    np.savez_compressed(HERE / "digits.npz", x=x_test, y=y_test, x_train=x_train, y_train=y_train)
    for name in which:
        filename, kwargs = RECIPES[name]
        start = time.perf_counter()
        model = standard_model() if name == "standard" else SIZES
        net = train(model, x_train, y_train, epochs=60, lr=1e-3, batch_size=32, seed=SEED, **kwargs)
        seconds = time.perf_counter() - start
        save_model(net, HERE / filename)
        print(f"{filename}: {name} eps {kwargs.get('eps', 0)}, test accuracy {accuracy(net, x_test, y_test):.4f} "
              f"on {len(y_test)} samples, {seconds:.1f} s")


if __name__ == "__main__":
    unknown = sorted(set(sys.argv[1:]) - set(RECIPES))
    if unknown:
        sys.exit(f"make_digits.py: unknown model(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    main(sys.argv[1:] or list(RECIPES))
