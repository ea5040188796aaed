"""Sound bounds from backward passes run in float32: a bound on every rounding error of the pass, subtracted.

The ReLU-split search re-tightens a layer's bounds after each split by backward passes (split_domains.py); in float64
they take most of its time, and float32 products are about 2.5x faster on the CPU. A float32 pass is made sound
here by Higham's bound for sums of products (any order of summation, with or without fused multiply-adds): the
computed ``fl(sum_l a_l b_l)`` is within ``gamma(n) sum_l |a_l| |b_l|`` of the exact sum, gamma(n) = n u / (1 - n u),
u = 2^-24. Each step of `engine.backward` changes the rows' coefficients by at most such a term; a coefficient off by
e on an entry whose value lies in [-m, m] moves the row's value by at most e m. So every step adds ``gamma |A| . w``
to the error of each row, |A| its coefficients before the step, w (>= 0) per entry from the entries' magnitudes m
(the bounds already known of every node the pass goes through):

- a linear operator (`SUPPORTED`): ``gamma(n_out + 2) |A| . (|W| m_in + |offset|)`` (the products of the backward,
  n_out terms at most, and the offset's sum into the constant);
- a ReLU: ``gamma(8) |A| . 4 m + gamma(n + 4) |A| . |offset|`` over its unstable neurons (the relaxation step's
  few products per entry, the upper line's slope and offset cast to float32, so off the exact line by at most
  u (s m + |offset|), and the offsets' sum into the constant; a stable neuron's step is exact);
- the concretization over the box: ``A centre`` in float64, so only ``gamma(n + 1) |A| . radius`` (`concretize`);
  and u |const| for each sum into the constant.

The error terms are themselves float32 sums of non-negative terms (relative error below gamma(n) < 0.006 for the
n <= MAX_TERMS entries of a node), so their sum times ERROR_FACTOR is subtracted from the bound, in float64. Only
operators whose backward is a plain sum of products (`SUPPORTED`; convolutions may be computed by Winograd or FFT
algorithms, outside the bound) and networks whose weights are float32 numbers (ONNX files: the float32 copy is the
network itself) qualify, with IEEE float32 products: `exact_in_float32`. Measured (docs/search.md): on MNIST 256x4
the search bounds about twice the domains per second, and each re-tightened bound loses well under 1 % of its width.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import ops
from ..network import Network

Tensor = torch.Tensor
UNIT = 2.0 ** -24  # float32's unit roundoff
MOVES = (ops.Reshape, ops.Transpose, ops.Pad)  # no arithmetic: their backward moves the rows' entries
SUPPORTED = (ops.Dense, ops.Elementwise) + MOVES  # one input each: rows never add up at a node
MAX_TERMS = 100_000  # entries of a node at most (the error terms' own rounding: ERROR_FACTOR)
ERROR_FACTOR = 1.01
UNDERFLOW = 1e-30  # covers every underflow of a pass (each at most 2^-126 absolute, flushed to zero)


def gamma(n: int) -> float:
    """Higham's gamma(n): the relative error bound of a sum of n products in float32."""
    return n * UNIT / (1 - n * UNIT)


def exact_in_float32(network: Network) -> bool:
    """Whether float32 passes over network can be bounded here: every operator a ReLU or of SUPPORTED, and every
    floating-point tensor of theirs equal to its float32 cast, and no node of more than MAX_TERMS entries; and
    float32 products are IEEE ones (no TF32 or bfloat16 matmuls, which torch may be set to use)."""
    if torch.get_float32_matmul_precision() != "highest" or torch.backends.cuda.matmul.allow_tf32:
        return False
    for node in network.nodes[1:]:
        if int(np.prod(node.op.out_shape)) > MAX_TERMS:
            return False
        if isinstance(node.op, ops.ReLU):
            continue
        if not isinstance(node.op, SUPPORTED):
            return False
        for value in vars(node.op).values():
            if isinstance(value, Tensor) and value.is_floating_point() and \
                    not torch.equal(value.float().to(value.dtype), value):
                return False
    return True


def magnitudes(bounds: dict, below: int) -> dict:
    """{node id: max(|l|, |u|) in float32 (B, *shape)} of the nodes before `below`, from bounds {id: (l, u)}."""
    return {k: torch.maximum(l.abs(), u.abs()).float() for k, (l, u) in bounds.items() if k < below}


def _abs_dot(A: Tensor, w: Tensor) -> Tensor:
    """``|A| . w`` per row: A (B or 1, K, *shape), w (B or 1, *shape) -> (B, K)."""
    return (A.abs().reshape(*A.shape[:2], -1) @ w.reshape(w.shape[0], -1, 1)).squeeze(-1)


def linear_error(op, A: Tensor, m_in: list, const: Tensor) -> Tensor:
    """Error bound (B, K) of one linear operator's backward step: A (B or 1, K, *out_shape) its rows, m_in the
    magnitudes of its inputs, const the rows' constant after the step."""
    if isinstance(op, MOVES):
        return torch.zeros_like(const)
    w = op.forward_abs(*m_in)
    if op.offset is not None:
        w = w + op.offset.abs().expand(op.out_shape)
    return gamma(A[0, 0].numel() + 2) * _abs_dot(A, w) + UNIT * const.abs()


def relu_error(A: Tensor, relaxation, m_in: Tensor, const: Tensor) -> Tensor:
    """Error bound (B, K) of one ReLU's relaxation step: A (B or 1, K, *shape) its rows, relaxation its
    `engine.Relaxation` in float32, m_in the magnitudes of the ReLU's input, const the rows' constant after the
    step. Stable neurons' steps are exact (slopes 0 or 1, no offset)."""
    offset = relaxation.upper_offset.abs().squeeze(1)
    w = torch.where(relaxation.unstable.squeeze(1), (4 * gamma(8)) * m_in, 0.0) + gamma(A[0, 0].numel() + 4) * offset
    return _abs_dot(A, w) + UNIT * const.abs()


def concretize(A: Tensor, const: Tensor, centre: Tensor, radius: Tensor, error: Tensor) -> Tensor:
    """The sound float64 lower bound (B, K) over the box (centre, radius (B, n) float64) of float32 rows A (B or 1,
    K, n), const (B or 1, K) whose steps' rounding error is at most `error` (B, K): ``A centre`` in float64 (the
    large term: box centres are far from 0, their radii small), ``|A| radius`` in float32 (its error at most
    gamma(n + 1) times itself, the radius's cast included), then `sound`."""
    spread = _abs_dot(A.float(), radius.float())
    lower = const.double() + (A.double() @ centre.unsqueeze(-1)).squeeze(-1) - spread.double()
    return sound(lower, error + gamma(A.shape[-1] + 1) * spread)


def sound(lower: Tensor, error: Tensor) -> Tensor:
    """The float64 lower bound: the float32 pass's `lower` less its error bound (times ERROR_FACTOR); -inf where
    not finite."""
    low = lower.double() - ERROR_FACTOR * error.double() - UNDERFLOW
    return torch.where(torch.isfinite(low), low, torch.full_like(low, -torch.inf))
