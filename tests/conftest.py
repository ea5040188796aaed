"""Shared test fixtures: the repository's data folders and the optional ../shared benchmark suites."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
MODELS = ROOT / "models"
SHARED_BENCHMARKS = ROOT.parent / "shared" / "benchmarks"
SHARED_CONV_BENCHMARKS = ROOT.parent / "shared" / "benchmarks-conv"


@pytest.fixture
def shared_benchmarks() -> Path:
    """The VNN-COMP suites beside the checkout; tests using it are skipped when it is absent."""
    if not SHARED_BENCHMARKS.is_dir():
        pytest.skip(f"{SHARED_BENCHMARKS} is absent (it exists for developers and CI, not for a fresh clone)")
    return SHARED_BENCHMARKS


@pytest.fixture
def shared_conv_benchmarks() -> Path:
    """The convolutional VNN-COMP suites beside the checkout (marabou_cifar10, verivital); skipped when absent."""
    if not SHARED_CONV_BENCHMARKS.is_dir():
        pytest.skip(f"{SHARED_CONV_BENCHMARKS} is absent (it exists for developers and CI, not for a fresh clone)")
    return SHARED_CONV_BENCHMARKS
