"""The VNN-LIB pipeline (verify.py): verdicts equal the exact answer on random networks saved as ONNX files,
counterexamples confirmed by onnxruntime on those files, several input boxes, result files."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from graph_models import verdict_cases
from verifier import bab
from verifier.falsification import falsify
from verifier.bounds.enumerate import MAX_RELUS, enumerate_bound
from verifier.network import Affine, Network, ReLU, random_network
from verifier.onnx import load_onnx, run_onnxruntime, save_onnx
from verifier.spec import InputBox, Property
from verifier.verify import Verdict, float32_inside, verify, verify_instance, write_result_file


def onnx_problem(tmp_path, seed: int, n: int, depth: int, width: int, relu_out: bool, radius: float):
    """A random network written to ONNX (float32) and loaded back: the network verify sees has a source file."""
    rng = np.random.default_rng(seed)
    path = save_onnx(random_network([n] + [width] * depth + [3], rng, relu_on_output=relu_out),
                     tmp_path / f"net_{seed}_{n}.onnx")
    net = load_onnx(path)
    centre = rng.uniform(-1, 1, n)
    box = InputBox(centre - radius, centre + radius)
    return rng, net, box


def check_counterexample(net: Network, box: InputBox, prop: Property, verdict: Verdict) -> None:
    x, y = verdict.counterexample
    assert box.contains(x) and np.all(x.astype(np.float32).astype(np.float64) == x)
    ort = run_onnxruntime(net.source, x)  # the ORIGINAL file, not our float64 network
    np.testing.assert_array_equal(ort, y)
    assert prop.violated_by(ort)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.sampled_from([2, 5, 24]), depth=st.integers(1, 2),
       width=st.integers(2, 7), relu_out=st.booleans(), disjuncts=st.integers(1, 3), shift=st.floats(-0.5, 0.5))
def test_verdict_equals_the_exact_answer(tmp_path_factory, seed, n, depth, width, relu_out, disjuncts, shift):
    """n = 2, 5: input splitting; n = 24: dual passes, then the MILP. The exact answer comes from enumerating
    activation patterns (no code shared with verify, whose last phase is the MILP)."""
    assume(depth * width + 3 * relu_out <= MAX_RELUS)
    rng, net, box = onnx_problem(tmp_path_factory.mktemp("v"), seed, n, depth, width, relu_out, 0.3)
    C = rng.normal(size=(disjuncts, 3))
    exact = enumerate_bound(net, box, C)
    offset = np.min(exact) + shift  # unsafe: C_k f <= offset; the threshold sits near the minimum
    assume(abs(shift) > 1e-3)  # margins below float32 resolution are not decidable against onnxruntime
    prop = Property(tuple((C[k:k + 1], np.array([offset])) for k in range(disjuncts)))
    verdict = verify(net, box, prop, timeout=30)
    assert verdict.status == ("holds" if shift < 0 else "violated")
    if verdict.status == "violated":
        check_counterexample(net, box, prop, verdict)
    # every run falsifies first; "holds" needs at least one certified bound
    assert "falsify" in verdict.stats["phases"] and (verdict.status == "violated" or verdict.stats["bound_calls"] >= 1)


def test_verdict_is_frozen_and_reports_phases(tmp_path):
    rng, net, box = onnx_problem(tmp_path, 1, 3, 2, 6, False, 0.5)
    prop = Property(((np.array([[1.0, 0.0, 0.0]]), np.array([-1e6])),))  # y_0 <= -1e6: far out of reach
    verdict = verify(net, box, prop, timeout=10)
    assert verdict.status == "holds" and verdict.counterexample is None
    assert "falsify" in verdict.stats["phases"] and verdict.stats["domains"] >= 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.status = "violated"


def test_float32_inside():
    box = InputBox([0.1, -1.0, 0.3], [0.1 + 1e-6, 1.0, 0.3])
    x = float32_inside(np.array([0.1, 0.5, 0.3]), box)
    assert x is None  # 0.3 is no float32 number: the interval [0.3, 0.3] holds none
    box = InputBox([0.1, -1.0], [0.1 + 1e-6, 1.0])
    x = float32_inside(np.array([0.0, 2.0]), box)  # clipped, then rounded to float32 inside the box
    assert box.contains(x) and np.all(x.astype(np.float32).astype(np.float64) == x) and x[1] == 1.0


def one_relu_net(tmp_path) -> Network:
    """y = relu(x) on one input, as an ONNX file."""
    return load_onnx(save_onnx(Network((Affine([[1.0]], [0.0]), ReLU(), Affine([[1.0]], [0.0]))),
                               tmp_path / "relu.onnx"))


@pytest.mark.parametrize("unsafe, expected", [("(<= Y_0 0.5)", "violated"), ("(>= Y_0 5.0)", "holds"),
                                              ("(>= Y_0 1.5)", "violated")])
def test_instance_with_two_input_boxes(tmp_path, unsafe, expected):
    """x in [1, 2] or x in [-2, -1]: y <= 0.5 only in the second box, y >= 1.5 only in the first."""
    net = one_relu_net(tmp_path)
    path = tmp_path / "two.vnnlib"
    path.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
                    "(assert (or (and (>= X_0 1.0) (<= X_0 2.0)) (and (>= X_0 -2.0) (<= X_0 -1.0))))\n"
                    f"(assert {unsafe})\n")
    verdict = verify_instance(net, path, timeout=20)
    assert verdict.status == expected and verdict.stats["boxes"] == 2
    if expected == "holds":  # both boxes needed the search: its counters are kept per box
        assert [b["domains"] >= 1 for b in verdict.stats["bab"]] == [True, True]
    if expected == "violated":
        x, y = verdict.counterexample
        assert (1 <= x[0] <= 2 or -2 <= x[0] <= -1) and (y[0] <= 0.5 if "0.5" in unsafe else y[0] >= 1.5)


def test_result_files(tmp_path):
    write_result_file(tmp_path / "holds.txt", Verdict("holds"))
    assert (tmp_path / "holds.txt").read_text() == "unsat\n"
    write_result_file(tmp_path / "timeout.txt", Verdict("timeout"))
    assert (tmp_path / "timeout.txt").read_text() == "timeout\n"
    x, y = np.array([0.1, -2.5e-7, 1 / 3]), np.array([np.float32(0.2), 1e-300])
    write_result_file(tmp_path / "sat.txt", Verdict("violated", (x, y)), n_inputs=3)
    text = (tmp_path / "sat.txt").read_text()
    lines = text.splitlines()
    assert lines[0] == "sat" and lines[1].startswith("((X_0 ") and lines[-1].endswith(")")
    assert all(line.startswith(" (") for line in lines[2:])
    values = dict(re.findall(r"\((\w+) ([^()\s]+)\)", text))
    assert [float(values[f"X_{i}"]) for i in range(3)] == list(x)  # full precision: exact round trip
    assert [float(values[f"Y_{j}"]) for j in range(2)] == list(y)
    with pytest.raises(ValueError):
        write_result_file(tmp_path / "bad.txt", Verdict("violated", (x, y)), n_inputs=5)


def test_timeout_is_kept_on_a_high_dimensional_problem(tmp_path):
    """The high-dimensional path (64 inputs, two hidden layers of 64: dual passes, ReLU splitting, MILP) stops at
    the deadline: 0.5 s asked, answered within 2.5 s. The property is violated (a longer falsification found a
    point 1e-3 inside the unsafe set beforehand), so "holds" would be wrong; the short run may also find a point."""
    import time

    rng, net, box = onnx_problem(tmp_path, 7, 64, 2, 64, False, 0.5)
    C = rng.normal(size=(1, 3))
    unreachable = Property(((C, np.array([-1e9])),))
    best = falsify(net, box, unreachable, time_limit=3.0, seed=1, check=False)  # the least value it finds
    witness_value = float(C[0] @ net.forward(best.x))
    prop = Property(((C, np.array([witness_value + 1e-3])),))
    assert prop.violated_by(net.forward(best.x))
    start = time.perf_counter()
    verdict = verify(net, box, prop, timeout=0.5)
    assert time.perf_counter() - start < 2.5 and verdict.status in ("timeout", "unknown", "violated")
    if verdict.status == "violated":
        check_counterexample(net, box, prop, verdict)


def test_side_attack_rounds_follow_the_closest_step_scale(monkeypatch):
    """After one round per step scale, two rounds of three take the scale whose rounds came closest to a violation
    (least unsafe value), the third the scales in turn; each round gets its own generator offset."""
    import importlib

    from verifier import falsification
    from verifier.attacks import AttackResult

    verify_module = importlib.import_module("verifier.verify")  # the package's `verify` is the function

    scales = falsification.ROUND_STEP_SCALES
    value_of = {scale: float(i + 1) for i, scale in enumerate(sorted(scales, reverse=True))}  # largest: least
    calls = []

    def fake_falsify(network, box, prop, *, step_scale, first_round, **options):
        calls.append((step_scale, first_round))
        return AttackResult(box.center, value_of[step_scale], False, 0.0)

    monkeypatch.setattr(falsification, "falsify", fake_falsify)
    box = InputBox(np.zeros(2), np.ones(2))
    side = verify_module._SideAttack(None, box, None, seed=0, deadline=float("inf"), first=0.0)
    for _ in range(9):
        side.next_at = 0.0
        assert side(1.0) is None
    used = [scale for scale, _ in calls]
    closest = max(scales)
    assert sorted(used[:len(scales)]) == sorted(scales)  # each once first
    assert [used[i] for i in (3, 4, 6, 7)] == [closest] * 4
    assert {used[5], used[8]} <= set(scales) and used[5] != used[8]  # the exploring rounds take the scales in turn
    assert [first for _, first in calls] == list(range(1, 10))


def test_progress_reports_the_search_as_it_goes(tmp_path):
    """A property between the optimized dual bound and the attack's value keeps the ReLU search busy: every
    report names a phase of relu_split, a phase's domains never decrease, and open domains have their lowest bound
    at most 0 (above it, they would be proved); a proved search's last report has none open. The dual passes
    come first."""
    from verifier.bounds import bound

    rng, net, box = onnx_problem(tmp_path, 7, 64, 2, 64, False, 0.5)
    C = rng.normal(size=(1, 3))
    lower = float(bound(net, box, C, np.zeros(1), method="dual", slopes="opt").lower[0])
    best = falsify(net, box, Property(((C, np.array([-1e9])),)), time_limit=2.0, seed=1, check=False)
    upper = float(C[0] @ net.forward(best.x))
    assert lower < upper
    prop = Property(((C, np.array([lower + 0.3 * (upper - lower)])),))
    reports = []
    verdict = verify(net, box, prop, timeout=4.0, progress=lambda *report: reports.append(report))
    phases = {"dual pass (adaptive slopes)", "dual pass (opt slopes)", "ReLU split", "refining layer bounds",
              "ReLU split, refined root", "MILP"}
    assert reports and {phase for phase, *_ in reports} <= phases
    assert [phase for phase, *_ in reports[:2]] == ["dual pass (adaptive slopes)", "dual pass (opt slopes)"]
    for (phase, domains, *_), (next_phase, next_domains, *_) in zip(reports, reports[1:]):
        assert phase != next_phase or next_domains >= domains
    for phase, domains, open_, lowest in reports:
        assert (lowest is None) if open_ == 0 or not phase.startswith("ReLU split") else lowest <= 0
    if verdict.status == "holds" and reports[-1][0] == "ReLU split":
        assert reports[-1][2] == 0


@pytest.mark.parametrize("seed,share", [(0, bab.MILP_SLOT_SHARE), (1, bab.MILP_SLOT_SHARE), (0, 1e-9)])
def test_the_milp_slot_on_few_inputs_gives_the_enumerations_verdicts(seed, share, tmp_path, monkeypatch):
    """Few inputs (input splitting) and few ReLUs (bab.MILP_SLOT_SPLITTABLE), the slot right away (MILP_SLOT_AFTER
    0): the MILP decides, the input splitting goes on with its boxes where it does not (a share of 1e-9: the MILP
    gives up at once, every time). Verdicts equal the enumeration's, a tie is never proved, counterexamples are
    confirmed by onnxruntime."""
    monkeypatch.setattr(bab, "MILP_SLOT_AFTER", 0.0)
    monkeypatch.setattr(bab, "MILP_SLOT_SHARE", share)
    net = load_onnx(save_onnx(random_network([4, 6, 6, 3], np.random.default_rng(seed)), tmp_path / "n.onnx"))
    box, C, exact, cases = verdict_cases(net, seed)
    slots = []
    for prop, expected in cases + [(Property(((C[:1], exact[:1]),)), None)]:
        verdict = verify(net, box, prop, timeout=20)
        assert (verdict.status == expected) if expected else verdict.status != "holds", (expected, verdict.stats)
        if verdict.status == "violated":
            check_counterexample(net, box, prop, verdict)
        slots += [verdict.stats["milp_slot"]["status"]] if "milp_slot" in verdict.stats else []
    assert slots and (share > 1e-6 or set(slots) == {"timeout"})  # the path ran
