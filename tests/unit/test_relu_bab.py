"""The optimized ReLU-split search (relu_bab.py): every domain's bound, beta optimized, stays below the domain's exact
minimum (brute force over activation patterns, scipy LPs: no shared code), and the search alone reaches the exact
verdict or stays undecided, never the wrong one."""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings, strategies as st
from scipy.optimize import linprog

from graph_models import TINY_KINDS, assert_relu_split_verdicts, random_graph_file, verdict_cases
from verifier import bab, relu_bab, split_domains
from verifier.split_domains import SplitDomains
from verifier.objective_rows import ObjectiveRows
from verifier.bounds import dual, milp
from verifier.bounds.interval import relu_inputs
from verifier.network import Network, random_network
from verifier.onnx import load_onnx
from verifier.spec import InputBox, Property


def domain_minimum(net: Network, box: InputBox, c: np.ndarray, phases: dict) -> float:
    """min c . f(x) over the box where every ReLU (layer, j) in `phases` has its phase (+1: z >= 0, -1: z <= 0), by
    enumerating every activation pattern with one LP each (inf when the domain is empty). Chains, <= 10 ReLUs."""
    relu_layers = [i for i, r in enumerate(net.relu_after) if r]
    widths = [net.affines[i].n_out for i in relu_layers]
    best = np.inf
    for pattern in itertools.product((1, -1), repeat=sum(widths)):
        phase = dict(zip([(i, j) for i, w in zip(relu_layers, widths) for j in range(w)], pattern))
        if any(phase[key] != side for key, side in phases.items()):
            continue
        M, m, A_ub, b_ub = np.eye(box.n), np.zeros(box.n), [], []
        for i, (a, relu) in enumerate(zip(net.affines, net.relu_after)):
            M, m = a.weight @ M, a.weight @ m + a.bias
            if relu:
                s = np.array([phase[(i, j)] for j in range(a.n_out)], dtype=float)
                A_ub.append(-s[:, None] * M)  # s z >= 0
                b_ub.append(s * m)
                on = (s > 0).astype(float)
                M, m = on[:, None] * M, on * m
        res = linprog(c @ M, A_ub=np.vstack(A_ub) if A_ub else None, b_ub=np.concatenate(b_ub) if b_ub else None,
                      bounds=list(zip(box.lo, box.hi)), method="highs")
        if res.status == 0:
            best = min(best, float(res.fun + c @ m))
    return best


def phases_of(net: Network, problem: SplitDomains, splits: torch.Tensor) -> dict:
    """The split phases {(layer, neuron): +1 / -1} (`domain_minimum`'s) of one domain's splits (N,)."""
    phases = {}
    for r, layer in zip(problem.relus, [i for i, relu in enumerate(net.relu_after) if relu]):
        for j, col in enumerate(problem.cols[r].tolist()):
            if int(splits[problem.slices[r]][j]):
                phases[(layer, col)] = int(splits[problem.slices[r]][j])
    return phases


def setup(seed: int, sizes: list[int], radius: float = 0.6):
    rng = np.random.default_rng(seed)
    net = random_network(sizes, rng)
    centre = rng.normal(size=sizes[0])
    box = InputBox(centre - radius, centre + radius)
    return rng, net, box


def root_of(net: Network, box: InputBox, C: np.ndarray, d: np.ndarray) -> dict:
    layer_bounds = dual.bound(net, box, C, d, slopes="adaptive").layer_bounds
    return {k: tuple(torch.tensor(x).reshape(1, *net.nodes[k].op.out_shape) for x in lu)
            for k, lu in zip(relu_inputs(net), layer_bounds)}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), depth=st.integers(1, 2), width=st.integers(2, 5), n_splits=st.integers(0, 3),
       float32=st.booleans())
@example(seed=0, depth=2, width=2, n_splits=1, float32=False)  # a one-point layer whose bounds, computed two ways,
# crossed by 1e-17
def test_beta_bounds_stay_below_the_domain_minimum(seed, depth, width, n_splits, float32):
    """With the Adam steps in float32 too: the bounds returned are float64 passes, below each domain's minimum."""
    rng, net, box = setup(seed, [3] + [width] * depth + [2])
    assume(net.n_relus <= 10)
    C, d = rng.normal(size=(2, 2)), np.zeros(2)
    prop = Property(((C[:1], np.zeros(1)), (C[1:], np.zeros(1))))
    rows = ObjectiveRows.of(prop, 2)
    lo, hi = torch.tensor(box.lo)[None], torch.tensor(box.hi)[None]
    problem = SplitDomains(net, lo, hi, rows, root_of(net, box, C, d),
                                torch.float32 if float32 else torch.float64)
    assume(problem.n_split > 0)
    # a few random domains: split up to n_splits root-unstable neurons each
    B = 4
    splits = torch.zeros(B, problem.n_split, dtype=torch.int8)
    for b in range(B):
        chosen = rng.choice(problem.n_split, size=min(n_splits, problem.n_split), replace=False)
        splits[b, chosen] = torch.tensor(rng.choice([-1, 1], size=len(chosen)), dtype=torch.int8)
    disjunct = torch.arange(B) % 2  # domains of both disjuncts (one row each)
    alpha = problem.start_alpha().expand(B, 1, -1).clone()
    beta = torch.tensor(rng.uniform(0, 2, size=(B, 1, problem.n_split)))  # any beta >= 0 is sound
    lower, *_ = problem.bound(splits, disjunct, alpha, beta, steps=15)
    assert lower.dtype == torch.float64
    for b in range(B):
        phases = phases_of(net, problem, splits[b])
        k = int(disjunct[b])
        exact = domain_minimum(net, box, rows.C[k].numpy(), phases) + float(rows.d[k])
        assert float(lower[b, 0]) <= exact + 1e-7, (b, phases)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), width=st.integers(2, 4), first=st.integers(0, 3))
def test_inherited_bounds_and_the_lp_of_a_linear_region(seed, width, first):
    """A child bounded from its parent's bounds (only the layers after its newest split bounded again) stays below
    its exact minimum; once every splittable neuron is split, one LP (`decide_region`) decides it exactly."""
    rng, net, box = setup(seed, [3, width, width, 2])
    C = rng.normal(size=(1, 2))
    rows = ObjectiveRows.of(Property(((C, np.zeros(1)),)), 2)
    lo, hi = torch.tensor(box.lo)[None], torch.tensor(box.hi)[None]
    problem = SplitDomains(net, lo, hi, rows, root_of(net, box, C, np.zeros(1)))
    assume(problem.n_split > 0)
    order = rng.permutation(problem.n_split)
    sides = torch.tensor(rng.choice([-1, 1], size=problem.n_split), dtype=torch.int8)
    parent = torch.zeros(1, problem.n_split, dtype=torch.int8)
    parent[0, order[:first]] = sides[order[:first]]
    *_, empty, used = problem.relaxations(parent)
    child = parent.clone()
    child[0, order[first:]] = sides[order[first:]]
    newest = problem.layer_of(torch.tensor(order[first:]))[-1:] if first < problem.n_split else None
    alpha = problem.start_alpha().expand(1, 1, -1).clone()
    zero = torch.zeros(1, 1, problem.n_split, dtype=torch.float64)
    lower, *_, kept = problem.bound(child, torch.zeros(1, dtype=torch.long), alpha, zero, steps=10,
                                    inherited=used, newest=newest)
    exact = domain_minimum(net, box, C[0], phases_of(net, problem, child[0]))
    assert float(lower[0, 0]) <= exact + 1e-7
    if np.isfinite(exact) and float(lower[0, 0]) < np.inf and abs(exact) > 1e-5:  # (not shown empty, no tie)
        proved, x, _ = problem.decide_region(net, tuple(x[0] for x in kept), 0, time.perf_counter() + 30)
        assert proved == (exact > 0)
        if exact < 0:  # the solver's point is a counterexample (in the box; in the domain or not)
            assert box.contains(x) and float(C[0] @ net.forward(x)) <= 0


def test_beta_tightens_a_split_domain():
    # splitting a neuron and optimizing beta gives at least the bound of fixing the neuron alone, and more on some
    # domain of these nets (the split constraint itself enters the bound)
    gains = []
    for seed in range(6):
        rng, net, box = setup(seed, [3, 8, 8, 2], radius=1.0)
        C = np.array([[1.0, -1.0]])
        rows = ObjectiveRows.of(Property(((C, np.zeros(1)),)), 2)
        problem = SplitDomains(net, torch.tensor(box.lo)[None], torch.tensor(box.hi)[None], rows,
                                    root_of(net, box, C, np.zeros(1)))
        if problem.n_split < 2:
            continue
        splits = torch.zeros(2 * problem.n_split, problem.n_split, dtype=torch.int8)
        for j in range(problem.n_split):
            splits[2 * j, j], splits[2 * j + 1, j] = 1, -1
        alpha = problem.start_alpha().expand(len(splits), 1, -1).clone()
        zero = torch.zeros(len(splits), 1, problem.n_split, dtype=torch.float64)
        first = torch.zeros(len(splits), dtype=torch.long)
        plain, *_ = problem.bound(splits, first, alpha, zero, steps=0)
        tuned, *_ = problem.bound(splits, first, alpha, zero, steps=20)
        assert bool((tuned >= plain - 1e-12).all())
        gains.append(float((tuned - plain).max()))
    assert max(gains) > 1e-3


def brute_min(net: Network, box: InputBox, C: np.ndarray) -> np.ndarray:
    return np.array([domain_minimum(net, box, c, {}) for c in C])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), width=st.integers(3, 5), disjuncts=st.integers(1, 2),
       shift=st.floats(-0.3, 0.3), float32=st.booleans(), top_k=st.sampled_from([1, 3]))
def test_search_alone_never_gives_a_wrong_verdict(seed, width, disjuncts, shift, float32, top_k):
    """float32 steps: every bound that proves is a float64 pass, so a verdict never rests on float32; the
    branching rule (score alone or smart branching) changes the order, never the answer."""
    rng, net, box = setup(seed, [3, width, width, 3])
    assume(abs(shift) > 1e-6)
    C = rng.normal(size=(disjuncts, 3))
    exact = brute_min(net, box, C)
    prop = Property(tuple((C[k:k + 1], np.array([exact.min() + shift])) for k in range(disjuncts)))
    rows = ObjectiveRows.of(prop, 3)
    d = np.concatenate([prop.objective_rows(k)[1] for k in range(disjuncts)])
    lo, hi = torch.tensor(box.lo)[None], torch.tensor(box.hi)[None]

    def check(points):
        values = net.forward(points.numpy()) @ C.T
        bad = (values <= exact.min() + shift).any(1)
        return points[bad][0].numpy() if bad.any() else None

    result = relu_bab.search(net, lo, hi, rows, root_of(net, box, C, d), deadline=time.perf_counter() + 10,
                             check=check, dtype=torch.float32 if float32 else torch.float64, top_k=top_k)
    assert result.status in (("holds" if shift < 0 else "violated"), "open")
    if result.status == "violated":
        assert box.contains(result.x) and prop.violated_by(net.forward(result.x))
    if result.status == "open":
        assert bool(result.still.any())  # undecided only where a domain could not be split further


def test_the_last_layer_weight_follows_what_re_tightening_its_inputs_gained(monkeypatch):
    """`_count_narrowing` adds 1 - new / old width per entry unstable before (an entry shown empty counts 1); the
    last ReLU layer's branching factor is LAST_LAYER_WEIGHT only once NARROWING_SAMPLES entries averaged less than
    RETIGHTEN_PAYS. A split in the first of three ReLU layers re-tightens the second, not the last: nothing counted;
    a split in the second counts every unstable entry of the last layer's inputs."""
    rng, net, box = setup(3, [3, 6, 6, 6, 2], radius=1.0)
    C = rng.normal(size=(1, 2))
    rows = ObjectiveRows.of(Property(((C, np.zeros(1)),)), 2)
    lo, hi = torch.tensor(box.lo)[None], torch.tensor(box.hi)[None]
    problem = SplitDomains(net, lo, hi, rows, root_of(net, box, C, np.zeros(1)))
    assert all(len(problem.cols[r]) for r in problem.relus)  # every layer has a neuron to split
    old = (torch.tensor([[-1.0, -2.0, 1.0, -1.0]]), torch.tensor([[1.0, 2.0, 3.0, 1.0]]))  # 3 unstable entries
    new = (torch.tensor([[-0.5, -2.0, 1.5, 0.5]]), torch.tensor([[1.0, 1.0, 2.0, 0.4]]))  # narrowed by 1/4, 1/4, all
    monkeypatch.setattr(split_domains, "NARROWING_SAMPLES", 6)
    problem._count_narrowing(old, new)
    assert problem.narrowing[1] == 3 and problem.narrowing[0] == pytest.approx(1.5)
    assert problem.last_layer_weight() == 1.0  # 3 entries of the 6 needed
    problem._count_narrowing(old, old)
    assert problem.narrowing[0] / problem.narrowing[1] == pytest.approx(0.25)
    monkeypatch.setattr(split_domains, "RETIGHTEN_PAYS", 0.2)
    assert problem.last_layer_weight() == 1.0  # re-tightening pays: the scores as they are
    monkeypatch.setattr(split_domains, "RETIGHTEN_PAYS", 0.3)
    assert problem.last_layer_weight() == split_domains.LAST_LAYER_WEIGHT
    problem.narrowing = [0.0, 0]
    parent = torch.zeros(2, problem.n_split, dtype=torch.int8)
    *_, used = problem.relaxations(parent)
    for layer, counted in ((0, False), (1, True)):
        first = problem.slices[problem.relus[layer]].start
        child = parent.clone()
        child[:, first] = torch.tensor([1, -1], dtype=torch.int8)
        before = problem.narrowing[1]
        problem.relaxations(child, used, torch.full((2,), layer))
        last = problem.root[problem.relus[-1]]
        unstable = 2 * int(((last[0] < 0) & (last[1] > 0)).sum())  # the root's bounds are the parents' here
        assert problem.narrowing[1] - before == (unstable if counted else 0)


@pytest.mark.parametrize("seed", range(8))
def test_weighting_the_last_layer_changes_the_order_not_the_verdict(seed, monkeypatch):
    """With the last ReLU layer's factor switched on after the first re-tightening (RETIGHTEN_PAYS above any
    narrowing) and large, the search on random three-layer nets still gives the exact verdict: thresholds 0.05
    below and above the MILP's minimum."""
    monkeypatch.setattr(split_domains, "NARROWING_SAMPLES", 1)
    monkeypatch.setattr(split_domains, "RETIGHTEN_PAYS", 2.0)
    monkeypatch.setattr(split_domains, "LAST_LAYER_WEIGHT", 1e3)
    rng, net, box = setup(seed, [3, 6, 6, 6, 2], radius=1.0)
    C = rng.normal(size=(1, 2))
    exact = milp.bound(net, box, C, np.zeros(1)).lower[0]
    weights = []
    for shift in (-0.05, 0.05):
        prop = Property(((C, np.array([exact + shift])),))  # violated where C f <= exact + shift
        rows, d = ObjectiveRows.of(prop, 2), prop.objective_rows(0)[1]

        def check(points):
            bad = (net.forward(points.numpy()) @ C.T <= exact + shift).any(1)
            return points[bad][0].numpy() if bad.any() else None

        result = relu_bab.search(net, torch.tensor(box.lo)[None], torch.tensor(box.hi)[None], rows,
                                 root_of(net, box, C, d), deadline=time.perf_counter() + 30, check=check)
        assert result.status == ("holds" if shift < 0 else "violated")
        if result.status == "violated":
            assert box.contains(result.x) and prop.violated_by(net.forward(result.x))
        weights.append(result.stats["last_layer_weight"])
    if seed == 0:
        assert split_domains.LAST_LAYER_WEIGHT in weights  # the factor was on in at least one of the searches


@pytest.mark.parametrize("seed", range(4))
def test_tuning_some_rows_keeps_the_others_warm_starts(seed):
    """`bound(tuned=...)`: the tuned rows' alpha and beta move (in a domain they do not prove at once) and their bounds
    reach at least the untuned pass; the other rows come back with their warm starts and the untuned pass's bounds;
    every row stays below its minimum."""
    rng, net, box = setup(seed, [3, 5, 5, 3])
    C = rng.normal(size=(3, 3))
    rows = ObjectiveRows.of(Property(((C, np.zeros(3)),)), 3)  # one conjunction of three rows
    problem = SplitDomains(net, torch.tensor(box.lo)[None], torch.tensor(box.hi)[None], rows,
                                root_of(net, box, C, np.zeros(3)))
    splits, first = torch.zeros(2, problem.n_split, dtype=torch.int8), torch.zeros(2, dtype=torch.long)
    alpha = problem.start_alpha().expand(2, 3, -1).clone()
    beta = torch.zeros(2, 3, problem.n_split, dtype=torch.float64)
    plain, *_ = problem.bound(splits, first, alpha, beta, steps=0)
    tuned = torch.tensor([[1], [2]])  # a different row per domain
    lower, a, b, *_ = problem.bound(splits, first, alpha, beta, steps=20, tuned=tuned)
    for domain, row in enumerate(tuned[:, 0].tolist()):
        others = [k for k in range(3) if k != row]
        assert torch.equal(a[domain, others], alpha[domain, others]) and torch.equal(b[domain, others],
                                                                                     beta[domain, others])
        assert torch.allclose(lower[domain, others], plain[domain, others], rtol=0, atol=1e-12)
        assert float(lower[domain, row]) >= float(plain[domain, row]) - 1e-12
    assert bool((lower <= torch.tensor(brute_min(net, box, C)) + 1e-7).all())
    for domain, row in enumerate(tuned[:, 0].tolist()):
        if float(plain[domain, row]) > 1e-6:  # proved at once: its steps stop, its warm starts come back
            assert torch.equal(a[domain], alpha[domain]) and torch.equal(b[domain], beta[domain])
        elif float(lower[domain, row]) > float(plain[domain, row]) + 1e-9:  # risen: by moving its own row
            assert not torch.equal(a[domain, row], alpha[domain, row]) or not torch.equal(b[domain, row],
                                                                                        beta[domain, row])


@pytest.mark.parametrize("seed", range(6))
def test_proved_domains_stop_stepping_without_changing_the_others(seed, monkeypatch):
    """Domains of a batch that a split already proves stop their Adam steps (`STOP_SHARE`): the other domains' bounds
    and slopes come out as when every domain steps to the end (up to rounding); the proved ones stay proved. (That
    every bound stays below the domain's minimum: `test_beta_bounds_stay_below_the_domain_minimum`.)"""
    rng, net, box = setup(seed, [3, 8, 8, 2])
    C = rng.normal(size=(2, 2))

    def problem_for(d: np.ndarray) -> SplitDomains:
        return SplitDomains(net, torch.tensor(box.lo)[None], torch.tensor(box.hi)[None],
                                 ObjectiveRows.of(Property(((C, d),)), 2), root_of(net, box, C, d))

    problem = problem_for(np.zeros(2))
    N = problem.n_split
    if N < 2:
        pytest.skip("fewer than two unstable neurons")
    phases = torch.tensor(list(itertools.product([-1, 0, 1], repeat=2)), dtype=torch.int8)
    splits = torch.zeros(len(phases), N, dtype=torch.int8)
    splits[:, rng.choice(N, 2, replace=False)] = phases
    disjunct = torch.zeros(len(splits), dtype=torch.long)
    alpha = problem.start_alpha().expand(len(splits), 2, -1).clone()
    beta = torch.zeros(len(splits), 2, N, dtype=torch.float64)
    keys = problem.bound(splits, disjunct, alpha, beta, steps=0)[0].amax(1)
    problem = problem_for(float(keys.median()) * np.ones(2))  # rows C y - d: the first pass proves about half
    plain = problem.bound(splits, disjunct, alpha, beta, steps=0)[0]
    stopping = problem.bound(splits, disjunct, alpha, beta, steps=5)
    monkeypatch.setattr(split_domains, "STOP_SHARE", 0)  # every domain steps to the end
    full = problem.bound(splits, disjunct, alpha, beta, steps=5)
    early = plain.amax(1) > relu_bab.PROOF_MARGIN
    stepped = ~early & (stopping[0].amax(1) <= 1e-6)
    assert torch.allclose(stopping[0][stepped], full[0][stepped], atol=1e-9, rtol=0)
    assert torch.allclose(stopping[1][stepped], full[1][stepped], atol=1e-9, rtol=0)
    assert bool((stopping[0].amax(1)[early] > relu_bab.PROOF_MARGIN).all())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), width=st.integers(3, 5), gap=st.floats(-0.4, 0.4), tuned_rows=st.integers(1, 3))
def test_conjunctions_whose_proving_row_changes_between_domains(seed, width, gap, tuned_rows):
    """The conjunction ``c f <= m - h and c f >= m + h`` (m: the middle of c f's range, h: gap times half its width)
    and a row that never helps: with gap > 0 no input meets it, but a domain is ruled out by one row or the other
    depending on where c f lies in it, so the row that proves changes between domains; with gap < 0 the inputs where
    c f is near m meet it.
    With only `tuned_rows` rows optimized per domain, the search reaches that verdict or stays undecided."""
    rng, net, box = setup(seed, [3, width, width, 3])
    c = rng.normal(size=3)
    low, minus_high = brute_min(net, box, np.stack([c, -c]))
    high = -minus_high
    assume(high - low > 1e-3 and abs(gap) > 1e-3)
    middle, half = (low + high) / 2, gap * (high - low) / 2
    prop = Property(((np.stack([c, -c, rng.normal(size=3)]), np.array([middle - half, -middle - half, 1e3])),))
    rows = ObjectiveRows.of(prop, 3)
    lo, hi = torch.tensor(box.lo)[None], torch.tensor(box.hi)[None]

    def check(points):
        bad = prop.violated_by(net.forward(points.numpy()))
        return points[bad][0].numpy() if bad.any() else None

    result = relu_bab.search(net, lo, hi, rows, root_of(net, box, rows.C.numpy(), rows.d.numpy()),
                             deadline=time.perf_counter() + 10, check=check, tuned_rows=tuned_rows)
    assert result.status in (("holds" if gap > 0 else "violated"), "open")
    if result.status == "violated":
        assert box.contains(result.x) and prop.violated_by(net.forward(result.x))
    if result.status == "open":
        assert bool(result.still.any())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_only_the_masked_disjuncts_are_searched(seed):
    """Disjunct 0 violated (a threshold above the exact minimum), disjunct 1 ruled out (below it): the whole
    property is violated; searching disjunct 1 alone (`only`) proves it, disjunct 0 alone finds the point."""
    rng, net, box = setup(seed, [3, 4, 4, 3])
    C = rng.normal(size=(2, 3))
    exact = brute_min(net, box, C)
    prop = Property(((C[:1], np.array([exact[0] + 0.05])), (C[1:], np.array([exact[1] - 0.05]))))
    rows = ObjectiveRows.of(prop, 3)
    d = np.concatenate([prop.objective_rows(k)[1] for k in range(2)])
    lo, hi = torch.tensor(box.lo)[None], torch.tensor(box.hi)[None]

    def run(only):
        def check(points):  # a point counts for the searched disjuncts only
            values = net.forward(points.numpy()) @ C.T
            bad = ((values <= np.array([exact[0] + 0.05, exact[1] - 0.05])) & np.array(only)).any(1)
            return points[bad][0].numpy() if bad.any() else None

        return relu_bab.search(net, lo, hi, rows, root_of(net, box, C, d), deadline=time.perf_counter() + 20,
                               check=check, only=torch.tensor(only))

    assert run([False, True]).status == "holds"
    second = run([True, False])
    assert second.status == "violated" and prop.violated_by(net.forward(second.x))


@pytest.fixture(scope="module", params=[(k, s) for k in TINY_KINDS for s in (0, 1, 2)], ids=lambda p: f"{p[0]}-{p[1]}")
def tiny_graph(request, tmp_path_factory):
    kind, seed = request.param
    return load_onnx(random_graph_file(kind, tmp_path_factory.mktemp(kind), seed)), seed


def test_graph_verdicts_equal_the_enumeration(tiny_graph, monkeypatch):
    """Conv, residual and MaxPool graphs: relu_split (the optimized search, then the MILP for what it cannot split;
    no MILP slot) and the search alone against the enumeration oracle, on single rows, disjunctions, conjunctions and
    exact ties."""
    monkeypatch.setattr(bab, "MILP_SLOT_SPLITTABLE", 0)
    monkeypatch.setattr(bab, "MILP_PROBE_SHARE", 0.0)
    net, seed = tiny_graph
    box, C, exact, cases = verdict_cases(net, seed)
    lo, hi = torch.tensor(box.lo)[None], torch.tensor(box.hi)[None]
    for prop, expected in cases:
        confirm = lambda x, prop=prop: box.contains(x) and bool(prop.violated_by(net.forward(x)))
        result = bab.relu_split(net, box, prop, deadline=time.perf_counter() + 20, confirm=confirm)
        assert result.status == expected
        rows = ObjectiveRows.of(prop, net.n_outputs)
        alone = relu_bab.search(net, lo, hi, rows, root_of(net, box, *prop.objective_rows(0)),
                                deadline=time.perf_counter() + 10,
                                check=lambda p, prop=prop: next((x.numpy() for x in p if confirm(x.numpy())), None))
        assert alone.status in (expected, "open")
    # an exact tie (the threshold is the exact minimum, met at a point) is never proved
    tie = Property(((C[:1], exact[:1]),))
    result = bab.relu_split(net, box, tie, deadline=time.perf_counter() + 10, confirm=lambda x: False)
    assert result.status in ("unknown", "timeout")


@pytest.mark.parametrize("kind,seed", [(k, s) for k in ("tiny_conv", "dense") for s in (0, 1, 2)])
def test_the_one_layer_milp_slot_gives_the_enumerations_verdicts(kind, seed, tmp_path):
    """One unstable ReLU layer: after the search's root round the MILP decides the disjuncts still open
    (bab.MILP_ONE_LAYER_MAX); the verdicts equal the enumeration's, a tie is never proved."""
    net = load_onnx(random_graph_file(kind, tmp_path, seed)) if kind == "tiny_conv" else \
        random_network([3, 10, 3], np.random.default_rng(seed))
    stats = assert_relu_split_verdicts(net, seed + 20)
    assert any("milp_slot" in one for one in stats)  # the path ran


@pytest.mark.parametrize("seed", [0, 2])
def test_nearly_one_unstable_layer_takes_the_one_layer_slot(seed, monkeypatch):
    """10-11 root-unstable ReLUs in the first layer, one in the second (at most bab.ONE_LAYER_REST after the first):
    with the small-network and probe slots off, the MILP still decides the disjuncts the root round leaves open; the
    verdicts equal the enumeration's, a tie is never proved."""
    monkeypatch.setattr(bab, "MILP_SLOT_SPLITTABLE", 0)
    monkeypatch.setattr(bab, "MILP_PROBE_SHARE", 0.0)
    net = random_network([3, 12, 1, 3], np.random.default_rng(seed))
    stats = assert_relu_split_verdicts(net, seed + 40)
    assert any("milp_slot" in one for one in stats)  # the path ran


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_small_network_milp_slot_gives_the_enumerations_verdicts(seed, monkeypatch):
    """Two or three unstable ReLU layers, few ReLUs (bab.MILP_SLOT_SPLITTABLE), the slot right after the root round
    (MILP_SLOT_AFTER 0): the MILP decides what the round leaves open, the search resumes where it does not; the
    verdicts equal the enumeration's, a tie is never proved."""
    monkeypatch.setattr(bab, "MILP_SLOT_AFTER", 0.0)
    net = random_network([3, 7, 7, 3] if seed < 2 else [3, 4, 5, 5, 3], np.random.default_rng(seed))
    stats = assert_relu_split_verdicts(net, seed + 30)
    assert any("milp_slot" in one for one in stats)  # the path ran


@pytest.mark.parametrize("share", [bab.MILP_PROBE_SHARE, 1e-9])
def test_the_probe_milp_slot_gives_the_enumerations_verdicts(share, monkeypatch):
    """Too little time to refine (20 s) and more root-unstable ReLUs than the small-network slot takes
    (MILP_SLOT_SPLITTABLE 0): the MILP gets MILP_PROBE_SHARE of the time left inside the search (right after the
    root round here), and the search goes on with its pool where the MILP does not decide (a share of 1e-9: the MILP
    gives up at once, every time). The verdicts equal the enumeration's, a tie is never proved."""
    monkeypatch.setattr(bab, "MILP_SLOT_SPLITTABLE", 0)
    monkeypatch.setattr(bab, "MILP_SLOT_AFTER", 0.0)
    monkeypatch.setattr(bab, "MILP_PROBE_SHARE", share)
    stats = [one for seed in (0, 1) for one in assert_relu_split_verdicts(
        random_network([3, 7, 7, 3], np.random.default_rng(seed)), seed + 50)]
    slots = [one["milp_slot"]["status"] for one in stats if "milp_slot" in one]
    assert slots and (share > 1e-6 or set(slots) == {"timeout"})


@pytest.mark.parametrize("seed", [0, 1])
def test_an_interlude_runs_once_and_the_disjuncts_it_decides_leave_the_search(seed):
    """relu_bab.search's interlude (bab.relu_split's MILP slot), due after the root round: called once, with the
    disjuncts still open. Both disjuncts 0.001 inside their exact minima: the search holds whether the interlude
    decides disjunct 0 or nothing, and the point it returns (row 0's minimizer, safe here) is checked and the search
    goes on. Disjunct 0's threshold above its minimum: violated, the point confirmed; but held when the interlude
    decides disjunct 0 and `check` leaves it out (its domains, which no bound can close, are dropped)."""
    rng, net, box = setup(seed, [3, 6, 6, 3], radius=1.0)
    C = rng.normal(size=(2, 3))
    exact = milp.bound(net, box, C, np.zeros(2))
    lo, hi = torch.tensor(box.lo)[None], torch.tensor(box.hi)[None]

    def run(first: float, decides: list[int], checked=(True, True)):
        thresholds = np.array([first, exact.lower[1] - 0.001])
        prop = Property(((C[:1], thresholds[:1]), (C[1:], thresholds[1:])))
        calls = []

        def interlude(pending):
            calls.append(pending)
            return torch.tensor(exact.x[0])[None], [k for k in decides if k in pending]

        def check(points):
            bad = ((net.forward(points.numpy()) @ C.T <= thresholds) & np.array(checked)).any(1)
            return points[bad][0].numpy() if bad.any() else None

        d = np.concatenate([prop.objective_rows(k)[1] for k in range(2)])
        result = relu_bab.search(net, lo, hi, ObjectiveRows.of(prop, 3), root_of(net, box, C, d),
                                 deadline=time.perf_counter() + 20, check=check, interlude=interlude)
        return result, calls, prop

    for decides in ([0], []):
        result, calls, _ = run(exact.lower[0] - 0.001, decides)
        assert result.status == "holds" and len(calls) == 1 and set(calls[0]) <= {0, 1} and calls[0]
    result, calls, prop = run(exact.upper[0] + 0.05, [])
    assert result.status == "violated" and prop.violated_by(net.forward(result.x)) and len(calls) <= 1
    result, calls, _ = run(exact.upper[0] + 0.05, [0], checked=(False, True))
    assert result.status == "holds" and 0 in calls[0]


def test_the_milp_rules_out_disjuncts_one_by_one():
    """bab.milp_phase (the MILP slots' and relu_split's phase 2) names each disjunct it rules out, so that the search
    drops them even when the MILP does not decide the whole property: a single row 0.01 inside its exact minimum
    and a conjunction 0.01 inside its exact min-max are ruled out; the same conjunction at its exact min-max (a tie,
    with no point confirmed) is not, and the property stays undecided."""
    rng, net, box = setup(3, [3, 6, 6, 3], radius=1.0)
    C = rng.normal(size=(3, 3))
    single = milp.bound(net, box, C[:1], np.zeros(1)).lower[0]
    tie = milp.min_max(net, box, C[1:], np.zeros(2))[0]
    prop = Property(((C[1:], np.full(2, tie)), (C[:1], np.array([single - 0.01])), (C[1:], np.full(2, tie - 0.01))))
    status, x, stats, ruled_out = bab.milp_phase(net, box, prop, [0, 1, 2], None, time.perf_counter() + 30,
                                                 confirm=lambda x: False)
    assert status == "unknown" and x is None and sorted(ruled_out) == [1, 2] and stats["bound_calls"] == 3


def test_a_pool_near_its_memory_cap_is_searched_depth_first(monkeypatch):
    """With a pool cap of 2 domains per splittable neuron, instances whose best-first pool outgrows it are still
    decided: past half the cap the deepest domains go first and a round never pops more than the room left. Never
    a wrong verdict (the threshold is 0.001 below the MILP's exact minimum: holds), the cap kept, and at least one
    instance (seed 8) decided only because of the depth-first rounds (best-first alone stops at the cap, open)."""
    decided_by_depth_first = []
    for seed in (7, 8, 11):
        rng, net, box = setup(seed, [3, 10, 10, 3], radius=1.0)
        C = rng.normal(size=(1, 3))
        prop = Property(((C, milp.bound(net, box, C, np.zeros(1)).lower - 0.001),))
        rows, d = ObjectiveRows.of(prop, 3), prop.objective_rows(0)[1]
        lo, hi = torch.tensor(box.lo)[None], torch.tensor(box.hi)[None]
        root = root_of(net, box, C, d)
        N = SplitDomains(net, lo, hi, rows, root).n_split
        cap = 2 * N  # domains; the search derives it from bytes: 8 M N + 17 N + 72 per domain (M = 1 row)

        def run(share: float):
            monkeypatch.setattr(relu_bab, "DEPTH_FIRST_SHARE", share)
            return relu_bab.search(net, lo, hi, rows, root, deadline=time.perf_counter() + 30, check=lambda p: None,
                                   pool_bytes=cap * (25 * N + 72) + 1)

        result = run(0.5)
        assert result.status in ("holds", "open")  # the property holds: never violated
        if result.status == "holds":
            assert result.stats["max_pool"] <= cap
            best_first = run(float("inf"))
            if best_first.status == "open" and result.stats["depth_first"] > 0:
                decided_by_depth_first.append(seed)
    assert 8 in decided_by_depth_first
