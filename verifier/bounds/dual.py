"""The dual network of Wong & Kolter (2018) / CROWN: a batched backward linear pass in torch.

A linear function of a layer's values is pushed backwards through the network: through an affine layer exactly,
through a ReLU by replacing it with linear bounds chosen by the sign of each coefficient (lower line
``h >= alpha * z`` under a positive coefficient, upper line ``h <= s z + t`` of the triangle under a negative one),
and at the input it is minimized over the box in closed form (centre term minus ``|A| @ radius``).

Stable ReLUs are exact (``h = z`` when ``l >= 0``, ``h = 0`` when ``u <= 0``); a ReLU is unstable when
``l < 0 < u`` strictly, where the upper line has slope ``s = u / (u - l)`` and offset ``t = -u l / (u - l)``.
Any lower slope ``alpha`` in [0, 1] gives a sound bound: "wk" takes ``alpha = s`` (the paper's choice),
"adaptive" ``alpha = 1`` if ``u >= -l`` else 0 (CROWN), "opt" optimizes one alpha per objective row and neuron
(and per bounded neuron for the intermediate layers: alpha-CROWN) by projected gradient ascent. With the lower
slopes free per row and neuron, the best bound equals the triangle LP with the same layer bounds (the LP dual is
this dual network); `backward_bound` evaluates the pass for given slopes, e.g. read off an LP's dual solution.

Layer bounds are computed layer by layer: the neurons of a ReLU layer that interval arithmetic (IBP, from the
previous layer's bounds) leaves unstable are bounded all at once by a backward pass from that layer, which uses
the bounds of the layers before it, and intersected with the IBP bounds (free, and never worse); the neurons IBP
already decides keep their IBP bounds (a stable neuron's bounds change nothing downstream). The output layer's
entry comes from the backward pass with the rows ``+I`` and ``-I``, intersected with IBP. The rows' bounds are
also intersected with their IBP bounds.

Soundness: float64 arithmetic without directed rounding (errors ~1e-16 relative, like every bound method here);
a certificate should need ``lower > 0``, never ``>= -tol``. The bounds are NOT monotone in the box: a smaller box
changes the layer bounds, hence the relaxations (wk and adaptive slopes alike), and can give a looser bound; with
the layer bounds held fixed they are monotone.

alpha structure (`batched_bounds`' ``alpha`` and its ``return_alpha`` output), for L affine layers: a list of
L + 1 entries. ``alpha[t]`` (t < L) holds the slopes used when bounding the pre-activations of affine layer t
(2 w_t rows: the w_t lower bounds, then the w_t upper bounds), ``alpha[L]`` those used for the objective rows
(k rows). Each entry is None or a list of L items, item i being None (the ``slopes`` rule) or a tensor
broadcastable to (B, rows, w_i): the lower slopes of the ReLU after affine layer i (clipped to [0, 1]; values for
stable neurons are ignored).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..network import Network
from ..spec import InputBox
from . import engine
from .base import BoundResult, check_problem

Tensor = torch.Tensor
Weights = list  # [(W (out, in), b (out,))] torch tensors per affine layer
Alpha = list  # see the module docstring


def _interval(W: Tensor, b: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Exact bounds of ``W x + b`` for x in [lo, hi]; lo, hi (B, n) -> (B, out) each."""
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    mid, rad = centre @ W.T + b, radius @ W.abs().T
    return mid - rad, mid + rad


def _as3(alpha: Tensor) -> Tensor:
    while alpha.dim() < 3:
        alpha = alpha.unsqueeze(0)
    return alpha


def _entry(alpha: Alpha | None, t: int, i: int) -> Tensor | None:
    """alpha[t][i] as a (B or 1, rows or 1, w_i) tensor, or None."""
    if alpha is None or alpha[t] is None or alpha[t][i] is None:
        return None
    return _as3(alpha[t][i])


def _backward(A: Tensor, const: Tensor, top: int, weights: Weights, relu_after: list[bool],
              relax: list, alphas: list | None, rows: Tensor | None, centre: Tensor, radius: Tensor) -> Tensor:
    """Lower bound of ``A @ h_top + const`` over the box, h_top the output of affine layer top (after its ReLU
    if any); A (B or 1, r, w_top), const (B or 1, r); centre, radius (B, n). Returns (B, r).

    alphas: None or a list over affine layers of lower slopes (see the module docstring); rows: the indices of
    the r rows among an alpha tensor's rows (None when they are all of them).
    """
    for i in range(top, -1, -1):
        if relu_after[i]:
            alpha = None if alphas is None else alphas[i]
            if alpha is not None:
                alpha = _as3(alpha)
                if rows is not None and alpha.shape[1] > 1:
                    alpha = alpha[:, rows]
            slope = relax[i].lower_slope(alpha)
            pos, neg = A.clamp(min=0), A.clamp(max=0)
            # positive coefficients take the lower line, negative ones the upper line of each ReLU
            A = pos * slope + neg * relax[i].upper_slope
            const = const + (neg * relax[i].upper_offset).sum(-1)
        W, b = weights[i]
        const = const + A @ b
        A = A @ W
    return const + (A @ centre.unsqueeze(-1)).squeeze(-1) - (A.abs() @ radius.unsqueeze(-1)).squeeze(-1)


def _tighten(l: Tensor, u: Tensor, t: int, weights: Weights, relu_after: list[bool], relax: list,
             alphas: list | None, centre: Tensor, radius: Tensor, straight_through: bool = False
             ) -> tuple[Tensor, Tensor]:
    """Bounds (B, w_t) of affine layer t's pre-activations: l, u intersected with a backward pass from layer t.

    Only neurons l, u leave undecided get the pass when a ReLU follows (a stable neuron's bounds change
    nothing downstream); all of them for the output layer.
    """
    W, b = weights[t]
    need = ((l < 0) & (u > 0)).any(0) if relu_after[t] else torch.ones_like(l[0], dtype=torch.bool)
    idx = need.nonzero().flatten()
    m = idx.numel()
    if m == 0:
        return l, u
    A = torch.cat([W[idx], -W[idx]]).unsqueeze(0)  # rows +z_t then -z_t: lower bounds, then minus upper bounds
    const = torch.cat([b[idx], -b[idx]]).unsqueeze(0)
    rows = torch.cat([idx, idx + W.shape[0]])
    low = _backward(A, const, t - 1, weights, relu_after, relax, alphas, rows, centre, radius)
    new_l, new_u = torch.maximum(l[:, idx], low[:, :m]), torch.minimum(u[:, idx], -low[:, m:])
    if relu_after[t]:  # the union over the batch was bounded; keep each box's own stable neurons as they were, so
        # that a box's bounds do not depend on the other boxes of the batch
        keep = (l[:, idx] >= 0) | (u[:, idx] <= 0)
        new_l, new_u = torch.where(keep, l[:, idx], new_l), torch.where(keep, u[:, idx], new_u)
    if straight_through:  # value of the intersection (x - x is exactly 0), gradient of the pass: see `_optimize`
        new_l = new_l.detach() + (low[:, :m] - low[:, :m].detach())
        new_u = new_u.detach() - (low[:, m:] - low[:, m:].detach())
    return l.index_copy(1, idx, new_l), u.index_copy(1, idx, new_u)


def _interval_rows(C: Tensor, d: Tensor, weights: Weights, relu_after: list[bool], bounds: list, lo: Tensor,
                   hi: Tensor) -> Tensor:
    """Interval lower bounds (B, k) of the rows: ``C`` over the outputs' bounds and, without a final ReLU,
    ``C W_last`` over the last hidden layer's interval (as IBP does); the better of the two."""
    l, u = bounds[-1]
    if relu_after[-1]:
        l, u = l.clamp(min=0), u.clamp(min=0)
    rows = (C.clamp(min=0) @ l.unsqueeze(-1) + C.clamp(max=0) @ u.unsqueeze(-1)).squeeze(-1) + d
    if not relu_after[-1]:
        W, b = weights[-1]
        if len(weights) == 1:
            h_lo, h_hi = lo, hi
        else:
            h_lo, h_hi = bounds[-2]
            h_lo, h_hi = (h_lo.clamp(min=0), h_hi.clamp(min=0)) if relu_after[-2] else (h_lo, h_hi)
        CW = C @ W
        fused = (CW.clamp(min=0) @ h_lo.unsqueeze(-1) + CW.clamp(max=0) @ h_hi.unsqueeze(-1)).squeeze(-1)
        rows = torch.maximum(rows, fused + C @ b + d)
    return rows


def _pass(weights: Weights, relu_after: list[bool], lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, rule: str,
          given: list | None, alpha: Alpha | None, reference: list | None, output_bounds: bool = True,
          return_alpha: bool = False, straight_through: bool = False):
    """Layer bounds, then the rows' lower bounds; see `batched_bounds`. reference: bounds [(l, u)] (B, w_t) or
    None per layer, intersected with the computed ones (not used for given layers). output_bounds: whether to
    run the backward pass for a non-ReLU output layer (else IBP). straight_through: see `_optimize`."""
    L, batch = len(weights), lo.shape[0]
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    bounds, relax, used = [], [], [None] * (L + 1)
    h_lo, h_hi = lo, hi  # interval of the current layer's input
    for t, (W, b) in enumerate(weights):
        g = given[t] if given is not None and t < len(given) else None
        if g is not None and relu_after[t]:
            l, u = (x.expand(batch, W.shape[0]) for x in g)
        else:
            l, u = _interval(W, b, h_lo, h_hi)
            for extra in (g, None if reference is None else reference[t]):
                if extra is not None:
                    l, u = torch.maximum(l, extra[0]), torch.minimum(u, extra[1])
            if t > 0 and (relu_after[t] or (t == L - 1 and output_bounds)):
                l, u = _tighten(l, u, t, weights, relu_after, relax, None if alpha is None else alpha[t],
                                centre, radius, straight_through)
                if return_alpha:
                    used[t] = [relax[i].lower_slope(_entry(alpha, t, i)).expand(batch, 2 * W.shape[0], -1).clone()
                               if relu_after[i] else None for i in range(t)] + [None] * (L - t)
        bounds.append((l, u))
        relax.append(engine.relax(l, u, rule) if relu_after[t] else None)
        h_lo, h_hi = (l.clamp(min=0), u.clamp(min=0)) if relu_after[t] else (l, u)
    rows_alpha = None if alpha is None else alpha[L]
    lower = _backward(C, d, L - 1, weights, relu_after, relax, rows_alpha, None, centre, radius)
    tight = torch.maximum(lower, _interval_rows(C, d, weights, relu_after, bounds, lo, hi))
    lower = tight.detach() + (lower - lower.detach()) if straight_through else tight
    if not return_alpha:
        return lower, bounds
    k = C.shape[-2]
    used[L] = [relax[i].lower_slope(_entry(alpha, L, i)).expand(batch, k, -1).clone() if relu_after[i] else None
               for i in range(L)]
    return lower, bounds, used


def _prepare(weights: Weights, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor | None, layer_bounds: list | None):
    """Shapes to the batched form: C (B or 1, k, n_out), d (B or 1, k), given bounds (B or 1, w) or None."""
    C = C if C.dim() == 3 else C.unsqueeze(0)
    d = torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device) if d is None else d
    d = d if d.dim() == 2 else d.unsqueeze(0)
    given = None
    if layer_bounds is not None:
        given = [None if lu is None else tuple(x if x.dim() == 2 else x.unsqueeze(0) for x in lu)
                 for lu in layer_bounds]
    if lo.shape != hi.shape or lo.dim() != 2 or lo.shape[1] != weights[0][0].shape[1]:
        raise ValueError(f"lo {tuple(lo.shape)} and hi {tuple(hi.shape)} must be (B, {weights[0][0].shape[1]})")
    return C, d, given


def batched_bounds(weights: Weights, relu_after: list[bool], lo: Tensor, hi: Tensor, C: Tensor,
                   d: Tensor | None = None, *, slopes: str = "adaptive", layer_bounds: list | None = None,
                   alpha: Alpha | None = None, return_alpha: bool = False):
    """Lower bounds of ``C @ f(x) + d`` over B boxes ``lo <= x <= hi``, differentiable w.r.t. the weights.

    weights [(W (out, in), b (out,))]; relu_after[i]: a ReLU follows affine i; lo, hi (B, n); C (B, k, n_out) or
    (k, n_out); d (B, k), (k,) or None. slopes: "wk" or "adaptive" for every ReLU whose alpha (module docstring)
    is not given. layer_bounds: [(l, u)] per affine layer, (B, w) or (w,) tensors; when given, the ReLU layers
    use exactly these (not recomputed) and a non-ReLU output entry is intersected with the computed one.

    Returns ``(lower (B, k), [(l, u)] (B, w_i) per affine layer)`` (the last entry: the outputs' bounds, from the
    backward pass with rows +-I intersected with IBP), and the alpha actually used (entries (B, rows, w_i)) as a
    third item when return_alpha.
    """
    C, d, given = _prepare(weights, lo, hi, C, d, layer_bounds)
    return _pass(weights, relu_after, lo, hi, C, d, slopes, given, alpha, None, return_alpha=return_alpha)


def _optimize(weights: Weights, relu_after: list[bool], lo: Tensor, hi: Tensor, C: Tensor, d: Tensor,
              given: list | None, iterations: int, lr: float, decay: float = 0.98):
    """alpha-CROWN: Adam on all lower slopes (rows and intermediate layers), projected on [0, 1], from adaptive,
    maximizing the sum of the rows' bounds; the step size decays geometrically (the bound is piecewise linear
    in alpha, and a constant step keeps jumping across its kinks).

    Every iteration's bounds are sound (any slope in [0, 1] is), so the best value seen per row and per neuron
    is kept. Each iteration's intermediate bounds are intersected with the adaptive ones (and the rows with IBP),
    but the gradient is passed straight through these intersections: a plain max would give no gradient to the
    slopes of a bound that starts tied with (or a rounding error below) the other one, freezing them for good.
    Returns (lower (B, k), layer bounds, the rows' lower slopes per affine layer (B, k, w_i) or None).
    """
    L = len(weights)
    with torch.no_grad():
        lower, bounds, alpha = _pass(weights, relu_after, lo, hi, C, d, "adaptive", given, None, None,
                                     return_alpha=True)
    best_lower, best_rows = lower.clone(), alpha[L]
    best_bounds = [(l.clone(), u.clone()) for l, u in bounds]
    reference = [None if given is not None and t < len(given) and given[t] is not None and relu_after[t]
                 else lu for t, lu in enumerate(bounds)]
    # Only the slopes of neurons unstable now, in the rows of neurons unstable now, can matter later (bounds only
    # tighten): optimize those (compact tensors, scattered into the full alpha each iteration).
    unstable = [((l < 0) & (u > 0)).any(0).nonzero().flatten() for l, u in bounds]
    free = []  # (t, i, rows (r, 1) or None for all, cols (c,), parameter (B, r, c))
    for t, entry in enumerate(alpha):
        if entry is None or (t < L and not relu_after[t]):
            continue
        rows = None if t == L else torch.cat([unstable[t], unstable[t] + weights[t][0].shape[0]]).unsqueeze(1)
        for i, a in enumerate(entry):
            cols = unstable[i]
            if a is not None and cols.numel() and (rows is None or rows.numel()):
                start = a[:, :, cols] if rows is None else a[:, rows, cols]
                free.append((t, i, rows, cols, start.clone().requires_grad_()))
    if not free or iterations <= 0:
        return best_lower, best_bounds, best_rows
    leaves = [p for *_, p in free]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in leaves]
    # the first layer's bounds (exact intervals) do not depend on any slope: fix them for the iterations
    fixed = [None] * L if given is None else list(given) + [None] * (L - len(given))
    fixed[0] = bounds[0] if relu_after[0] and fixed[0] is None else fixed[0]
    for step in range(1, iterations + 1):
        params = [None if entry is None else list(entry) for entry in alpha]
        for t, i, rows, cols, p in free:
            full = params[t][i].clone()
            if rows is None:
                full[:, :, cols] = p
            else:
                full[:, rows, cols] = p
            params[t][i] = full
        lower, bounds = _pass(weights, relu_after, lo, hi, C, d, "adaptive", fixed, params, reference,
                              output_bounds=False, straight_through=True)
        with torch.no_grad():
            better = lower > best_lower
            best_lower = torch.where(better, lower, best_lower)
            best_rows = [None if b is None else torch.where(better.unsqueeze(-1), p.clamp(0, 1), b)
                         for b, p in zip(best_rows, params[L])]
            best_bounds = [(torch.maximum(bl, l), torch.minimum(bu, u)) for (bl, bu), (l, u) in
                           zip(best_bounds, bounds)]
        grads = torch.autograd.grad(lower.sum(), leaves, allow_unused=True)
        with torch.no_grad():  # Adam ascent step (written out: torch.optim costs seconds to import), then projection
            rate = lr * decay ** (step - 1)
            for p, g, (m, v) in zip(leaves, grads, moments):
                if g is not None:
                    m.mul_(0.9).add_(g, alpha=0.1)
                    v.mul_(0.999).addcmul_(g, g, value=0.001)
                    p.add_(rate * (m / (1 - 0.9 ** step)) / ((v / (1 - 0.999 ** step)).sqrt() + 1e-8))
                    p.clamp_(0.0, 1.0)
    with torch.no_grad():  # the best rows' slopes with the best layer bounds: sound, and possibly better still
        final, bounds, used = _pass(weights, relu_after, lo, hi, C, d, "adaptive", best_bounds,
                                    [None] * L + [best_rows], None, return_alpha=True)
    best_bounds[-1] = bounds[-1]  # the outputs' entry: recomputed with the best bounds, intersected with the best
    return torch.maximum(best_lower, final), best_bounds, used[L]


def _torch_problem(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray, layer_bounds, device, dtype):
    weights = [(torch.tensor(a.weight, dtype=dtype, device=device),
                torch.tensor(a.bias, dtype=dtype, device=device)) for a in network.affines]
    lo, hi = (torch.tensor(x, dtype=dtype, device=device).unsqueeze(0) for x in (box.lo, box.hi))
    Ct, dt = (torch.as_tensor(x, dtype=dtype, device=device) for x in (C, d))
    given = None
    if layer_bounds is not None:
        given = [None if lu is None else tuple(torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype,
                                                               device=device) for x in lu)
                 for lu in layer_bounds]
    return weights, lo, hi, *_prepare(weights, lo, hi, Ct, dt, given)


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def bound(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray | None = None, *,
          layer_bounds: list | None = None, slopes: str = "adaptive", iterations: int = 50, lr: float = 0.5,
          device: str = "cpu", dtype: torch.dtype = torch.float64) -> BoundResult:
    """Dual-network lower bounds of ``C @ f(x) + d`` over the box; C (k, n_outputs), d (k,).

    slopes: "wk", "adaptive" or "opt" (Adam for `iterations` steps of size lr on every lower slope, from
    adaptive; the best bound seen per row and per neuron is kept). layer_bounds: [(l, u)] per affine layer
    (numpy (w,)); the ReLU layers then use exactly these. info: "slopes", "iterations" (0 unless opt) and "alpha",
    per ReLU layer the rows' lower slopes (k, w_i) (stable neurons: 1 active, 0 inactive).
    """
    start = time.perf_counter()
    C, d = check_problem(network, box, C, d)
    if slopes not in ("wk", "adaptive", "opt"):
        raise ValueError(f"unknown slopes {slopes!r}; use 'wk', 'adaptive' or 'opt'")
    if not network.is_chain:
        return engine.graph_bound(network, box, C, d, layer_bounds=layer_bounds, slopes=slopes,
                                  iterations=iterations, lr=lr, device=device, dtype=dtype)
    relu_after = network.relu_after
    weights, lo, hi, Ct, dt, given = _torch_problem(network, box, C, d, layer_bounds, device, dtype)
    if slopes == "opt":
        lower, bounds, rows_alpha = _optimize(weights, relu_after, lo, hi, Ct, dt, given, iterations, lr)
    else:
        with torch.no_grad():
            lower, bounds, used = _pass(weights, relu_after, lo, hi, Ct, dt, slopes, given, None, None,
                                       return_alpha=True)
        rows_alpha = used[len(weights)]
    alpha = [_numpy(a[0]) for a, relu in zip(rows_alpha, relu_after) if relu]
    info = {"slopes": slopes, "iterations": iterations if slopes == "opt" else 0, "alpha": alpha}
    return BoundResult(_numpy(lower[0]), [(_numpy(l[0]), _numpy(u[0])) for l, u in bounds], "dual",
                       time.perf_counter() - start, info)


def backward_bound(network: Network, box: InputBox, C: np.ndarray, d: np.ndarray | None,
                   layer_bounds: list, alpha: list) -> np.ndarray:
    """The sound lower bound (k,) float64 of ``C @ f(x) + d`` for fixed layer bounds [(l, u)] per affine layer
    and fixed lower slopes: alpha[j] (k, w_i) (or (w_i,)) for the j-th ReLU layer, clipped to [0, 1]; entries of
    stable neurons are ignored; a None entry takes the adaptive rule. (Like every bound here, each row is also
    intersected with its interval bound.) For an LP's dual: alpha = mu(h >= z) / (mu(h >= 0) + mu(h >= z))."""
    network.require_chain("dual (backward_bound)")
    C, d = check_problem(network, box, C, d)
    relu_layers = [i for i, relu in enumerate(network.relu_after) if relu]
    if len(alpha) != len(relu_layers):
        raise ValueError(f"alpha has {len(alpha)} entries, the network has {len(relu_layers)} ReLU layers")
    weights, lo, hi, Ct, dt, given = _torch_problem(network, box, C, d, layer_bounds, "cpu", torch.float64)
    rows = [None] * len(weights)
    for i, a in zip(relu_layers, alpha):
        if a is not None:
            a = torch.tensor(np.asarray(a, dtype=np.float64))
            if a.shape[-1] != weights[i][0].shape[0] or a.dim() > 2 or (a.dim() == 2 and a.shape[0] not in
                                                                         (1, C.shape[0])):
                raise ValueError(f"alpha for ReLU layer {i}: shape {tuple(a.shape)}, expected "
                                 f"({C.shape[0]}, {weights[i][0].shape[0]})")
            rows[i] = a
    with torch.no_grad():
        lower, _ = _pass(weights, network.relu_after, lo, hi, Ct, dt, "adaptive", given,
                         [None] * len(weights) + [rows], None, output_bounds=False)
    return _numpy(lower[0])
