"""Bounds of ReLU-split domains, batched: the bounding half of the branch and bound in relu_bab.py (beta-CROWN; Wang
et al. 2021), on any network graph.

A domain is one disjunct of the property on the input box with some ReLUs fixed to a phase: ``z >= 0`` (active,
+1) or ``z <= 0`` (inactive, -1); only neurons unstable under the root's layer bounds are ever split. A batch of B
domains is bounded by one backward pass of the bound engine over B x M rows (the rows of each domain's disjunct)
with, per domain:

- layer bounds: the parent domain's (the root's at first) with the split neuron's made exact (active:
  l := max(l, 0); inactive: u := min(u, 0)), then the inputs of the ReLU layer after the split's bounded again for
  the domain (interval arithmetic and backward passes, intersected), so a split also tightens the layer after it
  (measured on MNIST 256x4 prop_3 eps 0.05: undecided after 40 s and 26k domains without re-tightening, proved in
  7 s and 523 domains with every layer re-tightened from the root's bounds; keeping each domain's bounds for its
  children and re-tightening only what a split changes: `SplitDomains.relaxations`). A domain where some neuron's
  bounds cross (l > u) holds no input: it is proved;
- lower ReLU slopes alpha in [0, 1] per (domain, row, root-unstable neuron);
- multipliers beta >= 0 per (domain, row, root-unstable neuron) of the split constraints ``g = sign z >= 0``: on
  the domain ``c f(x) >= c f(x) - beta g(x)``, so a bound of ``c f - beta sign z`` over the whole box (the
  engine's `betas` term ``-beta sign`` on the rows at the ReLU's input) is a bound on the domain for ANY alpha in
  [0, 1] and beta >= 0 (a wrong multiplier only loosens it). Both are optimized by projected Adam for a few steps
  per round, warm-started from the parent domain (a new split's beta starts at 0); each row keeps its best iterate.
  One row of a conjunction proves a domain, so of a conjunction's M rows only the best few at the parent are
  optimized; the others keep their warm starts, and every row gets the round's final pass.

Soundness: float64 passes without directed rounding, like every bound here; a proof needs ``lower > PROOF_MARGIN``.
The Adam steps may run in float32 (`SplitDomains`' dtype) between float64 passes: the layer bounds (re-tightening
included) and the bound each round ends with, from the best float32 iterate's slopes and multipliers, are float64.
A linear region (every splittable neuron split or stable) is decided by one LP (`SplitDomains.decide_region`).
Every tensor lives on the device of the box given (CPU or GPU); the LP and the candidates' checks run on the CPU.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from .bounds import engine, milp
from .bounds.base import PROOF_MARGIN
from .bounds.alpha import adam_step, scatter_columns
from .bounds.interval import interval_step, relu_inputs
from .bounds.windows import max_windows, window_bound
from .network import Network
from .spec import InputBox

Tensor = torch.Tensor
EMPTY_MARGIN = 1e-9  # bounds crossing by more than this (relative) mean an empty domain; less can be rounding
STOP_SHARE = 8  # a round's Adam steps drop the domains its tuned rows prove once they are 1/8 of it (0: never)
RETIGHTEN_LAYERS = 1  # ReLU layers after a domain's newest split whose inputs are bounded again (see relaxations)
LAST_LAYER_WEIGHT = 10.0  # factor of the last ReLU layer's branching scores once re-tightening its inputs is seen
RETIGHTEN_PAYS = 0.02  # to narrow them by less than this on average, over at least this many unstable entries:
NARROWING_SAMPLES = 1000  # `SplitDomains.last_layer_weight`


class SplitDomains:
    """The fixed parts of a search: the network, the box, the rows per disjunct (C (K, M, *out_shape), d (K, M)),
    the root's layer bounds and which neurons can be split (root-unstable: per ReLU node r, flat indices cols[r];
    concatenated, N of them). Layer bounds and the bound each round ends with are float64; dtype: of the
    optimization steps in between (float32: see `search`)."""

    def __init__(self, network: Network, lo: Tensor, hi: Tensor, rows, root: dict,
                 dtype: torch.dtype = torch.float64, retighten: bool = True) -> None:
        self.device = device = lo.device
        self.network = network.to(device, torch.float64)
        self.fast = self.network if dtype == torch.float64 else network.to(device, dtype)
        self.dtype, self.retighten = dtype, retighten
        self.centre, self.radius = ((lo + hi) / 2).double(), ((hi - lo) / 2).double()
        self.box = InputBox(lo[0].double().cpu().numpy(), hi[0].double().cpu().numpy())
        self.relus = list(network.relu_nodes)
        self.shapes = {r: network.nodes[r].op.out_shape for r in self.relus}
        self.root = {r: tuple(x.reshape(1, -1).to(device, torch.float64) for x in root[network.nodes[r].inputs[0]])
                     for r in self.relus}
        self.cols, self.slices, start = {}, {}, 0
        for r in self.relus:
            l, u = self.root[r]
            self.cols[r] = ((l[0] < 0) & (u[0] > 0)).nonzero().flatten()
            self.slices[r] = slice(start, start + self.cols[r].numel())
            start += self.cols[r].numel()
        self.n_split = start
        self.windows = {k: w for k, w in max_windows(network).items() if w[0] in self.relus}  # ReLU sources only
        self.last_input = network.nodes[self.relus[-1]].inputs[0] if self.relus else None
        self.narrowing = [0.0, 0]  # re-tightenings of the last ReLU layer's inputs: sum of (1 - new / old width), count
        self.layer_starts = torch.tensor([self.slices[r].start for r in self.relus], device=device)
        self.output_bounds = root.get(network.output)  # for the LP's layer bounds (the output node's entry)
        self.C = rows.C.reshape(rows.K, rows.M, *network.output_shape).to(device, torch.float64)
        self.d = rows.d.reshape(rows.K, rows.M).to(device, torch.float64)

    def layer_of(self, columns: Tensor) -> Tensor:
        """Position in self.relus of the ReLU node of each splittable column (n,) -> (n,)."""
        return torch.searchsorted(self.layer_starts, columns, right=True) - 1

    def relaxations(self, splits: Tensor, inherited: tuple | None = None, newest: Tensor | None = None
                    ) -> tuple[dict, dict, Tensor, tuple]:
        """Per ReLU node, the domains' relaxations (B, 1, *shape) (and per MaxPool top over a ReLU node, its
        window's: bounds/windows.py) and split signs (B, *shape) for splits (B, N), which domains are empty (B,)
        (some neuron's l > u, beyond rounding: a domain where a neuron takes a single value gets l = u computed two
        ways, and they may cross by ~1e-17), and the bounds (l, u) (B, N) of the splittable neurons they used (for
        the domains' children).

        The root's bounds, or the parent domains' (inherited (l, u) (B, N): valid, as a child's inputs are some of
        its parent's), with the split neurons' made exact; with self.retighten, the inputs of the RETIGHTEN_LAYERS
        ReLU layers after the newest split's (newest (B,): its position in self.relus) are bounded again per domain
        (interval arithmetic and a backward pass for their unstable entries, as at the root) and intersected with
        those: a split tightens the bounds of the layer after it, not only its own neuron. The other layers keep
        the inherited bounds (up to the split's, the pass would give them what it gave the parent), so a split in
        the last ReLU layer costs no pass at all. Measured on MNIST 256x4 (one torch thread, loaded machine):
        prop_3 eps 0.05 proved in 10.0 / 10.2 s with one layer, 14.4 / 12.4 s with every later layer; in 60 s
        runs of prop_11 / prop_14 / prop_13, 14157 / 9415 / 4041 domains against 8975 / 3513 / 2473."""
        B = splits.shape[0]
        given, sign = {}, {}
        for r in self.relus:
            l, u = (x.expand(B, -1) for x in self.root[r])
            if inherited is not None:
                l, u = l.index_copy(1, self.cols[r], inherited[0][:, self.slices[r]].to(l.dtype)), \
                    u.index_copy(1, self.cols[r], inherited[1][:, self.slices[r]].to(u.dtype))
            s = torch.zeros_like(l)
            s[:, self.cols[r]] = splits[:, self.slices[r]].to(l.dtype)
            l, u = torch.where(s > 0, l.clamp(min=0), l), torch.where(s < 0, u.clamp(max=0), u)
            given[self.network.nodes[r].inputs[0]] = (l.reshape(B, *self.shapes[r]), u.reshape(B, *self.shapes[r]))
            sign[r] = s.reshape(B, *self.shapes[r])
        bounds = dict(given)
        if self.retighten:  # per group of domains whose newest split is in the same layer
            lo, hi = self.centre - self.radius, self.centre + self.radius
            layers = torch.full((B,), -1, device=self.device) if newest is None or inherited is None else newest
            for last in layers.unique().tolist():
                later = [self.network.nodes[r].inputs[0] for r in self.relus[last + 1:last + 1 + RETIGHTEN_LAYERS]]
                if not later:
                    continue
                idx = (layers == last).nonzero().flatten()
                part = {k: (l[idx], u[idx]) for k, (l, u) in given.items()}
                exact = {self.network.nodes[r].inputs[0]: part[self.network.nodes[r].inputs[0]]
                         for r in self.relus[:last + 1] + self.relus[last + 1 + RETIGHTEN_LAYERS:]}
                new, _ = engine.node_bounds(self.network, lo.expand(idx.numel(), -1), hi.expand(idx.numel(), -1),
                                            "adaptive", exact, reference=part, output_pass=False)
                for k in later:
                    bounds[k] = tuple(x.index_copy(0, idx, y) for x, y in zip(bounds[k], new[k]))
                    if k == self.last_input:
                        self._count_narrowing(part[k], new[k])
        relax = {r: engine.relax(*bounds[self.network.nodes[r].inputs[0]], "adaptive") for r in self.relus}
        for k, window in self.windows.items():  # the source ReLU's bounds: its input's, clipped
            relax[k] = window_bound(window, *interval_step(self.network, window[0], bounds), relax)
        empty = torch.zeros(B, dtype=torch.bool, device=self.device)
        used_l, used_u = [], []
        for r in self.relus:
            l, u = (x.reshape(B, -1) for x in bounds[self.network.nodes[r].inputs[0]])
            empty |= (l > u + EMPTY_MARGIN * (1 + u.abs())).any(1)  # rounding alone crosses a point's bounds
            used_l.append(l[:, self.cols[r]])
            used_u.append(u[:, self.cols[r]])
        return relax, sign, empty, (torch.cat(used_l, 1), torch.cat(used_u, 1))

    def _count_narrowing(self, old: tuple, new: tuple) -> None:
        """Adds to self.narrowing how much re-tightening narrowed the entries unstable under old (l, u) (B, *shape):
        new (l, u), intersected with old."""
        (l0, u0), (l1, u1) = old, new
        unstable = (l0 < 0) & (u0 > 0)
        narrower = 1 - (torch.minimum(u0, u1) - torch.maximum(l0, l1)).clamp(min=0) / (u0 - l0).clamp(min=1e-300)
        self.narrowing[0] += float(narrower[unstable].sum())
        self.narrowing[1] += int(unstable.sum())

    def last_layer_weight(self) -> float:
        """The factor of the last ReLU layer's branching scores: LAST_LAYER_WEIGHT once re-tightening that layer's
        inputs after a split in the layer before has been seen to narrow them by less than RETIGHTEN_PAYS on average
        (over NARROWING_SAMPLES unstable entries at least), else 1. A split before the last ReLU layer pays by its
        own relaxation (its score) and by the later layers' bounds it tightens; where the latter is small the scores
        of the layers before overrate their splits (measured: docs/search.md)."""
        enough = self.narrowing[1] >= NARROWING_SAMPLES
        return LAST_LAYER_WEIGHT if enough and self.mean_narrowing() < RETIGHTEN_PAYS else 1.0

    def mean_narrowing(self) -> float:
        """The mean of self.narrowing over the entries counted (0 before any)."""
        return self.narrowing[0] / max(self.narrowing[1], 1)

    def decide_region(self, network: Network, used: tuple, disjunct: int, deadline: float
                      ) -> tuple[bool, np.ndarray | None, float]:
        """Whether one domain is proved (every point of it is safe for the disjunct's conjunction), the best
        point the solver met (a candidate counterexample: any point of the box below 0 is one, in the domain or
        not), and the solver's checked lower bound of ``max_rows`` over the domain. By `milp.min_max` deciding
        ``min_x max_rows > 0`` with the domain's layer bounds: the splittable neurons' used (l, u) (N,) float64, the
        root's elsewhere (the split neurons' are clamped in them). For a linear region (every neuron stable under
        these bounds) the MILP has no binary variable: one LP, exact.
        The proof is the solver's checked one (DESIGN.md rule 2), as for every MILP."""
        layer_bounds = []
        for r in self.relus:
            l, u = (x[0].double().cpu().numpy().copy() for x in self.root[r])
            cols = self.cols[r].cpu().numpy()
            l[cols], u[cols] = (x[self.slices[r]].double().cpu().numpy() for x in used)
            layer_bounds.append((l, u))
        if self.output_bounds is not None and len(layer_bounds) < len(relu_inputs(network)):
            layer_bounds.append(tuple(x.reshape(-1).double().cpu().numpy() for x in self.output_bounds))
        C = self.C[disjunct].reshape(self.C.shape[1], -1).cpu().numpy()
        d = self.d[disjunct].cpu().numpy()
        keep = np.isfinite(d)  # padding rows (d = -inf) impose nothing
        lower, _, x, status = milp.min_max(network, self.box, C[keep], d[keep], layer_bounds=layer_bounds,
                                           time_limit=max(deadline - time.perf_counter(), 0.0), decide=0.0)
        return status == "pruned" or lower > PROOF_MARGIN, x, float(lower)

    def _pass(self, relax: dict, sign: dict, C: Tensor, d: Tensor, a: Tensor, b: Tensor,
              record: dict | None = None) -> Tensor:
        """Lower bounds (B, M) of the rows C (B, M, *out), d (B, M) by the engine's backward pass with lower slopes
        a and split multipliers b (B, M, N) on the splittable neurons, relaxations and split signs per ReLU; in
        C's dtype (float64, or self.dtype for the optimization steps: every tensor given in it)."""
        B, network = C.shape[0], self.network if C.dtype == torch.float64 else self.fast
        alphas = {r: scatter_columns(self.shapes[r], self.cols[r], a[:, :, self.slices[r]]) for r in self.relus}
        betas = {r: -scatter_columns(self.shapes[r], self.cols[r], b[:, :, self.slices[r]]) * sign[r].unsqueeze(1)
                 for r in self.relus}
        return engine.backward(network, network.output, C, d, relax, self.centre.to(C.dtype).expand(B, -1),
                               self.radius.to(C.dtype).expand(B, -1), alphas, betas=betas, record=record)

    def branch(self, splits: Tensor, disjunct: Tensor, alpha: Tensor, beta: Tensor, relax: dict, score: Tensor,
               top_k: int) -> Tensor:
        """The neuron (B,) to split in each domain: of its top_k candidates by score (B, N), the one whose two
        children's bounds, estimated by one pass with the parent's layer bounds, slopes and multipliers and the
        candidate's phase fixed, have the largest minimum (filtered smart branching); top_k 1: the best score."""
        B, k = splits.shape[0], min(top_k, self.n_split)
        if k <= 1 or B == 0:
            return score.argmax(1) if score.shape[1] else torch.zeros(B, dtype=torch.long, device=self.device)
        top = score.topk(k, dim=1).indices  # (B, k)
        parent = torch.arange(B, device=self.device).repeat_interleave(2 * k)
        cand = top.repeat_interleave(2, dim=1).reshape(-1)  # (B * 2k,): each candidate twice, active then inactive
        active = torch.arange(2 * B * k, device=self.device) % 2 == 0
        children = splits[parent]
        children[torch.arange(len(cand), device=self.device), cand] = torch.where(active, 1, -1).to(children.dtype)
        relaxations, sign = {}, {}
        for r in self.relus:
            fields = {f.name: getattr(relax[r], f.name)[parent].reshape(len(cand), -1).clone()
                      for f in dataclasses.fields(engine.Relaxation)}
            mine = (cand >= self.slices[r].start) & (cand < self.slices[r].stop)
            rows, col = mine.nonzero().flatten(), self.cols[r][cand[mine] - self.slices[r].start]
            one = active[mine].to(fields["stable_slope"].dtype)
            fields["unstable"][rows, col] = False
            for name in ("stable_slope", "rule_slope", "upper_slope"):
                fields[name][rows, col] = one
            fields["upper_offset"][rows, col] = 0.0
            relaxations[r] = engine.Relaxation(**{n: t.reshape(len(cand), 1, *self.shapes[r])
                                                  for n, t in fields.items()})
            s = torch.zeros(len(cand), int(np.prod(self.shapes[r])), dtype=torch.float64, device=self.device)
            s[:, self.cols[r]] = children[:, self.slices[r]].double()
            sign[r] = s.reshape(len(cand), *self.shapes[r])
        relaxations.update({k: relax[k].select(parent) for k in self.windows})
        with torch.no_grad():
            lower = self._pass(relaxations, sign, self.C[disjunct[parent]], self.d[disjunct[parent]],
                               alpha[parent].double(), beta[parent].double())
        worst = lower.amax(1).reshape(B, k, 2).amin(2)  # a child is proved when one row of it is
        worst = torch.where(score.gather(1, top) > 0, worst, torch.full_like(worst, -torch.inf))
        return top[torch.arange(B, device=self.device), worst.argmax(1)]

    def scores(self, splits: Tensor, relax: dict, record: dict, row: Tensor) -> Tensor:
        """Branching scores (B, N) of the splittable neurons of domains with splits (B, N), their relaxations and
        the final pass's record (`bound`), the domains' best rows (B,): |the row's coefficient at the ReLU| x the
        triangle height -l u / (u - l) (BaBSR-like; 0 where split or stable), the last ReLU layer's times
        `last_layer_weight()`; where every product of a domain is 0, the heights alone (a lower slope 0 after a
        neuron zeroes its coefficient without removing its relaxation error: on MNIST 256x4 prop_3 eps 0.05 such
        domains looked finished and went to the MILP, 56 s; split by height, 20 s). All 0: a linear region."""
        B = splits.shape[0]
        height = torch.cat([relax[r].upper_offset[:, 0].reshape(B, -1)[:, self.cols[r]] for r in self.relus], 1)
        height = torch.where(splits == 0, height, torch.zeros_like(height))  # the upper line's offset
        score = height * torch.cat([engine.picked_rows(record[r], row).abs().reshape(B, -1)[:, self.cols[r]]
                                    for r in self.relus], 1)
        if self.relus:
            score[:, self.slices[self.relus[-1]]] *= self.last_layer_weight()
        return torch.where((score > 0).any(1, keepdim=True), score, height)

    def start_alpha(self) -> Tensor:
        """The root's adaptive lower slopes of the splittable neurons, (1, 1, N)."""
        parts = [engine.relax(*self.root[r], "adaptive").rule_slope[:, 0, self.cols[r]] for r in self.relus]
        return torch.cat(parts, 1).unsqueeze(1)

    def bound(self, splits: Tensor, disjunct: Tensor, alpha: Tensor, beta: Tensor, steps: int, lr: float = 0.1,
              deadline: float | None = None, inherited: tuple | None = None, newest: Tensor | None = None,
              tuned: Tensor | None = None):
        """Optimized lower bounds (B, M) of the rows of each domain's disjunct; splits (B, N), disjunct (B,),
        alpha, beta (B, M, N) warm starts; inherited, newest: see `relaxations`. Returns (lower, alpha, beta (the
        best iterate per row, in self.dtype), the final pass's record (`engine.backward`: rows reaching each ReLU,
        input coefficients (B, M, n)), the relaxations {r: (B, 1, *shape)}, the splittable neurons' bounds (l, u)
        (B, N)). No step starts after `deadline` (time.perf_counter()); every iterate is sound. The layer bounds
        and the returned bounds come from float64 passes, whatever self.dtype the steps took. tuned (B, R): the
        rows whose alpha and beta the steps optimize (default all); the others keep their warm starts, and every row
        gets the final pass: only one row of a conjunction need prove a domain, and the parent's best rows are the
        likeliest. A domain whose tuned rows prove it stops stepping (its best iterate kept), once such domains are
        1/STOP_SHARE of those stepping: the others' steps run on a smaller batch (measured: docs/search.md)."""
        with torch.no_grad():
            relax, sign, empty, used = self.relaxations(splits, inherited, newest)
        C, d = self.C[disjunct], self.d[disjunct]
        alpha, beta = alpha.to(self.dtype).expand(C.shape[0], -1, -1), beta.to(self.dtype)
        pick = (slice(None),) if tuned is None else (torch.arange(C.shape[0], device=self.device).unsqueeze(1), tuned)
        fast = (relax, sign, C[pick], d[pick]) if self.dtype == torch.float64 else (
            {r: x.to(self.dtype) for r, x in relax.items()}, {r: x.to(self.dtype) for r, x in sign.items()},
            C[pick].to(self.dtype), d[pick].to(self.dtype))
        a, b = alpha[pick].clone(), beta[pick].clone()
        tuned_a, tuned_b = a.clone(), b.clone()  # each domain's best iterate, written when its steps stop
        stepping = torch.arange(C.shape[0], device=self.device)  # the domains still stepping: no tuned row proves them
        best, a_best, b_best = a.new_full(a.shape[:2], -torch.inf), a.clone(), b.clone()
        leaves = [a.requires_grad_(), b.requires_grad_()]
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in leaves]
        for step in range(1, steps + 1):
            if deadline is not None and time.perf_counter() > deadline:
                break
            lower = self._pass(*fast, *leaves)
            with torch.no_grad():
                better = lower > best
                best = torch.where(better, lower, best)
                a_best = torch.where(better.unsqueeze(-1), leaves[0], a_best)
                b_best = torch.where(better.unsqueeze(-1), leaves[1], b_best)
            if step == steps:
                break
            objective = torch.where(torch.isfinite(lower), lower, torch.zeros_like(lower)).sum()
            grads = torch.autograd.grad(objective, leaves)
            with torch.no_grad():
                adam_step(leaves[:1], grads[:1], moments[:1], step, lr)
                adam_step(leaves[1:], grads[1:], moments[1:], step, lr, upper=None)
                proved = best.amax(1) > PROOF_MARGIN
            if int(proved.sum()) * STOP_SHARE >= len(stepping):  # these stop (none proved: never); the others go on
                keep = ~proved
                tuned_a[stepping[proved]], tuned_b[stepping[proved]] = a_best[proved], b_best[proved]
                stepping, best, a_best, b_best = stepping[keep], best[keep], a_best[keep], b_best[keep]
                if not len(stepping):
                    break
                fast = ({r: x.select(keep) for r, x in fast[0].items()}, {r: x[keep] for r, x in fast[1].items()},
                        fast[2][keep], fast[3][keep])
                leaves = [p.detach()[keep].requires_grad_() for p in leaves]
                moments = [(m[keep], v[keep]) for m, v in moments]
        record: dict = {}
        with torch.no_grad():  # rows are independent in the pass: the best slopes of each row reproduce its best
            tuned_a[stepping], tuned_b[stepping] = a_best, b_best
            best_a, best_b = alpha.clone(), beta.clone()
            best_a[pick], best_b[pick] = tuned_a, tuned_b
            lower = self._pass(relax, sign, C, d, best_a.double(), best_b.double(), record)
        lower = torch.where(empty.unsqueeze(1), torch.full_like(lower, torch.inf), lower)  # no input: holds
        return lower, best_a, best_b, record, relax, used
