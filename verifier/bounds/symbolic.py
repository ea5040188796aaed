"""Symbolic interval bounds for MANY small input boxes at once: the bounding engine of input splitting.

For networks with few inputs (ACAS Xu has 5) a linear function of the input is a short vector, so every neuron's
lower and upper linear bounds in terms of x can be pushed FORWARD through the network cheaply (B boxes, n inputs,
width w: tensors (B, n, w)). Concretized over the box they give the layer bounds ("symbolic intervals"). That is
loose deep in a network: each layer's upper and lower functions are relaxed independently. So, layer by layer,
the neurons the forward bounds leave unstable are re-bounded by a backward pass to the input (CROWN's
back-substitution), one (box, neuron) pair at a time in a batch: only the unstable pairs pay for depth, and the
tightened bounds feed the relaxations (and the forward functions) of the next layers.

The objective rows ``C f(x) + d`` get a full backward pass; its result is also a linear lower bound
``A x + c`` per row and box, which `clip` uses to cut the box down to where the rows can still be <= 0.

Relaxation (as in bounds/dual.py): a stable ReLU is exact; an unstable one (l < 0 < u) has the upper line
``s (z - l)``, s = u / (u - l), and the lower line ``alpha z`` with the adaptive alpha = 1 if u >= -l else 0.
Soundness: float64 throughout, no directed rounding (errors ~1e-16 relative, like every bound method here).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..network import Network
from ..spec import InputBox
from .base import BoundResult, check_problem

Tensor = torch.Tensor


class TorchNet:
    """The affine layers of a Network as float64 torch tensors, with the transposes the passes need."""

    def __init__(self, network: Network, dtype: torch.dtype = torch.float64) -> None:
        self.W = [torch.tensor(a.weight, dtype=dtype) for a in network.affines]
        self.b = [torch.tensor(a.bias, dtype=dtype) for a in network.affines]
        self.WT = [w.T.contiguous() for w in self.W]
        self.pos_T = [w.clamp(min=0).T.contiguous() for w in self.W]
        self.neg_T = [w.clamp(max=0).T.contiguous() for w in self.W]
        self.relu_after = list(network.relu_after)
        self.dtype = dtype

    @property
    def depth(self) -> int:
        return len(self.W)


@dataclass
class Relax:
    """Linear bounds of one ReLU layer for B boxes, tensors (B, w): ``alpha z <= relu(z) <= s z + t``."""

    lower_slope: Tensor
    upper_slope: Tensor
    upper_offset: Tensor

    @staticmethod
    def of(l: Tensor, u: Tensor) -> "Relax":
        unstable = (l < 0) & (u > 0)
        active = (l >= 0).to(l.dtype)
        width = torch.where(unstable, u - l, torch.ones_like(u))  # > 0 where used: no 0/0
        s = torch.where(unstable, u / width, active)
        t = torch.where(unstable, -s * l, torch.zeros_like(l))
        alpha = torch.where(unstable, (u >= -l).to(l.dtype), active)
        return Relax(alpha, s, t)


@dataclass
class LayerBounds:
    """Per affine layer i: pre-activation bounds (l, u) (B, w_i), the relaxation of its ReLU (None without one),
    and the mean of its forward symbolic lower/upper coefficients on x (B, n, w_i) (for split heuristics)."""

    bounds: list
    relax: list
    coef: list


def _concretize(A: Tensor, c: Tensor, centre: Tensor, radius: Tensor, upper: bool) -> Tensor:
    """min (or max) over the box of ``x @ A + c``; A (B, n, w), c (B, w), centre/radius (B, n) -> (B, w)."""
    mid = torch.einsum("bn,bnw->bw", centre, A) + c
    spread = torch.einsum("bn,bnw->bw", radius, A.abs())
    return mid + spread if upper else mid - spread


def _backsubstitute(net: TorchNet, Lam: Tensor, const: Tensor, top: int, relax: list, boxes: Tensor | None,
                    centre: Tensor, radius: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Lower bound of ``Lam @ h_top + const`` over the box, h_top the input of affine layer top + 1 (the output of
    affine layer top after its ReLU if any). Lam (P, r, w_top), const (P, r); boxes (P,) maps rows to boxes (None:
    P = B). Returns (lower (P, r), coefficient on x (P, r, n), constant (P, r))."""
    for i in range(top, -1, -1):
        if net.relu_after[i]:
            rx = relax[i]
            alpha, s, t = (rx.lower_slope, rx.upper_slope, rx.upper_offset) if boxes is None else \
                (rx.lower_slope[boxes], rx.upper_slope[boxes], rx.upper_offset[boxes])
            pos, neg = Lam.clamp(min=0), Lam.clamp(max=0)
            const = const + (neg * t.unsqueeze(1)).sum(-1)  # negative coefficients take the upper line
            Lam = pos * alpha.unsqueeze(1) + neg * s.unsqueeze(1)
        const = const + Lam @ net.b[i]
        Lam = Lam @ net.W[i]
    c, r = (centre, radius) if boxes is None else (centre[boxes], radius[boxes])
    lower = const + (Lam * c.unsqueeze(1)).sum(-1) - (Lam.abs() * r.unsqueeze(1)).sum(-1)
    return lower, Lam, const


def propagate(net: TorchNet, lo: Tensor, hi: Tensor, refine: bool = True) -> LayerBounds:
    """Bounds of every affine layer's pre-activations for B boxes lo, hi (B, n).

    Forward symbolic bounds layer by layer; with refine, the unstable (box, neuron) pairs of layers >= 2 are
    re-bounded by back-substitution to the input through the relaxations already fixed (layers 0 and 1 are
    exact / equal to it), and every layer's bounds are intersected with plain intervals from the previous layer.
    Each neuron gets the better of its forward and backward bounds for the relaxations in place; across layers
    this is not monotone (tighter bounds change later relaxations, as in every CROWN-style pass).
    """
    B, n = lo.shape
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    out = LayerBounds([], [], [])
    low_A = up_A = net.WT[0].expand(B, n, -1)  # symbolic pre-activation bounds of layer 0: exact
    low_c = up_c = net.b[0].expand(B, -1)
    for j in range(net.depth):
        if j > 0:  # push the previous layer's post-activation bounds through affine j (W+ / W- split)
            P, N = net.pos_T[j], net.neg_T[j]
            low_A, up_A = a_low_A @ P + a_up_A @ N, a_up_A @ P + a_low_A @ N
            low_c, up_c = a_low_c @ P + a_up_c @ N + net.b[j], a_up_c @ P + a_low_c @ N + net.b[j]
        l = _concretize(low_A, low_c, centre, radius, upper=False)
        u = _concretize(up_A, up_c, centre, radius, upper=True)
        if j > 0:  # symbolic bounds can be looser than plain intervals on some neurons: keep the better
            h_lo, h_hi = out.bounds[-1]
            if net.relu_after[j - 1]:
                h_lo, h_hi = h_lo.clamp(min=0), h_hi.clamp(min=0)
            mid, rad = (h_lo + h_hi) / 2 @ net.WT[j] + net.b[j], (h_hi - h_lo) / 2 @ net.WT[j].abs()
            l, u = torch.maximum(l, mid - rad), torch.minimum(u, mid + rad)
        if refine and j >= 2:
            l, u = _refine(net, j, l, u, out.relax, centre, radius)
        out.bounds.append((l, u))
        out.coef.append((low_A + up_A) / 2)
        if not net.relu_after[j]:
            out.relax.append(None)
            continue
        rx = Relax.of(l, u)
        out.relax.append(rx)
        a_low_A, a_low_c = low_A * rx.lower_slope.unsqueeze(1), low_c * rx.lower_slope
        a_up_A, a_up_c = up_A * rx.upper_slope.unsqueeze(1), up_c * rx.upper_slope + rx.upper_offset
    return out


def _refine(net: TorchNet, j: int, l: Tensor, u: Tensor, relax: list, centre: Tensor, radius: Tensor
            ) -> tuple[Tensor, Tensor]:
    """l, u (B, w_j) tightened on their unstable entries by back-substitution from layer j."""
    boxes, neurons = torch.nonzero((l < 0) & (u > 0), as_tuple=True)
    if boxes.numel() == 0:
        return l, u
    rows = net.W[j][neurons]
    Lam = torch.stack([rows, -rows], 1)  # +z (its lower bound) and -z (minus its upper bound)
    const = torch.stack([net.b[j][neurons], -net.b[j][neurons]], 1)
    low, _, _ = _backsubstitute(net, Lam, const, j - 1, relax, boxes, centre, radius)
    l, u = l.clone(), u.clone()
    l[boxes, neurons] = torch.maximum(l[boxes, neurons], low[:, 0])
    u[boxes, neurons] = torch.minimum(u[boxes, neurons], -low[:, 1])
    return l, u


def objective_bounds(net: TorchNet, lo: Tensor, hi: Tensor, lb: LayerBounds, C: Tensor, d: Tensor
                     ) -> tuple[Tensor, Tensor, Tensor, list]:
    """Lower bounds of ``C f(x) + d``; C (k, n_out) or (B, k, n_out), d (k,) or (B, k).

    Returns (lower (B, k), A (B, k, n), c (B, k)) with ``C f(x) + d >= x @ A^T + c`` on the box, and the
    backward coefficients on each ReLU layer's output (B, k, w_i) (None for the last layer) for split scores.
    """
    B = lo.shape[0]
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    Lam, const = C.expand(B, *C.shape[-2:]), d.expand(B, d.shape[-1])
    top = net.depth - 1
    if net.relu_after[top]:  # outputs clipped at 0: relax the output ReLU first
        rx = lb.relax[top]
        pos, neg = Lam.clamp(min=0), Lam.clamp(max=0)
        const = const + (neg * rx.upper_offset.unsqueeze(1)).sum(-1)
        Lam = pos * rx.lower_slope.unsqueeze(1) + neg * rx.upper_slope.unsqueeze(1)
    lams: list = [None] * net.depth
    # the same pass as _backsubstitute, keeping the coefficient on each hidden layer's output
    for i in range(top, -1, -1):
        const = const + Lam @ net.b[i]
        Lam = Lam @ net.W[i]
        if i == 0:
            break
        lams[i - 1] = Lam
        rx = lb.relax[i - 1]
        pos, neg = Lam.clamp(min=0), Lam.clamp(max=0)
        const = const + (neg * rx.upper_offset.unsqueeze(1)).sum(-1)
        Lam = pos * rx.lower_slope.unsqueeze(1) + neg * rx.upper_slope.unsqueeze(1)
    lower = const + (Lam * centre.unsqueeze(1)).sum(-1) - (Lam.abs() * radius.unsqueeze(1)).sum(-1)
    return torch.maximum(lower, _interval_rows(net, lb, C, d)), Lam, const, lams


def _interval_rows(net: TorchNet, lb: LayerBounds, C: Tensor, d: Tensor) -> Tensor:
    """Interval lower bounds (B, k) of the rows: C over the outputs' bounds, or (no output ReLU, some hidden
    layer) ``C W_last`` over the last hidden layer's interval; sometimes better than the backward pass."""
    l, u = lb.bounds[-1]
    if net.relu_after[-1]:
        l, u = l.clamp(min=0), u.clamp(min=0)
    elif net.depth > 1:
        l, u = (x.clamp(min=0) for x in lb.bounds[-2])
        C, d = C @ net.W[-1], d + C @ net.b[-1]
    centre, radius = (l + u) / 2, (u - l) / 2
    return (C @ centre.unsqueeze(-1)).squeeze(-1) - (C.abs() @ radius.unsqueeze(-1)).squeeze(-1) + d


def triangle_height(l: Tensor, u: Tensor) -> Tensor:
    """Height ``-l u / (u - l)`` of each unstable neuron's triangle relaxation, 0 where stable; same shape as l."""
    unstable = (l < 0) & (u > 0)
    width = torch.where(unstable, u - l, torch.ones_like(u))  # > 0 where used: no 0/0
    return torch.where(unstable, -l * u / width, torch.zeros_like(u))


def split_scores(lo: Tensor, hi: Tensor, lb: LayerBounds, lams: list, row: Tensor) -> Tensor:
    """How much bisecting each input dimension should help, (B, n): for every unstable neuron, the weight of its
    relaxation in the objective row `row` (B,) (|backward coefficient| x the triangle's height -l u / (u - l)),
    per unit of its pre-activation range, times how much of that range input dimension k spans
    (|symbolic coefficient on x_k| x width_k). A bisection shrinks the ranges of the neurons it spans most."""
    B = lo.shape[0]
    pick = torch.arange(B)
    score = torch.zeros_like(lo)
    for i, lam in enumerate(lams):
        if lam is None:
            continue
        l, u = lb.bounds[i]
        weight = lam[pick, row].abs() * triangle_height(l, u) / (u - l).clamp(min=1e-300)  # 0 where stable
        score = score + torch.einsum("bw,bnw->bn", weight, lb.coef[i].abs())
    return score * (hi - lo)


def clip(lo: Tensor, hi: Tensor, A: Tensor, c: Tensor, rounds: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Shrink boxes to contain every x with ``x @ A_r + c_r <= 0`` for all rows r: A (B, m, n), c (B, m).

    Each row bounds each coordinate given the others' extremes (bound tightening); rows with c = -inf impose
    nothing. The new bounds are widened outwards by a relative 1e-9 of the width plus 1e-12 so that rounding
    never cuts off a point of the set. Returns (lo, hi, empty (B,)): empty boxes hold no such x.
    """
    inf = torch.full_like(A, torch.inf)
    for _ in range(rounds):
        terms = torch.minimum(A * lo.unsqueeze(1), A * hi.unsqueeze(1))  # (B, m, n): each coordinate's minimum
        rest = terms.sum(-1, keepdim=True) - terms
        limit = (-c.unsqueeze(-1) - rest) / torch.where(A == 0, torch.ones_like(A), A)
        new_hi = torch.where(A > 0, limit, inf).amin(1)
        new_lo = torch.where(A < 0, limit, -inf).amax(1)
        slack = 1e-9 * (hi - lo) + 1e-12
        lo, hi = torch.maximum(lo, torch.nan_to_num(new_lo, nan=-torch.inf) - slack), \
            torch.minimum(hi, torch.nan_to_num(new_hi, nan=torch.inf) + slack)
    return lo, hi, (lo > hi).any(1)


def bound(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray | None = None, *,
          layer_bounds: list | None = None, refine: bool = True, **_) -> BoundResult:
    """Lower bounds of ``C @ f(x) + d`` over one box (the shared signature; given layer_bounds are ignored:
    this method computes its own). info["unstable"]: unstable neurons per ReLU layer."""
    start = time.perf_counter()
    network.require_chain("symbolic")
    C, d = check_problem(network, box, C, d)
    net = TorchNet(network)
    lo, hi = (torch.tensor(v).unsqueeze(0) for v in (box.lo, box.hi))
    with torch.no_grad():
        lb = propagate(net, lo, hi, refine)
        lower, *_ = objective_bounds(net, lo, hi, lb, torch.tensor(C), torch.tensor(d))
    bounds = [(l[0].numpy(), u[0].numpy()) for l, u in lb.bounds]
    unstable = [int(((l < 0) & (u > 0)).sum()) for (l, u), rx in zip(bounds, lb.relax) if rx is not None]
    return BoundResult(lower[0].numpy(), bounds, "symbolic", time.perf_counter() - start, {"unstable": unstable})
