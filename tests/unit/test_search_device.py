"""The ReLU-split search runs where it is told: every tensor it makes is on the device of the box it gets.

Under ``torch.device("meta")`` as the default, a tensor created without a device lands on the meta device, which
holds no data: using it beside the search's tensors, or reading it, fails. So these runs on the CPU show that the
search, the pool, the refinement and verify's phases place each tensor they create explicitly, as a GPU run needs;
on a machine with CUDA the same runs go there too, with the same verdicts.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import torch

from graph_models import assert_relu_split_verdicts, random_graph_file, verdict_cases
from verifier import relu_bab
from verifier.bounds import dual, milp
from verifier.bounds.interval import by_node
from verifier.bounds.refine import pre_activations, refine_layer_bounds
from verifier.network import random_network
from verifier.objective_rows import ObjectiveRows
from verifier.onnx import load_onnx
from verifier.spec import InputBox, Property
from verifier.verify import verify

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def no_default_device():
    """A context where tensors made without a device go to the meta device (no data)."""
    return torch.device("meta")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,seed", [("tiny_conv", 0), ("tiny_residual", 1), ("tiny_maxpool", 2)])
def test_verify_on_a_device_gives_the_enumerations_verdicts(kind, seed, device, tmp_path, monkeypatch):
    """verify (falsification, dual passes, the search, the MILP for what it cannot split; input splitting, which
    runs on the CPU, turned off) with every tensor on `device`: single rows, disjunctions and a conjunction, holds
    and violated, as the enumeration says."""
    monkeypatch.setattr(sys.modules["verifier.verify"], "INPUT_SPLIT_MAX_INPUTS", 0)
    net = load_onnx(random_graph_file(kind, tmp_path, seed))
    box, _, _, cases = verdict_cases(net, seed)
    for prop, expected in cases:
        with no_default_device():
            verdict = verify(net, box, prop, timeout=20, device=device)
        assert verdict.status == expected
        if expected == "violated":
            x, _ = verdict.counterexample  # the point and onnxruntime's outputs there
            assert box.contains(x) and prop.violated_by(net.forward(x))


@pytest.mark.parametrize("device", DEVICES)
def test_relu_split_and_its_milp_slot_on_a_device(device):
    """One unstable ReLU layer (the MILP slot after the root round) and two (the search, then the MILP): the
    enumeration's verdicts, a tie never proved."""
    for sizes, seed in (([3, 10, 3], 0), ([3, 6, 6, 3], 1)):
        net = random_network(sizes, np.random.default_rng(seed))
        stats = assert_relu_split_verdicts(net, seed + 20, device, no_default_device)
        assert len(sizes) > 3 or any("milp_slot" in one for one in stats)


@pytest.mark.parametrize("device", DEVICES)
def test_search_options_on_a_device(device, monkeypatch):
    """Smart branching (top_k 3), one tuned row of a conjunction, depth-first rounds, the side attack's points, the
    proved domains kept for a certificate, linear regions decided by their LP: a property 0.001 below the exact
    minimum holds, one above it does not; the candidates come on the device, the kept domains on the CPU."""
    monkeypatch.setattr(relu_bab, "DEPTH_FIRST_SHARE", 0.0)  # every round depth-first
    rng = np.random.default_rng(5)
    net = random_network([3, 10, 10, 3], rng)
    centre = rng.normal(size=3)
    box = InputBox(centre - 0.6, centre + 0.6)
    C = rng.normal(size=(2, 3))
    lower, upper, _, status = milp.min_max(net, box, C, time_limit=30)
    assert status == "optimal" and upper - lower < 1e-6
    lo, hi = (torch.tensor(x, dtype=torch.float64, device=device)[None] for x in (box.lo, box.hi))
    for shift, expected in ((-0.001, "holds"), (0.001, "violated")):
        prop = Property(((C, np.full(2, lower + shift)),))  # conjunction: both rows below the threshold
        rows = ObjectiveRows.of(prop, 3)
        root = by_node(net, dual.bound(net, box, *prop.objective_rows(0), slopes="adaptive").layer_bounds)
        closed: list = []

        def check(points):
            assert points.device.type == torch.device(device).type
            bad = [p.cpu().numpy() for p in points if prop.violated_by(net.forward(p.cpu().numpy()))]
            return bad[0] if bad else None

        reports: list = []
        with no_default_device():
            result = relu_bab.search(net, lo, hi, rows, root, deadline=time.perf_counter() + 20, check=check,
                                     side_attack=lambda seconds: None if reports else box.center, top_k=3,
                                     tuned_rows=1, max_batch=2, closed=closed,
                                     progress=lambda *report: reports.append(report))
        assert result.status == expected, result.stats
        assert expected == "violated" or (result.stats["stuck"] > 0 and result.stats["depth_first"] > 0)
        assert all(t.device.type == "cpu" for part in closed[1:] for t in part[:4])


@pytest.mark.parametrize("device", DEVICES)
def test_refinement_on_a_device_keeps_bounds_sound(device):
    """refine_layer_bounds on `device`: the refined bounds contain every sampled pre-activation and are no wider
    than the root's."""
    rng = np.random.default_rng(5)
    net = random_network([4, 12, 12, 12, 2], rng)
    centre = rng.normal(size=4)
    box = InputBox(centre - 0.5, centre + 0.5)
    C, d = np.eye(2), np.zeros(2)
    root = dual.bound(net, box, C, d, slopes="adaptive").layer_bounds
    with no_default_device():
        refined, info = refine_layer_bounds(net, box, root, deadline=time.perf_counter() + 6, objective=(C, d),
                                            device=device)
    assert info["searches"] > 0
    samples = np.asarray(box.lo) + (np.asarray(box.hi) - box.lo) * rng.random((5000, 4))
    for (l0, u0), (l, u), z in zip(root, refined, pre_activations(net, samples)):
        assert np.all(l <= z.min(0) + 1e-9) and np.all(z.max(0) <= u + 1e-9)
        assert np.all(l >= l0 - 1e-9) and np.all(u <= u0 + 1e-9)
