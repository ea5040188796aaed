"""ReLU-split branch and bound with optimized bounds, batched (beta-CROWN; Wang et al. 2021), on any network graph.

The domains (one disjunct of the property, some ReLUs fixed to a phase) and how a batch of them is bounded, with
optimized slopes alpha and split multipliers beta: split_domains.py. This module is the search around it.

Search: best-first (lowest bound first, where counterexamples are likeliest); domains live in a pool of tensors (splits
int8, alpha/beta float32 warm starts, the splittable neurons' bounds) capped by memory: past DEPTH_FIRST_SHARE of the
cap the deepest domains go first (depth-first: their children are the likeliest to close) and a round pops no more than
the room left, so the pool shrinks back instead of running out; a pool past its cap all the same ends the search,
undecided (measured: docs/search.md). A round bounds a batch of domains (sized for rounds of about STEP_SECONDS),
optimizing the alpha and beta of the TUNED_ROWS best rows of a conjunction at the parent. Branching: the free
root-unstable neuron with the largest BaBSR-like score (`SplitDomains.scores`), the last ReLU layer's weighted up
where re-tightening its inputs after a split in the layer before gains little (`SplitDomains.last_layer_weight`;
measured: docs/search.md). A domain whose splittable neurons are all split or stable is a linear region: one LP
(`SplitDomains.decide_region`) decides it, and its minimizer is checked as a counterexample. Candidates: the box
corner minimizing the best row's linear bound, and the caller's side attack, checked by `check` (float64, then
onnxruntime on the original model). A proof is a float64 bound above PROOF_MARGIN (split_domains.py).

Defaults, measured on MNIST 256x4 prop_3 eps 0.05 (unsat; one torch thread, machine under load): Adam steps per
round 2: undecided after 40 s (8201 domains); 4: proved in 5.7 s; 8: 9.0 s; 16: 3.9 s (283 domains). float32 steps
vs float64 (the search alone, one torch thread): MNIST 256x4 prop_3 eps 0.05 proved in 2.7 vs 3.4 s, prop_8 eps 0.03
in 19.8 vs 22.9 s (7855 vs 7797 domains); in 120 s on prop_14 eps 0.05 / prop_6 eps 0.03 (open), 29767 / 30591 vs
25479 / 22399 domains; marabou_cifar10 small index 9409, 40 s: 615 vs 447. (Before, float32 claims were re-derived
from the root's layer bounds, without the re-tightened ones: 13,816 of 14,372 failed on MNIST 256x4 prop_5 eps 0.05.)
Tried and left out, with the figures: docs/search.md.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .bounds import engine
from .bounds.base import PROOF_MARGIN
from .network import Network
from .pool import Pool
from .split_domains import SplitDomains

Tensor = torch.Tensor
POOL_BYTES = 2e9  # memory the pool of open domains may take (alpha, beta warm starts in float32, splits int8)
DEPTH_FIRST_SHARE = 0.5  # a pool fuller than this share of its cap is searched depth-first (see `search`)
STEPS, ROOT_STEPS = 16, 30  # Adam steps per round; at the root
STEP_SECONDS = 0.5  # target duration of a round: the batch of domains doubles / halves around it
TUNED_ROWS = 2  # rows of a conjunction whose alpha and beta a domain's steps optimize: its parent's best (`bound`)
TOP_K = 1  # candidates per domain whose children are estimated before branching (1: the best score alone; measured
# on MNIST 256x4 prop_3 eps 0.05: 1 proves it in 14 s, 4 runs out of 60 s after 14745 domains: the estimate, with
# the parent's layer bounds, misses what re-tightening the children gains)


@dataclass
class SearchResult:
    """status: holds (every domain proved) | violated (x confirmed) | open (undecided at deadline / cap);
    still: per disjunct, whether some stuck or open domain needs it; stats: counters."""

    status: str
    x: np.ndarray | None
    still: Tensor
    stats: dict = field(default_factory=dict)
    lower: Tensor | None = None  # per disjunct (K,), a lower bound of its best row over the box: see `search`


def search(network: Network, lo: Tensor, hi: Tensor, rows, root: dict, *, deadline: float,
           check: Callable[[Tensor], np.ndarray | None],
           side_attack: Callable[[float], np.ndarray | None] | None = None, max_batch: int = 256,
           steps: int = STEPS, root_steps: int = ROOT_STEPS, dtype: torch.dtype = torch.float32,
           retighten: bool = True, pool_bytes: float = POOL_BYTES, top_k: int = TOP_K,
           closed: list | None = None, only: Tensor | None = None, fair: bool = False, tuned_rows: int = TUNED_ROWS,
           refute: Callable[[Tensor, Tensor], Tensor] | None = None, bound_only: Tensor | None = None,
           progress: Callable[[int, int, float | None], None] | None = None,
           interlude: Callable[[list[int]], tuple[Tensor | None, list[int]]] | None = None,
           interlude_at: float = 0.0) -> SearchResult:
    """Branch and bound (module docstring) until decided or time.perf_counter() > deadline.

    lo, hi (1, n_inputs) float64; rows: `ObjectiveRows` (K disjuncts of M rows); root {node id: (l, u) (1, *shape)}
    layer bounds of the ReLU inputs (the engine's); check(points (P, n)) -> a confirmed counterexample or None;
    side_attack as in bab.input_split. A domain is (splits, disjunct): the root is one domain per disjunct, and a
    domain carries only its disjunct's rows. max_batch: domains split per round at most (fewer when one pass's
    rows would exceed about 2e8 entries: conv nets; the batch starts at 8 and adapts to STEP_SECONDS); steps /
    root_steps: Adam steps per round / at the root.
    dtype float32: the optimization steps run in float32; the layer bounds and each round's final bound, from the
    best slopes and multipliers, stay float64 passes: only a float64 bound proves. retighten: see
    `SplitDomains.relaxations`; top_k: `SplitDomains.branch`. tuned_rows: rows of a conjunction whose alpha and beta
    a domain's steps optimize, its parent's best (`SplitDomains.bound`; all at the root). closed: a list that gets
    {"cols": per ReLU node its splittable neurons} first, then (splits, disjunct, alpha, beta, trusted) of every
    batch of domains proved (trusted: by the solver, `SplitDomains.decide_region`), on the CPU (for certificates).
    only: a mask (K,) of the disjuncts to search (default all; the others count as decided elsewhere). fair: the
    domains of every disjunct in turn (`Pool.pop`) rather than the lowest of all: for disjuncts that are separate
    questions (refine.py's rows), not one property. Every tensor is made on lo's device (CPU or GPU); check and
    refute get points there.
    refute(points (P, n), their disjuncts (P,)) -> (P,) bool, for such questions: which of the open domains' corners
    violate their own disjunct; a disjunct so refuted (or with a linear region left undecided) is dropped from the
    search (marked in `still`). bound_only (K,) bool: disjuncts searched only for their lowest bound (refine.py's
    rows of entries known to take both signs): never refuted, and a linear region of theirs closes with its LP's
    (checked) lower bound, which their `lower` then includes.
    progress(domains bounded, open domains, their lowest bound): called every round.
    interlude(the disjuncts some domain still needs) -> (candidate points (P, n) or None, disjuncts decided): called
    once, after the first round that ends interlude_at seconds or more after the start (bab.relu_split's MILP slot);
    its points are checked, its decided disjuncts' domains dropped (they hold), and the search goes on with its pool.
    The result's `lower` (K,): per searched disjunct, unless a violation ended the search or one of its domains was
    left undecided (then -inf, as for the disjuncts not searched), the lowest bound of its open domains (each
    domain's best row, minus PROOF_MARGIN), PROOF_MARGIN when none is open: a lower bound over the box of
    ``max_rows (C y + d)`` for that disjunct's rows.
    """
    start = time.perf_counter()
    problem = SplitDomains(network, lo, hi, rows, root, dtype, retighten)
    M, N = rows.M, problem.n_split
    sizes = sum(int(np.prod(node.op.out_shape)) for node in network.nodes)
    max_batch = int(max(1, min(max_batch, 2e8 / (M * sizes))))
    R = min(M, tuned_rows)
    max_pool = int(max(1, pool_bytes / (8 * M * N + 17 * N + 8 * R + 72)))
    stats = {"domains": 0, "bound_calls": 0, "max_pool": 0, "splittable": N, "stuck": 0, "depth_first": 0}
    device = problem.device
    still = torch.zeros(rows.K, dtype=torch.bool, device=device)
    floor = torch.full((rows.K,), torch.inf, dtype=torch.float64, device=device)  # bound_only's linear regions'
    bound_only = torch.zeros_like(still) if bound_only is None else bound_only.to(device)
    disjunct = torch.arange(rows.K, device=device) if only is None else only.to(device).nonzero().flatten()
    splits = torch.zeros(len(disjunct), N, dtype=torch.int8, device=device)
    alpha = problem.start_alpha().expand(len(disjunct), M, -1)
    beta = torch.zeros(len(disjunct), M, N, dtype=dtype, device=device)
    inherited, newest, tuned = None, None, None  # the parents' bounds of the splittable neurons; layer of the newest
    # split; rows the steps optimize (`SplitDomains.bound`; all of them at the root, and whenever M <= tuned_rows)
    pool, n_steps, batch = Pool(limit=max_pool + 2 * max_batch), root_steps, 8
    if closed is not None:
        closed.append({"cols": [problem.cols[r].cpu() for r in problem.relus]})

    def finish(status: str, x=None, pool: Pool | None = None) -> SearchResult:
        lower = torch.full((rows.K,), -torch.inf, dtype=torch.float64, device=device)
        if pool is not None:  # every open domain is in the pool: a disjunct's bound is its lowest key there
            key, _, of = pool.tensors[:3]
            lower[torch.ones(rows.K, dtype=torch.bool, device=device) if only is None else only.to(device)] = \
                PROOF_MARGIN
            lower = torch.minimum(lower.scatter_reduce(0, of, key.double(), "amin"), floor)
            lower[still] = -torch.inf  # a stuck domain left undecided: no bound
        stats["seconds"] = round(time.perf_counter() - start, 4)
        stats["last_layer_narrowing"] = round(problem.mean_narrowing(), 4)
        stats["last_layer_weight"] = problem.last_layer_weight()
        return SearchResult(status, x, still, stats, lower)

    while True:
        B = splits.shape[0]
        stats["domains"] += B
        stats["bound_calls"] += 1
        step_start = time.perf_counter()
        lower, alpha, beta, record, relax, used = problem.bound(splits, disjunct, alpha, beta, n_steps,
                                                                deadline=deadline, inherited=inherited, newest=newest,
                                                                tuned=tuned if R < M else None)
        took, n_steps = time.perf_counter() - step_start, steps
        if took < STEP_SECONDS / 2 and B >= batch:  # rounds of about STEP_SECONDS: deadlines kept, memory bounded
            batch = min(2 * batch, max_batch)
        elif took > 2 * STEP_SECONDS:
            batch = max(batch // 2, 1)
        key = lower.amax(1) - PROOF_MARGIN  # a domain is proved when one row of its conjunction is
        open_ = key <= 0
        if closed is not None and bool((~open_).any()):
            closed.append(tuple(x[~open_].cpu() for x in (splits, disjunct, alpha, beta)) + (False,))
        row = lower.argmax(1)
        corners = torch.where(engine.picked_rows(record[0], row) > 0, lo, hi)[open_]
        extra = side_attack(time.perf_counter() - start) if side_attack is not None else None
        if extra is not None:
            corners = torch.cat([corners, torch.as_tensor(np.asarray(extra, np.float64), device=device).reshape(1, -1)])
        x = check(corners) if len(corners) else None
        if x is not None:
            return finish("violated", x)
        if refute is not None and bool(open_.any()):
            which = disjunct[open_]
            still[which[refute(corners[:int(open_.sum())], which) & ~bound_only[which]]] = True
            open_ &= ~still[disjunct]
        score = problem.scores(splits, relax, record, row)
        stuck = (open_ & ~(score > 0).any(1)).nonzero().flatten()  # every splittable neuron split or stable
        for j in stuck.tolist():  # a linear region: its LP decides it
            if time.perf_counter() > deadline:
                break
            k = int(disjunct[j])
            proved, x, value = problem.decide_region(network, tuple(x[j] for x in used), k, deadline)
            found = None if proved or x is None else check(torch.as_tensor(x, device=device).reshape(1, -1))
            if found is not None:
                return finish("violated", found)
            if bool(bound_only[k]):
                floor[k] = min(float(floor[k]), value - PROOF_MARGIN)
            else:
                still[k] |= not proved  # undecided: the caller's
            if proved and closed is not None:
                closed.append(tuple(x[j:j + 1].cpu() for x in (splits, disjunct, alpha, beta)) + (True,))
            open_[j] = False
            stats["stuck"] += 1
        choice = problem.branch(splits, disjunct, alpha, beta, relax, score, top_k)
        pool.append(key[open_].double(), splits[open_], disjunct[open_], alpha[open_].float(), beta[open_].float(),
                    choice[open_], used[0][open_], used[1][open_], lower[open_].topk(R, dim=1).indices)
        if refute is not None:
            pool.keep(~still[pool.tensors[2]])
        if interlude is not None and time.perf_counter() - start >= interlude_at:
            pending = torch.cat([pool.tensors[2], still.nonzero().flatten()]).unique().tolist()
            points, decided = interlude(pending) if pending else (None, [])
            interlude = None
            x = check(points) if points is not None and len(points) else None
            if x is not None:
                return finish("violated", x)
            if decided:
                gone = torch.tensor(decided, device=device)
                pool.keep(~torch.isin(pool.tensors[2], gone))
                still[gone] = False
        stats["max_pool"] = max(stats["max_pool"], len(pool))
        if progress is not None:
            progress(stats["domains"], len(pool), pool.lowest())
        if len(pool) == 0:
            return finish("open" if still.any() else "holds", pool=pool)
        if time.perf_counter() > deadline or len(pool) > max_pool:
            result = finish("open", pool=pool)
            still[pool.tensors[2]] = True
            return result
        deep = len(pool) > DEPTH_FIRST_SHARE * max_pool  # memory short: the deepest first, not past the cap
        stats["depth_first"] += deep
        splits, disjunct, alpha, beta, choice, low, up, tuned = pool.pop(
            max(1, min(batch, max_pool - len(pool))), fair, depth=(pool.tensors[1] != 0).sum(1) if deep else None)
        n = splits.shape[0]
        splits = splits.repeat(2, 1)
        splits[torch.arange(n, device=device), choice] = 1
        splits[n + torch.arange(n, device=device), choice] = -1
        disjunct, alpha, beta, tuned = disjunct.repeat(2), alpha.repeat(2, 1, 1), beta.repeat(2, 1, 1), \
            tuned.repeat(2, 1)
        inherited, newest = (low.repeat(2, 1), up.repeat(2, 1)), problem.layer_of(choice).repeat(2)
