"""The arithmetic of Lp input sets: dual norms, steepest-descent steps, projections and exact linear minima.

Norms are named "linf", "l2", "l1" (`spec.norm_name`). The dual norm of ``||.||_p`` is ``||.||_q`` with
1/p + 1/q = 1: L2 -> L2, L1 -> L-inf, L-inf -> L1; it gives the minimum of a linear function over a ball,
``min_{||x - x0||_p <= eps} a.x = a.x0 - eps ||a||_q`` (Hölder, reached at the ball's boundary).

Sets here are a ball ``||x - x0||_p <= eps`` intersected with a box ``lo <= x <= hi`` that holds x0. Clipping a
point into such a box never increases any ``|x_i - x0_i|``, so clipping keeps a point of the ball in the ball:
every projection and sampler here returns points of the intersection. Torch functions work on batches (..., n);
numpy ones on one vector or rows (k, n).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

Tensor = torch.Tensor
BISECTIONS = 60  # halvings of a projection's parameter: 2^-60 of its range, ~float64 resolution


# --- dual norms ------------------------------------------------------------------------------------------------
def dual_norm(a: Tensor, norm: str) -> Tensor:
    """``||a||_*`` over the last axis of a (..., n) torch tensor: L2 for "l2", max |a_i| for "l1", sum |a_i| for
    "linf" -> (...)."""
    if norm == "l2":
        return torch.linalg.vector_norm(a, 2, dim=-1)
    if norm == "l1":
        return a.abs().amax(-1) if a.shape[-1] else a.sum(-1)
    if norm == "linf":
        return a.abs().sum(-1)
    raise ValueError(f"unknown norm {norm!r}")


def dual_norm_np(a, norm: str) -> np.ndarray:
    """`dual_norm` for numpy arrays (..., n) -> (...), or per row of a scipy sparse matrix (m, n) -> (m,)."""
    if sp.issparse(a):
        a = abs(sp.csr_matrix(a, dtype=np.float64))
        rows = {"l2": lambda: np.sqrt(np.asarray(a.multiply(a).sum(1))), "l1": lambda: a.max(1).toarray(),
                "linf": lambda: np.asarray(a.sum(1))}
        if norm not in rows:
            raise ValueError(f"unknown norm {norm!r}")
        return rows[norm]().reshape(-1)
    a = np.abs(np.asarray(a, dtype=np.float64))
    if norm == "l2":
        return np.sqrt((a * a).sum(-1))
    if norm == "l1":
        return a.max(-1, initial=0.0)
    if norm == "linf":
        return a.sum(-1)
    raise ValueError(f"unknown norm {norm!r}")


# --- the minimum of a linear function over ball ∩ box, from below (the bound engine's concretisation) --------
BALL_BOX_BISECTIONS = 50  # geometric halvings that pick the L2 multiplier (any multiplier gives a sound bound)


def ball_box_lower(A: Tensor, x0: Tensor, eps: Tensor, norm: str, lo: Tensor, hi: Tensor) -> Tensor:
    """A lower bound (B, K) of ``min A_k . x`` over ``{||x - x0||_p <= eps, lo <= x <= hi}``: A (B or 1, K, n),
    x0, lo, hi (B, n), eps (B,); norm "l2" or "l1".

    Lagrangian duality on the ball constraint alone (the box stays a box): for every multiplier m >= 0,
    ``g(m) = min_{x in box} A.x + m (phi(x - x0) - phi_eps)`` is at most the minimum over the intersection (on the
    ball the added term is <= 0). L2: phi = ||.||^2 / 2, m = 1/t, solved per coordinate by
    ``d = clip(-t a, lo - x0, hi - x0)``; L1: phi = ||.||_1, per coordinate the least of the convex function
    ``a d + m |d|`` at the interval's ends and at 0 (clipped). The multiplier is chosen without gradient (L2:
    geometric bisection for ``||d(t)||_2 = eps``; L1: the weighted median, the |a_i| where the coordinates of
    larger |a_i| have spent eps moving to their box sides), then g is evaluated at it with gradient. The choice
    only affects tightness, never soundness; at the optimal multiplier g is the exact minimum (strong duality),
    and the limits m -> 0 and m -> infinity (L1: m = ||a||_inf) are the box's and the ball's own minima.
    """
    x0, lo, hi, eps = x0.unsqueeze(1), lo.unsqueeze(1), hi.unsqueeze(1), eps.reshape(-1, 1)
    low, high = lo - x0, hi - x0  # (B, 1, n): the moves d = x - x0 the box allows
    base = (A * x0).sum(-1)
    if norm == "l2":
        with torch.no_grad():
            size = torch.linalg.vector_norm(A, dim=-1).clamp_min(1e-300)
            steps = torch.where(A > 0, -low, high) / A.abs().clamp_min(1e-300)  # t at which each coordinate stops
            t_lo = (eps / size).clamp(1e-150, 1e150)  # unclipped: ||d|| = eps exactly; clipping only shortens it
            t_hi = torch.maximum(steps.amax(-1).clamp(1e-150, 1e150), t_lo)  # (clamped: no overflow below)
            for _ in range(BALL_BOX_BISECTIONS):
                mid = (t_lo * t_hi).sqrt()
                d = torch.minimum(torch.maximum(-mid.unsqueeze(-1) * A, low), high)
                inside = (d * d).sum(-1) <= eps * eps
                t_lo, t_hi = torch.where(inside, mid, t_lo), torch.where(inside, t_hi, mid)
            t = t_hi
        d = torch.minimum(torch.maximum(-t.unsqueeze(-1) * A, low), high)
        return base + (A * d).sum(-1) + ((d * d).sum(-1) - eps * eps) / (2 * t)
    if norm != "l1":
        raise ValueError(f"unknown norm {norm!r}")
    with torch.no_grad():
        magnitude = A.abs()
        room = torch.where(A > 0, -low, high).clamp_min(0.0).expand_as(A)
        order = magnitude.argsort(-1, descending=True)
        spent = room.gather(-1, order).cumsum(-1)
        first = (spent < eps.unsqueeze(-1)).sum(-1, keepdim=True).clamp_max(A.shape[-1] - 1)
        m = magnitude.gather(-1, order).gather(-1, first).squeeze(-1)
        m = torch.where(spent[..., -1] < eps, torch.zeros_like(m), m)  # eps reaches every box side: the box's
    mm = m.unsqueeze(-1)
    zero = torch.minimum(torch.maximum(torch.zeros_like(low), low), high)
    terms = torch.minimum(torch.minimum(A * low + mm * low.abs(), A * high + mm * high.abs()),
                          A * zero + mm * zero.abs())
    return base + terms.sum(-1) - m * eps


# --- attack steps ----------------------------------------------------------------------------------------------
def steepest_direction(grad: Tensor, norm: str) -> Tensor:
    """A unit step (..., n) of the norm along which ``grad . step`` is largest (subtract it to descend): the sign
    for "linf", grad / ||grad||_2 for "l2" (L1 attacks take Frank-Wolfe steps instead: `l1_vertex`)."""
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / torch.linalg.vector_norm(grad, dim=-1, keepdim=True).clamp_min(1e-300)
    raise ValueError(f"no steepest step for norm {norm!r}")


def random_in_ball(shape: tuple, norm: str, generator: torch.Generator, dtype, device) -> Tensor:
    """Uniform points (*shape) of the unit ball of the norm ("l2" | "l1"; n = shape[-1])."""
    n = shape[-1]
    if norm == "l2":
        direction = torch.randn(shape, generator=generator, dtype=dtype, device=generator.device)
        direction = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True).clamp_min(1e-300)
    else:  # random signs times a flat Dirichlet: uniform on the L1 sphere
        e = -torch.log(torch.rand(shape, generator=generator, dtype=dtype, device=generator.device).clamp_min(1e-300))
        signs = torch.rand(shape, generator=generator, dtype=dtype, device=generator.device) < 0.5
        direction = torch.where(signs, -e, e) / e.sum(-1, keepdim=True).clamp_min(1e-300)
    length = torch.rand(shape[:-1], generator=generator, dtype=dtype, device=generator.device) ** (1.0 / n)
    return (direction * length[..., None]).to(device)


def l1_vertex(grad: Tensor, lo: Tensor, hi: Tensor, center: Tensor, radius: Tensor) -> Tensor:
    """The point (..., n) of {lo <= x <= hi, ||x - center||_1 <= radius} (center in the box, radius (...)) that
    minimises ``grad . x``: a fractional knapsack, exact by sorting -- the coordinates of largest |grad| move
    first, downhill, each up to its box side, until the radius is spent (the Frank-Wolfe vertex of L1 attacks)."""
    room = torch.where(grad > 0, center - lo, hi - center).clamp_min(0.0)
    room = torch.minimum(room, radius[..., None].expand_as(room))
    order = grad.abs().argsort(-1, descending=True)
    room_sorted = room.gather(-1, order)
    before = room_sorted.cumsum(-1) - room_sorted
    move = torch.zeros_like(grad).scatter(-1, order, (radius[..., None] - before).clamp_min(0.0)
                                          .minimum(room_sorted))
    x = center - grad.sign() * move
    return torch.minimum(torch.maximum(x, lo), hi)


# --- projections onto ball ∩ box -------------------------------------------------------------------------------
def project_l2(p: Tensor, lo: Tensor, hi: Tensor, center: Tensor, radius: Tensor) -> Tensor:
    """Euclidean projection of p (..., n) onto {lo <= x <= hi, ||x - center||_2 <= radius} (center in the box,
    radius (...)).

    KKT: the projection is ``clip(center + t (p - center))`` for the largest t in [0, 1] inside the ball, since
    for a multiplier lambda the separable problem is solved by clipping ``(p + lambda c) / (1 + lambda)``. t is
    found by bisection; only t that passed the ball test are used, so the result is always in the set.
    """
    def at(t):
        return torch.minimum(torch.maximum(center + t[..., None] * (p - center), lo), hi)

    def inside(x):
        return torch.linalg.vector_norm(x - center, dim=-1) <= radius

    ones = torch.ones(p.shape[:-1], dtype=p.dtype, device=p.device)
    whole = inside(at(ones))
    if bool(whole.all()):
        return at(ones)
    t_ok, t_bad = torch.zeros_like(ones), ones  # t = 0 (the centre) is always feasible
    for _ in range(BISECTIONS):
        mid = (t_ok + t_bad) / 2
        ok = inside(at(mid))
        t_ok, t_bad = torch.where(ok, mid, t_ok), torch.where(ok, t_bad, mid)
    return at(torch.where(whole, ones, t_ok))


def project_l1(p: Tensor, lo: Tensor, hi: Tensor, center: Tensor, radius: Tensor) -> Tensor:
    """Euclidean projection of p (..., n) onto {lo <= x <= hi, ||x - center||_1 <= radius} (center in the box).

    With a multiplier lam >= 0 on the L1 constraint the problem separates per coordinate into a 1-d convex one
    over an interval, solved by clipping its unconstrained minimiser: ``x(lam) = center + clip(soft(p - center,
    lam), lo - center, hi - center)``, soft the soft threshold. ``||x(lam) - center||_1`` falls as lam grows; the
    projection is x at the smallest lam inside the ball (lam = 0 when clip(p) is inside already), found by
    bisection on [0, max |p - center|] (x there is the centre itself). Only feasible lam are used: the result is
    always in the set. (This is the exact projection onto the intersection, not "project onto the ball, then
    clip": the two do not commute, and the latter is not the nearest point.)
    """
    delta = p - center
    low, high = lo - center, hi - center

    def at(lam):
        shrunk = delta.sign() * (delta.abs() - lam[..., None]).clamp_min(0.0)
        x = center + torch.minimum(torch.maximum(shrunk, low), high)
        return torch.minimum(torch.maximum(x, lo), hi)  # exactly in the box despite rounding (never farther out)

    def inside(x):
        return (x - center).abs().sum(-1) <= radius

    zeros = torch.zeros(p.shape[:-1], dtype=p.dtype, device=p.device)
    whole = inside(at(zeros))
    if bool(whole.all()):
        return at(zeros)
    lam_bad, lam_ok = zeros, delta.abs().amax(-1) if delta.shape[-1] else zeros
    for _ in range(BISECTIONS):
        mid = (lam_ok + lam_bad) / 2
        ok = inside(at(mid))
        lam_ok, lam_bad = torch.where(ok, mid, lam_ok), torch.where(ok, lam_bad, mid)
    return at(torch.where(whole, zeros, lam_ok))


def project(p: Tensor, lo: Tensor, hi: Tensor, center: Tensor | None, radius: Tensor | None, norm: str) -> Tensor:
    """Projection of p (..., n) onto the box (L-inf: center, radius unused) or onto ball ∩ box."""
    if norm == "linf":
        return torch.minimum(torch.maximum(p, lo), hi)
    return (project_l2 if norm == "l2" else project_l1)(p, lo, hi, center, radius)


# --- linear functions: the exact minimum over ball ∩ box ------------------------------------------------------
def minimize_linear(a: np.ndarray, x0: np.ndarray, eps: float, norm: str, lo: np.ndarray | None = None,
                    hi: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``min a_j . x`` over ``{||x - x0||_p <= eps, lo <= x <= hi}`` per row a_j of a (k, n) (x0 in the box; no
    box when lo, hi are None; for "linf" the box is the set). Returns (minima (k,), minimisers (k, n)).

    Without a box: ``a.x0 - eps ||a||_*`` at ``x0 - eps a/||a||_2`` (L2) or ``x0 - eps sign(a_i) e_i`` with i the
    largest |a_i| (L1). With a box: L1 is a fractional knapsack, exact by sorting (move the coordinates of largest
    |a_i| first, each up to its box side, until eps is spent); L2's minimiser is ``clip(x0 - t a)`` for the largest
    t inside the ball (KKT, as in `project_l2`), found by bisection (minimiser always feasible; value within
    rounding of the minimum).
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
    k, n = a.shape
    if norm == "linf":
        point = np.where(a > 0, lo, hi) if lo is not None else x0 - eps * np.sign(a)
        return np.einsum("kn,kn->k", a, point), point
    if lo is None and hi is None:
        if norm == "l2":
            size = np.linalg.norm(a, axis=1, keepdims=True)
            point = x0 - eps * a / np.where(size > 0, size, 1.0)
        elif norm == "l1":
            top = np.argmax(np.abs(a), axis=1)
            point = np.tile(x0, (k, 1))
            point[np.arange(k), top] -= eps * np.sign(a[np.arange(k), top])
        else:
            raise ValueError(f"unknown norm {norm!r}")
        return np.einsum("kn,kn->k", a, point), point
    lo = np.full(n, -np.inf) if lo is None else np.asarray(lo, dtype=np.float64)
    hi = np.full(n, np.inf) if hi is None else np.asarray(hi, dtype=np.float64)
    if norm == "l1":
        room = np.where(a > 0, x0 - lo, hi - x0)  # how far each coordinate may move downhill (k, n)
        room = np.minimum(room, eps)  # no coordinate moves more than eps (keeps the sums finite)
        order = np.argsort(-np.abs(a), axis=1, kind="stable")
        room_sorted = np.take_along_axis(room, order, 1)
        before = np.cumsum(room_sorted, axis=1) - room_sorted
        move_sorted = np.clip(eps - before, 0.0, room_sorted)  # 0 * inf avoided: clip before multiplying
        move = np.zeros_like(a)
        np.put_along_axis(move, order, move_sorted, 1)
        point = x0 - np.sign(a) * move
    elif norm == "l2":
        size = np.linalg.norm(a, axis=1, keepdims=True)
        at = lambda t: np.clip(x0 - t * a, lo, hi)
        inside = lambda t: np.linalg.norm(at(t) - x0, axis=1, keepdims=True) <= eps
        t_ok = np.where(size > 0, eps / np.where(size > 0, size, 1.0), 0.0)  # clipping only shortens: inside
        with np.errstate(divide="ignore", invalid="ignore"):
            full = np.where(a != 0, np.where(a > 0, x0 - lo, hi - x0) / np.abs(a), 0.0).max(axis=1, keepdims=True)
        t_bad = np.where(np.isfinite(full), np.maximum(full, t_ok), 2 * t_ok + 1.0)
        corner = inside(t_bad)  # every moving coordinate at its box side, still in the ball: that is the minimum
        for _ in range(2000):  # an unbounded coordinate: grow until the ball binds
            grow = corner & ~np.isfinite(full)
            if not grow.any():
                break
            t_ok, t_bad = np.where(grow, t_bad, t_ok), np.where(grow, 2 * t_bad, t_bad)
            corner = inside(t_bad)
        for _ in range(BISECTIONS):
            mid = (t_ok + t_bad) / 2
            ok = inside(mid)
            t_ok, t_bad = np.where(ok, mid, t_ok), np.where(ok, t_bad, mid)
        point = at(np.where(corner, t_bad, t_ok))
    else:
        raise ValueError(f"unknown norm {norm!r}")
    return np.einsum("kn,kn->k", a, point), point
