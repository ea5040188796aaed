"""alpha-CROWN: the bound engine's lower ReLU slopes optimized by projected gradient ascent, on any network graph.

Any lower slope in [0, 1] gives a sound relaxation, so every iterate's bounds are sound and the best one seen is
kept (per objective row, and per entry of every layer bound). The slopes are free per objective row and unstable
neuron (the rows' pass) and per bounded entry and unstable neuron (the intermediate passes of `engine.node_bounds`):
with them free, the rows' bound with fixed layer bounds reaches the triangle LP (the LP's dual is this pass).

Only neurons unstable at the start are optimized (bounds only tighten during the run, so the others stay stable),
stored compactly as (B, rows, c) tensors and scattered into full slopes each iteration; the entries bounded by
each intermediate pass are likewise those unstable at the start. Each iteration's layer bounds are intersected
with the starting (adaptive) ones and the rows with their interval bounds, with the gradient passed straight
through these intersections: a plain max would give no gradient to slopes whose bound starts tied with (or a
rounding error below) the other one, and freeze them for good. Adam with a geometrically decaying step (the bound
is piecewise linear in the slopes, and a constant step keeps jumping across its kinks).
Cost: an iteration of the intermediate passes costs about one CROWN pass with autograd, and holds its rows
(2 m_k per bounded node k, times the sizes of the nodes before k); above INTERMEDIATE_BUDGET such entries (conv
nets: a 3-conv CIFAR-10 net ran for minutes at 1.5 GB before this limit) only the rows' slopes are optimized.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..network import Network
from . import engine

Tensor = torch.Tensor
INTERMEDIATE_BUDGET = 2e7  # held row entries of the intermediate passes above which they keep adaptive slopes


def scatter_columns(shape: tuple, cols: Tensor, values: Tensor) -> Tensor:
    """Slopes (B, R, *shape) that are `values` (B, R, c) at the flat entries cols (c,) and 0 elsewhere (entries
    that stay stable, whose slope is never read)."""
    B, R, _ = values.shape
    flat = torch.zeros(B, R, int(np.prod(shape)), dtype=values.dtype, device=values.device)
    return flat.index_copy(2, cols, values).reshape(B, R, *shape)


def adam_step(leaves: list, grads: tuple, moments: list, step: int, rate: float, upper: float | None = 1.0) -> None:
    """One Adam ascent step in place, projected on [0, upper] (written out: torch.optim costs seconds to import)."""
    for p, g, (m, v) in zip(leaves, grads, moments):
        if g is not None:
            m.mul_(0.9).add_(g, alpha=0.1)
            v.mul_(0.999).addcmul_(g, g, value=0.001)
            p.add_(rate * (m / (1 - 0.9 ** step)) / ((v / (1 - 0.999 ** step)).sqrt() + 1e-8))
            p.clamp_(0.0, upper)


def optimize(network: Network, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, given: dict | None = None, *,
             reference: dict | None = None, iterations: int = 50, lr: float = 0.5, decay: float = 0.98,
             intermediate: bool | None = None, deadline: float | None = None, ball: engine.Ball | None = None):
    """alpha-CROWN lower bounds (B, K) of ``C f(x) + d`` over boxes lo, hi (B, n_inputs); C (B or 1, K, n_outputs),
    d (B or 1, K); given, reference: as `engine.node_bounds`. intermediate: optimize the intermediate passes' slopes
    too (else only the rows', with the adaptive layer bounds; None: when within INTERMEDIATE_BUDGET). deadline: no
    iteration starts after this time.perf_counter() (every iterate is sound: the best so far is kept). ball: each
    box intersected with this ball (`engine.concretize`).

    Returns (lower (B, K): per row the best of all iterates and of a final pass with the best layer bounds and the
    best slopes; those layer bounds {node id: (l, u)} and relaxations; the slopes {ReLU id: (B, K, *shape)}, None
    when no neuron is unstable)."""
    given = given or {}
    B, K = lo.shape[0], C.shape[1]
    shapes = {r: network.nodes[r].op.out_shape for r in network.relu_nodes}
    with torch.no_grad():
        bounds, relaxations = engine.node_bounds(network, lo, hi, "adaptive", given, reference=reference, ball=ball)
        best = engine.rows_lower(network, lo, hi, C, d, bounds, relaxations, ball=ball)
    cols = {r: relaxations[r].unstable.reshape(B, -1).any(0).nonzero().flatten() for r in network.relu_nodes}
    cols = {r: c for r, c in cols.items() if c.numel()}
    if not cols or iterations <= 0:
        return best, bounds, relaxations, None

    def start(r: int, rows: int) -> Tensor:  # the adaptive slopes of node r's free neurons, for `rows` rows
        return relaxations[r].rule_slope.reshape(B, -1)[:, cols[r]].unsqueeze(1).expand(B, rows, -1).clone()

    rows = {r: start(r, K).requires_grad_() for r in cols}
    entries = {}  # node id: (entries (m,), {ReLU id: slopes (B, 2m, c_r)})
    pre, held = engine.pre_activations(network), 0.0
    for k in sorted(pre - set(given)):
        l, u = (x.reshape(B, -1) for x in bounds[k])
        idx = ((l < 0) & (u > 0)).any(0).nonzero().flatten()
        if engine.bounded_by_pass(network, k) and idx.numel() and any(r < k for r in cols):
            entries[k] = idx
            held += 2 * B * idx.numel() * sum(float(np.prod(n.op.out_shape)) for n in network.nodes[:k])
    if intermediate is False or (intermediate is None and held > INTERMEDIATE_BUDGET):
        entries = {}
    entries = {k: (idx, {r: start(r, 2 * idx.numel()).requires_grad_() for r in cols if r < k})
               for k, idx in entries.items()}
    leaves = list(rows.values()) + [p for _, params in entries.values() for p in params.values()]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in leaves]
    best_rows = {r: p.detach().clone() for r, p in rows.items()}
    best_bounds = dict(bounds)
    for step in range(1, iterations + 1):
        if deadline is not None and time.perf_counter() > deadline:
            break
        alphas = {k: (idx, {r: scatter_columns(shapes[r], cols[r], p) for r, p in params.items()})
                  for k, (idx, params) in entries.items()}
        now, relax_now = (bounds, relaxations) if not entries else engine.node_bounds(
            network, lo, hi, "adaptive", given, reference=bounds, alphas=alphas, straight_through=True,
            output_pass=False, ball=ball)  # without intermediate slopes the layer bounds stay the starting ones
        lower = engine.rows_lower(network, lo, hi, C, d, now, relax_now,
                                  {r: scatter_columns(shapes[r], cols[r], p) for r, p in rows.items()},
                                  straight_through=True, ball=ball)
        with torch.no_grad():
            better = lower > best
            best = torch.where(better, lower, best)
            best_rows = {r: torch.where(better.unsqueeze(-1), p.clamp(0, 1), best_rows[r]) for r, p in rows.items()}
            best_bounds = {k: (torch.maximum(bl, now[k][0]), torch.minimum(bu, now[k][1]))
                           for k, (bl, bu) in best_bounds.items()}
        grads = torch.autograd.grad(lower.sum(), leaves, allow_unused=True)
        with torch.no_grad():
            adam_step(leaves, grads, moments, step, lr * decay ** (step - 1))
    with torch.no_grad():  # the best rows' slopes with the best layer bounds: sound, and possibly better still
        fixed = {k: best_bounds[k] for k in pre | {network.output}}
        bounds, relaxations = engine.node_bounds(network, lo, hi, "adaptive", fixed, ball=ball)
        slopes = {r: scatter_columns(shapes[r], cols[r], p) for r, p in best_rows.items()}
        final = engine.rows_lower(network, lo, hi, C, d, bounds, relaxations, slopes, ball=ball)
    return torch.maximum(best, final), bounds, relaxations, slopes
