"""Refined layer bounds: settle the sign of unstable ReLU inputs by one batched ReLU-split search per layer.

A branch and bound splits every neuron its layer bounds leave unstable, and each one it needlessly splits doubles
part of the tree. Layer bounds from bound propagation (alpha-CROWN, or the triangle LP, which equals it here) leave
unstable many neurons that are stable on the box. α,β-CROWN's "bab-refine" settles them by one MILP each before
its search on MNIST MLPs; here the same branch and bound that decides the property (relu_bab.search, alpha and
beta optimized, batched) decides ``z_i > 0`` (or ``< 0``) on the network cut at z's node, for all of a layer's
unstable entries at once: one row per (entry, side), each a question of its own (``fair``: the rows take turns).

For each ReLU node after the first (in order, so each layer's search uses the refined bounds of the layers before
it), the unstable entries (l < 0 < u) share the time left with the later layers' (in proportion to their counts).
A sign that a known point of the box already shows (the box's centre, points from signed-gradient steps that
minimize and maximize each unstable entry) cannot be proved impossible: an entry seen on both sides is not asked
about its sign. Its two rows are searched for their lowest bounds only (``tighten``, the default; never dropped:
`relu_bab.search`'s bound_only), which narrows the range of a neuron that does take both signs (the later layers'
bounds and the search's relaxation of it depend on it; docs/search.md, "Narrowing the neurons that take both
signs"). A sign row whose search meets a point of the other sign (its domains' minimizing corners) is dropped. A
row proved makes its neuron stable (l := 0 or u := 0); a row open at the layer's time limit still tightens its
bound to its lowest open domain's (the best-first search raised it). Before a layer's search, once some bound
before it moved, an adaptive pass of the bound engine with the refined bounds given re-bounds that layer and the
later ones (intersected). A proof is the search's: float64 bounds above PROOF_MARGIN (split_domains.py).

With the objective rows given, alpha-CROWN then bounds every layer again over the refined bounds (its
intermediate slopes optimized for those rows, each layer intersected with the refined one: `dual.bound`'s
reference): the gains on a layer reach the later layers through optimized slopes, not the adaptive pass alone.

Measured on MNIST 256x4 eps 0.05 from alpha-CROWN's bounds (two processes at once on the 2-core machine), stable
neurons gained and the rows' alpha-CROWN bounds after it. 100 s: prop_5 (55 / 128 / 7 / 142 unstable per layer,
rows -0.60..-0.81): one MILP per neuron (HiGHS, big-M, 2 s each) 13 stable, rows -0.49..-0.66; one search per
neuron (3 s each, closest to stable first) 66, -0.21..-0.34. prop_0 (45 / 86 / 5 / 67, rows -1.38..-2.18): one
search per neuron (6 s) 50, -1.02..-1.93. This code, 140 s: prop_5 142 stable (layers 71 / 1 / 11 unstable after),
rows +0.75..+0.84 (proved by the refinement alone); prop_0 42, -0.73..-1.07. The 11 rows of prop_5's last layer
neither proved nor refuted after 50 s keep their share to the end: the refinement always takes its whole time.
Searching also the rows whose sign a point shows (for their lowest open bound), first prototyped at 100 s in one
go, cost prop_5 its proof (rows -0.32..-0.51) for a small gain on prop_0 (-0.70..-1.21 against -0.80..-1.22
without). With the refinement as it is now (stages; the alpha-CROWN pass at the end) it is the default: prop_5
keeps its time and prop_13 and prop_10 eps 0.05 are proved (docs/search.md, "Narrowing the neurons that take both
signs").
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..network import Network
from ..spec import InputBox
from . import dual, engine
from .encode import relus_up_to
from .interval import by_node, relu_inputs

ALPHA_SHARE = 0.1  # the alpha-CROWN pass after the searches stops after this share of the refinement's time
STEPS = 20  # signed-gradient steps of the search for points that show each unstable entry's signs


def pre_activations(network: Network, x: np.ndarray) -> list[np.ndarray]:
    """The inputs of every ReLU node (in `network.relu_nodes` order) at the points x (P, n_inputs): [(P, w_i)]."""
    with torch.no_grad():
        values = network.to("cpu", torch.float64).relu_inputs_torch(torch.from_numpy(np.array(x, np.float64)))
    return [v.numpy() for v in values]


def extreme_points(network: Network, box: InputBox, entries: np.ndarray, steps: int = STEPS, seed: int = 0
                   ) -> np.ndarray:
    """Points of the box (2 E, n_inputs) for E entries (indices into the ReLU nodes' inputs concatenated, flat, in
    `network.relu_nodes` order): per entry, one point that tries to minimize it and one to maximize it (projected
    signed-gradient steps from random starts, a tenth of the box's half-width each)."""
    net = network.to("cpu", torch.float64)
    lo, hi = (torch.tensor(x, dtype=torch.float64, device="cpu") for x in (box.lo, box.hi))
    E = len(entries)
    entry = torch.as_tensor(np.asarray(entries), dtype=torch.long, device="cpu").repeat(2)
    side = torch.cat([-torch.ones(E, device="cpu"), torch.ones(E, device="cpu")]).double()  # -1: min, +1: max
    generator = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(2 * E, lo.numel(), generator=generator, dtype=torch.float64, device="cpu")
    for _ in range(steps if E else 0):
        pre = torch.cat(net.relu_inputs_torch(x.requires_grad_(True)), 1)
        grad, = torch.autograd.grad((side * pre[torch.arange(2 * E, device="cpu"), entry]).sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x + (hi - lo) / 20 * grad.sign(), lo), hi)
    return x.detach().numpy()


def _tighten_by_pass(network: Network, box: InputBox, bounds: list, t: int, device="cpu") -> None:
    """Intersect bounds[t:] (in place) with the adaptive pass's (on `device`), the bounds before t given (as
    refined)."""
    nodes = relu_inputs(network)
    tensors = by_node(network, bounds, device=device)
    given = {k: tensors[k] for k in nodes[:t]}
    reference = {k: tensors[k] for k in nodes[t:]}
    lo, hi = (torch.tensor(x, dtype=torch.float64, device=device).reshape(1, -1) for x in (box.lo, box.hi))
    new, _ = engine.node_bounds(network.to(device, torch.float64), lo, hi, "adaptive", given, reference=reference,
                                output_pass=False)
    for i, k in enumerate(nodes[t:], start=t):
        l, u = (x.reshape(-1).cpu().numpy() for x in new[k])
        bounds[i] = (np.maximum(bounds[i][0], l), np.minimum(bounds[i][1], u))


def settle_signs(cut: Network, box: InputBox, bounds: list, entries: np.ndarray, sides: np.ndarray,
                 deadline: float, progress=None, device="cpu", bound_only: np.ndarray | None = None
                 ) -> tuple[np.ndarray, dict]:
    """Lower bounds over the box of ``sides[j] * z[entries[j]]`` (J,), z the (flat) output of `cut` (a network cut
    at the input of one of its ReLU nodes: `Network.upto`, float64), by one ReLU-split search (`relu_bab.search`)
    with cut's layer bounds (`interval.relu_inputs` layout of cut) and a row per (entry, side), taken in turn
    (``fair``) until the deadline (time.perf_counter()): > 0 where the sign is proved, -inf where a point of the box
    shows the other sign (or a linear region was left undecided), the row's lowest open bound otherwise. Also the
    search's stats. progress: the search's (`relu_bab.search`). device: where the search runs. bound_only (J,) bool:
    rows searched for their lowest bound only (entries known to take both signs: `relu_bab.search`'s)."""
    from .. import relu_bab
    from ..objective_rows import ObjectiveRows

    J = len(entries)
    cut = cut.to(device, torch.float64)
    rows = torch.zeros(J, cut.n_outputs, dtype=torch.float64, device=device)
    rows[torch.arange(J, device=device), torch.as_tensor(entries, dtype=torch.long, device=device)] = \
        torch.as_tensor(sides, dtype=torch.float64, device=device)
    lo, hi = (torch.tensor(x, dtype=torch.float64, device=device).unsqueeze(0) for x in (box.lo, box.hi))

    def refute(points: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (cut.forward_torch(points.double()) * rows[which]).sum(1) <= 0

    zeros = torch.zeros(J, dtype=torch.float64, device=device)
    result = relu_bab.search(cut, lo, hi, ObjectiveRows(rows, zeros, J, 1), by_node(cut, bounds, device=device),
                             deadline=deadline, check=lambda points: None, fair=True, refute=refute, progress=progress,
                             bound_only=None if bound_only is None else torch.as_tensor(bound_only, device=device))
    return result.lower.cpu().numpy(), result.stats


def refine_layer_bounds(network: Network, box: InputBox, layer_bounds: list, *, deadline: float, seed: int = 0,
                        objective: tuple | None = None, progress=None, device="cpu", tighten: bool = True
                        ) -> tuple[list, dict]:
    """Layer bounds [(l, u)] flat per `interval.relu_inputs` node, with the unstable entries of every ReLU node
    after the first settled (or tightened) by one search per node where the time (deadline: time.perf_counter())
    allows, then, with objective rows (C (k, n_outputs), d (k,)), bounded again by alpha-CROWN for them (module
    docstring). Returns (bounds, info: "searches" (rows searched), "stabilized", "tightened" (bounds moved without
    a sign), "skipped" (both signs seen at known points), "domains", "unstable_before" / "unstable_after" /
    "layer_seconds" (its search's time) per ReLU node, "seconds", and "objective_lower" (k,): the objective rows'
    alpha-CROWN bounds over the refined bounds, when that pass ran). progress(domains, open domains, None): during
    the searches (their lowest bounds are of the sign rows, not of the property). device: where the searches and
    the passes run (the points that show signs are found on the CPU). tighten: search the entries seen on both sides
    too, for their bounds (module docstring; off, they are skipped)."""
    start = time.perf_counter()
    bounds = [(np.array(l, np.float64).reshape(-1), np.array(u, np.float64).reshape(-1)) for l, u in layer_bounds]
    n_relus = len(network.relu_nodes)
    entries = np.flatnonzero(np.concatenate([(l < 0) & (u > 0) for l, u in bounds[:n_relus]]))
    seen = pre_activations(network, np.concatenate([box.center[None],
                                                    extreme_points(network, box, entries, seed=seed)]))
    unstable = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds[:n_relus]]
    info = {"searches": 0, "stabilized": 0, "tightened": 0, "skipped": 0, "domains": 0, "unstable_before": unstable,
            "layer_seconds": []}
    for t, k in enumerate(relu_inputs(network)[:n_relus]):
        info["layer_seconds"].append(0.0)
        now = time.perf_counter()
        if not relus_up_to(network, k) or now > deadline:
            continue  # the first layer is a linear function of the box: exact already
        if info["stabilized"] + info["tightened"]:  # the layers before got tighter: so do this one's by a pass
            _tighten_by_pass(network, box, bounds, t, device)
        l, u = bounds[t]
        open_ = np.flatnonzero((l < 0) & (u > 0))
        # side +1: z_i > 0 everywhere (impossible once a point had z_i <= 0); side -1: z_i < 0 everywhere
        low, high = seen[t].min(0)[open_] > 0, seen[t].max(0)[open_] < 0
        both = open_[~low & ~high] if tighten else open_[:0]  # seen on both sides: searched for their bounds
        rows = np.concatenate([open_[low], open_[high], both, both])
        counts = [low.sum(), high.sum(), len(both), len(both)]
        sides, bound_only = np.repeat([1.0, -1.0, 1.0, -1.0], counts), np.repeat([False, False, True, True], counts)
        info["skipped"] += int(len(open_) - low.sum() - high.sum() - len(both))
        later = sum(int(((l_ < 0) & (u_ > 0)).sum()) for l_, u_ in bounds[t + 1:n_relus])
        if len(rows):  # the time left shared by the unstable entries of this layer and the later ones
            share = (deadline - now) * len(open_) / (len(open_) + later)
            done = info["domains"]
            report = None if progress is None else lambda domains, waiting, _: progress(done + domains, waiting, None)
            lower, stats = settle_signs(network.upto(k), box, bounds[:t + 1], rows, sides, min(now + share, deadline),
                                        report, device, bound_only)
            up, proved = sides > 0, lower > 0
            moved = ~proved & (lower > np.where(up, l[rows], -u[rows]))  # z_i >= lower (side +1), -z_i >= lower
            l[rows[up & proved]], u[rows[~up & proved]] = 0.0, 0.0  # stable
            l[rows[up & moved]], u[rows[~up & moved]] = lower[up & moved], -lower[~up & moved]
            info["searches"] += len(rows)
            info["stabilized"] += int(proved.sum())
            info["tightened"] += int(moved.sum())
            info["domains"] += stats["domains"]
        info["layer_seconds"][t] = round(time.perf_counter() - now, 3)
    if objective is not None and info["stabilized"] + info["tightened"]:
        result = dual.bound(network, box, *objective, reference=bounds, slopes="opt",
                            time_limit=ALPHA_SHARE * (deadline - start), device=device)
        bounds, info["objective_lower"] = result.layer_bounds, result.lower
    info["unstable_after"] = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds[:n_relus]]
    info["seconds"] = round(time.perf_counter() - start, 3)
    return bounds, info
