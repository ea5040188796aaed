"""`verify-check MODEL.onnx P.vnnlib CERT`: the independent checker of "holds" certificates (certificate.py).

It shares no code with the rest of the package (numpy, the `onnx` protobuf reader and its own readers in
check_io.py only) and trusts nothing the certificate says that it can recompute:

- the sha256 of both files must be the certificate's;
- the ONNX file is read here (a chain of Gemm / MatMul (+ Add / Sub bias) layers with Relu between them; Sub,
  Add, Mul, Div by constants before the first matrix; Flatten / Reshape / Identity anywhere) and the VNN-LIB file
  is parsed here (its own small parser; constants read as float64, arithmetic on them exact); every unsafe
  conjunction of the file must lie inside some certified pair: a box containing its input box and a disjunct
  whose every row is implied by one of its output rows (same coefficients, right-hand side at least as large);
- coverage: an input-split proof is a tree of cuts (dimension, point) whose leaf boxes the checker derives, so
  they tile the box; a ReLU-split proof is a set of leaves (sign per split neuron) per disjunct that must form a
  complete binary tree (each subtree's leaves share a split neuron, both sides present, down to a leaf);
- every leaf's bound is recomputed (no optimization): layer bounds by interval arithmetic intersected with the
  pair's root bounds (on input-split leaves, as the search, with forward symbolic bounds too: linear functions
  of the input pushed forward) and back-substitution (CROWN: triangle upper line, adaptive lower slope), split
  neurons clamped to their side; then each row of the disjunct by back-substitution with the stored lower slopes
  (alpha, adaptive where none is stored) and split multipliers (beta >= 0) (on input-split leaves, the largest of
  that and intervals: C W over the last layer's input bounds, C over the output's bounds). Every floating-point
  result is bounded outwards: products and sums by np.nextafter, matrix products by gamma_n |A| |B| (gamma_n =
  n u / (1 - n u), u = 2^-53) times a bound of the values they multiply, plus an absolute term for underflow. A
  leaf is proved when some row of each disjunct it must rule out has a lower bound > 0 (strictly; the arithmetic
  is rigorous, so no extra margin), or when its layer bounds cross (no input reaches it). MILP-decided leaves are
  trusted.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__:
    from .check_io import (FORMAT, VERSION, BadInput, Chain, Invalid, covered, leaf_boxes,  # noqa: F401 (API)
                           load_certificate, padded, read_onnx, read_vnnlib, relu_coverage, sha256)
    from .check_io import down as _down, preprocess as _preprocess, up as _up
else:  # run as a file, `python check.py MODEL P CERT` beside check_io.py: numpy and onnx only, no torch
    from check_io import (FORMAT, VERSION, BadInput, Chain, Invalid, covered, leaf_boxes,  # noqa: F401
                          load_certificate, padded, read_onnx, read_vnnlib, relu_coverage, sha256)
    from check_io import down as _down, preprocess as _preprocess, up as _up

U = 2.0 ** -53
TINY = 2.0 ** -1000  # per unit of magnitude: far above any sum of underflow errors (n * 2^-1074)
CHUNK = 4096  # rows per backward pass (bounds the memory)


def _gamma(n: int) -> float:
    return 3.0 * (n + 2) * U  # >= gamma_{n+2} with room for rounding the error terms themselves


def _err(scale, n: int, magnitude=0.0):
    """An upper bound of the rounding error of a dot product of length n whose |terms| sum (computed) to scale."""
    return _up(_up(_gamma(n) * scale) + TINY * (1.0 + magnitude))


# ------------------------------------------------------------------------------------------- the bounds
def _dot_lower(A: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Rigorous lower bound (P,) of min over lo <= v <= hi of A v; A, lo, hi (P, n)."""
    pos, neg = np.maximum(A, 0), np.minimum(A, 0)
    p = np.einsum("pn,pn->p", pos, lo) + np.einsum("pn,pn->p", neg, hi)
    scale = np.einsum("pn,pn->p", pos, np.abs(lo)) - np.einsum("pn,pn->p", neg, np.abs(hi))
    return _down(p - _err(scale, A.shape[1] + 1))


def _upper_line(l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope s and offset t >= 0 with s z + t >= relu(z) at z = l and z = u (so on [l, u]), for l < 0 < u."""
    s = u / (u - np.where(u > l, l, u - 1.0))
    t = np.maximum(_up(-(s * l)), _up(u - _down(s * u)))
    return s, np.maximum(t, 0.0)


def _backward(chain: Chain, top: int, Lam: np.ndarray, const: np.ndarray, leaf: np.ndarray, cache: dict,
              lo: np.ndarray, hi: np.ndarray, alpha: dict | None = None, beta: dict | None = None,
              sign: list | None = None) -> np.ndarray:
    """Rigorous lower bound (P,) of ``Lam h_top + const`` over each row's leaf (module docstring).

    Lam (P, n_top) on the output of layer `top` (after its ReLU if it has one); const (P,); leaf (P,) indexes
    the leaves' `cache` (per layer: relaxations and magnitudes, see `_layer_bounds`) and the preprocessed box lo,
    hi (B, n_inputs); alpha / beta {layer: (P, n_j)} lower slopes (NaN: adaptive) and split multipliers; sign
    [(B, n_j) in {-1, 0, 1}]."""
    for j in range(top, -1, -1):
        W, b_lo, b_hi, relu = chain.layers[j]
        if relu:  # Lam on relu(z_j) -> on z_j
            active, unstable, s, t, slope, mag = (x[leaf] for x in cache["relax"][j])
            if alpha is not None and j in alpha:
                slope = np.where(np.isnan(alpha[j]), slope, np.clip(np.nan_to_num(alpha[j]), 0.0, 1.0))
            pos, neg = np.maximum(Lam, 0), np.minimum(Lam, 0)
            new = np.where(active, Lam, np.where(unstable, pos * slope + neg * s, 0.0))
            shift = np.einsum("pn,pn->p", neg, t)  # t = 0 off the unstable neurons
            const = _down(const + _down(shift - _err(-shift, W.shape[0])))
            scale = np.abs(Lam)
            if beta is not None and j in beta:
                extra = np.maximum(np.nan_to_num(beta[j]), 0.0)
                new, scale = new - extra * sign[j][leaf], scale + extra
            rounding = np.einsum("pn,pn->p", scale, mag)  # elementwise roundings: <= 3 u each
            const = _down(const - _err(rounding, 2, mag.sum(1)))
            Lam = new
        # Lam on z_j = W h + b -> on h (the previous layer's output or the input)
        pos, neg = np.maximum(Lam, 0), np.minimum(Lam, 0)
        p = pos @ b_lo + neg @ b_hi
        const = _down(const + _down(p - _err(np.abs(Lam) @ np.maximum(np.abs(b_lo), np.abs(b_hi)), W.shape[0])))
        mW, msum = cache["mW"][j]  # |W| times the magnitude of h, per leaf: bounds the product's error below
        rounding = np.einsum("pn,pn->p", np.abs(Lam), mW[leaf])
        const = _down(const - _err(rounding, W.shape[0] + W.shape[1], msum[leaf]))
        Lam = Lam @ W
    return _down(const + _dot_lower(Lam, lo[leaf], hi[leaf]))


def _interval(W, b_lo, b_hi, l, u):
    """Rigorous bounds (B, out) of W h + b for l <= h <= u (B, in)."""
    pos, neg = np.maximum(W, 0).T, np.minimum(W, 0).T
    err = _err(np.maximum(np.abs(l), np.abs(u)) @ np.abs(W).T, W.shape[1])
    return _down(_down(l @ pos + u @ neg + b_lo) - err), _up(_up(u @ pos + l @ neg + b_hi) + err)


def _magnitude(W: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m @ |W|^T (B, out), m.sum (B,)) for magnitudes m (B, in) of a layer's input."""
    return m @ np.abs(W).T, m.sum(1)


def _relaxation(l: np.ndarray, u: np.ndarray) -> tuple:
    """Per neuron (B, n): active, unstable, upper slope s and offset t (0 off unstable), adaptive lower slope,
    magnitude max(|l|, |u|)."""
    unstable = (l < 0) & (u > 0)
    s, t = _upper_line(l, u)
    return l >= 0, unstable, s, np.where(unstable, t, 0.0), np.where(u >= -l, 1.0, 0.0), \
        np.maximum(np.abs(l), np.abs(u))


def _size(A: np.ndarray, c: np.ndarray, m: np.ndarray) -> np.ndarray:
    """A bound (B, k) of |A x + c| over the box: functions A (B, k, n), c (B, k); m = max(|lo|, |hi|) (B, n)."""
    return _up(_up(np.einsum("bkn,bn->bk", np.abs(A), m)) * (1 + 4 * A.shape[2] * U) + np.abs(c))


def _forward(W, b_lo, b_hi, low: tuple, upp: tuple, lo: np.ndarray, hi: np.ndarray) -> tuple:
    """Forward symbolic bounds of ``z = W h + b``: from linear functions of the input ``low <= h <= upp`` on the
    box (each (A (B, n_h, n), c (B, n_h))), functions (A, c) below and above z, each moved outwards by the
    rounding error of computing it (|W| times the size of the functions it combines), and their concretized
    bounds (l, u) (B, n_z)."""
    pos, neg = np.maximum(W, 0), np.minimum(W, 0)
    m = np.maximum(np.abs(lo), np.abs(hi))
    err = _err(np.maximum(_size(*low, m), _size(*upp, m)) @ np.abs(W).T, W.shape[1] + 2)
    f_lo = (np.einsum("oi,bin->bon", pos, low[0]) + np.einsum("oi,bin->bon", neg, upp[0]),
            _down(low[1] @ pos.T + upp[1] @ neg.T + b_lo - err))
    f_hi = (np.einsum("oi,bin->bon", pos, upp[0]) + np.einsum("oi,bin->bon", neg, low[0]),
            _up(upp[1] @ pos.T + low[1] @ neg.T + b_hi + err))
    B, k, n = f_lo[0].shape
    box = np.repeat(lo, k, 0), np.repeat(hi, k, 0)
    l = _down(_dot_lower(f_lo[0].reshape(B * k, n), *box).reshape(B, k) + f_lo[1])
    u = _up(f_hi[1] - _dot_lower(-f_hi[0].reshape(B * k, n), *box).reshape(B, k))
    return f_lo, f_hi, l, u


def _forward_relu(relax: tuple, f_lo: tuple, f_hi: tuple, lo: np.ndarray, hi: np.ndarray) -> tuple:
    """The functions below and above relu(z) from those of z: lower slope (adaptive: 0 or 1, exact) times the
    lower one; the upper line ``s f_hi + t`` moved up by its rounding error."""
    active, unstable, s, t, slope, _ = relax
    keep = np.where(active, 1.0, np.where(unstable, slope, 0.0))
    scale = np.where(active, 1.0, np.where(unstable, s, 0.0))
    size = _size(*f_hi, np.maximum(np.abs(lo), np.abs(hi)))
    upper = _up(f_hi[1] * scale + t + _err(scale * size + t, 2))
    return (f_lo[0] * keep[..., None], f_lo[1] * keep), (f_hi[0] * scale[..., None], upper)


def layer_bounds(chain: Chain, lo: np.ndarray, hi: np.ndarray, sign: list | None = None,
                 root: list | None = None, forward: bool = False) -> tuple[list, np.ndarray]:
    """Pre-activation bounds [(l, u) (B, n_j)] of the ReLU layers over boxes lo, hi (B, n_inputs) (preprocessed),
    split neurons (sign +1 / -1) clamped to their side, intersected with root bounds [(l, u) (1 or B, n_j)];
    and which leaves are empty (B,) (some l > u). forward: intersected with forward symbolic bounds too (linear
    functions of the input pushed through the layers: cheap and often tighter on boxes with few inputs, as input
    splitting uses them). Entries still unstable are bounded by back-substitution."""
    return _layer_bounds(chain, lo, hi, sign, root, forward)[:2]


def _layer_bounds(chain: Chain, lo: np.ndarray, hi: np.ndarray, sign: list | None, root: list | None,
                  forward: bool = False):
    """`layer_bounds` and the cache `_backward` reads: "relax" [per ReLU layer `_relaxation`], "mW" [per layer
    `_magnitude` of its input]."""
    B, bounds, empty = lo.shape[0], [], np.zeros(lo.shape[0], dtype=bool)
    cache = {"relax": [], "mW": [_magnitude(chain.layers[0][0], np.maximum(np.abs(lo), np.abs(hi)))]}
    h_lo, h_hi = lo, hi
    for j, (W, b_lo, b_hi, relu) in enumerate(chain.layers):
        if not relu:
            break
        l, u = _interval(W, b_lo, b_hi, h_lo, h_hi)
        if forward and j == 0:  # z = W x + b exactly: the functions are the layer itself
            f_lo, f_hi = (np.broadcast_to(W, (B, *W.shape)), np.broadcast_to(b_lo, (B, len(b_lo)))), \
                (np.broadcast_to(W, (B, *W.shape)), np.broadcast_to(b_hi, (B, len(b_hi))))
        elif forward:
            f_lo, f_hi, fl, fu = _forward(W, b_lo, b_hi, f_lo, f_hi, lo, hi)
            l, u = np.maximum(l, fl), np.minimum(u, fu)
        if root is not None:
            l, u = np.maximum(l, root[j][0]), np.minimum(u, root[j][1])
        if j > 0:
            leaf, idx = np.nonzero((l < 0) & (u > 0) & (sign[j] == 0 if sign is not None else True))
            for part in range(0, len(leaf), CHUNK // 2):
                b, i = leaf[part:part + CHUNK // 2], idx[part:part + CHUNK // 2]
                rows = np.concatenate([W[i], -W[i]])
                const = np.concatenate([b_lo[i], -b_hi[i]])
                low = _backward(chain, j - 1, rows, const, np.concatenate([b, b]), cache, lo, hi)
                l[b, i], u[b, i] = np.maximum(l[b, i], low[:len(b)]), np.minimum(u[b, i], -low[len(b):])
        if sign is not None:
            l, u = np.where(sign[j] > 0, np.maximum(l, 0.0), l), np.where(sign[j] < 0, np.minimum(u, 0.0), u)
        empty |= (l > u).any(1)
        bounds.append((l, u))
        cache["relax"].append(_relaxation(l, u))
        if forward:
            f_lo, f_hi = _forward_relu(cache["relax"][-1], f_lo, f_hi, lo, hi)
        h_lo, h_hi = np.maximum(l, 0.0), np.maximum(u, 0.0)
        if j + 1 < len(chain.layers):
            cache["mW"].append(_magnitude(chain.layers[j + 1][0], h_hi))
    cache["h"] = (h_lo, h_hi)
    if forward and bounds and not chain.layers[-1][3]:  # the output's bounds (`_interval_rows`), as the ReLU layers'
        W, b_lo, b_hi, _ = chain.layers[-1]
        l, u = _forward(W, b_lo, b_hi, f_lo, f_hi, lo, hi)[2:]
        il, iu = _interval(W, b_lo, b_hi, h_lo, h_hi)
        n = W.shape[0]
        rows, const = np.concatenate([np.tile(W, (B, 1)), -np.tile(W, (B, 1))]), np.concatenate([np.tile(b_lo, B),
                                                                                                 -np.tile(b_hi, B)])
        low = _backward(chain, len(chain.layers) - 2, rows, const, np.tile(np.repeat(np.arange(B), n), 2), cache,
                        lo, hi).reshape(2, B, n)
        cache["y"] = np.maximum(np.maximum(l, il), low[0]), np.minimum(np.minimum(u, iu), -low[1])
    return bounds, empty, cache


def _interval_rows(chain: Chain, C: np.ndarray, d: np.ndarray, h: tuple, y: tuple | None) -> np.ndarray:
    """Rigorous lower bounds (P,) of ``C y - d`` by intervals: ``C W`` over the last layer's input bounds h (h_lo,
    h_hi (P, n_h)), and (given) C over the output's bounds y (P, n_out) (as the search intersects its bounds)."""
    W, b_lo, b_hi, relu = chain.layers[-1]
    if relu:  # the output is the ReLU of the last layer: its bounds are h's successors, not used here
        return np.full(len(d), -np.inf)
    CW = C @ W
    err = _err(np.einsum("po,oh,ph->p", np.abs(C), np.abs(W), np.maximum(np.abs(h[0]), np.abs(h[1]))), W.shape[0] + 2)
    bias = _dot_lower(C, np.broadcast_to(b_lo, C.shape), np.broadcast_to(b_hi, C.shape))
    low = _down(_down(_dot_lower(CW, *h) + bias) - _up(d + err))
    return low if y is None else np.maximum(low, _down(_dot_lower(C, *y) - d))


def leaf_lower(chain: Chain, lo: np.ndarray, hi: np.ndarray, C: np.ndarray, d: np.ndarray, *,
               sign: list | None = None, alpha: list | None = None, beta: list | None = None,
               root: list | None = None, at: tuple | None = None, forward: bool = False) -> np.ndarray:
    """Rigorous lower bounds (B, M) of ``C_b f(x) - d_b`` over each leaf b: boxes lo, hi (B, n_inputs) (raw, as
    the property states them), rows C (B, M, n_out), d (B, M) (d = inf: padding); sign [(B, n_j)] split sides,
    alpha / beta [(B, M, n_j)] per ReLU layer (NaN alpha: adaptive); root: `layer_bounds` of a box holding them
    all. +inf for leaves no input reaches. at: boxes (lo, hi) inside lo, hi: the rows' linear bounds built on
    lo, hi (valid there, so on any part) are minimized over these instead. forward: as `layer_bounds`'s."""
    lo, hi = _preprocess(chain, lo, hi)
    bounds, empty, cache = _layer_bounds(chain, lo, hi, sign, root, forward)
    if at is not None:
        lo, hi = _preprocess(chain, *at)
    B, M = d.shape
    out = np.full((B, M), np.inf)
    rows = np.nonzero(~empty[:, None] & np.isfinite(d))
    for part in range(0, len(rows[0]), CHUNK):
        b, m = rows[0][part:part + CHUNK], rows[1][part:part + CHUNK]
        extra = {}
        for name, arrays in (("alpha", alpha), ("beta", beta)):
            if arrays is not None:
                extra[name] = {j: a[b, m] for j, a in enumerate(arrays) if a is not None}
        top = len(chain.layers) - 1
        out[b, m] = _backward(chain, top, C[b, m], -d[b, m], b, cache, lo, hi, sign=sign, **extra)
        if forward:  # input-split leaves: as the search, the rows' interval bounds too
            y = None if "y" not in cache else (cache["y"][0][b], cache["y"][1][b])
            h = cache["h"][0][b], cache["h"][1][b]
            out[b, m] = np.maximum(out[b, m], _interval_rows(chain, C[b, m], d[b, m], h, y))
    out[~empty[:, None] & ~np.isfinite(d)] = -np.inf
    return out


def root_bounds(chain: Chain, pair: dict) -> list:
    """`layer_bounds` of the pair's whole box (valid on every leaf: they only get intersected)."""
    box = _preprocess(chain, pair["lo"][None], pair["hi"][None])
    return layer_bounds(chain, *box, forward=pair.get("kind") == "input")[0]


def box_bounds(chain: Chain, lo: np.ndarray, hi: np.ndarray, C: np.ndarray, d: np.ndarray, root: list,
               parents: tuple | None = None, batch: int = 256, at: tuple | None = None) -> np.ndarray:
    """Per box (B,) the worst disjunct's best row lower bound: rows C (K, M, n_out), d (K, M) (padded). parents:
    boxes (lo, hi) holding them: a box whose own bound is not > 0 gets that box's linear bounds minimized over it
    (the search's clipping proves slabs that way, from an ancestor's bounds), whichever is larger. at: as
    `leaf_lower`'s."""
    K, M = d.shape
    out = np.empty(len(lo))
    for s in range(0, len(lo), batch):
        B = len(lo[s:s + batch])
        low = leaf_lower(chain, lo[s:s + batch], hi[s:s + batch], np.broadcast_to(C.reshape(1, K * M, -1),
                         (B, K * M, C.shape[2])), np.broadcast_to(d.reshape(1, -1), (B, K * M)), root=root,
                         at=None if at is None else (at[0][s:s + batch], at[1][s:s + batch]), forward=True)
        out[s:s + batch] = low.reshape(B, K, M).max(2).min(1)
    again = np.flatnonzero(~(out > 0)) if parents is not None else []
    if len(again):
        out[again] = np.maximum(out[again], box_bounds(chain, parents[0][again], parents[1][again], C, d, root,
                                                       batch=batch, at=(lo[again], hi[again])))
    return out


def pair_bounds(chain: Chain, pair: dict, batch: int = 256, only: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per leaf of the pair (L,): its lower bound (the worst disjunct's best row; inf: empty or trusted) and
    whether it is MILP-trusted. Input-split leaves must rule out every disjunct, ReLU-split leaves their own.
    only: bound just these ReLU-split leaves (the others get inf; for the writer's refinement)."""
    C, d = padded(pair)
    root = root_bounds(chain, pair)
    if pair["kind"] == "input":
        lo, hi, parent_lo, parent_hi = leaf_boxes(pair)
        return box_bounds(chain, lo, hi, C, d, root, (parent_lo, parent_hi), batch), np.zeros(len(lo), dtype=bool)
    widths = [W.shape[0] for W, _, _, relu in chain.layers if relu]
    neurons, splits, disjunct = pair["neurons"].astype(np.int64), pair["splits"], pair["disjunct"].astype(np.int64)
    L, N = splits.shape
    if neurons.shape != (N, 2) or len(disjunct) != L or pair["alpha"].shape != (L, C.shape[1], N) or \
            pair["beta"].shape != (L, C.shape[1], N) or pair["trusted"].shape != (L,):
        raise Invalid("the ReLU-split proof's arrays do not have matching shapes")
    if N and (neurons[:, 0].min() < 0 or neurons[:, 0].max() >= len(widths) or neurons[:, 1].min() < 0 or
              np.any(neurons[:, 1] >= np.array(widths)[neurons[:, 0]])) or np.any(np.abs(splits) > 1):
        raise Invalid("the ReLU-split proof names neurons the network does not have")
    if len(np.unique(neurons, axis=0)) != N or np.any((disjunct < 0) | (disjunct >= len(d))):
        raise Invalid("the ReLU-split proof repeats a neuron or names a disjunct the property does not have")
    for k in range(len(d)):
        why = relu_coverage(splits[disjunct == k])
        if why is not None:
            raise Invalid(f"disjunct {k}: the ReLU splits do not cover it: {why}")
    out, trusted = np.full(L, np.inf), pair["trusted"].astype(bool)
    todo = np.flatnonzero(~trusted) if only is None else only[~trusted[only]]
    for s in range(0, len(todo), batch):
        t = todo[s:s + batch]
        B = len(t)
        sign, alpha, beta = [], [], []
        for j, n in enumerate(widths):
            cols = np.flatnonzero(neurons[:, 0] == j)
            at = neurons[cols, 1]
            sg, al, be = np.zeros((B, n)), np.full((B, C.shape[1], n), np.nan), np.zeros((B, C.shape[1], n))
            sg[:, at], al[:, :, at], be[:, :, at] = splits[t][:, cols], pair["alpha"][t][:, :, cols], \
                pair["beta"][t][:, :, cols]
            sign.append(sg)
            alpha.append(al)
            beta.append(be)
        box = np.broadcast_to(pair["lo"], (B, len(pair["lo"]))), np.broadcast_to(pair["hi"], (B, len(pair["hi"])))
        low = leaf_lower(chain, *box, C[disjunct[t]], d[disjunct[t]], sign=sign, alpha=alpha, beta=beta, root=root)
        out[t] = low.max(1)
    return out, trusted


def check(model: Path, vnnlib: Path, certificate: Path) -> tuple[int, int]:
    """Check a certificate: (leaves, MILP-trusted leaves) when valid; raises Invalid or BadInput."""
    for path in (model, vnnlib, certificate):
        if not Path(path).is_file():
            raise BadInput(f"{path}: no such file")
    meta, pairs = load_certificate(certificate)
    chain = read_onnx(Path(model))
    terms = read_vnnlib(Path(vnnlib), chain.n_inputs, chain.n_outputs)
    for name, path in (("ONNX", model), ("VNN-LIB", vnnlib)):
        if sha256(path) != meta[f"{name.lower().replace('-', '')}_sha256"]:
            raise Invalid(f"the {name} file's sha256 differs from the certificate's (another {name} file)")
    for i, pair in enumerate(pairs):
        arrays = [pair["lo"], pair["hi"], *pair["C"], *pair["d"]]
        if any(not np.all(np.isfinite(np.asarray(a, np.float64))) for a in arrays) or np.any(pair["lo"] > pair["hi"]):
            raise Invalid(f"pair {i}: its box or rows hold NaN, infinities or lo > hi")
        if len(pair["lo"]) != chain.n_inputs or any(C.shape[1] != chain.n_outputs for C in pair["C"]):
            raise Invalid(f"pair {i}: its box or rows do not fit the model")
    for t, term in enumerate(terms):
        if not covered(term, pairs):
            raise Invalid(f"unsafe conjunction {t} of the VNN-LIB file is not in the certificate's property")
    leaves = trusted = 0
    for i, pair in enumerate(pairs):
        lower, milp = pair_bounds(chain, pair)
        bad = np.flatnonzero(~(lower > 0))
        if len(bad):
            raise Invalid(f"pair {i}, leaf {bad[0]}: its recomputed lower bound {lower[bad[0]]:.6g} is not > 0")
        leaves, trusted = leaves + len(lower), trusted + int(milp.sum())
    return leaves, trusted


def main(argv: list[str] | None = None) -> int:
    """verify-check MODEL.onnx P.vnnlib CERT: prints valid / invalid: why; exit code 0 / 1 / 2 (bad input)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: verify-check MODEL.onnx P.vnnlib CERT", file=sys.stderr)
        return 2
    try:
        leaves, trusted = check(*(Path(a) for a in args))
    except BadInput as exc:
        print(f"verify-check: error: {exc}", file=sys.stderr)
        return 2
    except Invalid as exc:
        print(f"invalid: {exc}")
        return 1
    except (KeyError, IndexError, ValueError, TypeError) as exc:  # arrays missing or of the wrong shapes
        print(f"invalid: the certificate is malformed ({type(exc).__name__}: {exc})")
        return 1
    print(f"valid ({leaves} leaves, {trusted} MILP-trusted)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
