"""Branch and bound: split the problem until every piece is proved safe or a counterexample turns up.

Two ways to split, chosen per problem by `verify`; both work on any network graph:

- `input_split` (few inputs, e.g. ACAS Xu's 5): bisect input boxes. Hundreds of boxes are bounded at once by
  bounds/symbolic.py (forward symbolic intervals over the graph, the engine's backward pass for the unstable
  neurons and the rows). Each box is cut down first to where its rows' linear lower bounds can still be <= 0
  (`symbolic.clip`), then bisected along the dimension whose halving should shrink the most relaxation error
  (`symbolic.split_scores`). Unproved boxes are kept best-first (lowest bound first, where counterexamples are
  likeliest); their centres and the corners minimizing their linear bounds are evaluated (the network's forward),
  and a point that reaches an unsafe conjunction ends the search once the caller's `confirm` (onnxruntime on the
  original model) agrees.
- `relu_split` (many inputs, e.g. MNIST's 784): see its docstring.

Both return a `BabResult`; neither decides soundness questions alone: "holds" needs every piece's bound
> PROOF_MARGIN (float64) or the MILP's answer (bab_milp.py), "violated" needs `confirm`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .bab_milp import milp_phase, milp_slot
from .bounds import symbolic
from .bounds.base import PROOF_MARGIN
from .bounds.interval import by_node
from .pool import Pool
from .relu_bab import search
from .network import Network
from .objective_rows import ObjectiveRows, check_candidates
from .spec import HOLDS, TIMEOUT, UNKNOWN, VIOLATED, InputBox, Property

# progress(phase, domains the phase bounded, open domains (disjuncts: MILP), their lowest bound or None): each step
Progress = Callable[[str, int, int, float | None], None]
STEP_SECONDS = 0.2  # target duration of one branch-and-bound step (see input_split's max_batch)
MIN_RELATIVE_WIDTH = 1e-10  # a box this thin (relative to the root) and still open is left unresolved
MILP_MAX_SPLITTABLE = 1000  # relu_split hands over to the MILP only with at most this many root-unstable ReLUs
MILP_AFTER = 1.0  # ... after this fraction of its time in the optimized ReLU-split search (1: only for what the
# search leaves stuck; measured on MNIST 256x2 at 30 s: the search alone answers 30/30, 48 s in all)
REFINE_AFTER = 0.1  # relu_split searches alone for this share of its time; still open, with at least
REFINE_MIN_SECONDS = 60.0  # this long left, it refines the root's layer bounds (bounds/refine.py) for
REFINE_SHARE = 0.25  # at most this share of the time left (per stage), then searches again from the refined root
REFINE_STAGES, REFINE_PAYS = 3, 0.4  # another stage, up to this many, while the last one closed at least this share
# of the objective's gap (measured: docs/search.md, "Refinement in stages")
MILP_SLOT_SPLITTABLE = 100  # a network with at most this many root-unstable ReLUs (no certificate asked) takes
MILP_SLOT_AFTER = 0.1  # the MILP slot too, after the search alone for this share of the time (measured: docs/search.md,
# "The MILP slot on small networks", with MILP_PROBE_SHARE)
MILP_PROBE_SHARE = 0.2  # with too little time to refine (short timeouts), a larger network (at most
# MILP_MAX_SPLITTABLE) takes the slot as well, for this share of the time left (0: never)
MILP_SLOT_SHARE = 0.6  # with one ReLU layer unstable (up to MILP_ONE_LAYER_MAX root-unstable ReLUs), the MILP gets
MILP_ONE_LAYER_MAX = 20000  # this share of the time left right after the search's root round (not the
# refinement: the first layer's bounds are exact); measured on verivital avgpool (4,410-5,299 unstable: README;
# HiGHS prunes at its root, the triangle relaxation of one layer being nearly tight); 20,000 caps the model's size
ONE_LAYER_REST = 0.1  # so too (under MILP_MAX_SPLITTABLE) with at most this share of them after the first unstable
# layer (measured: docs/search.md, "The MILP slot on small networks")


@dataclass(frozen=True)
class BabResult:
    """status: holds | violated | unknown (search ended undecided) | timeout; x: the confirmed counterexample
    (n_inputs,) when violated; stats: domains (boxes or subproblems bounded), bound_calls, max_pool, seconds."""

    status: str
    x: np.ndarray | None = None
    stats: dict = field(default_factory=dict)


class _Bounder:
    """Bounds batches of boxes: a cheap forward-only pass first, the refined pass for what it leaves open."""

    def __init__(self, network: Network, rows: ObjectiveRows, clip: bool) -> None:
        self.network, self.rows, self.clip = network, rows, clip
        self.calls = 0

    def __call__(self, lo: torch.Tensor, hi: torch.Tensor):
        """Returns (open mask (B,), lo, hi (clipped), worst disjunct bound (B,), split score per unit width (B, n),
        candidate points (B, K + 1, n)) for boxes lo, hi (B, n); entries of proved boxes are meaningless."""
        rows = self.rows
        key = torch.full((lo.shape[0],), torch.inf, dtype=lo.dtype)
        score = torch.zeros_like(lo)
        points = ((lo + hi) / 2).unsqueeze(1).repeat(1, rows.K + 1, 1)
        if lo.shape[0] == 0:  # every box was left unresolved (operators need a batch of at least one)
            return torch.zeros(0, dtype=torch.bool), lo, hi, key, score, points
        self.calls += 1
        prop = symbolic.propagate(self.network, lo, hi, refine=False)
        lower, *_ = rows.bound(self.network, lo, hi, prop.relaxations, prop.bounds)
        open_ = (rows.disjunct_bounds(lower) <= 0).any(1)
        idx = open_.nonzero().flatten()
        if idx.numel() == 0:
            return open_, lo, hi, key, score, points
        self.calls += 1
        lo_o, hi_o = lo[idx], hi[idx]
        prop = symbolic.propagate(self.network, lo_o, hi_o, refine=True)
        lower, A, c, at_relus = rows.bound(self.network, lo_o, hi_o, prop.relaxations, prop.bounds)
        per_disjunct = rows.disjunct_bounds(lower)  # (b, K)
        worst = per_disjunct.amin(1)
        row = rows.split_row(lower, per_disjunct)
        unit = symbolic.split_scores(self.network, lo_o, hi_o, prop, at_relus, row) / (hi_o - lo_o).clamp(min=1e-300)
        # candidates: per disjunct the corner minimizing the sum of its rows' linear bounds
        A_sum = A.view(-1, rows.K, rows.M, lo.shape[1]).sum(2)  # padding rows have A = 0
        corner = torch.where(A_sum > 0, lo_o.unsqueeze(1), hi_o.unsqueeze(1))
        points[idx, 1:] = corner
        if self.clip:
            lo_o, hi_o, gone = self._clip(lo_o, hi_o, A, c, per_disjunct)
            worst = torch.where(gone, torch.full_like(worst, torch.inf), worst)
        still = worst <= 0
        open_[idx] = still
        lo, hi = lo.clone(), hi.clone()
        lo[idx], hi[idx], key[idx], score[idx] = lo_o, hi_o, worst, unit
        return open_, lo, hi, key, score, points

    def _clip(self, lo, hi, A, c, per_disjunct):
        """Cut each box to the hull of the parts where some open disjunct's rows can all be <= PROOF_MARGIN (the
        same threshold as a proof: what clipping drops, a bound could have proved)."""
        b, K, M, n = lo.shape[0], self.rows.K, self.rows.M, lo.shape[1]
        lo_k, hi_k, empty = symbolic.clip(lo.repeat_interleave(K, 0), hi.repeat_interleave(K, 0),
                                          A.view(b * K, M, n), c.view(b * K, M) - PROOF_MARGIN)
        empty = empty.view(b, K) | (per_disjunct > 0)
        lo_k, hi_k = lo_k.view(b, K, n), hi_k.view(b, K, n)
        inf = torch.full_like(lo_k, torch.inf)
        new_lo = torch.where(empty.unsqueeze(-1), inf, lo_k).amin(1)
        new_hi = torch.where(empty.unsqueeze(-1), -inf, hi_k).amax(1)
        gone = empty.all(1)
        return torch.where(gone.unsqueeze(-1), lo, new_lo), torch.where(gone.unsqueeze(-1), hi, new_hi), gone


def input_split(network: Network, box: InputBox, prop: Property, *, deadline: float,
                confirm: Callable[[np.ndarray], bool], side_attack: Callable[[float], np.ndarray | None] | None = None,
                max_batch: int = 512, max_pool: int = 1_000_000, clip: bool = True,
                trace: list | None = None, progress: Progress | None = None,
                interlude: Callable | None = None, interlude_at: float = 0.0) -> BabResult:
    """Input-splitting branch and bound (module docstring) until decided or time.perf_counter() > deadline.

    confirm(x (n,)) -> bool: whether a candidate counterexample is real (onnxruntime on the original model).
    side_attack(seconds since start) -> a candidate point or None: called once per step, e.g. to run a
    falsification now and then while the search goes on (its points are checked like the search's own).
    max_batch: boxes split per step at most (2 x that bounded); the batch starts small and doubles while a step
    takes under STEP_SECONDS / 2 (halves above 2 x STEP_SECONDS), so that deadlines are kept and memory stays
    bounded on wide networks. max_pool: open boxes kept at most (beyond: "unknown").
    trace: a list that gets, per step, ("bound", ids, lo, hi, clipped lo, clipped hi, open) and ("split", ids,
    dim, mid, left ids, right ids) (box 0 is the root): the search tree, for certificates (certificate.py).
    progress: see `Progress` (phase "input split"). interlude, interlude_at: as `relu_bab.search`'s (the search
    holds once the interlude decides every disjunct; without a trace, the boxes are bounded for the others only
    from then on).
    """
    start = time.perf_counter()
    network = network.to("cpu", torch.float64)
    rows = ObjectiveRows.of(prop, network.n_outputs)
    bounder = _Bounder(network, rows, clip)
    root_width = torch.tensor(box.hi - box.lo).clamp(min=1e-300)
    stats = {"domains": 0, "bound_calls": 0, "max_pool": 0, "unresolved": 0}
    lo, hi = torch.tensor(box.lo).unsqueeze(0), torch.tensor(box.hi).unsqueeze(0)
    tried, pool, batch = 0, Pool(limit=max_pool + 2 * max_batch), 16
    ids, next_id = torch.zeros(1, dtype=torch.long), 1

    def finish(status: str, x: np.ndarray | None = None) -> BabResult:
        stats.update(bound_calls=bounder.calls, seconds=round(time.perf_counter() - start, 4),
                     candidates_tried=tried)
        return BabResult(status, x, stats)

    with torch.no_grad():
        while True:
            stats["domains"] += lo.shape[0]
            step_start = time.perf_counter()
            lo_in, hi_in = lo, hi
            open_, lo, hi, key, score, points = bounder(lo, hi)
            if trace is not None:
                trace.append(("bound", ids, lo_in, hi_in, lo, hi, open_))
            took = time.perf_counter() - step_start
            if took < STEP_SECONDS / 2 and lo.shape[0] >= batch:
                batch = min(2 * batch, max_batch)
            elif took > 2 * STEP_SECONDS:
                batch = max(batch // 2, 1)
            # candidates of the open boxes, and the side attack's point if it has one; confirm the violating ones,
            # most violating first
            pts = points[open_].reshape(-1, lo.shape[1])
            extra = None
            if side_attack is not None:
                with torch.enable_grad():  # the attack differentiates; this loop otherwise runs without autograd
                    extra = side_attack(time.perf_counter() - start)
            if extra is not None:
                pts = torch.cat([pts, torch.as_tensor(np.asarray(extra, np.float64)).reshape(1, -1)])
            x, checked = check_candidates(network, rows, pts, confirm)
            tried += checked
            if x is not None:
                return finish(VIOLATED, x)
            pool.append(key[open_], lo[open_], hi[open_], score[open_], ids[open_])
            stats["max_pool"] = max(stats["max_pool"], len(pool))
            if progress is not None:
                progress("input split", stats["domains"], len(pool), pool.lowest())
            if len(pool) == 0:
                return finish(UNKNOWN if stats["unresolved"] else HOLDS)
            if interlude is not None and time.perf_counter() - start >= interlude_at:
                with torch.enable_grad():  # the MILP's default layer bounds come from alpha-CROWN's steps
                    points, decided = interlude(list(range(len(prop.disjuncts))))
                interlude = None
                x = None if points is None else check_candidates(network, rows, points, confirm)[0]
                if x is not None or len(decided) == len(prop.disjuncts):
                    return finish(HOLDS if x is None else VIOLATED, x)
                if decided and trace is None:  # the boxes need only the other disjuncts from now on
                    rows = ObjectiveRows.of(Property(tuple(disjunct for k, disjunct in enumerate(prop.disjuncts)
                                                           if k not in decided)), network.n_outputs)
                    bounder.rows = rows
            if time.perf_counter() > deadline:
                return finish(TIMEOUT)
            if len(pool) > max_pool:
                return finish(UNKNOWN)
            lo, hi, score, ids = pool.pop(batch)
            # bisect along the best-scoring dimension (widest relative one when no score says anything)
            width = hi - lo
            gain = score * width
            widest = (width / root_width).argmax(1)
            dim = torch.where(gain.amax(1) > 0, gain.argmax(1), widest)
            thin = (width / root_width).amax(1) < MIN_RELATIVE_WIDTH
            if thin.any():  # numerically stuck: give up on these boxes, the answer can only be unknown
                stats["unresolved"] += int(thin.sum())
                lo, hi, dim, ids = lo[~thin], hi[~thin], dim[~thin], ids[~thin]
            rows_ = torch.arange(lo.shape[0])
            mid = (lo[rows_, dim] + hi[rows_, dim]) / 2
            left_hi, right_lo = hi.clone(), lo.clone()
            left_hi[rows_, dim] = mid
            right_lo[rows_, dim] = mid
            lo, hi = torch.cat([lo, right_lo]), torch.cat([left_hi, hi])
            children = torch.arange(next_id, next_id + 2 * len(ids))
            next_id += 2 * len(ids)
            if trace is not None:
                trace.append(("split", ids, dim, mid, children[:len(ids)], children[len(ids):]))
            ids = children


def relu_split(network: Network, box: InputBox, prop: Property, open_: list[int] | None = None, *,
               deadline: float, confirm: Callable[[np.ndarray], bool], layer_bounds: list | None = None,
               side_attack: Callable[[float], np.ndarray | None] | None = None,
               milp_after: float = MILP_AFTER, trace: dict | None = None, progress: Progress | None = None,
               device="cpu") -> BabResult:
    """Exact search over the ReLUs' phases for the disjuncts `open_` (default all) until deadline.

    1. Batched branch and bound on ReLU splits with optimized alpha and beta (relu_bab.py), from the root's layer
       bounds (layer_bounds [(l, u)] flat per `interval.relu_inputs` node, default alpha-CROWN's). The MILP pays for
       networks with at most MILP_MAX_SPLITTABLE root-unstable ReLUs, or MILP_ONE_LAYER_MAX in a single unstable ReLU
       layer. When it does, with more than one unstable layer, no certificate asked for (trace None), the time left
       after REFINE_AFTER of it at least REFINE_MIN_SECONDS and the search still open then, the root's layer bounds
       are refined (`refine.refine_layer_bounds`: the signs of a layer's unstable neurons settled by this search on
       the network cut at that layer; neurons proved stable are never split) for REFINE_SHARE of the time left, again
       while that pays (`_refine_in_stages`; bounded again by alpha-CROWN over the refined bounds; the neurons seen
       on both sides are narrowed too), and the search starts again from the refined root, for the disjuncts the
       first search left open. The shares: docs/search.md.
       With a single unstable layer the refinement has nothing to refine (the first layer's bounds are exact), with
       nearly one (at most ONE_LAYER_REST of them after it) little: the search's interlude (`relu_bab.search`)
       right after its root round is instead the MILP of step 2 for the disjuncts still open, for at most
       MILP_SLOT_SHARE of the time left (trusted in a certificate like step 2's);
       the search goes on with its pool, less the disjuncts the MILP decided. No certificate asked, a small network
       (at most MILP_SLOT_SPLITTABLE root-unstable ReLUs) takes that MILP slot too, after the search's first
       MILP_SLOT_AFTER of the time, instead of the refinement; so does a larger one where there is too little time to
       refine, for MILP_PROBE_SHARE of the time left.
    2. When the MILP pays and phase 1 has run for `milp_after` of the time (or ended with domains it cannot split
       further: "stuck"), the disjuncts some domain still needs go to the big-M MILP (bounds/milp.py with the same
       layer bounds): single-row disjuncts in one MILP that only decides ``min > 0``, a conjunction by one MILP
       deciding whether ``min_x max_rows > 0`` (`milp.min_max`).
    Candidate counterexamples (corners minimizing the domains' linear bounds, side_attack's points, the MILP's
    best points) go to `confirm`. trace: a dict that gets "open" (open_), "closed" (relu_bab.search's) and "milp"
    (the disjuncts the MILP ruled out), for certificates. progress: see `Progress` (phases "ReLU split", "refining
    layer bounds", "ReLU split, refined root", "MILP"). device: where the searches, the refinement and the default
    root bounds run (torch device; candidates are checked, and the MILP solved, on the CPU).
    """
    from .bounds import dual

    start = time.perf_counter()
    network = network.to("cpu", torch.float64)
    open_ = list(range(len(prop.disjuncts))) if open_ is None else list(open_)
    C, d = prop.stacked_rows(open_)
    if layer_bounds is None:
        layer_bounds = dual.bound(network, box, C, d, slopes="opt", device=device).layer_bounds
    sub = Property(tuple(prop.disjuncts[k] for k in open_))
    rows = ObjectiveRows.of(sub, network.n_outputs)
    root = by_node(network, layer_bounds)
    unstable = [int(((l < 0) & (u > 0)).sum()) for (l, u) in (root[network.nodes[r].inputs[0]]
                                                               for r in network.relu_nodes)]
    splittable, first = sum(unstable), next((i for i, n in enumerate(unstable) if n), 0)
    later = sum(unstable[first + 1:])  # after the first layer with some: (nearly) one layer unstable, or not
    one_layer = splittable > 0 and later <= ONE_LAYER_REST * splittable
    use_milp = splittable <= MILP_MAX_SPLITTABLE or (one_layer and not later and splittable <= MILP_ONE_LAYER_MAX)
    phase1_end = start + milp_after * (deadline - start) if use_milp else deadline
    lo, hi = (torch.tensor(x, dtype=torch.float64, device=device).unsqueeze(0) for x in (box.lo, box.hi))
    if trace is not None:
        trace.update(open=open_, closed=[], milp=[])
    can_refine = (1 - REFINE_AFTER) * (deadline - start) >= REFINE_MIN_SECONDS
    small = one_layer or splittable <= MILP_SLOT_SPLITTABLE
    take_slot = use_milp and (one_layer or trace is None and (small or not can_refine and MILP_PROBE_SHARE > 0))
    refine = use_milp and not take_slot and trace is None and can_refine
    slot_stats: dict = {}
    slot = milp_slot(network, box, prop, open_, layer_bounds, MILP_SLOT_SHARE if small else MILP_PROBE_SHARE,
                     deadline, confirm, progress, slot_stats, trace)

    def report(phase: str) -> Callable | None:  # a search's progress (its own domains), as this phase's
        return None if progress is None else lambda domains, open_, lowest: progress(phase, domains, open_, lowest)

    def run(root: dict, until: float, only: torch.Tensor | None = None, phase: str = "ReLU split", interlude=None):
        return search(network, lo, hi, rows, root, deadline=until, side_attack=side_attack,
                      check=lambda points: check_candidates(network, rows, points.cpu(), confirm)[0],
                      closed=None if trace is None else trace["closed"], only=only, progress=report(phase),
                      interlude=interlude, interlude_at=(0.0 if one_layer else MILP_SLOT_AFTER) * (deadline - start))

    first_end = min(start + REFINE_AFTER * (deadline - start), phase1_end) if refine else phase1_end
    result = run(root, first_end, interlude=slot if take_slot else None)
    stats = dict(result.stats, **slot_stats)
    if refine and result.status == "open":
        ends = np.cumsum([len(prop.disjuncts[k][1]) for k in open_])[:-1]  # where each disjunct's rows end in C, d
        layer_bounds, stats["refine"] = _refine_in_stages(network, box, (C, d), ends, layer_bounds, deadline,
                                                          report("refining layer bounds"), device)
        stats["searched_again"] = int(result.still.sum())
        result = run(by_node(network, layer_bounds), phase1_end, only=result.still, phase="ReLU split, refined root")
        stats.update({key: value for key, value in result.stats.items() if key not in ("domains", "bound_calls")},
                     domains=stats["domains"] + result.stats["domains"],
                     bound_calls=stats["bound_calls"] + result.stats["bound_calls"])
    if result.status != "open" or not use_milp:  # the search's holds / violated are ours
        status = result.status if result.status != "open" else TIMEOUT if time.perf_counter() > deadline else UNKNOWN
        return BabResult(status, result.x, dict(stats, seconds=round(time.perf_counter() - start, 4)))
    still = [open_[k] for k in result.still.nonzero().flatten().tolist()]
    status, x, milp_stats, ruled_out = milp_phase(network, box, prop, still, layer_bounds, deadline, confirm, progress)
    if trace is not None:
        trace["milp"] += ruled_out
    stats.update(milp_stats, domains=stats["domains"] + milp_stats["domains"],
                 bound_calls=stats["bound_calls"] + milp_stats["bound_calls"])
    return BabResult(status, x, dict(stats, seconds=round(time.perf_counter() - start, 4)))


def _refine_in_stages(network: Network, box: InputBox, objective: tuple, ends: np.ndarray, layer_bounds: list,
                      deadline: float, progress: Callable | None, device) -> tuple[list, list]:
    """`refine.refine_layer_bounds` for the objective's rows (C (k, n_outputs), d (k,); the disjuncts' rows end at
    `ends`, as for np.split) in stages of REFINE_SHARE of the time left at the first: another stage while the last
    one closed at least REFINE_PAYS of the gap below 0 of the rows' worst disjunct (alpha-CROWN over the layer
    bounds, before and after each stage) and left it open, at most REFINE_STAGES, with a stage's time and
    REFINE_MIN_SECONDS of search left after it (measured: docs/search.md, "Refinement in stages"). Returns (bounds,
    the stages' infos)."""
    from .bounds import dual
    from .bounds.refine import refine_layer_bounds

    worst = lambda lower: min(float(np.max(part)) for part in np.split(np.asarray(lower), ends)) - PROOF_MARGIN
    seconds = REFINE_SHARE * (deadline - time.perf_counter())
    gap = -worst(dual.bound(network, box, *objective, slopes="opt", reference=layer_bounds, device=device,
                            time_limit=seconds / 10).lower)
    infos: list = []
    while len(infos) < REFINE_STAGES and gap > 0:
        layer_bounds, info = refine_layer_bounds(network, box, layer_bounds, deadline=time.perf_counter() + seconds,
                                                 objective=objective, progress=progress, device=device)
        infos.append(info)
        if "objective_lower" not in info:  # nothing moved
            break
        before, gap = gap, -worst(info.pop("objective_lower"))
        info["gap"] = round(gap, 6)
        if gap > (1 - REFINE_PAYS) * before or deadline - time.perf_counter() < seconds + REFINE_MIN_SECONDS:
            break
    return layer_bounds, infos
