"""MILP-refined layer bounds: settle the sign of unstable ReLU inputs one MILP each, before a ReLU-split search.

A branch and bound splits every neuron its layer bounds leave unstable, and each one it needlessly splits doubles
part of the tree. Layer bounds from bound propagation (alpha-CROWN, or the triangle LP, which equals it here) leave
unstable many neurons that are stable on the box; the exact bound of a pre-activation over the box is a MILP over
the ReLUs before it (few binaries for the second and third layers of a small MLP). α,β-CROWN's "bab-refine" runs
such MILPs before its search on MNIST MLPs; this is that step, done with HiGHS.

For each ReLU node after the first (in order, so each layer's MILP uses the refined bounds of the layers before
it), the unstable entries (l < 0 < u) are taken one at a time, those closest to stable first. A sign that a known
point of the box already shows (the box's centre, points from signed-gradient steps that minimize and maximize
each unstable entry, the points the MILPs find) cannot be proved impossible: an entry seen on both sides is left
as it is and costs no MILP. Otherwise one MILP (the big-M encoding of `encode`, built once per layer) asks "is
this pre-activation > 0 everywhere" (or "< 0") with a cutoff just above 0, within `neuron_seconds`:
- pruned (no point at or below the cutoff): the neuron is stable; its bound moves to 0 (l := 0 or u := 0: the
  cutoff's margin left to the solver's tolerance);
- time limit: the solver's proven bound still tightens l (or u) (capped at 0: a proven bound under a cutoff
  constraint is a bound of the true minimum only up to the cutoff);
- a point below the cutoff: kept, it shows that sign for every later entry too.
Before a layer's MILPs, once some bound before it got tighter, an adaptive pass of the bound engine with the
refined bounds given re-bounds that layer and the later ones (intersected). The solver's bound counts only through
`milp._read`, which rejects a bound above our float64 value at the solver's own point (DESIGN.md rule 2), as for
every MILP here.

With the objective rows given, alpha-CROWN then bounds every layer again over the refined bounds (its
intermediate slopes optimized for those rows, each layer intersected with the refined one: `dual.bound`'s
reference): the MILPs' gains on a layer reach the later layers through optimized slopes, not the adaptive pass
alone. Measured on MNIST 256x4 prop_14 eps 0.05 after 100 s of MILPs: the rows' alpha-CROWN bounds -0.98..-1.06
over the refined bounds as they were, -0.57..-0.75 after that pass (1.8 s), layer 4's unstable neurons 111 -> 104;
the instance (relu_split at 300 s, alone) then holds in 212 s, 10,884 domains (the search after the refinement:
8 s), against 246 s and 21,968 domains without it.

Measured on MNIST 256x4 prop_11 eps 0.05 (alpha-CROWN bounds: 39 / 70 / 3 / 56 unstable per layer): with 1 s per
MILP, 94 MILPs in 100 s made 13 neurons stable and the search after it stayed open; with 2 s (NEURON_SECONDS),
81 MILPs in 135 s made 33 stable (45 and 46 left in layers 2 and 4) and the search then proved it. A MILP for
layer 2 (39 binaries) takes 0.5-1 s when it proves stability; most of layer 4's reach the time limit.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .. import solvers
from ..network import Network
from ..spec import InputBox
from . import dual, encode, engine
from .encode import relus_up_to
from .interval import by_node, relu_inputs
from .milp import _cutoff, _read

NEURON_SECONDS = 2.0  # time limit of one neuron's MILP
ALPHA_SHARE = 0.1  # the alpha-CROWN pass after the MILPs stops after this share of the refinement's time
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


def milp_layer_bounds(network: Network, box: InputBox, layer_bounds: list, *, deadline: float,
                      neuron_seconds: float = NEURON_SECONDS, seed: int = 0, objective: tuple | None = None
                      ) -> tuple[list, dict]:
    """Layer bounds [(l, u)] flat per `interval.relu_inputs` node, with the unstable entries of every ReLU node
    after the first settled by MILP where the time (deadline: time.perf_counter()) allows, then, with objective
    rows (C (k, n_outputs), d (k,)), bounded again by alpha-CROWN for them (module docstring).
    Returns (bounds, info: "milps", "stabilized", "tightened" (entries with a better bound, stabilized ones
    included), "skipped" (both signs seen at known points), "unstable_before" / "unstable_after" per ReLU node,
    "seconds")."""
    start = time.perf_counter()
    bounds = [(np.array(l, np.float64).reshape(-1), np.array(u, np.float64).reshape(-1)) for l, u in layer_bounds]
    n_relus = len(network.relu_nodes)
    entries = np.flatnonzero(np.concatenate([(l < 0) & (u > 0) for l, u in bounds[:n_relus]]))
    known = [box.center[None], extreme_points(network, box, entries, seed=seed)]
    seen = pre_activations(network, np.concatenate(known))
    lowest = [v.min(0) for v in seen]  # per ReLU node: the smallest / largest value seen at a point
    highest = [v.max(0) for v in seen]
    unstable = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds[:n_relus]]
    info = {"milps": 0, "stabilized": 0, "tightened": 0, "skipped": 0, "unstable_before": unstable}
    threshold = _cutoff(0.0)
    for t, k in enumerate(relu_inputs(network)[:n_relus]):
        if not relus_up_to(network, k) or time.perf_counter() > deadline:
            continue  # the first layer is a linear function of the box: exact already
        if info["tightened"]:  # the layers before got tighter: so do this one's bounds by a pass
            _tighten_by_pass(network, box, bounds, t)
        l, u = bounds[t]
        open_ = np.flatnonzero((l < 0) & (u > 0))
        if open_.size == 0:
            continue
        problem, layout = encode.build_problem(network, box, bounds, k, "bigm")
        model = solvers.open_model(problem, highs_options=solvers.MILP_QUICK)
        M, c = layout.value
        for i in open_[np.argsort(np.minimum(-l[open_], u[open_]) / (u[open_] - l[open_]))]:
            # side +1: zh_i > 0 everywhere (impossible once a point had zh_i <= 0); side -1: zh_i < 0 everywhere
            sides = [s for s, shown in ((1.0, lowest[t][i] <= 0), (-1.0, highest[t][i] >= 0)) if not shown]
            if not sides:
                info["skipped"] += 1
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            side = min(sides, key=lambda s: u[i] if s < 0 else -l[i])  # the nearer to stable
            cost = side * M[i].toarray().reshape(-1)
            result = model.solve(cost, side * float(c[i]), time_limit=min(neuron_seconds, left), cutoff=threshold)
            info["milps"] += 1
            at_point = None
            if result.x is not None:
                x = np.clip(result.x[:network.n_inputs], box.lo, box.hi)
                values = pre_activations(network, x[None])
                for j, v in enumerate(values):
                    lowest[j], highest[j] = np.minimum(lowest[j], v[0]), np.maximum(highest[j], v[0])
                at_point = side * float(values[t][0, i])
            _, proven, _ = _read(result, threshold, at_point)
            if not np.isfinite(proven):
                continue
            proven = min(proven, 0.0)  # stable at 0 (a cutoff-wide margin for the solver's tolerance); and a
            # bound proven under the cutoff constraint bounds the true minimum only up to the cutoff
            if side > 0 and proven > l[i]:
                l[i], info["tightened"] = proven, info["tightened"] + 1
            elif side < 0 and -proven < u[i]:
                u[i], info["tightened"] = -proven, info["tightened"] + 1
            info["stabilized"] += int(l[i] >= 0 or u[i] <= 0)
    if objective is not None and info["tightened"]:
        bounds = dual.bound(network, box, *objective, reference=bounds, slopes="opt",
                            time_limit=ALPHA_SHARE * (deadline - start)).layer_bounds
    info["unstable_after"] = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds[:n_relus]]
    info["seconds"] = round(time.perf_counter() - start, 3)
    return bounds, info
