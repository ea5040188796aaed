"""Input sets and output properties.

Sign conventions used everywhere:
- *objective rows* ``(C, d)`` stand for the linear functions ``C @ y + d`` whose minimum over an input set a bound
  method bounds from below (robustness: rows ``y_label - y_j``, d = 0);
- a `Property` is a disjunction of *unsafe* conjunctions ``C @ y <= d`` (VNN-LIB semantics). It holds when no
  input reaches any of them; disjunct k is ruled out when some row of ``C_k @ y - d_k`` is > 0 everywhere, so its
  objective rows are ``(C_k, -d_k)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


class SpecError(InputError):
    """A malformed input set or property (bad user input)."""


@dataclass(frozen=True, eq=False)
class InputBox:
    """The box ``lo <= x <= hi`` of flat inputs; lo, hi (n,) float64."""

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self) -> None:
        lo = np.array(self.lo, dtype=np.float64).reshape(-1)
        hi = np.array(self.hi, dtype=np.float64).reshape(-1)
        if lo.shape != hi.shape:
            raise SpecError(f"input box: lo has {lo.size} entries, hi has {hi.size}")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise SpecError("input box: bounds must be finite numbers")
        bad = np.flatnonzero(lo > hi)
        if bad.size:
            i = bad[0]
            raise SpecError(f"input box: lo > hi at input {i} ({lo[i]} > {hi[i]})")
        lo.setflags(write=False)
        hi.setflags(write=False)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @property
    def n(self) -> int:
        return self.lo.size

    @property
    def center(self) -> np.ndarray:
        return (self.lo + self.hi) / 2

    @property
    def radius(self) -> np.ndarray:
        return (self.hi - self.lo) / 2

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        """Whether every point of x (n,) or (N, n) lies in the box (within tol)."""
        x = np.asarray(x, dtype=np.float64)
        return bool(np.all(x >= self.lo - tol) and np.all(x <= self.hi + tol))

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """count uniform points (count, n), corners included with some probability (they matter for ReLU nets)."""
        u = rng.uniform(size=(count, self.n))
        corner = rng.uniform(size=(count, 1)) < 0.2
        u = np.where(corner, np.round(u), u)
        return self.lo + u * (self.hi - self.lo)


def linf_ball(x0: np.ndarray, eps: float, clip: tuple[float, float] | None = (0.0, 1.0)) -> InputBox:
    """The L-infinity ball of radius eps around x0 (any shape, flattened), intersected with the clip range."""
    if not np.isfinite(eps) or eps < 0:
        raise SpecError(f"eps must be a finite number >= 0, got {eps}")
    x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
    lo, hi = x0 - eps, x0 + eps
    if clip is not None:
        if clip[0] > clip[1]:
            raise SpecError(f"clip range lo > hi ({clip[0]} > {clip[1]})")
        lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
        if np.any(lo > hi):  # x0 outside the clip range by more than eps
            raise SpecError("the input lies farther than eps outside the clip range")
    return InputBox(lo, hi)


@dataclass(frozen=True, eq=False)
class Property:
    """Disjunction of unsafe conjunctions: unsafe iff ``C @ y <= d`` (all rows) for some (C, d) in disjuncts.

    C (m_k, n_outputs), d (m_k,) float64 per disjunct.
    """

    disjuncts: tuple

    def __post_init__(self) -> None:
        cleaned = []
        for C, d in self.disjuncts:
            C = np.array(C, dtype=np.float64, ndmin=2)
            d = np.array(d, dtype=np.float64).reshape(-1)
            if C.shape[0] != d.size:
                raise SpecError(f"property: {C.shape[0]} constraint rows but {d.size} right-hand sides")
            cleaned.append((C, d))
        if not cleaned:
            raise SpecError("property: no unsafe disjunct")
        object.__setattr__(self, "disjuncts", tuple(cleaned))

    def objective_rows(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows (C_k, -d_k): disjunct k is ruled out when one of them is > 0 over the whole input set."""
        C, d = self.disjuncts[k]
        return C, -d

    def unsafe_value(self, y: np.ndarray) -> np.ndarray:
        """``min_k max_rows (C_k y - d_k)`` for outputs y (n_out,) or (N, n_out): <= 0 exactly where y is unsafe."""
        y = np.asarray(y, dtype=np.float64)
        values = [np.max(y @ C.T - d, axis=-1) for C, d in self.disjuncts]
        return np.min(np.stack(values, axis=-1), axis=-1)

    def violated_by(self, y: np.ndarray) -> np.ndarray | bool:
        """Whether outputs y reach an unsafe conjunction."""
        return self.unsafe_value(y) <= 0


def margin_rows(label: int, n_outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """Objective rows ``y_label - y_j`` for every j != label: C (n_outputs - 1, n_outputs), d zeros."""
    if not 0 <= label < n_outputs:
        raise SpecError(f"label {label} out of range for a model with {n_outputs} outputs")
    others = [j for j in range(n_outputs) if j != label]
    C = np.zeros((n_outputs - 1, n_outputs))
    C[:, label] = 1.0
    C[np.arange(n_outputs - 1), others] = -1.0
    return C, np.zeros(n_outputs - 1)


def robustness_property(label: int, n_outputs: int) -> Property:
    """Unsafe when some other class scores at least as high as label: one disjunct ``y_label - y_j <= 0`` per j."""
    C, d = margin_rows(label, n_outputs)
    return Property(tuple((C[i:i + 1], d[i:i + 1]) for i in range(C.shape[0])))


def targeted_property(label: int, target: int, n_outputs: int) -> Property:
    """Unsafe when class target scores at least as high as label: ``y_label - y_target <= 0``."""
    C, d = margin_rows(label, n_outputs)
    if target == label or not 0 <= target < n_outputs:
        raise SpecError(f"target {target} must be another class in 0..{n_outputs - 1}")
    row = target if target < label else target - 1
    return Property(((C[row:row + 1], d[row:row + 1]),))
