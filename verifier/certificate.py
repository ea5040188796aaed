"""Certificates of "holds": the branch-and-bound tree as proof, for the independent checker (check.py).

A certificate is one .npz file: "meta" (JSON: format, version, the sha256 of the ONNX and VNN-LIB files, per
(box, property) pair its kind and number of disjuncts, stats) and per pair i the arrays ``p{i}_lo``, ``p{i}_hi``
(n,), ``p{i}_C{k}`` (m_k, n_out), ``p{i}_d{k}`` (m_k,) (the property as parsed: unsafe when C y <= d), and its
proof:

- kind "input" (input splitting): the tree of cuts in pre-order, ``tree`` (1 cut, 0 leaf, int8), ``dim`` (int32)
  and ``point`` (float64) per cut; the checker derives every box (left: x_dim <= point, right: >=). The search's
  box clipping becomes cuts too (the clipped-off slabs are leaves the checker bounds itself);
- kind "relu" (ReLU splitting): ``neurons`` (N, 2) (ReLU layer, neuron) the splittable neurons; per leaf
  ``splits`` (L, N) int8 sides, ``disjunct`` (L,), ``alpha`` (L, M, N) float32 lower slopes (NaN: the checker's
  adaptive one), ``beta`` (L, M, N) float32 split multipliers and ``trusted`` (L,) (decided by a solver: the MILP,
  or the LP of a linear region). Disjuncts the dual passes ruled out are root leaves without slopes.

The writer checks every leaf with the checker's own functions before writing: an input-split leaf the checker
cannot prove (a box the search clipped to nothing; outward rounding) is cut as the search's clipping proves boxes,
then bisected, until it can or time runs out; a ReLU-split leaf the checker cannot prove gets its slopes and
multipliers optimized again (the engine, against the checker's layer bounds). If some leaf still fails, nothing
is written: the verdict stays "holds" and stats say why. Only dense ReLU chains are supported.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from . import check
from .bounds.base import PROOF_MARGIN
from .errors import UnsupportedNetwork
from .network import Network
from .objective_rows import ObjectiveRows

CLIP_ROUNDS = 2  # rounds of bound tightening when a leaf is cut as the search clips boxes (as bab's clipping)


def require_certifiable(network: Network) -> check.Chain:
    """The checker's view of the network's ONNX file; UnsupportedNetwork (one line) when it has none."""
    if not network.is_chain:
        raise UnsupportedNetwork(f"--certificate supports dense ReLU networks only; this one has "
                                 f"{', '.join(n for n in network.op_names() if n not in ('Dense', 'ReLU'))}")
    if not network.source or not Path(network.source).is_file():
        raise UnsupportedNetwork("--certificate needs a network loaded from an ONNX file")
    try:
        return check.read_onnx(Path(network.source))
    except check.BadInput as exc:
        raise UnsupportedNetwork(f"--certificate: {exc}") from None


class _Tree:
    """A tree of cuts over a box; node i is a leaf while left[i] < 0. Boxes are derived as the checker does."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray) -> None:
        self.dim, self.point, self.left, self.right, self.anchor, self.depth = [-1], [0.0], [-1], [-1], [0], [0]
        self.lo, self.hi = [lo.copy()], [hi.copy()]

    def cut(self, node: int, dim: int, point: float, anchor: int | None = None) -> tuple[int, int]:
        """Cut a leaf in two; the children's anchor (the ancestor whose linear bounds they may use): anchor,
        default the node."""
        lo, hi = self.lo[node], self.hi[node]
        left_hi, right_lo = hi.copy(), lo.copy()
        left_hi[dim], right_lo[dim] = point, point
        self.dim[node], self.point[node] = int(dim), float(point)
        self.left[node], self.right[node] = len(self.lo), len(self.lo) + 1
        for a, b in ((lo, left_hi), (right_lo, hi)):
            self.lo.append(a)
            self.hi.append(b)
            self.dim.append(-1)
            self.point.append(0.0)
            self.left.append(-1)
            self.right.append(-1)
            self.anchor.append(node if anchor is None else anchor)
            self.depth.append(self.depth[node] + 1)
        return len(self.lo) - 2, len(self.lo) - 1

    def leaves(self) -> list[int]:
        return [i for i, child in enumerate(self.left) if child < 0]

    def arrays(self) -> dict:
        """tree (pre-order flags), dim, point, via (per leaf: levels up to its anchor): the certificate's
        encoding."""
        flags, dims, points, via, stack = [], [], [], [], [0]
        while stack:
            i = stack.pop()
            flags.append(1 if self.left[i] >= 0 else 0)
            if self.left[i] < 0:
                via.append(self.depth[i] - self.depth[self.anchor[i]])
            else:
                dims.append(self.dim[i])
                points.append(self.point[i])
                stack += [self.right[i], self.left[i]]
        return {"tree": np.array(flags, np.int8), "dim": np.array(dims, np.int32),
                "point": np.array(points, np.float64), "via": np.array(via, np.int32)}


def _input_tree(box, events: list) -> _Tree:
    """The search's tree (bab.input_split's trace) as cuts: clipping, then bisection, per box."""
    info, splits = {}, {}
    for event in events:
        if event[0] == "bound":
            _, ids, lo_in, hi_in, lo, hi, open_ = event
            for k, i in enumerate(ids.tolist()):
                info[i] = (lo[k].numpy(), hi[k].numpy(), bool(open_[k]))
        else:
            _, ids, dim, mid, left, right = event
            for k, i in enumerate(ids.tolist()):
                splits[i] = (int(dim[k]), float(mid[k]), int(left[k]), int(right[k]))
    tree = _Tree(box.lo, box.hi)
    stack = [(0, 0)]
    while stack:
        node, i = stack.pop()
        if i not in info or not info[i][2] or i not in splits:
            continue  # proved (or never bounded): a leaf the checker must prove itself
        q_lo, q_hi, _ = info[i]
        start = node  # the clipped-off slabs: proved by this box's linear bounds in the search
        for j in range(len(q_lo)):
            if q_lo[j] > tree.lo[node][j]:
                node = tree.cut(node, j, q_lo[j], anchor=start)[1]
            if q_hi[j] < tree.hi[node][j]:
                node = tree.cut(node, j, q_hi[j], anchor=start)[0]
        dim, mid, left, right = splits[i]
        a, b = tree.cut(node, dim, mid)
        stack += [(a, left), (b, right)]
    return tree


def _clip_cuts(network: Network, rows, tree: _Tree, leaves: list[int]) -> list[int]:
    """Cut leaves as the search's clipping proves boxes (bab._Bounder._clip). With the
    engine's linear bounds ``A x + c`` of the rows on a leaf's box, rounds of bound tightening (symbolic.clip)
    give each disjunct the part of the box where all its rows can be <= PROOF_MARGIN; the slabs outside the hull
    of those parts become leaves anchored at the box (on each, some row of every disjunct is > 0: the checker
    minimizes the box's linear bounds over it). A disjunct whose part is empty is ruled out on both sides of a cut
    between two of its crossed limits. Returns the leaves the clipping leaves to prove (the hulls' cores and the
    pieces of empty parts)."""
    from .bounds import symbolic

    net = network.to("cpu", torch.float64)
    lo, hi = (torch.tensor(np.array([side[i] for i in leaves])) for side in (tree.lo, tree.hi))
    with torch.no_grad():
        prop = symbolic.propagate(net, lo, hi, refine=True)
        _, A, c, _ = rows.bound(net, lo, hi, prop.relaxations, prop.bounds)
    K, n, out = rows.K, lo.shape[1], []
    for b, origin in enumerate(leaves):
        A_b, c_b, node = A[b].reshape(K, rows.M, n), (c[b] - PROOF_MARGIN).reshape(K, rows.M), origin
        for _ in range(CLIP_ROUNDS):
            box = torch.tensor(tree.lo[node]).expand(K, n), torch.tensor(tree.hi[node]).expand(K, n)
            k_lo, k_hi, empty = symbolic.clip(*box, A_b, c_b, rounds=1)
            if empty.all():
                break
            for j in range(n):  # cut the node down to the hull of the disjuncts' parts
                if (p := float(k_lo[~empty, j].amin())) > tree.lo[node][j]:
                    node = tree.cut(node, j, p, anchor=origin)[1]
                if (p := float(k_hi[~empty, j].amax())) < tree.hi[node][j]:
                    node = tree.cut(node, j, p, anchor=origin)[0]
        if not empty.all():
            out.append(node)
            continue
        pieces = [node]
        for k in range(K):
            j = int(torch.argmax(k_lo[k] - k_hi[k]))
            p = float(k_lo[k, j] + k_hi[k, j]) / 2
            pieces = [q for piece in pieces for q in (tree.cut(piece, j, p, anchor=origin)
                                                      if tree.lo[piece][j] < p < tree.hi[piece][j] else (piece,))]
        out += pieces
    return out


def _prove_input(network: Network, chain: check.Chain, pair: dict, rows, tree: _Tree, deadline: float
                 ) -> tuple[bool, int]:
    """Cut the tree's leaves the checker cannot prove, until all are proved or the deadline passes: first as the
    search's clipping would (`_clip_cuts`), then, for leaves already clipped, by bisection along the widest
    dimension. Returns (all proved, leaves added)."""
    C, d = check.padded(pair)
    root = check.root_bounds(chain, pair)
    width = np.maximum(pair["hi"] - pair["lo"], 1e-300)
    todo, added, clipped = tree.leaves(), 0, set()
    while todo:
        parents = tuple(np.array([side[tree.anchor[i]] for i in todo]) for side in (tree.lo, tree.hi))
        lower = check.box_bounds(chain, np.array([tree.lo[i] for i in todo]), np.array([tree.hi[i] for i in todo]),
                                 C, d, root, parents)
        failing = [i for i, v in zip(todo, lower) if not v > 0]
        if not failing:
            return True, added
        if time.perf_counter() > deadline:
            return False, added
        fresh = [i for i in failing if i not in clipped]
        before = len(tree.lo)
        clipped.update(fresh + (_clip_cuts(network, rows, tree, fresh) if fresh else []))  # cores: bisect next
        todo = [i for i in fresh if tree.left[i] < 0] + [i for i in range(before, len(tree.lo)) if tree.left[i] < 0]
        added += (len(tree.lo) - before) // 2
        for i in failing:
            if i in fresh:
                continue
            dim = int(np.argmax((tree.hi[i] - tree.lo[i]) / width))
            mid = (tree.lo[i][dim] + tree.hi[i][dim]) / 2
            if not tree.lo[i][dim] < mid < tree.hi[i][dim]:
                return False, added  # too thin to split
            todo += list(tree.cut(i, dim, mid, anchor=tree.anchor[i]))
            added += 1
    return True, added


def _relu_pair(network: Network, pair: dict, trace: dict) -> dict:
    """The ReLU-split proof arrays from verify's trace (module docstring)."""
    K, M = len(pair["d"]), max(len(d) for d in pair["d"])
    closed = trace.get("closed", [])
    cols = closed[0]["cols"] if closed else [torch.zeros(0, dtype=torch.long)] * len(network.relu_nodes)
    neurons = np.concatenate([np.stack([np.full(len(c), i), c.numpy()], 1) for i, c in enumerate(cols)]
                             ).reshape(-1, 2).astype(np.int32)
    N, open_, milp = len(neurons), list(trace.get("open", [])), set(trace.get("milp", []))
    parts = [(s.numpy().astype(np.int8), np.array(open_)[k.numpy()].astype(np.int32), a.double().numpy(),
              b.double().numpy(), solver) for s, k, a, b, solver in closed[1:]]
    splits = [p[0] for p in parts] + [np.zeros((1, N), np.int8) for k in range(K) if k not in open_ or k in milp]
    disjunct = [p[1] for p in parts] + [np.array([k], np.int32) for k in range(K) if k not in open_ or k in milp]
    alpha = [np.pad(p[2], ((0, 0), (0, M - p[2].shape[1]), (0, 0)), constant_values=np.nan) for p in parts]
    beta = [np.pad(p[3], ((0, 0), (0, M - p[3].shape[1]), (0, 0))) for p in parts]
    roots = [k for k in range(K) if k not in open_ or k in milp]
    alpha += [np.full((1, M, N), np.nan)] * len(roots)
    beta += [np.zeros((1, M, N))] * len(roots)
    trusted = [np.full(len(p[1]), p[4]) for p in parts] + [np.array([k in milp]) for k in roots]
    out = {"neurons": neurons, "splits": np.concatenate(splits), "disjunct": np.concatenate(disjunct),
           "alpha": np.concatenate(alpha).astype(np.float32), "beta": np.concatenate(beta).astype(np.float32),
           "trusted": np.concatenate(trusted)}
    keep = ~np.isin(out["disjunct"], list(milp)) | out["trusted"]  # the MILP decided those disjuncts whole
    return {k: (v[keep] if k != "neurons" else v) for k, v in out.items()}


def _widen_neurons(chain: check.Chain, pair: dict) -> None:
    """Add the neurons unstable under the checker's root bounds to the pair's neuron set (in place; sorted by
    layer and index): the ones re-optimization and further splits may need."""
    root = check.root_bounds(chain, pair)
    have = {tuple(x) for x in pair["neurons"].tolist()}
    extra = [(j, i) for j, (l, u) in enumerate(root) for i in np.flatnonzero((l[0] < 0) & (u[0] > 0)).tolist()]
    neurons = np.array(sorted(have | set(extra)), np.int32).reshape(-1, 2)
    where = {tuple(x): k for k, x in enumerate(neurons.tolist())}
    at = np.array([where[tuple(x)] for x in pair["neurons"].tolist()], np.int64)
    L, M = pair["alpha"].shape[:2]
    splits, alpha, beta = np.zeros((L, len(neurons)), np.int8), np.full((L, M, len(neurons)), np.nan, np.float32), \
        np.zeros((L, M, len(neurons)), np.float32)
    splits[:, at], alpha[:, :, at], beta[:, :, at] = pair["splits"], pair["alpha"], pair["beta"]
    pair.update(neurons=neurons, splits=splits, alpha=alpha, beta=beta)


def _reoptimize(network: Network, chain: check.Chain, pair: dict, leaves: np.ndarray, steps: int = 60) -> None:
    """Optimize the slopes and multipliers of some leaves again (in place), with the engine's ReLU-split
    bounding (split_domains) held to the checker's own layer bounds of each leaf."""
    from .split_domains import SplitDomains
    from .spec import Property

    neurons, B = pair["neurons"], len(leaves)
    net = network.to("cpu", torch.float64)
    relus = net.relu_nodes
    fake = {}
    for j, r in enumerate(relus):  # only fixes which neurons get slopes (the set's); bounds are replaced below
        n = int(np.prod(net.nodes[r].op.out_shape))
        mark = np.ones(n)
        mark[neurons[neurons[:, 0] == j, 1]] = -1
        fake[net.nodes[r].inputs[0]] = (torch.tensor(mark)[None], torch.ones(1, n, dtype=torch.float64))
    lo, hi = torch.tensor(pair["lo"])[None], torch.tensor(pair["hi"])[None]
    rows = ObjectiveRows.of(Property(tuple(zip(pair["C"], pair["d"]))), chain.n_outputs)
    problem = SplitDomains(net, lo, hi, rows, fake, retighten=False)
    sign = []
    for j in range(len(relus)):
        cols = np.flatnonzero(neurons[:, 0] == j)
        sg = np.zeros((B, chain.layers[j][0].shape[0]))
        sg[:, neurons[cols, 1]] = pair["splits"][leaves][:, cols]
        sign.append(sg)
    box = check._preprocess(chain, np.repeat(pair["lo"][None], B, 0), np.repeat(pair["hi"][None], B, 0))
    bounds, _ = check.layer_bounds(chain, *box, sign, check.root_bounds(chain, pair))
    problem.root = {r: (torch.tensor(l), torch.tensor(u)) for r, (l, u) in zip(relus, bounds)}
    adaptive = np.stack([(bounds[j][1][:, i] >= -bounds[j][0][:, i]).astype(float) for j, i in neurons], 1) \
        if len(neurons) else np.zeros((B, 0))
    alpha = np.where(np.isnan(pair["alpha"][leaves]), adaptive[:, None, :], pair["alpha"][leaves])
    _, a, b, *_ = problem.bound(torch.tensor(pair["splits"][leaves]), torch.tensor(pair["disjunct"][leaves]).long(),
                                torch.tensor(alpha), torch.tensor(pair["beta"][leaves]).double(), steps)
    pair["alpha"][leaves], pair["beta"][leaves] = a.numpy(), b.numpy()


def _split_leaves(chain: check.Chain, pair: dict, leaves: np.ndarray) -> np.ndarray:
    """Split each leaf on its unsplit neuron (of the pair's set) with the largest triangle height under the
    checker's bounds; the children replace it (in place). Returns the children's indices, or an empty array when
    some leaf has nothing left to split."""
    neurons, B = pair["neurons"], len(leaves)
    sign = []
    for j, (W, *_rest) in enumerate(layer for layer in chain.layers if layer[3]):
        cols = np.flatnonzero(neurons[:, 0] == j)
        sg = np.zeros((B, W.shape[0]))
        sg[:, neurons[cols, 1]] = pair["splits"][leaves][:, cols]
        sign.append(sg)
    box = check._preprocess(chain, np.repeat(pair["lo"][None], B, 0), np.repeat(pair["hi"][None], B, 0))
    bounds, _ = check.layer_bounds(chain, *box, sign, check.root_bounds(chain, pair))
    l = np.stack([bounds[j][0][:, i] for j, i in neurons], 1)
    u = np.stack([bounds[j][1][:, i] for j, i in neurons], 1)
    height = np.where((l < 0) & (u > 0) & (pair["splits"][leaves] == 0), -l * u / np.maximum(u - l, 1e-300), 0)
    if not (height.max(1) > 0).all():
        return np.zeros(0, np.int64)
    choice = height.argmax(1)
    n = len(pair["disjunct"])
    for key in ("splits", "disjunct", "alpha", "beta", "trusted"):
        pair[key] = np.concatenate([pair[key], pair[key][leaves], pair[key][leaves]])
    pair["splits"][n + np.arange(B), choice] = 1
    pair["splits"][n + B + np.arange(B), choice] = -1
    keep = np.setdiff1d(np.arange(len(pair["disjunct"])), leaves)
    for key in ("splits", "disjunct", "alpha", "beta", "trusted"):
        pair[key] = pair[key][keep]
    return np.arange(len(keep) - 2 * B, len(keep))


def _prove_relu(network: Network, chain: check.Chain, pair: dict, deadline: float) -> tuple[bool, int]:
    """Re-optimize, then split, the ReLU-split leaves the checker cannot prove, until all are proved or the
    deadline passes. Returns (all proved, splits added)."""
    lower, _ = check.pair_bounds(chain, pair)
    failing, added, widened = np.flatnonzero(~(lower > 0)), 0, False
    while len(failing):
        if time.perf_counter() > deadline:
            return False, added
        if not widened:
            _widen_neurons(chain, pair)
            widened = True
        _reoptimize(network, chain, pair, failing)
        low = check.pair_bounds(chain, pair, only=failing)[0]
        still = np.intersect1d(np.flatnonzero(~(low > 0)), failing)
        if not len(still) or time.perf_counter() > deadline:
            failing = still
            continue
        children = _split_leaves(chain, pair, still)
        if not len(children):
            return False, added
        added += len(still)
        failing = children
    return True, added


def write_certificate(network: Network, vnnlib_path, pairs: list, traces: list, path, *,
                      time_limit: float = 60.0) -> dict:
    """Build, self-check and write the certificate of a holds answer (module docstring). Returns stats: written
    (bool), why (when not), path, bytes, leaves, milp_trusted, refined (leaves the checker needed split
    further), seconds."""
    start = time.perf_counter()
    deadline = start + time_limit
    chain = require_certifiable(network)
    stats = {"written": False, "path": str(path), "leaves": 0, "milp_trusted": 0, "refined": 0}
    out, kinds = {}, []
    for i, ((box, prop), trace) in enumerate(zip(pairs, traces)):
        pair = {"lo": np.array(box.lo), "hi": np.array(box.hi), "C": [C for C, _ in prop.disjuncts],
                "d": [d for _, d in prop.disjuncts], "kind": trace.get("kind", "relu")}
        if pair["kind"] == "input":
            tree = _input_tree(box, trace["events"])
            ok, added = _prove_input(network, chain, pair, ObjectiveRows.of(prop, chain.n_outputs), tree, deadline)
            stats["refined"] += added
            pair.update(tree.arrays())
            if not ok:
                stats.update(why=f"pair {i}: {added} cuts did not let the checker prove every leaf in time",
                             seconds=round(time.perf_counter() - start, 3))
                return stats
            stats["leaves"] += len(tree.leaves())  # every leaf box (derived as the checker derives it) proved
        else:
            pair.update(_relu_pair(network, pair, trace))
            ok, added = _prove_relu(network, chain, pair, deadline)
            stats["refined"] += added
            lower, trusted = check.pair_bounds(chain, pair)
            bad = np.flatnonzero(~(lower > 0))
            if len(bad):
                stats.update(why=f"pair {i}: the checker cannot prove {len(bad)} of {len(lower)} leaves (best "
                                 f"{lower[bad].max():.3g})", seconds=round(time.perf_counter() - start, 3))
                return stats
            stats["leaves"] += len(lower)
            stats["milp_trusted"] += int(trusted.sum())
        kinds.append({"kind": pair["kind"], "disjuncts": len(pair["d"])})
        for k, (C, d) in enumerate(zip(pair.pop("C"), pair.pop("d"))):
            out[f"p{i}_C{k}"], out[f"p{i}_d{k}"] = C, d
        pair.pop("kind")
        out.update({f"p{i}_{k}": v for k, v in pair.items()})
    meta = {"format": check.FORMAT, "version": check.VERSION, "onnx_sha256": check.sha256(network.source),
            "vnnlib_sha256": check.sha256(vnnlib_path), "pairs": kinds,
            "stats": {k: stats[k] for k in ("leaves", "milp_trusted", "refined")}}
    with open(path, "wb") as f:
        np.savez_compressed(f, meta=np.array(json.dumps(meta)), **out)
    stats.update(written=True, bytes=Path(path).stat().st_size, seconds=round(time.perf_counter() - start, 3))
    return stats
