"""The pool of open domains of a branch and bound (input splitting and ReLU splitting alike).

A pool is a tuple of tensors with one row per domain: the key (P,) first (the domain's lower bound: the lowest key
is the likeliest to hold a counterexample), then whatever the search keeps per domain (boxes, splits, warm starts).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def merge_pool(pool: tuple | None, *parts: Tensor) -> tuple:
    """Append domains to a pool: a tuple (key (P,), tensors (P, ...)...) of the same layout as parts."""
    return parts if pool is None else tuple(torch.cat([a, b]) for a, b in zip(pool, parts))


def lowest_key(pool: tuple) -> float | None:
    """The lowest key of the pool (its open domains' lowest bound), None when it is empty."""
    return float(pool[0].min()) if len(pool[0]) else None


def pop_batch(pool: tuple, batch: int, fair: bool = False, depth: Tensor | None = None) -> tuple[tuple, tuple]:
    """The next `batch` domains (their tensors, key left out) and the rest of the pool. Best-first: the lowest keys.
    fair (pool[2]: the domains' disjuncts): the lowest of each disjunct first, then the second lowest of each, and so
    on. depth (P,) given: depth-first instead, the deepest domains first (ties: the lowest key), whose children are
    the likeliest to close: for a pool near its memory cap."""
    key = pool[0]
    if len(key) <= batch:
        return pool[1:], tuple(t[:0] for t in pool)
    order = torch.argsort(key)
    if depth is not None:
        order = order[torch.argsort(depth[order], descending=True, stable=True)]
    elif fair:  # rank of each domain within its disjunct, by key; then by rank (ties: by key)
        group = pool[2][order]
        by_group = torch.argsort(group, stable=True)
        counts = torch.bincount(group)
        rank = torch.empty_like(order)
        rank[by_group] = torch.arange(len(order)) - (torch.cumsum(counts, 0) - counts)[group[by_group]]
        order = order[torch.argsort(rank, stable=True)]
    take, rest = order[:batch], order[batch:]
    return tuple(t[take] for t in pool[1:]), tuple(t[rest] for t in pool)
