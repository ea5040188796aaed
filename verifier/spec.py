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

HOLDS, VIOLATED, UNKNOWN, TIMEOUT = "holds", "violated", "unknown", "timeout"  # a property's verdicts


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


NORMS = ("linf", "l2", "l1")
_NORM_NAMES = {"inf": "linf", "linf": "linf", "l_inf": "linf", "2": "l2", "l2": "l2", "1": "l1", "l1": "l1"}


def norm_name(norm) -> str:
    """The canonical name ("linf", "l2" or "l1") of a norm given as "inf"/"linf"/inf, 2/"2"/"l2" or 1/"1"/"l1"."""
    key = "inf" if isinstance(norm, float) and norm == np.inf else str(norm).strip().lower()
    key = {"2.0": "2", "1.0": "1"}.get(key, key)
    if key not in _NORM_NAMES:
        raise SpecError(f"unknown norm {norm!r}; use inf, 2 or 1")
    return _NORM_NAMES[key]


@dataclass(frozen=True, eq=False)
class InputBall:
    """The set ``{x : ||x - x0||_p <= eps, lo <= x <= hi}``: an L2 or L1 ball (norm "l2" | "l1") around x0
    (n,) float64, intersected with the clip range (lo, hi) (scalars) when clip is not None; x0 must lie in it.

    ``box`` is its bounding box (x0 +- eps, clipped): what methods that only take boxes use (a superset: their
    lower bounds stay valid; points they return must still be checked against the ball). An L-inf ball is an
    `InputBox` (`linf_ball`), never an InputBall.
    """

    x0: np.ndarray
    eps: float
    norm: str
    clip: tuple | None = None

    def __post_init__(self) -> None:
        x0 = np.array(self.x0, dtype=np.float64).reshape(-1)
        eps, norm = float(self.eps), norm_name(self.norm)
        if norm == "linf":
            raise SpecError("an L-inf ball is a box: use linf_ball (or ball(..., norm='inf'))")
        if not np.isfinite(eps) or eps < 0:
            raise SpecError(f"eps must be a finite number >= 0, got {self.eps}")
        if not np.isfinite(x0).all():
            raise SpecError("the ball's centre must be finite")
        clip = None if self.clip is None else (float(self.clip[0]), float(self.clip[1]))
        lo, hi = x0 - eps, x0 + eps
        if clip is not None:
            if clip[0] > clip[1]:
                raise SpecError(f"clip range lo > hi ({clip[0]} > {clip[1]})")
            if np.any(x0 < clip[0]) or np.any(x0 > clip[1]):
                raise SpecError(f"an {norm.upper()} ball's centre must lie in the clip range {list(clip)}")
            lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
        x0.setflags(write=False)
        for name, value in (("x0", x0), ("eps", eps), ("norm", norm), ("clip", clip), ("box", InputBox(lo, hi))):
            object.__setattr__(self, name, value)

    @property
    def n(self) -> int:
        return self.x0.size

    @property
    def center(self) -> np.ndarray:
        """x0: a point of the set (the box's centre may lie outside an L1/L2 ball)."""
        return self.x0

    @property
    def p(self) -> float:
        """The norm's exponent: 2 or 1."""
        return 2.0 if self.norm == "l2" else 1.0

    def distance(self, x: np.ndarray) -> np.ndarray:
        """``||x - x0||_p`` of x (n,) or (N, n): a float or (N,)."""
        return np.linalg.norm(np.asarray(x, dtype=np.float64) - self.x0, ord=self.p, axis=-1)

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        """Whether every point of x (n,) or (N, n) lies in the ball and the box (within tol)."""
        return self.box.contains(x, tol) and bool(np.all(self.distance(x) <= self.eps + tol))

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """count points (count, n) of the set: uniform in the ball, half of them pushed onto its sphere (to 1e-12
        relative), then
        clipped to the box (clipping towards a box that holds x0 never increases any |x_i - x0_i|: they stay in
        the ball)."""
        if self.norm == "l2":
            direction = rng.normal(size=(count, self.n))
        else:  # uniform on the L1 sphere: random signs times a flat Dirichlet
            direction = rng.choice([-1.0, 1.0], size=(count, self.n)) * rng.exponential(size=(count, self.n))
        length = np.linalg.norm(direction, ord=self.p, axis=1, keepdims=True)
        direction = direction / np.where(length > 0, length, 1.0)
        scale = rng.uniform(size=(count, 1)) ** (1.0 / self.n)
        scale = np.where(rng.uniform(size=(count, 1)) < 0.5, 1.0, scale)
        # "on the sphere" up to rounding: x0 + d stores d to within half an ulp of x0 per coordinate
        slack = 4 * self.n * np.finfo(np.float64).eps * max(1.0, float(np.max(np.abs(self.x0), initial=0.0)))
        radius = max(0.0, self.eps * (1 - 1e-12) - slack)
        return np.clip(self.x0 + radius * scale * direction, self.box.lo, self.box.hi)


def ball(x0: np.ndarray, eps: float, norm="inf", clip: tuple[float, float] | None = (0.0, 1.0)
         ) -> InputBox | InputBall:
    """The ball of radius eps around x0 (flattened) in the norm "inf" | 2 | 1 (any spelling of `norm_name`),
    intersected with the clip range: an `InputBox` for L-inf (exactly `linf_ball`), an `InputBall` otherwise."""
    if norm_name(norm) == "linf":
        return linf_ball(x0, eps, clip)
    return InputBall(x0, eps, norm_name(norm), clip)


def bounding_box(input_set: InputBox | InputBall) -> InputBox:
    """The box itself, or a ball's bounding box."""
    return input_set.box if isinstance(input_set, InputBall) else input_set


def pull_inside(input_set: InputBox | InputBall, x: np.ndarray) -> np.ndarray:
    """Points (N, n) or (n,) moved into the set: a ball's points farther than eps from x0 (a solver's tolerance)
    scaled back onto its sphere, then everything clipped to the box (which keeps ball points in the ball)."""
    x = np.asarray(x, dtype=np.float64)
    if isinstance(input_set, InputBall):
        distance = np.atleast_1d(input_set.distance(x))[..., None].reshape(*x.shape[:-1], 1)
        outside = distance > input_set.eps
        shrink = np.where(outside, input_set.eps * (1 - 1e-12) / np.where(outside, distance, 1.0), 1.0)
        x = input_set.x0 + (x - input_set.x0) * shrink
    box = bounding_box(input_set)
    return np.clip(x, box.lo, box.hi)


def set_norm(input_set: InputBox | InputBall) -> str:
    """"linf" for a box, the ball's norm otherwise."""
    return input_set.norm if isinstance(input_set, InputBall) else "linf"


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

    def stacked_rows(self, ks=None) -> tuple[np.ndarray, np.ndarray]:
        """The objective rows of disjuncts ks (default: all), stacked: C (sum of their rows, n_outputs), d (same)."""
        rows = [self.objective_rows(k) for k in (range(len(self.disjuncts)) if ks is None else ks)]
        return np.vstack([C for C, _ in rows]), np.concatenate([d for _, d in rows])

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
