"""MaxPool windows as a whole. The loader rewrites a MaxPool into a tree of ``max(a, b) = b + relu(a - b)`` per
window (onnx_handlers._max_pool); the bound engine's relaxation of that tree (triangles of the differences) has
upper lines that are convex combinations of the entries. Here: where the trees are (`max_windows`), and an upper
line of each window's maximum over its entries (`window_bound`) that the engine uses at a pool's top instead of
the tree's where it is lower. Tensors: source bounds (B, *shape); n windows of m entries.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from ..network import Network
from .interval import max_operands

Tensor = torch.Tensor


def max_windows(network: Network) -> dict:
    """{node id: (source id, index (n, m) int64 tensor, counted (n, m) bool tensor, levels)} for every node k that
    computes a maximum (`max_operands`) of two Gathers of one node and is not itself gathered into such a maximum:
    flat(v_k)[j] is the maximum of the source's flat entries index[j, counted[j]], each once (a row with fewer
    entries repeats one of them where counted is False). levels: the rewrite's steps from the source up, per step
    (its ReLU's id, the two Gathers' indices (n_step,)): ``v = b + relu(a - b)``, a and b the previous step's
    entries (the source's, first) at those indices. Gathers of a node that is itself such a maximum are followed
    down to its own source, so a MaxPool of a MaxPool is one window over the first one's input (max of maxes is
    the max of the union)."""
    windows, inner = {}, set()
    for k in range(1, len(network.nodes)):
        pair = max_operands(network, k)
        gathers = [network.nodes[i] for i in pair] if pair is not None else []
        if len(gathers) != 2 or not all(isinstance(g.op, ops.Gather) and not g.op._reads_zero for g in gathers) \
                or gathers[0].inputs != gathers[1].inputs:
            continue
        parent = gathers[0].inputs[0]
        source, entries, levels = windows[parent] if parent in windows else (parent, None, ())
        inner.add(parent)
        picks = [g.op.index.cpu().reshape(-1, 1) for g in gathers]
        entries = torch.cat([p if entries is None else entries[p[:, 0]] for p in picks], 1)  # (n, 2^depth)
        levels = levels + ((network.nodes[k].inputs[0], picks[0][:, 0], picks[1][:, 0]),)
        windows[k] = (source, entries, levels)
    return {k: (source, *_distinct(entries), levels) for k, (source, entries, levels) in windows.items()
            if k not in inner}


def _distinct(entries: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's distinct entries (n, m) -> (index (n, d), counted (n, d)), d the most any row has; a row with
    fewer repeats its smallest entry, not counted."""
    ordered = entries.sort(1).values
    fresh = torch.ones_like(ordered, dtype=torch.bool)
    fresh[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    rank = fresh.cumsum(1) - 1
    index = ordered[:, :1].repeat(1, int(rank[:, -1].max()) + 1)
    counted = torch.zeros_like(index, dtype=torch.bool)
    rows, cols = fresh.nonzero(as_tuple=True)
    index[rows, rank[rows, cols]], counted[rows, rank[rows, cols]] = ordered[rows, cols], True
    return index, counted


@dataclass(frozen=True)
class WindowBound:
    """An upper line of a maximum over windows (`max_windows`), from its source's bounds l <= v <= u:
    ``v_k[j] <= sum_i coef[j, i] v_source[index[j, i]] + offset[j]`` where use[j] (elsewhere the rewrite's own
    nested triangles bound it); coef (B, 1, n, m), offset (B, 1, n), use (B, 1, n) bool."""

    source: int
    index: Tensor
    coef: Tensor
    offset: Tensor
    use: Tensor

    def to(self, dtype: torch.dtype) -> "WindowBound":
        return WindowBound(self.source, self.index, self.coef.to(dtype), self.offset.to(dtype), self.use)

    def select(self, index: Tensor) -> "WindowBound":
        return WindowBound(self.source, self.index, self.coef[index], self.offset[index], self.use[index])


def threshold_line(l: Tensor, u: Tensor, counted: Tensor) -> tuple[Tensor, Tensor]:
    """(c (B, n, m), offset (B, n)) of the upper line ``max_i x_i <= sum_i c_i x_i + offset`` of each window of
    entries with bounds l, u (B, n, m), counted (n, m) marking the entries counted (`window_bound`)."""
    top = torch.where(counted, u, torch.full_like(u, -torch.inf))
    T = torch.maximum(l.amax(-1), top.topk(min(3, top.shape[-1]), -1).values[..., -1])
    width = u - l
    coef = torch.where(counted & (width > 0), ((u - T.unsqueeze(-1)) / width.clamp(min=1e-300)).clamp(0, 1), 0)
    return coef, T - (coef * l).sum(-1)


def window_bound(window: tuple, l: Tensor, u: Tensor, relaxations: dict) -> WindowBound:
    """The upper line of ``y = max_i x_i`` over each window (`max_windows`) for the source's bounds l, u
    (B, *shape): for any T >= L = max_i l_i, ``y <= T + sum_i c_i (x_i - l_i)`` with
    ``c_i = clip((u_i - T) / (u_i - l_i), 0, 1)`` (where y > T it is some x_j - T, under the chord of (x_j - T)^+
    on [l_j, u_j]; every other term is >= 0), each entry counted once. T = max(L, the third largest u_i): the T
    minimising the line at the centre of the entries' box. The rewrite's nested triangles (relaxations: its ReLUs')
    give upper lines whose coefficients are convex weights; this one's need not sum to 1 (T = L: the sum of the
    entries' excesses; T = max u: the constant). Neither is always lower, so use[j] where this line is lower at
    the centre (there, the mean over the box). Measured: docs/search.md, "MaxPool windows as a whole"."""
    source, index, counted, levels = window
    index = index.to(l.device)
    flat_l, flat_u = (x.reshape(x.shape[0], -1)[:, index] for x in (l, u))  # (B, n, m)
    coef, offset = threshold_line(flat_l, flat_u, counted.to(l.device))
    tree = ((l + u) / 2).reshape(l.shape[0], -1)  # the tree's upper line at the centre, level by level
    for relu, a, b in levels:  # v = b + relu(a - b) <= s a + (1 - s) b + t, s and t the ReLU's upper line
        slope, shift = (x.reshape(x.shape[0], -1) for x in (relaxations[relu].upper_slope,
                                                             relaxations[relu].upper_offset))
        a, b = a.to(l.device), b.to(l.device)
        tree = slope * tree[:, a] + (1 - slope) * tree[:, b] + shift
    use = (coef * (flat_l + flat_u) / 2).sum(-1) + offset < tree
    coef, offset = torch.where(use.unsqueeze(-1), coef, 0), torch.where(use, offset, 0)
    return WindowBound(source, index, coef.unsqueeze(1), offset.unsqueeze(1), use.unsqueeze(1))
