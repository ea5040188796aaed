"""Bounds of the shared ACAS Xu and MNIST instances against values from independent implementations.

`tests/data/known_bounds.json` (a copy of `../shared/known_bounds.json`; provenance in tests/data/README.md) holds
auto_LiRPA 0.7.1's IBP, CROWN and alpha-CROWN (float32), the triangle LP and the big-M MILP built on auto_LiRPA's
CROWN pre-ReLU bounds (float64, cvxpy/highspy). A row is a vnnlib constraint ``a.y <= b``; every value is a lower
bound of ``a.y - b`` over the input box. Unlike tests/regression/known_bounds.json these values were not produced
by this code, so they catch errors, not only changes.

What is tested, and why (see also the closing table printed by `python tests/regression/test_shared_known_bounds.py`):

- ibp == auto_LiRPA IBP, to float32 accuracy.
- dual "adaptive" differs from auto_LiRPA CROWN in how the intermediate (pre-ReLU) bounds are formed. auto_LiRPA
  runs IBP first, keeps the IBP bounds of the neurons IBP already decides, and bounds the others by the CROWN
  backward pass alone. Our pass does the same but then intersects each such neuron's CROWN bounds with its IBP
  bounds (and the rows with their interval bound). Both are valid bounds; ours are tighter, on ACAS Xu by about a
  factor two (IBP beats CROWN on many deep neurons there). `_crown_reference` below re-implements auto_LiRPA's
  rule independently (numpy) and matches its values to ~2e-7; handing those layer bounds to our dual pass
  (``layer_bounds=``) gives auto_LiRPA's CROWN values, and handing them to our LP gives the LP value.
  With its own layer bounds, our dual pass is only *observed* to be at least auto_LiRPA CROWN (the adaptive
  slopes make the bound non-monotone in the layer bounds, and our layer bounds are not always inside theirs),
  so that is tested as an observation, plus soundness: below every value reached by a real input.
- lp with auto_LiRPA's CROWN layer bounds == the LP-triangle value; with our own layer bounds at least it
  (observed) and sound.
- milp with auto_LiRPA's CROWN layer bounds (the same big-M model) agrees with the exact values where their
  status is optimal, within their mip_rel_gap 1e-4; where they hit the time limit, the instance only checks
  that their bound lies below real values and our bounds lie below their incumbent.
- dual "opt" >= auto_LiRPA alpha-CROWN (which also optimizes intermediate slopes), and <= exact / real values.

"Real values" (the upper side of every soundness check): the network evaluated (float64) at sampled points,
the box corners (ACAS Xu) and the end points of a small PGD, and auto_LiRPA's MILP objective where optimal.

The MNIST 256x4 net (1.6 MB) is not copied: its instances run only when ../shared is present. Slow entries
(dual opt on ACAS Xu: 5..30 s each; LP/opt on 256x4 prop_1) run only with SHARED_BOUNDS_ALL=1.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from verifier.bounds import bound
from verifier.onnx import load_onnx
from verifier.vnnlib import parse_vnnlib

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SHARED = ROOT.parent / "shared" / "benchmarks"
KNOWN = json.loads((DATA / "known_bounds.json").read_text())
RESULTS = {(r["instance"], r["method"]): r for r in KNOWN["results"]}
INSTANCES = list(dict.fromkeys(r["instance"] for r in KNOWN["results"]))
ALL = os.environ.get("SHARED_BOUNDS_ALL") == "1"

# Where each instance's files are: tests/data (byte-identical copies) or ../shared only.
FILES = {
    "ACASXU_run2a_1_1_batch_2000/prop_1": ("ACASXU_run2a_1_1_batch_2000.onnx", "vnnlib/acasxu_prop_1.vnnlib"),
    "ACASXU_run2a_1_1_batch_2000/prop_2": ("ACASXU_run2a_1_1_batch_2000.onnx", "instances/vnnlib/acasxu_prop_2.vnnlib"),
    "ACASXU_run2a_1_9_batch_2000/prop_2": ("instances/onnx/ACASXU_run2a_1_9_batch_2000.onnx",
                                           "instances/vnnlib/acasxu_prop_2.vnnlib"),
    "ACASXU_run2a_3_3_batch_2000/prop_2": ("ACASXU_run2a_3_3_batch_2000.onnx", "instances/vnnlib/acasxu_prop_2.vnnlib"),
    "ACASXU_run2a_4_2_batch_2000/prop_2": ("instances/onnx/ACASXU_run2a_4_2_batch_2000.onnx",
                                           "instances/vnnlib/acasxu_prop_2.vnnlib"),
    "mnist-net_256x2/prop_0_0.03": ("mnist-net_256x2.onnx", "vnnlib/mnist_prop_0_0.03.vnnlib"),
    "mnist-net_256x2/prop_1_0.05": ("mnist-net_256x2.onnx", "vnnlib/mnist_prop_1_0.05.vnnlib"),
}
# (instance, test) pairs that take more than a few seconds on the 2-core machine: run with SHARED_BOUNDS_ALL=1
SLOW = {(i, "opt") for i in INSTANCES if i.startswith("ACASXU")} | {
    ("mnist-net_256x4/prop_1_0.05", "opt"), ("mnist-net_256x4/prop_1_0.05", "lp")}

# auto_LiRPA works in float32: its values carry rounding errors of ~1e-7 relative (observed <= 3e-7, after
# sums of up to 784 terms per layer over up to 6 layers); 1e-5 of max(1, |value|) leaves a factor 30 of room,
# while every real difference of rule seen here is >= 1e-3 relative.
FLOAT32_RTOL = 1e-5
# LP values: both sides float64 on the same model (their layer bounds from auto_LiRPA CROWN in float64, ours from
# `_crown_reference`); observed agreement ~1e-14.
LP_RTOL = 1e-6
MIP_REL_GAP = 1e-4  # their MILP's (HiGHS default) relative gap: an "optimal" value is exact to this
SOUND_TOL = 1e-6  # slack of a lower bound over a real value: float64 rounding and solver tolerances


def _tol(values, rtol):
    return rtol * np.maximum(1.0, np.abs(np.asarray(values, dtype=np.float64)))


def _paths(instance):
    if instance in FILES:
        net, prop = FILES[instance]
        return DATA / net, DATA / prop
    net, prop = instance.split("/")
    return SHARED / "mnist_fc" / "onnx" / f"{net}.onnx", SHARED / "mnist_fc" / "vnnlib" / f"{prop}.vnnlib"


@functools.lru_cache(maxsize=None)
def problem(instance):
    """(network, box, C, d) of the instance: rows C y + d = a.y - b, in the order of the file's rows."""
    net_path, prop_path = _paths(instance)
    if not net_path.exists() or not prop_path.exists():
        pytest.skip(f"{net_path.name} / {prop_path.name} only in ../shared, which is absent")
    net = load_onnx(net_path)
    (box, prop), = parse_vnnlib(prop_path, net.n_inputs, net.n_outputs)
    rows = RESULTS[(instance, "IBP")]["rows"]
    C = np.array([r["a"] for r in rows], dtype=np.float64)
    d = -np.array([r["b"] for r in rows], dtype=np.float64)
    return net, box, C, d, prop


def theirs(instance, method):
    return np.array(RESULTS[(instance, method)]["lower_bounds"], dtype=np.float64)


def _skip_slow(instance, what):
    if (instance, what) in SLOW and not ALL:
        pytest.skip("slow on the 2-core machine; run with SHARED_BOUNDS_ALL=1")


def _crown_reference(net, box, C, d):
    """auto_LiRPA 0.7.1's CROWN, re-implemented in numpy float64 for the tests (independent of bounds/dual.py).

    Layer by layer: IBP bounds from the previous layer's bounds; neurons IBP leaves unstable (l < 0 < u) get the
    CROWN backward pass (adaptive lower slope: 1 if u > -l else 0; upper line u (z - l) / (u - l)), NOT
    intersected with IBP; neurons IBP decides keep their IBP bounds. The rows: one backward pass, no interval
    intersection. Returns (lower (k,), [(l, u)] per affine layer)."""
    weights = [(a.weight, a.bias) for a in net.affines]
    centre, radius = box.center, box.radius
    relax, bounds = [], []

    def backward(A, const, top):
        for i in range(top, -1, -1):
            if net.relu_after[i]:
                lower_slope, upper_slope, upper_offset = relax[i]
                pos, neg = np.clip(A, 0, None), np.clip(A, None, 0)
                const = const + neg @ upper_offset
                A = pos * lower_slope + neg * upper_slope
            W, b = weights[i]
            const, A = const + A @ b, A @ W
        return const + A @ centre - np.abs(A) @ radius

    lo, hi = box.lo, box.hi
    for t, (W, b) in enumerate(weights):
        mid, rad = W @ ((lo + hi) / 2) + b, np.abs(W) @ ((hi - lo) / 2)
        l, u = mid - rad, mid + rad
        if t > 0 and net.relu_after[t]:
            idx = np.flatnonzero((l < 0) & (u > 0))
            A = np.vstack([W[idx], -W[idx]])
            low = backward(A, np.concatenate([b[idx], -b[idx]]), t - 1)
            l, u = l.copy(), u.copy()
            l[idx], u[idx] = low[:idx.size], -low[idx.size:]
        bounds.append((l, u))
        if net.relu_after[t]:
            unstable, active = (l < 0) & (u > 0), l >= 0
            width = np.where(unstable, u - l, 1.0)
            relax.append((np.where(unstable, u > -l, active).astype(np.float64),
                          np.where(unstable, u / width, active.astype(np.float64)),
                          np.where(unstable, -u * l / width, 0.0)))
            lo, hi = np.maximum(l, 0.0), np.maximum(u, 0.0)
        else:
            relax.append(None)
            lo, hi = l, u
    return backward(C, d, len(weights) - 1), bounds


@functools.lru_cache(maxsize=None)
def reference(instance):
    net, box, C, d, _ = problem(instance)
    return _crown_reference(net, box, C, d)


@functools.lru_cache(maxsize=None)
def real_values(instance):
    """Per row, the least value of ``C f(x) + d`` found at real inputs of the box (float64 forward pass): box
    corners (<= 16 inputs), uniform samples and a sign-gradient PGD from the centre and random starts, per row."""
    net, box, C, d, _ = problem(instance)
    rng = np.random.default_rng(0)
    points = [box.center[None], box.sample(4000, rng)]
    if box.n <= 16:
        corners = np.array(np.meshgrid(*[[0, 1]] * box.n)).reshape(box.n, -1).T
        points.append(np.where(corners == 1, box.hi, box.lo))
    weights = [(torch.tensor(a.weight), torch.tensor(a.bias)) for a in net.affines]
    lo, hi = torch.tensor(box.lo), torch.tensor(box.hi)
    restarts, k = 8, C.shape[0]  # all rows' PGD runs as one batch: point r * k + j descends row j
    x = torch.tensor(np.vstack([np.repeat(box.center[None], k, 0), box.sample((restarts - 1) * k, rng)]),
                     requires_grad=True)
    c = torch.tensor(np.tile(C, (restarts, 1)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is faster, and much faster on a busy machine
    for step in range(60):
        h = x
        for (W, b), relu in zip(weights, net.relu_after):
            h = h @ W.T + b
            h = torch.relu(h) if relu else h
        (g,) = torch.autograd.grad((h * c).sum(), x)
        with torch.no_grad():
            x -= (hi - lo) * 0.05 * 0.95 ** step * g.sign()
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))
    torch.set_num_threads(threads)
    points.append(x.detach().numpy())
    values = (net.forward(np.vstack(points)) @ C.T + d).min(axis=0)
    milp = RESULTS.get((instance, "MILP"))
    if milp is not None:  # an optimal MILP objective is the value at a real input (to the solver's tolerance)
        exact = np.array([v if s == "Optimal" else np.inf for v, s in zip(milp["lower_bounds"], milp["statuses"])])
        values = np.minimum(values, exact)
    return values


def _assert_sound(got, instance, label):
    real = real_values(instance)
    bad = got > real + SOUND_TOL * np.maximum(1.0, np.abs(real))
    assert not bad.any(), f"{instance} {label}: rows {np.flatnonzero(bad)} above real values: {got[bad]} > {real[bad]}"


# --- conventions -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("instance", INSTANCES)
def test_rows_are_the_vnnlib_constraints(instance):
    """The file's rows (disjunct, a, b) are our parser's objective rows (C_k, -d_k) of the same disjunct."""
    net, box, C, d, prop = problem(instance)
    for r, row in enumerate(RESULTS[(instance, "IBP")]["rows"]):
        Ck, dk = prop.objective_rows(row["disjunct"])
        match = np.all(np.isclose(Ck, C[r]), axis=1) & np.isclose(dk, d[r])
        assert match.any(), f"{instance} row {r} is not a row of disjunct {row['disjunct']}"


# --- IBP -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("instance", INSTANCES)
def test_ibp_equals_auto_lirpa_ibp(instance):
    net, box, C, d, _ = problem(instance)
    got, want = bound(net, box, C, d, method="ibp").lower, theirs(instance, "IBP")
    assert np.all(np.abs(got - want) <= _tol(want, FLOAT32_RTOL)), (instance, got - want)
    _assert_sound(got, instance, "ibp")


# --- CROWN / dual adaptive -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("instance", INSTANCES)
def test_reference_reproduces_auto_lirpa_crown(instance):
    """The rule described in `_crown_reference` is auto_LiRPA's: same values to float32 accuracy (and not
    intersecting with IBP, or not keeping IBP's stable neurons, would miss them by up to 50 %)."""
    got, want = reference(instance)[0], theirs(instance, "CROWN")
    assert np.all(np.abs(got - want) <= _tol(want, FLOAT32_RTOL)), (instance, got - want)


@pytest.mark.parametrize("instance", INSTANCES)
def test_dual_adaptive_on_crown_layer_bounds_equals_auto_lirpa_crown(instance):
    """Our dual pass given auto_LiRPA's intermediate bounds is auto_LiRPA's CROWN: the backward pass and the
    slope rule are the same (its interval intersection of the rows never wins on these instances)."""
    net, box, C, d, _ = problem(instance)
    got = bound(net, box, C, d, method="dual", slopes="adaptive", layer_bounds=reference(instance)[1]).lower
    want = theirs(instance, "CROWN")
    assert np.all(np.abs(got - want) <= _tol(want, FLOAT32_RTOL)), (instance, got - want)


@pytest.mark.parametrize("instance", INSTANCES)
def test_dual_adaptive_at_least_auto_lirpa_crown_and_sound(instance):
    """With its own layer bounds (CROWN intersected with IBP) the dual pass is tighter than auto_LiRPA's CROWN on
    every row here (observed, not a theorem: see the module docstring), and below every real value."""
    net, box, C, d, _ = problem(instance)
    got = bound(net, box, C, d, method="dual", slopes="adaptive").lower
    want = theirs(instance, "CROWN")
    assert np.all(got >= want - _tol(want, FLOAT32_RTOL)), (instance, got - want)
    _assert_sound(got, instance, "dual adaptive")


# --- LP --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("instance", INSTANCES)
def test_lp_on_crown_layer_bounds_equals_lp_triangle(instance):
    _skip_slow(instance, "lp")
    net, box, C, d, _ = problem(instance)
    got = bound(net, box, C, d, method="lp", layer_bounds=reference(instance)[1]).lower
    want = theirs(instance, "LP-triangle")
    assert np.all(np.abs(got - want) <= _tol(want, LP_RTOL)), (instance, got - want)
    # the LP is the dual pass with free slopes: at least CROWN and alpha-CROWN with the same (fixed) layer bounds
    assert np.all(got >= theirs(instance, "CROWN") - _tol(want, FLOAT32_RTOL))
    assert np.all(got >= theirs(instance, "alpha-CROWN, interm. fixed to CROWN") - _tol(want, FLOAT32_RTOL))


@pytest.mark.parametrize("instance", INSTANCES)
def test_lp_default_at_least_lp_triangle_and_sound(instance):
    """Our LP on our own (tighter) layer bounds: at least theirs (observed: not guaranteed, as our LP does not bound
    the pre-activations by l, u, so a neuron stable in our bounds and unstable in theirs is not a restriction), and
    sound."""
    _skip_slow(instance, "lp")
    net, box, C, d, _ = problem(instance)
    got = bound(net, box, C, d, method="lp").lower
    want = theirs(instance, "LP-triangle")
    assert np.all(got >= want - _tol(want, LP_RTOL)), (instance, got - want)
    _assert_sound(got, instance, "lp")


# --- MILP ------------------------------------------------------------------------------------------------------------

MILP_INSTANCES = [i for i in INSTANCES if (i, "MILP") in RESULTS]


def _milp(instance):
    r = RESULTS[(instance, "MILP")]
    return r["statuses"], r["lower_bounds"], r["best_bounds"], r.get("incumbent_values") or {}


@pytest.mark.parametrize("instance", MILP_INSTANCES)
def test_milp_time_limited_entries_are_consistent(instance):
    """Where their MILP stopped at the time limit: their proven bound is below every real value, and every bound
    of ours is below their incumbent (when they have one)."""
    statuses, _, best, incumbents = _milp(instance)
    real = real_values(instance)
    net, box, C, d, _ = problem(instance)
    ours = bound(net, box, C, d, method="dual", slopes="adaptive").lower
    for j, status in enumerate(statuses):
        if status == "Optimal" or best[j] is None:
            continue
        assert best[j] <= real[j] + SOUND_TOL * max(1.0, abs(real[j])), (instance, j, best[j], real[j])
        if incumbents.get(str(j)) is not None:
            assert ours[j] <= incumbents[str(j)] + SOUND_TOL, (instance, j)


@pytest.mark.parametrize("instance", [i for i in MILP_INSTANCES if "Optimal" in _milp(i)[0]])
def test_milp_equals_exact_values(instance):
    """Our MILP on the same model (big-M on auto_LiRPA's CROWN bounds) against their optimal values: the exact
    minimum lies in [their best bound, their objective] (gap <= 1e-4) and in [our lower, our upper]; the intervals
    must meet. Rows that took them > 5 s are left out unless SHARED_BOUNDS_ALL=1 (MNIST prop_1_0.05: 21..277 s per row;
    ours did not finish its quickest row, 21 s for them, within 20 s)."""
    statuses, objective, best, _ = _milp(instance)
    seconds = RESULTS[(instance, "MILP")]["seconds_per_row"]
    rows = [j for j, s in enumerate(statuses) if s == "Optimal" and (ALL or seconds[j] <= 5)]
    if not rows:
        pytest.skip("every optimal row took their MILP > 5 s; run with SHARED_BOUNDS_ALL=1")
    net, box, C, d, _ = problem(instance)
    got = bound(net, box, C[rows], d[rows], method="milp", layer_bounds=reference(instance)[1],
                time_limit=20 if not ALL else 120)
    for n, j in enumerate(rows):
        obj, lb = objective[j], best[j]
        tol = SOUND_TOL * max(1.0, abs(obj))
        assert got.lower[n] <= obj + tol and lb <= got.upper[n] + tol, \
            (instance, j, got.lower[n], got.upper[n], lb, obj)
        if seconds[j] <= 5:  # quick for them: must be quick and exact for us too (the slow rows: consistency only)
            assert got.info["status"][n] == "optimal", (instance, j, got.info["status"][n])
            assert abs(got.upper[n] - obj) <= MIP_REL_GAP * max(1.0, abs(obj)), (instance, j, got.upper[n], obj)


# --- alpha-CROWN / dual opt ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("instance", INSTANCES)
def test_dual_opt_at_least_alpha_crown_and_sound(instance):
    _skip_slow(instance, "opt")
    net, box, C, d, _ = problem(instance)
    got = bound(net, box, C, d, method="dual", slopes="opt").lower
    want = theirs(instance, "alpha-CROWN")
    assert np.all(got >= want - _tol(want, FLOAT32_RTOL)), (instance, got - want)
    _assert_sound(got, instance, "dual opt")


# --- the table for the report ----------------------------------------------------------------------------------------

def table(instances=INSTANCES):
    """Print ours vs theirs per instance, method and row (python tests/regression/test_shared_known_bounds.py)."""
    for instance in instances:
        try:
            net, box, C, d, _ = problem(instance)
        except pytest.skip.Exception:
            continue
        ref = reference(instance)[1]
        real = real_values(instance)
        ours = {
            "ibp": bound(net, box, C, d, method="ibp").lower,
            "dual adaptive (CROWN layer bounds)": bound(net, box, C, d, method="dual", layer_bounds=ref).lower,
            "dual adaptive": bound(net, box, C, d, method="dual").lower,
            "lp (CROWN layer bounds)": bound(net, box, C, d, method="lp", layer_bounds=ref).lower,
            "lp": bound(net, box, C, d, method="lp").lower,
            "dual opt": bound(net, box, C, d, method="dual", slopes="opt").lower,
        }
        pairs = [("ibp", "IBP"), ("dual adaptive (CROWN layer bounds)", "CROWN"), ("dual adaptive", "CROWN"),
                 ("lp (CROWN layer bounds)", "LP-triangle"), ("lp", "LP-triangle"), ("dual opt", "alpha-CROWN")]
        print(f"\n{instance}")
        for mine, other in pairs:
            o, t = ours[mine], theirs(instance, other)
            for j in range(len(o)):
                print(f"  {mine:36s} row {j}: ours {o[j]: .7f}  {other:12s} {t[j]: .7f}  "
                      f"ours-theirs {o[j] - t[j]: .2e}  real <= {real[j]: .6f}")


if __name__ == "__main__":
    table(sys.argv[1:] or INSTANCES)
