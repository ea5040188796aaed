"""Refined layer bounds: settle the sign of unstable ReLU inputs, one small ReLU-split search each, before the search.

A branch and bound splits every neuron its layer bounds leave unstable, and each one it needlessly splits doubles
part of the tree. Layer bounds from bound propagation (alpha-CROWN, or the triangle LP, which equals it here) leave
unstable many neurons that are stable on the box. α,β-CROWN's "bab-refine" settles them by one MILP each before
its search on MNIST MLPs; here the same branch and bound that decides the property (relu_bab.search, alpha and
beta optimized, batched) decides ``z_i > 0`` (or ``< 0``) on the network cut at z's node, within `neuron_seconds`.

For each ReLU node after the first (in order, so each layer's searches use the refined bounds of the layers before
it), the unstable entries (l < 0 < u) are taken one at a time, those closest to stable first. A sign that a known
point of the box already shows (the box's centre, points from signed-gradient steps that minimize and maximize
each unstable entry, the points the searches find) cannot be proved impossible: an entry seen on both sides is
left as it is and costs nothing. Otherwise the search for the nearer side runs: proved, the neuron is stable (l := 0
or u := 0); a point of the other sign found, the other side is tried if no point showed it; open at the time limit,
the entry stays as it is. Before a layer's searches, once some neuron before it became stable, an adaptive pass of
the bound engine with the refined bounds given re-bounds that layer and the later ones (intersected). A proof is
the search's: float64 bounds above PROOF_MARGIN (relu_bab.py).

With the objective rows given, alpha-CROWN then bounds every layer again over the refined bounds (its
intermediate slopes optimized for those rows, each layer intersected with the refined one: `dual.bound`'s
reference): the gains on a layer reach the later layers through optimized slopes, not the adaptive pass alone.

Measured on MNIST 256x4 eps 0.05, 100 s of refinement from alpha-CROWN's bounds (two processes at once on the
2-core machine), stable neurons gained and the rows' alpha-CROWN bounds after it: prop_5 (55 / 128 / 7 / 142
unstable per layer, rows -0.60..-0.81) by one MILP per neuron (HiGHS, big-M, 2 s each; 51 MILPs, the stable ones
1.4-2.4 s each) 13, -0.49..-0.66; by a search per neuron (3 s each) 66, -0.21..-0.34 (layers 67 / 1 / 86 left);
1 s of search then the MILP 41. prop_0 (45 / 86 / 5 / 67): searches of 1.5 s 32 stable, 6 s 50 (of 56 searched).
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

NEURON_SECONDS = 6.0  # time limit of one neuron's search
ALPHA_SHARE = 0.1  # the alpha-CROWN pass after the searches stops after this share of the refinement's time
STEPS = 20  # signed-gradient steps of the search for points that show each unstable entry's signs


def pre_activations(network: Network, x: np.ndarray) -> list[np.ndarray]:
    """The inputs of every ReLU node (in `network.relu_nodes` order) at the points x (P, n_inputs): [(P, w_i)]."""
    with torch.no_grad():
        values = network.to("cpu", torch.float64).relu_inputs_torch(torch.tensor(np.asarray(x, np.float64)))
    return [v.numpy() for v in values]


def extreme_points(network: Network, box: InputBox, entries: np.ndarray, steps: int = STEPS, seed: int = 0
                   ) -> np.ndarray:
    """Points of the box (2 E, n_inputs) for E entries (indices into the ReLU nodes' inputs concatenated, flat, in
    `network.relu_nodes` order): per entry, one point that tries to minimize it and one to maximize it (projected
    signed-gradient steps from random starts, a tenth of the box's half-width each)."""
    net = network.to("cpu", torch.float64)
    lo, hi = (torch.tensor(x, dtype=torch.float64) for x in (box.lo, box.hi))
    E = len(entries)
    entry = torch.as_tensor(np.asarray(entries), dtype=torch.long).repeat(2)
    side = torch.cat([-torch.ones(E), torch.ones(E)]).double()  # -1: minimize, +1: maximize
    generator = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(2 * E, lo.numel(), generator=generator, dtype=torch.float64)
    for _ in range(steps if E else 0):
        pre = torch.cat(net.relu_inputs_torch(x.requires_grad_(True)), 1)
        grad, = torch.autograd.grad((side * pre[torch.arange(2 * E), entry]).sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x + (hi - lo) / 20 * grad.sign(), lo), hi)
    return x.detach().numpy()


def _tighten_by_pass(network: Network, box: InputBox, bounds: list, t: int) -> None:
    """Intersect bounds[t:] (in place) with the adaptive pass's, the bounds before t given (as refined)."""
    nodes = relu_inputs(network)
    tensors = by_node(network, bounds)
    given = {k: tensors[k] for k in nodes[:t]}
    reference = {k: tensors[k] for k in nodes[t:]}
    lo, hi = (torch.tensor(x, dtype=torch.float64).reshape(1, -1) for x in (box.lo, box.hi))
    new, _ = engine.node_bounds(network.to("cpu", torch.float64), lo, hi, "adaptive", given, reference=reference,
                                output_pass=False)
    for i, k in enumerate(nodes[t:], start=t):
        l, u = (x.reshape(-1).numpy() for x in new[k])
        bounds[i] = (np.maximum(bounds[i][0], l), np.minimum(bounds[i][1], u))


def settle_sign(cut: Network, box: InputBox, bounds: list, i: int, side: float, deadline: float
                ) -> tuple[str, np.ndarray | None]:
    """Whether ``side * z_i > 0`` on the box, z the (flat) output of `cut` (a network cut at the input of one of
    its ReLU nodes: `Network.upto`, float64), by the ReLU-split search (`relu_bab.search`) with cut's layer bounds
    (`interval.relu_inputs` layout of cut): ("holds", None), ("violated", a point of the box where it fails) or
    ("open", None) at the deadline (time.perf_counter())."""
    from .. import relu_bab
    from ..bab import _Rows

    row = torch.zeros(1, cut.n_outputs, dtype=torch.float64)
    row[0, i] = side
    lo, hi = (torch.tensor(x, dtype=torch.float64).unsqueeze(0) for x in (box.lo, box.hi))

    def check(points: torch.Tensor) -> np.ndarray | None:
        with torch.no_grad():
            fails = (side * cut.forward_torch(points.double())[:, i] <= 0).nonzero().flatten()
        return points[fails[0]].double().numpy() if len(fails) else None

    result = relu_bab.search(cut, lo, hi, _Rows(row, torch.zeros(1, dtype=torch.float64), 1, 1),
                             by_node(cut, bounds), deadline=deadline, check=check)
    return result.status, result.x


def refine_layer_bounds(network: Network, box: InputBox, layer_bounds: list, *, deadline: float,
                        neuron_seconds: float = NEURON_SECONDS, seed: int = 0, objective: tuple | None = None
                        ) -> tuple[list, dict]:
    """Layer bounds [(l, u)] flat per `interval.relu_inputs` node, with the unstable entries of every ReLU node
    after the first settled by a search each where the time (deadline: time.perf_counter()) allows, then, with
    objective rows (C (k, n_outputs), d (k,)), bounded again by alpha-CROWN for them (module docstring).
    Returns (bounds, info: "searches", "stabilized", "skipped" (both signs seen at known points),
    "unstable_before" / "unstable_after" / "layer_seconds" (its searches' time) per ReLU node, "seconds")."""
    start = time.perf_counter()
    bounds = [(np.array(l, np.float64).reshape(-1), np.array(u, np.float64).reshape(-1)) for l, u in layer_bounds]
    n_relus = len(network.relu_nodes)
    entries = np.flatnonzero(np.concatenate([(l < 0) & (u > 0) for l, u in bounds[:n_relus]]))
    known = [box.center[None], extreme_points(network, box, entries, seed=seed)]
    seen = pre_activations(network, np.concatenate(known))
    lowest = [v.min(0) for v in seen]  # per ReLU node: the smallest / largest value seen at a point
    highest = [v.max(0) for v in seen]
    unstable = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds[:n_relus]]
    info = {"searches": 0, "stabilized": 0, "skipped": 0, "unstable_before": unstable, "layer_seconds": []}
    for t, k in enumerate(relu_inputs(network)[:n_relus]):
        info["layer_seconds"].append(0.0)
        if not relus_up_to(network, k) or time.perf_counter() > deadline:
            continue  # the first layer is a linear function of the box: exact already
        layer_start = time.perf_counter()
        if info["stabilized"]:  # the layers before got tighter: so do this one's bounds by a pass
            _tighten_by_pass(network, box, bounds, t)
        l, u = bounds[t]
        open_ = np.flatnonzero((l < 0) & (u > 0))
        cut = network.upto(k).to("cpu", torch.float64)
        for i in open_[np.argsort(np.minimum(-l[open_], u[open_]) / (u[open_] - l[open_]))]:
            # side +1: z_i > 0 everywhere (impossible once a point had z_i <= 0); side -1: z_i < 0 everywhere
            sides = [s for s, shown in ((1.0, lowest[t][i] <= 0), (-1.0, highest[t][i] >= 0)) if not shown]
            if not sides:
                info["skipped"] += 1
            for side in sorted(sides, key=lambda s: u[i] if s < 0 else -l[i]):  # the nearer to stable first
                if time.perf_counter() >= deadline:
                    break
                status, x = settle_sign(cut, box, bounds[:t + 1], i, side,
                                        min(time.perf_counter() + neuron_seconds, deadline))
                info["searches"] += 1
                if status == "holds":  # stable: z_i > 0 (or < 0) everywhere
                    l[i], u[i] = (0.0, u[i]) if side > 0 else (l[i], 0.0)
                    info["stabilized"] += 1
                if status != "violated":
                    break
                for j, v in enumerate(pre_activations(network, x[None])):  # a point shows this sign: the other?
                    lowest[j], highest[j] = np.minimum(lowest[j], v[0]), np.maximum(highest[j], v[0])
        info["layer_seconds"][t] = round(time.perf_counter() - layer_start, 3)
    if objective is not None and info["stabilized"]:
        bounds = dual.bound(network, box, *objective, reference=bounds, slopes="opt",
                            time_limit=ALPHA_SHARE * (deadline - start)).layer_bounds
    info["unstable_after"] = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds[:n_relus]]
    info["seconds"] = round(time.perf_counter() - start, 3)
    return bounds, info
