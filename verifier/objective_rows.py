"""A property's disjuncts as one padded block of objective rows, and the check of candidate counterexamples against
them: shared by the searches (bab.py, relu_bab.py, bounds/refine.py) and the certificates."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .bounds import engine
from .bounds.base import PROOF_MARGIN
from .network import Network
from .spec import Property


@dataclass
class ObjectiveRows:
    """The property's disjuncts as one padded block of rows: K disjuncts of up to M rows each.

    C (K*M, n_out), d (K*M,) as objective rows ``C y + d`` (> 0 rules the row's conjunction out); padding rows
    have d = -inf (never rule anything out, impose nothing when clipping)."""

    C: torch.Tensor
    d: torch.Tensor
    K: int
    M: int

    @staticmethod
    def of(prop: Property, n_outputs: int) -> "ObjectiveRows":
        K, M = len(prop.disjuncts), max(C.shape[0] for C, _ in prop.disjuncts)
        C_pad, d_pad = np.zeros((K, M, n_outputs)), np.full((K, M), -np.inf)
        for k in range(K):
            C, d = prop.objective_rows(k)
            C_pad[k, :len(d)], d_pad[k, :len(d)] = C, d
        C_flat, d_flat = torch.from_numpy(C_pad.reshape(K * M, n_outputs)), torch.from_numpy(d_pad.reshape(-1))
        return ObjectiveRows(C_flat, d_flat, K, M)

    def disjunct_bounds(self, lower: torch.Tensor) -> torch.Tensor:
        """Per box and disjunct, the best row's lower bound minus PROOF_MARGIN (B, K): > 0 rules it out."""
        return lower.view(-1, self.K, self.M).amax(-1) - PROOF_MARGIN

    def split_row(self, lower: torch.Tensor, per_disjunct: torch.Tensor) -> torch.Tensor:
        """The row (B,) a split should serve: the worst disjunct's best row, the one closest to ruling it out."""
        k = per_disjunct.argmin(1)
        return k * self.M + lower.view(-1, self.K, self.M)[torch.arange(len(k)), k].argmax(-1)

    def bound(self, network: Network, lo: torch.Tensor, hi: torch.Tensor, relaxations: dict,
              bounds: dict | None = None) -> tuple:
        """`engine.linear_rows` of these rows over boxes lo, hi (B, n)."""
        return engine.linear_rows(network, lo, hi, self.C[None], self.d[None], relaxations, bounds)

    def unsafe_values(self, network: Network, x: torch.Tensor) -> torch.Tensor:
        """``min_k max_rows (C_k f(x) + d_k)`` (<= 0: unsafe) for points x (P, n), float64 forward."""
        values = (network.forward_torch(x) @ self.C.T + self.d).view(-1, self.K, self.M)
        return values.amax(-1).amin(-1)


def check_candidates(network: Network, rows: ObjectiveRows, points: torch.Tensor, confirm: Callable,
                     limit: int = 8) -> tuple[np.ndarray | None, int]:
    """Confirm the candidate points (P, n) that violate in float64, most violating first, at most `limit` of them
    (each check runs onnxruntime). Returns (a confirmed point or None, number checked)."""
    if points.numel() == 0:
        return None, 0
    values = rows.unsafe_values(network, points)
    checked = 0
    for i in torch.argsort(values)[:limit].tolist():
        if values[i] > 0:
            break
        checked += 1
        x = points[i].numpy().copy()
        if confirm(x):
            return x, checked
    return None, checked
