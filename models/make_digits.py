"""Make models/digits.npz and models/digits_mlp.onnx: scikit-learn's 8x8 digits and a 64-32-32-10 ReLU MLP.

Run from the repository root: ``python models/make_digits.py``. Reproducible: fixed split and torch seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
SEED = 0


def digits_split(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train, x_test (N, 64) float32 in [0, 1] (exact: pixels are k/16), y_train, y_test (N,) int64."""
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def main() -> None:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    x_train, x_test, y_train, y_test = digits_split()
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(60):
        for idx in torch.randperm(len(xt), generator=gen).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    np.savez_compressed(HERE / "digits.npz", x=x_test, y=y_test, x_train=x_train, y_train=y_train)
    torch.onnx.export(model, (torch.zeros(1, 64),), str(HERE / "digits_mlp.onnx"), input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      dynamo=False)
    print(f"digits_mlp.onnx: test accuracy {acc:.4f} on {len(y_test)} samples")


if __name__ == "__main__":
    main()
