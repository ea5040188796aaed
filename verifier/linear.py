"""Linear models: the exact worst case in closed form (the course's ``L(y (w.x + b) - eps ||w||_*)``).

Over an Lp ball ``||x - x0||_p <= eps`` a linear function ``a.x + c`` is smallest at ``a.x0 + c - eps ||a||_*``
(the dual norm: L-inf -> L1, L2 -> L2, L1 -> L-inf); clipped to a data box the minimum is still exact
(`norms.minimize_linear`: a box corner, a fractional knapsack for L1, a clipped ray for L2).
"""
from __future__ import annotations

import numpy as np

from .norms import dual_norm_np, minimize_linear
from .spec import InputBall, InputBox, SpecError, norm_name


def linear_worst_case(weight, bias, box: InputBox | InputBall, label: int, target: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``min_{x in set} (w_label - w_j) x + (b_label - b_j)`` for each j != label (in order of j), or for
    j = target only (targeted: one row). The untargeted worst margin is the minimum over the rows.

    weight (n_out, n), bias (n_out,); the set a box or an L2/L1 ball ∩ its clip box. Over a box a linear function
    is minimised at the corner taking lo where its coefficient is positive and hi where it is negative; over a
    ball see the module docstring. Returns the minima (rows,) and the minimising points (rows, n).
    """
    weight, bias = np.asarray(weight, np.float64), np.asarray(bias, np.float64).reshape(-1)
    if weight.ndim != 2 or weight.shape[1] != box.n or bias.shape != (weight.shape[0],):
        raise SpecError(f"weight {weight.shape} / bias {bias.shape} do not fit a box of {box.n} inputs")
    if not 0 <= label < weight.shape[0]:
        raise SpecError(f"label {label} out of range for {weight.shape[0]} outputs")
    others = np.delete(np.arange(weight.shape[0]), label)
    if target is not None:
        if target == label or not 0 <= target < weight.shape[0]:
            raise SpecError(f"target {target} must be another class than the label")
        others = np.array([target])
    rows = weight[label] - weight[others]
    offsets = bias[label] - bias[others]
    if isinstance(box, InputBall):
        values, points = minimize_linear(rows, box.x0, box.eps, box.norm, box.box.lo, box.box.hi)
        return values + offsets, points
    points = np.where(rows > 0, box.lo, box.hi)
    return np.einsum("jn,jn->j", rows, points) + offsets, points


def binary_linear_worst(w, b: float, x, y: int, eps: float, norm="inf") -> tuple[np.ndarray, float]:
    """The worst perturbation in the ball ``||delta||_p <= eps`` of a linear binary classifier sign(w.x + b) at
    (x, y), y in {-1, +1}, norm "inf" | 2 | 1 (no clipping).

    Returns ``delta*`` (n,) and the worst margin ``y (w.x + b) - eps ||w||_*``: delta* is ``-y eps sign(w)`` (L-inf),
    ``-y eps w / ||w||_2`` (L2), ``-y eps sign(w_i) e_i`` at the largest |w_i| (L1).
    """
    if y not in (-1, 1):
        raise SpecError(f"binary labels are -1 or +1, got {y}")
    if not np.isfinite(eps) or eps < 0:
        raise SpecError(f"eps must be a finite number >= 0, got {eps}")
    w, x = np.asarray(w, np.float64).reshape(-1), np.asarray(x, np.float64).reshape(-1)
    norm = norm_name(norm)
    _, points = minimize_linear(y * w, np.zeros_like(w), eps, norm)
    delta = points[0]
    return delta, float(y * (w @ x + b) - eps * dual_norm_np(w, norm))
