"""ReLU-split branch and bound with optimized bounds, batched (beta-CROWN; Wang et al. 2021), on any network graph.

A domain is one disjunct of the property on the input box with some ReLUs fixed to a phase: ``z >= 0`` (active,
+1) or ``z <= 0`` (inactive, -1); only neurons unstable under the root's layer bounds are ever split. A batch of B
domains is bounded by one backward pass of the bound engine over B x M rows (the rows of each domain's disjunct)
with, per domain:

- layer bounds: the root's with the split neurons' made exact (active: l := max(l, 0); inactive: u := min(u, 0)),
  then every ReLU input bounded again for the domain (interval arithmetic and backward passes, intersected), so a
  split also tightens the layers after it (measured on MNIST 256x4 prop_3 eps 0.05: undecided after 40 s and
  26k domains without this, proved in 7 s and 523 domains with it). A domain where some neuron's bounds cross
  (l > u) holds no input: it is proved;
- lower ReLU slopes alpha in [0, 1] per (domain, row, root-unstable neuron);
- multipliers beta >= 0 per (domain, row, root-unstable neuron) of the split constraints ``g = sign z >= 0``: on
  the domain ``c f(x) >= c f(x) - beta g(x)``, so a bound of ``c f - beta sign z`` over the whole box (the
  engine's `betas` term ``-beta sign`` on the rows at the ReLU's input) is a bound on the domain for ANY alpha in
  [0, 1] and beta >= 0 (a wrong multiplier only loosens it). Both are optimized by projected Adam for a few steps
  per round, warm-started from the parent domain (a new split's beta starts at 0); each row keeps its best iterate.

Search: best-first (lowest bound first, where counterexamples are likeliest); domains live in a pool of tensors
(splits int8, alpha/beta float32 warm starts) capped by memory (beyond: the search stops, undecided). Branching:
the free root-unstable neuron with the largest |row coefficient at its ReLU| x triangle height -l u / (u - l) in the
domain's best row (BaBSR-like). A domain with nothing left worth splitting is "stuck": its pass is linear where it
matters and the best beta makes it exact (LP duality), so it gets STUCK_STEPS more steps; what stays open is left
to the caller (the MILP). Candidates: the box corner minimizing the best row's linear bound, and the caller's side
attack, checked by `check` (float64, then onnxruntime on the original model).
Soundness: float64 passes without directed rounding, like every bound here; a proof needs ``lower > PROOF_MARGIN``;
float32 passes (`search`'s dtype) prove nothing until re-derived in float64.

Defaults, measured on MNIST 256x4 prop_3 eps 0.05 (unsat; one torch thread, machine under load): Adam steps per
round 2: undecided after 40 s (8201 domains); 4: proved in 5.7 s; 8: 9.0 s; 16: 3.9 s (283 domains). float32
passes: the same 523 domains, no faster on this CPU (11.6 s vs 11.7 s), so float64 stays the default.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .bounds import engine
from .bounds.base import PROOF_MARGIN
from .bounds.alpha import adam_step, scatter_columns
from .network import Network

Tensor = torch.Tensor
POOL_BYTES = 2e9  # memory the pool of open domains may take (alpha, beta warm starts in float32, splits int8)
STEPS, ROOT_STEPS, STUCK_STEPS = 16, 30, 200  # Adam steps per round; at the root; on a domain with no split left
EMPTY_MARGIN = 1e-9  # bounds crossing by more than this (relative) mean an empty domain; less can be rounding
STEP_SECONDS = 0.5  # target duration of a round: the batch of domains doubles / halves around it


@dataclass
class SearchResult:
    """status: holds (every domain proved) | violated (x confirmed) | open (undecided at deadline / cap);
    still: per disjunct, whether some stuck or open domain needs it; stats: counters."""

    status: str
    x: np.ndarray | None
    still: Tensor
    stats: dict = field(default_factory=dict)


class _Problem:
    """The fixed parts of a search: the network, the box, the rows per disjunct (C (K, M, *out_shape), d (K, M)),
    the root's layer bounds and which neurons can be split (root-unstable: per ReLU node r, flat indices cols[r];
    concatenated, N of them). dtype: of the bounding passes (float32: see `search`)."""

    def __init__(self, network: Network, lo: Tensor, hi: Tensor, rows, root: dict,
                 dtype: torch.dtype = torch.float64, retighten: bool = True) -> None:
        self.network, self.dtype, self.retighten = network.to(dtype=dtype), dtype, retighten
        self.centre, self.radius = ((lo + hi) / 2).to(dtype), ((hi - lo) / 2).to(dtype)
        self.relus = list(network.relu_nodes)
        self.shapes = {r: network.nodes[r].op.out_shape for r in self.relus}
        self.root = {r: tuple(x.reshape(1, -1).to(dtype) for x in root[network.nodes[r].inputs[0]])
                     for r in self.relus}
        self.cols, self.slices, start = {}, {}, 0
        for r in self.relus:
            l, u = self.root[r]
            self.cols[r] = ((l[0] < 0) & (u[0] > 0)).nonzero().flatten()
            self.slices[r] = slice(start, start + self.cols[r].numel())
            start += self.cols[r].numel()
        self.n_split = start
        self.C = rows.C.reshape(rows.K, rows.M, *network.output_shape).to(dtype)
        self.d = rows.d.reshape(rows.K, rows.M).to(dtype)

    def relaxations(self, splits: Tensor) -> tuple[dict, dict, dict, Tensor]:
        """Per ReLU node, the domains' relaxations (B, 1, *shape) and split signs (B, *shape) for splits (B, N),
        and which domains are empty (B,) (some neuron's l > u, beyond rounding: a
        domain where a neuron takes a single value gets l = u computed two ways, and they may cross by ~1e-17).

        The root's bounds with the split neurons' made exact; with self.retighten, every ReLU input is bounded
        again per domain (interval arithmetic and a backward pass for its unstable entries, as at the root),
        intersected with those: a split tightens the bounds of the layers after it, not only its own neuron."""
        B = splits.shape[0]
        given, sign = {}, {}
        for r in self.relus:
            l, u = (x.expand(B, -1) for x in self.root[r])
            s = torch.zeros_like(l)
            s[:, self.cols[r]] = splits[:, self.slices[r]].to(l.dtype)
            l, u = torch.where(s > 0, l.clamp(min=0), l), torch.where(s < 0, u.clamp(max=0), u)
            given[self.network.nodes[r].inputs[0]] = (l.reshape(B, *self.shapes[r]), u.reshape(B, *self.shapes[r]))
            sign[r] = s.reshape(B, *self.shapes[r])
        if self.retighten:
            lo, hi = (self.centre - self.radius).expand(B, -1), (self.centre + self.radius).expand(B, -1)
            bounds, relax = engine.node_bounds(self.network, lo, hi, "adaptive", reference=given, output_pass=False)
        else:
            bounds, relax = given, {r: engine.relax(*given[self.network.nodes[r].inputs[0]], "adaptive")
                                    for r in self.relus}
        empty = torch.zeros(B, dtype=torch.bool)
        for r in self.relus:
            l, u = (x.reshape(B, -1) for x in bounds[self.network.nodes[r].inputs[0]])
            empty |= (l > u + EMPTY_MARGIN * (1 + u.abs())).any(1)  # rounding alone crosses a point's bounds
        return relax, sign, empty

    def start_alpha(self) -> Tensor:
        """The root's adaptive lower slopes of the splittable neurons, (1, 1, N)."""
        parts = [engine.relax(*self.root[r], "adaptive").rule_slope[:, 0, self.cols[r]] for r in self.relus]
        return torch.cat(parts, 1).unsqueeze(1)

    def bound(self, splits: Tensor, disjunct: Tensor, alpha: Tensor, beta: Tensor, steps: int, lr: float = 0.1,
              deadline: float | None = None):
        """Optimized lower bounds (B, M) of the rows of each domain's disjunct; splits (B, N), disjunct (B,),
        alpha, beta (B, M, N) warm starts. Returns (lower, alpha, beta (the best iterate per row, in self.dtype),
        the final pass's record (`engine.backward`: rows reaching each ReLU, input coefficients (B, M, n)), the
        relaxations {r: (B, 1, *shape)}). No step
        starts after `deadline` (time.perf_counter()); every iterate is sound."""
        with torch.no_grad():
            relax, sign, empty = self.relaxations(splits)
        B = splits.shape[0]
        centre, radius = self.centre.expand(B, -1), self.radius.expand(B, -1)
        C, d = self.C[disjunct], self.d[disjunct]
        a, b = alpha.to(self.dtype).clone(), beta.to(self.dtype).clone()
        best, best_a, best_b = None, a.clone(), b.clone()
        leaves = [a.requires_grad_(), b.requires_grad_()]
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in leaves]

        def run(a: Tensor, b: Tensor, record: dict | None = None) -> Tensor:
            alphas = {r: scatter_columns(self.shapes[r], self.cols[r], a[:, :, self.slices[r]]) for r in self.relus}
            betas = {r: -scatter_columns(self.shapes[r], self.cols[r], b[:, :, self.slices[r]]) * sign[r].unsqueeze(1)
                     for r in self.relus}
            return engine.backward(self.network, self.network.output, C, d, relax, centre, radius, alphas,
                                   betas=betas, record=record)

        for step in range(1, steps + 1):
            if deadline is not None and time.perf_counter() > deadline:
                break
            lower = run(a, b)
            with torch.no_grad():
                better = lower > best if best is not None else torch.ones_like(lower, dtype=torch.bool)
                best = lower.detach() if best is None else torch.where(better, lower, best)
                best_a = torch.where(better.unsqueeze(-1), a.detach(), best_a)
                best_b = torch.where(better.unsqueeze(-1), b.detach(), best_b)
            objective = torch.where(torch.isfinite(lower), lower, torch.zeros_like(lower)).sum()
            grads = torch.autograd.grad(objective, leaves)
            with torch.no_grad():
                adam_step(leaves[:1], grads[:1], moments[:1], step, lr)
                adam_step(leaves[1:], grads[1:], moments[1:], step, lr, upper=None)
        record: dict = {}
        with torch.no_grad():  # rows are independent in the pass: the best slopes of each row reproduce its best
            lower = run(best_a, best_b, record)
        lower = torch.where(empty.unsqueeze(1), torch.full_like(lower, torch.inf), lower)  # no input: holds
        return lower, best_a, best_b, record, relax


def search(network: Network, lo: Tensor, hi: Tensor, rows, root: dict, *, deadline: float,
           check: Callable[[Tensor], np.ndarray | None],
           side_attack: Callable[[float], np.ndarray | None] | None = None, max_batch: int = 256,
           steps: int = STEPS, root_steps: int = ROOT_STEPS, dtype: torch.dtype = torch.float64,
           retighten: bool = True, pool_bytes: float = POOL_BYTES, closed: list | None = None) -> SearchResult:
    """Branch and bound (module docstring) until decided or time.perf_counter() > deadline.

    lo, hi (1, n_inputs) float64; rows: `bab._Rows` (K disjuncts of M rows); root {node id: (l, u) (1, *shape)}
    layer bounds of the ReLU inputs (the engine's); check(points (P, n)) -> a confirmed counterexample or None;
    side_attack as in bab.input_split. A domain is (splits, disjunct): the root is one domain per disjunct, and a
    domain carries only its disjunct's rows. max_batch: domains split per round at most (fewer when one pass's
    rows would exceed about 2e8 entries: conv nets; the batch starts at 8 and adapts to STEP_SECONDS); steps /
    root_steps: Adam steps per round / at the root.
    dtype float32: the passes run in float32 and every domain they prove is bounded again in float64 from the
    same slopes and multipliers (one pass, no optimization): only that float64 bound proves. retighten: see
    `_Problem.relaxations`. closed: a list that gets {"cols": per ReLU node its splittable neurons} first,
    then (splits, disjunct, alpha, beta) of every batch of domains proved (for certificates).
    """
    start = time.perf_counter()
    problem = _Problem(network, lo, hi, rows, root, dtype, retighten)
    exact = problem if dtype == torch.float64 else _Problem(network, lo, hi, rows, root, retighten=retighten)
    M, N = rows.M, problem.n_split
    sizes = sum(int(np.prod(node.op.out_shape)) for node in network.nodes)
    max_batch = int(max(1, min(max_batch, 2e8 / (M * sizes))))
    max_pool = int(max(1, pool_bytes / (8 * M * N + N + 64)))
    stats = {"domains": 0, "bound_calls": 0, "max_pool": 0, "splittable": N, "rechecked": 0, "stuck": 0}
    still = torch.zeros(rows.K, dtype=torch.bool)
    disjunct = torch.arange(rows.K)
    splits = torch.zeros(rows.K, N, dtype=torch.int8)
    alpha = problem.start_alpha().expand(rows.K, M, -1)
    beta = torch.zeros(rows.K, M, N, dtype=dtype)
    pool, n_steps, batch = None, root_steps, 8
    if closed is not None:
        closed.append({"cols": [problem.cols[r] for r in problem.relus]})

    def finish(status: str, x=None) -> SearchResult:
        stats["seconds"] = round(time.perf_counter() - start, 4)
        return SearchResult(status, x, still, stats)

    while True:
        B = splits.shape[0]
        stats["domains"] += B
        stats["bound_calls"] += 1
        step_start = time.perf_counter()
        lower, alpha, beta, record, relax = problem.bound(splits, disjunct, alpha, beta, n_steps, deadline=deadline)
        took, n_steps = time.perf_counter() - step_start, steps
        if took < STEP_SECONDS / 2 and B >= batch:  # rounds of about STEP_SECONDS: deadlines kept, memory bounded
            batch = min(2 * batch, max_batch)
        elif took > 2 * STEP_SECONDS:
            batch = max(batch // 2, 1)
        key = lower.amax(1) - PROOF_MARGIN  # a domain is proved when one row of its conjunction is
        if exact is not problem and bool((key > 0).any()):  # float32 claims: re-derived in float64
            claimed = (key > 0).nonzero().flatten()
            again, *_ = exact.bound(splits[claimed], disjunct[claimed], alpha[claimed], beta[claimed], 0)
            key[claimed] = (again.amax(1) - PROOF_MARGIN).to(key.dtype)
            stats["rechecked"] += claimed.numel()
        open_ = key <= 0
        if closed is not None and bool((~open_).any()):
            closed.append(tuple(x[~open_] for x in (splits, disjunct, alpha, beta)))
        row = lower.argmax(1)
        corners = torch.where(engine.picked_rows(record[0], row) > 0, lo, hi)[open_]
        extra = side_attack(time.perf_counter() - start) if side_attack is not None else None
        if extra is not None:
            corners = torch.cat([corners, torch.as_tensor(np.asarray(extra, np.float64)).reshape(1, -1)])
        x = check(corners) if len(corners) else None
        if x is not None:
            return finish("violated", x)
        # triangle height -l u / (u - l) = the upper line's offset (0 where stable)
        score = torch.cat([(engine.picked_rows(record[r], row).abs() * relax[r].upper_offset[:, 0])
                           .reshape(B, -1)[:, problem.cols[r]] for r in problem.relus], 1)
        score = torch.where(splits == 0, score, torch.zeros_like(score))
        stuck = (open_ & ~(score > 0).any(1)).nonzero().flatten()  # nothing left to split that could help
        if stuck.numel():  # the pass is (nearly) linear there: many more steps on beta, else the MILP's to settle
            again, a, b, *_ = exact.bound(splits[stuck], disjunct[stuck], alpha[stuck], beta[stuck], STUCK_STEPS,
                                          deadline=deadline)
            proved = again.amax(1) - PROOF_MARGIN > 0
            if closed is not None and bool(proved.any()):
                closed.append((splits[stuck[proved]], disjunct[stuck[proved]], a[proved], b[proved]))
            open_[stuck[proved]] = False
            still[disjunct[stuck[~proved]]] = True
            open_[stuck[~proved]] = False
            stats["stuck"] += stuck.numel()
        pool = merge_pool(pool, key[open_].double(), splits[open_], disjunct[open_], alpha[open_].float(),
                          beta[open_].float(), score[open_])
        stats["max_pool"] = max(stats["max_pool"], len(pool[0]))
        if len(pool[0]) == 0:
            return finish("open" if still.any() else "holds")
        if time.perf_counter() > deadline or len(pool[0]) > max_pool:
            still[pool[2]] = True
            return finish("open")
        (splits, disjunct, alpha, beta, score), pool = pop_lowest(pool, batch)
        choice = score.argmax(1)
        n = splits.shape[0]
        splits = splits.repeat(2, 1)
        splits[torch.arange(n), choice] = 1
        splits[n + torch.arange(n), choice] = -1
        disjunct, alpha, beta = disjunct.repeat(2), alpha.repeat(2, 1, 1), beta.repeat(2, 1, 1)


def merge_pool(pool: tuple | None, *parts: Tensor) -> tuple:
    """Append domains to a pool: a tuple (key (P,), tensors (P, ...)...) of the same layout as parts."""
    return parts if pool is None else tuple(torch.cat([a, b]) for a, b in zip(pool, parts))


def pop_lowest(pool: tuple, batch: int) -> tuple[tuple, tuple]:
    """The `batch` domains of lowest key (their tensors, key left out) and the rest of the pool."""
    key = pool[0]
    if len(key) <= batch:
        return pool[1:], tuple(t[:0] for t in pool)
    order = torch.argsort(key)
    take, rest = order[:batch], order[batch:]
    return tuple(t[take] for t in pool[1:]), tuple(t[rest] for t in pool)
