"""Refined layer bounds (bounds/refine.py): each settled sign is the exact one, the bounds never tighter than the
exact range, and relu_split's verdicts with the refinement step equal the enumeration's."""
from __future__ import annotations

import time

import numpy as np
import pytest

from graph_models import TINY_KINDS, assert_relu_split_verdicts, random_graph_file
from verifier import bab
from verifier.bounds import bound
from verifier.bounds.enumerate import enumerate_bound
from verifier.bounds.interval import relu_inputs
from verifier.bounds.refine import extreme_points, pre_activations, refine_layer_bounds, settle_signs
from verifier.network import random_network
from verifier.onnx import load_onnx
from verifier.spec import InputBox


def exact_ranges(net, box: InputBox) -> list[tuple[np.ndarray, np.ndarray]]:
    """The exact (min, max) of every ReLU node's input entries over the box, by enumeration."""
    ranges = []
    for k in relu_inputs(net)[:len(net.relu_nodes)]:
        sub = net.upto(k)
        eye = np.eye(sub.n_outputs)
        values = enumerate_bound(sub, box, np.vstack([eye, -eye]))
        ranges.append((values[:sub.n_outputs], -values[sub.n_outputs:]))
    return ranges


def loose_bounds(net, box: InputBox) -> list:
    """Interval bounds (loose: much for the refinement to settle)."""
    return bound(net, box, np.eye(net.n_outputs)[:1], method="ibp").layer_bounds


def networks():
    for seed in range(6):
        rng = np.random.default_rng(seed)
        net = random_network([3, 5, 5, 4, 2], rng)
        centre = rng.normal(size=3)
        yield f"dense-{seed}", net, InputBox(centre - 0.8, centre + 0.8)


@pytest.mark.parametrize("name,net,box", list(networks()), ids=lambda v: v if isinstance(v, str) else "")
def test_refined_bounds_contain_the_exact_range_and_stay_inside_the_given(name, net, box):
    """With objective rows on odd seeds: the alpha-CROWN pass over the refined bounds too."""
    given = loose_bounds(net, box)
    objective = (np.eye(net.n_outputs), np.zeros(net.n_outputs)) if int(name[-1]) % 2 else None
    refined, info = refine_layer_bounds(net, box, given, deadline=time.perf_counter() + 30, objective=objective)
    exact = exact_ranges(net, box)
    for (l, u), (l0, u0), (low, high) in zip(refined, given, exact):
        assert np.all(l <= low + 1e-7) and np.all(u >= high - 1e-7)  # sound
        assert np.all(l >= l0) and np.all(u <= u0)  # only ever tighter
    assert info["unstable_after"] <= info["unstable_before"]
    assert info["searches"] + info["skipped"] > 0 and info["stabilized"] + info["tightened"] <= info["searches"]


def test_refinement_settles_neurons_the_interval_bounds_leave_unstable():
    """Over the six dense nets some neuron is proved stable (a refinement doing nothing would pass the containment
    test above)."""
    stabilized = 0
    for _, net, box in networks():
        _, info = refine_layer_bounds(net, box, loose_bounds(net, box), deadline=time.perf_counter() + 30)
        stabilized += info["stabilized"]
        # the searches' stable neurons, and more: the pass over a refined layer tightens the next one
        assert sum(info["unstable_after"]) <= sum(info["unstable_before"]) - info["stabilized"]
    assert stabilized > 0


def unstable_rows(net, box: InputBox):
    """Per later layer of a net (interval bounds): the layer t, its cut, the given bounds, every unstable entry
    twice (sides +1, -1) and the exact lowest value of ``side * z`` there (by enumeration)."""
    given = loose_bounds(net, box)
    for t, (low, high) in list(enumerate(exact_ranges(net, box)))[1:]:
        l, u = given[t]
        entries = np.tile(np.flatnonzero((l < 0) & (u > 0)), 2)
        sides = np.repeat([1.0, -1.0], len(entries) // 2)
        exact = np.where(sides > 0, low[entries], -high[entries])
        yield t, net.upto(relu_inputs(net)[t]), given[:t + 1], entries, sides, exact


def test_settled_signs_are_the_exact_ones():
    """`settle_signs` on every unstable entry and side of the six dense nets' later layers, with time to finish:
    each row proved (> 0) exactly where the exact range has that sign, refuted (-inf) everywhere else."""
    outcomes = {"proved": 0, "refuted": 0}
    for _, net, box in networks():
        for t, cut, given, entries, sides, exact in unstable_rows(net, box):
            lower, stats = settle_signs(cut, box, given, entries, sides, time.perf_counter() + 20)
            assert np.array_equal(lower > 0, exact > 0) and np.all(np.isneginf(lower[exact <= 0]))
            outcomes["proved"] += int((lower > 0).sum())
            outcomes["refuted"] += int((exact <= 0).sum())
            assert stats["domains"] >= len(entries)
    assert outcomes["proved"] > 0 and outcomes["refuted"] > 0


def test_rows_open_at_the_deadline_bound_the_exact_minimum():
    """Stopped after its root round (deadline passed), `settle_signs` gives each open row its lowest open bound:
    never above the exact minimum of ``side * z``, and above the given bound somewhere (the search's bounds)."""
    finite, above = 0, 0
    for _, net, box in networks():
        for t, cut, given, entries, sides, exact in unstable_rows(net, box):
            lower, _ = settle_signs(cut, box, given, entries, sides, time.perf_counter())
            ok = np.isfinite(lower) & (lower <= 0)
            assert np.all(lower[ok] <= exact[ok] + 1e-7)
            l, u = given[t]
            finite += int(ok.sum())
            above += int((lower[ok] > np.where(sides > 0, l[entries], -u[entries])[ok] + 1e-9).sum())
    assert finite > 0 and above > 0


def test_bound_only_rows_reach_the_exact_minimum_when_searched_to_the_end():
    """Rows searched for their bound only (`bound_only`: never refuted; a linear region closes with its LP's bound),
    with time to finish, on every unstable entry and side of the six dense nets' later layers: each row's bound
    never above the exact minimum of ``side * z``, finite, and equal to it (to 1e-6) where the search ended (every
    domain closed by its LP, or proved above the minimum: the lowest region's LP is the minimum)."""
    exact_rows = 0
    for _, net, box in networks():
        for t, cut, given, entries, sides, exact in unstable_rows(net, box):
            lower, stats = settle_signs(cut, box, given, entries, sides, time.perf_counter() + 20,
                                        bound_only=np.ones(len(entries), bool))
            assert np.all(np.isfinite(lower)) and np.all(lower <= exact + 1e-7)
            exact_rows += int(np.sum(np.abs(lower - exact) <= 1e-6))
            assert stats["stuck"] > 0  # linear regions were reached and closed by their LPs
    assert exact_rows > 0


def test_tightening_narrows_entries_that_take_both_signs_and_stays_sound():
    """refine_layer_bounds (tighten, the default) also searches the entries seen on both sides (skipped with tighten
    off): the bounds still contain the exact ranges, none wider than with it off, and some both-sided entry narrower
    over the six dense nets."""
    narrower = 0
    for _, net, box in networks():
        given = loose_bounds(net, box)
        plain, info_plain = refine_layer_bounds(net, box, given, deadline=time.perf_counter() + 30, tighten=False)
        tight, info = refine_layer_bounds(net, box, given, deadline=time.perf_counter() + 30)
        assert info["skipped"] == 0 and info["searches"] >= info_plain["searches"]
        for (l, u), (l0, u0), (low, high) in zip(tight, plain, exact_ranges(net, box)):
            assert np.all(l <= low + 1e-7) and np.all(u >= high - 1e-7)
            assert np.all(l >= l0 - 1e-9) and np.all(u <= u0 + 1e-9)
            two_sided = (low < 0) & (high > 0)
            narrower += int(np.sum((l > l0 + 1e-6) & two_sided) + np.sum((u < u0 - 1e-6) & two_sided))
    assert narrower > 0


def test_alpha_pass_over_refined_bounds_stays_inside_them_and_sound():
    """The alpha-CROWN pass that ends the refinement (`dual.bound(..., reference=...)`): every layer bound inside the
    reference and around the exact range, the rows' bounds below their exact minima; and tighter than the
    reference somewhere (a pass that only copied it would pass the rest). The reference: halfway between the
    exact ranges and alpha-CROWN's bounds (sound, and tighter than the pass finds alone)."""
    tighter = 0
    for _, net, box in networks():
        C, d = np.eye(net.n_outputs) - np.eye(net.n_outputs)[::-1], np.zeros(net.n_outputs)
        exact = exact_ranges(net, box)
        plain = bound(net, box, C, d, method="dual", slopes="opt").layer_bounds
        reference = [(low + (l - low) / 2, high + (u - high) / 2)
                     for (l, u), (low, high) in zip(plain, exact)] + plain[len(exact):]
        res = bound(net, box, C, d, method="dual", slopes="opt", reference=reference)
        for (l, u), (rl, ru), (low, high) in zip(res.layer_bounds, reference, exact):
            assert np.all(l >= rl) and np.all(u <= ru)
            assert np.all(l <= low + 1e-7) and np.all(u >= high - 1e-7)
            tighter += int(np.sum(l > rl + 1e-6) + np.sum(u < ru - 1e-6))
        assert np.all(res.lower <= enumerate_bound(net, box, C, d) + 1e-7)
    assert tighter > 0


def test_extreme_points_reach_the_range_ends_on_a_linear_layer():
    """The first layer is linear in the input: signed-gradient steps reach its exact min and max at box corners."""
    rng = np.random.default_rng(3)
    net = random_network([4, 6, 3], rng)
    box = InputBox(-np.ones(4), np.ones(4))
    points = extreme_points(net, box, np.arange(6))
    assert points.shape == (2 * 6, 4) and np.all(points >= box.lo) and np.all(points <= box.hi)
    values = pre_activations(net, points)[0]  # (12, 6)
    W, b = net.affines[0].weight, net.affines[0].bias
    low, high = -np.abs(W).sum(1) + b, np.abs(W).sum(1) + b
    assert np.allclose(values[np.arange(6), np.arange(6)], low) and np.allclose(values[6 + np.arange(6), np.arange(6)],
                                                                               high)


@pytest.fixture(scope="module", params=[(k, s) for k in TINY_KINDS for s in (0, 1)], ids=lambda p: f"{p[0]}-{p[1]}")
def tiny_graph(request, tmp_path_factory):
    kind, seed = request.param
    return load_onnx(random_graph_file(kind, tmp_path_factory.mktemp(kind), seed)), seed


def test_refined_graph_bounds_contain_the_exact_range(tiny_graph):
    net, seed = tiny_graph
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-0.5, 0.5, net.n_inputs)
    box = InputBox(centre - 0.3, centre + 0.3)
    given = loose_bounds(net, box)
    refined, _ = refine_layer_bounds(net, box, given, deadline=time.perf_counter() + 30)
    for (l, u), (low, high) in zip(refined, exact_ranges(net, box)):
        assert np.all(l <= low + 1e-7) and np.all(u >= high - 1e-7)


def test_relu_split_with_the_refinement_gives_the_enumerations_verdicts(tiny_graph, monkeypatch):
    """The refinement forced at once (no time share, no minimum): verdicts on single rows, disjunctions and a
    conjunction equal the enumeration's; an exact tie is never proved. (Where a single ReLU layer is unstable,
    relu_split gives that time to the MILP instead: test_relu_bab's one-layer test.)"""
    monkeypatch.setattr(bab, "REFINE_AFTER", 0.0)
    monkeypatch.setattr(bab, "REFINE_MIN_SECONDS", 0.0)
    monkeypatch.setattr(bab, "MILP_SLOT_SPLITTABLE", 0)  # small networks take the MILP slot instead
    net, seed = tiny_graph
    stats = assert_relu_split_verdicts(net, seed + 10)
    assert any("refine" in one or "milp_slot" in one for one in stats)  # the path ran



@pytest.mark.parametrize("pays", [1.0, -1.0])
def test_refinement_in_stages_goes_on_only_while_it_pays(pays, monkeypatch):
    """relu_split's refinement in stages (`bab._refine_in_stages`) from loose bounds on the six dense nets, a property
    0.01 inside the exact minimum: a stage follows only one that closed at least REFINE_PAYS of the gap (the worst
    disjunct's alpha-CROWN bound below 0) and left it open; REFINE_PAYS 1 (no stage pays that much) stops after the
    first, -1 (any stage pays) goes on to REFINE_STAGES where the time allows; the bounds stay sound throughout."""
    from verifier.bounds import dual
    from verifier.spec import Property

    monkeypatch.setattr(bab, "REFINE_MIN_SECONDS", 0.0)
    monkeypatch.setattr(bab, "REFINE_PAYS", pays)
    stages = []
    for _, net, box in networks():
        given = loose_bounds(net, box)
        c = np.eye(net.n_outputs)
        exact = enumerate_bound(net, box, c)
        prop = Property(tuple((c[k:k + 1], np.array([exact[k] - 0.01])) for k in range(net.n_outputs)))
        C = np.vstack([prop.objective_rows(k)[0] for k in range(net.n_outputs)])
        d = np.concatenate([prop.objective_rows(k)[1] for k in range(net.n_outputs)])
        gaps = [-(dual.bound(net, box, C, d, slopes="opt", reference=given).lower.min() - bab.PROOF_MARGIN)]
        ends = np.arange(1, net.n_outputs)  # one row per disjunct
        refined, infos = bab._refine_in_stages(net, box, (C, d), ends, given, time.perf_counter() + 6, None, "cpu")
        gaps += [info["gap"] for info in infos if "gap" in info]
        for before, after, _ in zip(gaps, gaps[1:], infos[1:]):  # each stage but the last was followed by another
            assert after > 0 and after <= (1 - pays) * before + 1e-9
        stages.append(len(infos))
        for (l, u), (l0, u0), (low, high) in zip(refined, given, exact_ranges(net, box)):
            assert np.all(l <= low + 1e-7) and np.all(u >= high - 1e-7) and np.all(l >= l0) and np.all(u <= u0)
    assert max(stages) == 1 if pays > 0 else max(stages) > 1
