"""The CLI tests' model: a small random ONNX net beside a five-sample data set (data.npz) and one input (x.npy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from verifier.network import random_network
from verifier.onnx import save_onnx


@pytest.fixture
def model(tmp_path) -> Path:
    net = random_network([6, 10, 8, 3], np.random.default_rng(3))
    path = tmp_path / "net.onnx"
    save_onnx(net, path)
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(5, 6))
    np.savez(tmp_path / "data.npz", x=x, y=net.forward(x).argmax(axis=1))
    np.save(tmp_path / "x.npy", x[0])
    return path
