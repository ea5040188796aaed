"""The pool of open domains of a branch and bound (input splitting and ReLU splitting alike).

A pool holds one row per domain in a tuple of tensors: the key (P,) first (the domain's lower bound: the lowest key
is the likeliest to hold a counterexample), then whatever the search keeps per domain (boxes, splits, warm starts).
The rows live in preallocated storage, grown by half its size when full (never past the pool's `limit` of rows
unless an append needs it): appending writes only the new rows, and popping moves only as many rows as it takes (the
holes it leaves are filled from the end), so a round costs in proportion to its batch, not to the pool (measured:
docs/search.md, "Work in proportion to the batch"). The storage lives where the appended tensors do (CPU or GPU).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor
GROWTH = 1.5  # a full storage grows to this multiple of its rows (or to what an append needs)


class Pool:
    """Open domains: `tensors` (key (P,), tensors (P, ...)...) of the layout the first `append` gives. limit: the
    rows the storage grows to at most when an append does not need more (the search's cap on open domains)."""

    def __init__(self, limit: int | None = None):
        self.store: tuple | None = None
        self.size, self.limit = 0, limit

    def __len__(self) -> int:
        return self.size

    @property
    def tensors(self) -> tuple:
        """Views (P, ...) of the rows in use (valid until the next append or pop)."""
        return () if self.store is None else tuple(t[:self.size] for t in self.store)

    def append(self, *parts: Tensor) -> None:
        """Add domains: parts (key (n,), tensors (n, ...)...), the same layout every time."""
        n = len(parts[0])
        need = self.size + n
        if self.store is None or need > len(self.store[0]):
            rows = max(int(GROWTH * (0 if self.store is None else len(self.store[0]))), 16)
            rows = max(need, rows if self.limit is None else min(rows, self.limit))
            grown = tuple(p.new_empty((rows, *p.shape[1:])) for p in parts)
            for new, old in zip(grown, self.tensors):
                new[:self.size] = old
            self.store = grown
        for t, p in zip(self.store, parts):
            t[self.size:need] = p
        self.size = need

    def lowest(self) -> float | None:
        """The lowest key (the open domains' lowest bound), None when the pool is empty."""
        return float(self.store[0][:self.size].min()) if self.size else None

    def keep(self, mask: Tensor) -> None:
        """Keep only the domains where mask (P,) bool is true (their order kept)."""
        kept = int(mask.sum())
        for t in self.store or ():
            t[:kept] = t[:self.size][mask]
        self.size = kept

    def pop(self, batch: int, fair: bool = False, depth: Tensor | None = None) -> tuple:
        """Remove and return the next `batch` domains (their tensors, key left out). Best-first: the lowest keys.
        fair (tensors[2]: the domains' disjuncts): the lowest of each disjunct first, then the second lowest of each,
        and so on. depth (P,) given: depth-first instead, the deepest domains first (ties: the lowest key), whose
        children are the likeliest to close: for a pool near its memory cap."""
        key = self.store[0][:self.size]
        order = torch.argsort(key)
        if depth is not None:
            order = order[torch.argsort(depth[order], descending=True, stable=True)]
        elif fair:  # rank of each domain within its disjunct, by key; then by rank (ties: by key)
            group = self.store[2][:self.size][order]
            by_group = torch.argsort(group, stable=True)
            counts = torch.bincount(group)
            rank = torch.empty_like(order)
            first = (torch.cumsum(counts, 0) - counts)[group[by_group]]
            rank[by_group] = torch.arange(len(order), device=order.device) - first
            order = order[torch.argsort(rank, stable=True)]
        take = order[:batch]
        taken = tuple(t[take] for t in self.store[1:])
        left = self.size - len(take)
        staying = torch.ones(self.size, dtype=torch.bool, device=key.device)
        staying[take] = False
        holes = take[take < left]  # rows taken below the new end, filled by the rows kept beyond it
        movers = left + staying[left:].nonzero().flatten()
        for t in self.store:
            t[holes] = t[movers]
        self.size = left
        return taken
