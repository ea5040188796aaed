"""Certificates of holds (certificate.py) and the independent checker (check.py): certificates of holds answers
check valid; tampering is caught with a reason; ties never certify; the checker's arithmetic is rigorous."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from verifier import check
from verifier.bounds.enumerate import MAX_RELUS, enumerate_bound
from verifier.network import random_network
from verifier.onnx import load_onnx, save_onnx
from verifier.verify import verify_instance

DATA = Path(__file__).resolve().parents[1] / "data"
ACAS = DATA / "ACASXU_run2a_1_1_batch_2000.onnx", DATA / "vnnlib/acasxu_prop_1.vnnlib"
MNIST = DATA / "mnist-net_256x2.onnx", DATA / "vnnlib/mnist_prop_0_0.03.vnnlib"
HOLDS = [(DATA / "test_nano.onnx", DATA / "vnnlib/test_nano.vnnlib"),
         (DATA / "test_tiny.onnx", DATA / "vnnlib/test_tiny.vnnlib"),
         (DATA / "test_small.onnx", DATA / "vnnlib/test_small.vnnlib"),
         (DATA / "test_unsat.onnx", DATA / "vnnlib/test_prop.vnnlib"), ACAS,
         (DATA / "instances/onnx/ACASXU_run2a_4_2_batch_2000.onnx", DATA / "instances/vnnlib/acasxu_prop_3.vnnlib"),
         MNIST, (DATA / "mnist-net_256x2.onnx", DATA / "instances/vnnlib/mnist_prop_8_0.03.vnnlib")]


def certify(model: Path, vnnlib: Path, cert: Path, timeout: float = 60.0) -> dict:
    verdict = verify_instance(load_onnx(model), vnnlib, timeout, certificate=cert)
    assert verdict.status == "holds"
    return verdict.stats["certificate"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict:
    """Certificates of the ACAS Xu (input splitting) and MNIST (ReLU splitting) instances, written once."""
    folder = tmp_path_factory.mktemp("certs")
    out = {}
    for name, (model, vnnlib) in (("acas", ACAS), ("mnist", MNIST)):
        out[name] = folder / f"{name}.npz"
        assert certify(model, vnnlib, out[name])["written"]
    return out


def run_check(model, vnnlib, cert) -> str:
    """'valid' or the invalid reason (raises BadInput as check.check does)."""
    try:
        check.check(Path(model), Path(vnnlib), Path(cert))
        return "valid"
    except check.Invalid as exc:
        return str(exc)


def tampered(cert: Path, out: Path, edit) -> Path:
    """A copy of the certificate with edit(arrays, meta) applied."""
    with np.load(cert) as z:
        arrays = {k: z[k].copy() for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    edit(arrays, meta)
    with open(out, "wb") as f:
        np.savez_compressed(f, meta=np.array(json.dumps(meta)), **arrays)
    return out


@pytest.mark.parametrize("model,vnnlib", HOLDS, ids=lambda p: Path(p).stem)
def test_certificates_of_holds_answers_are_valid(model, vnnlib, tmp_path):
    stats = certify(model, vnnlib, tmp_path / "c.npz")
    assert stats["written"] and stats["bytes"] > 0 and stats["leaves"] >= 1
    leaves, trusted = check.check(model, vnnlib, tmp_path / "c.npz")
    assert (leaves, trusted) == (stats["leaves"], stats["milp_trusted"])


def test_a_removed_leaf_is_caught(certs, tmp_path):
    def drop_input_leaf(a, meta):
        a["p0_tree"] = a["p0_tree"][:-1]
    assert "a gap" in run_check(*ACAS, tampered(certs["acas"], tmp_path / "a.npz", drop_input_leaf))

    def drop_relu_leaf(a, meta):
        keep = a["p0_disjunct"] != 3
        for k in ("splits", "disjunct", "alpha", "beta", "trusted"):
            a[f"p0_{k}"] = a[f"p0_{k}"][keep]
    why = run_check(*MNIST, tampered(certs["mnist"], tmp_path / "m.npz", drop_relu_leaf))
    assert "disjunct 3" in why and "no leaf covers" in why


def test_a_cut_outside_its_box_is_caught(certs, tmp_path):
    def move(a, meta):
        a["p0_point"][0] = 1e6
    assert "lies outside" in run_check(*ACAS, tampered(certs["acas"], tmp_path / "a.npz", move))

    def far(a, meta):
        a["p0_via"][0] = 1000
    assert "ancestors they do not have" in run_check(*ACAS, tampered(certs["acas"], tmp_path / "b.npz", far))


def test_a_multiplier_or_slope_that_breaks_a_bound_is_caught(certs, tmp_path):
    """Disjunct 0's root leaf split on an unstable neuron into both sides: valid with multipliers 0 and adaptive
    slopes; a huge multiplier (beta: the bound drops by beta * u) or changed slopes on the same leaves break it."""
    chain = check.read_onnx(MNIST[0])
    with np.load(certs["mnist"]) as z:
        lo, hi = z["p0_lo"], z["p0_hi"]
    l, u = check.root_bounds(chain, {"lo": lo, "hi": hi})[0]
    j = int(np.flatnonzero((l[0] < 0) & (u[0] > 0))[0])

    def split(beta: float, alpha: float = np.nan):
        def edit(a, meta):
            L, M = a["p0_alpha"].shape[:2]
            a["p0_neurons"] = np.array([[0, j]], np.int32)
            a["p0_splits"] = np.concatenate([np.zeros((L, 1)), [[1], [-1]]]).astype(np.int8)
            a["p0_disjunct"] = np.concatenate([a["p0_disjunct"], [0, 0]]).astype(np.int32)
            a["p0_alpha"] = np.full((L + 2, M, 1), alpha, np.float32)
            a["p0_beta"] = np.zeros((L + 2, M, 1), np.float32)
            a["p0_beta"][L:] = beta
            a["p0_trusted"] = np.zeros(L + 2, bool)
            keep = np.flatnonzero(a["p0_disjunct"][:L] != 0).tolist() + [L, L + 1]
            for k in ("splits", "disjunct", "alpha", "beta", "trusted"):
                a[f"p0_{k}"] = a[f"p0_{k}"][keep]
        return edit
    assert run_check(*MNIST, tampered(certs["mnist"], tmp_path / "0.npz", split(0.0))) == "valid"
    assert "is not > 0" in run_check(*MNIST, tampered(certs["mnist"], tmp_path / "1.npz", split(1e4)))


def test_a_changed_model_or_property_is_caught(certs, tmp_path):
    model = onnx.load(str(ACAS[0]))
    bias = next(t for t in model.graph.initializer if t.name == "linear_7_Add_B")
    values = numpy_helper.to_array(bias).copy()
    values[0] += 1000.0  # output 0 (clear of conflict) far larger: property 1 (Y_0 <= 3.99) fails
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    changed = tmp_path / "changed.onnx"
    onnx.save(model, str(changed))
    assert "ONNX file's sha256 differs" in run_check(changed, ACAS[1], certs["acas"])

    def new_hash(a, meta):
        meta["onnx_sha256"] = check.sha256(changed)
    assert "is not > 0" in run_check(changed, ACAS[1], tampered(certs["acas"], tmp_path / "h.npz", new_hash))

    other = DATA / "vnnlib/acasxu_prop_6.vnnlib"
    assert "VNN-LIB file's sha256 differs" in run_check(ACAS[0], other, certs["acas"])

    def other_hash(a, meta):
        meta["vnnlib_sha256"] = check.sha256(other)
    why = run_check(ACAS[0], other, tampered(certs["acas"], tmp_path / "v.npz", other_hash))
    assert "not in the certificate's property" in why


@pytest.mark.parametrize("offset", [0.0, 1e-12])
def test_an_exact_tie_or_a_violation_by_1e_12_never_certifies(offset, tmp_path):
    """One-point box whose row value is exactly 0 (a tie: unsafe) or -1e-12: verify does not answer holds, and a
    certificate claiming the box as one proved leaf is invalid."""
    rng = np.random.default_rng(0)
    net = random_network([3, 5, 5, 2], rng)
    model = tmp_path / "net.onnx"
    save_onnx(net, model)
    x = np.full(3, 0.25)
    y0 = float(load_onnx(model).forward(x)[0]) + offset
    vnnlib = tmp_path / "p.vnnlib"
    vnnlib.write_text("".join(f"(declare-const X_{i} Real)\n(assert (<= X_{i} 0.25))\n(assert (>= X_{i} 0.25))\n"
                              for i in range(3)) + "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
                      f"(assert (<= Y_0 {y0!r}))\n")
    verdict = verify_instance(load_onnx(model), vnnlib, 5, certificate=tmp_path / "c.npz")
    assert verdict.status != "holds" and not (tmp_path / "c.npz").exists()
    meta = {"format": check.FORMAT, "version": check.VERSION, "onnx_sha256": check.sha256(model),
            "vnnlib_sha256": check.sha256(vnnlib), "pairs": [{"kind": "input", "disjuncts": 1}]}
    with open(tmp_path / "forged.npz", "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), p0_lo=x, p0_hi=x, p0_C0=np.array([[1.0, 0.0]]),
                 p0_d0=np.array([y0]), p0_tree=np.zeros(1, np.int8), p0_dim=np.zeros(0, np.int32),
                 p0_point=np.zeros(0))
    assert "is not > 0" in run_check(model, vnnlib, tmp_path / "forged.npz")


def test_outward_rounding_refuses_what_naive_float64_would_prove():
    """y = -(x_0 + ... + x_8) at x = (1, 2^-53 x 8): exactly -1 - 2^-50, so the row y - (-1 - 2^-50) is an exact
    tie; summed in float64 the tiny terms vanish and the naive value is > 0."""
    x = np.array([1.0] + [2.0 ** -53] * 8)
    W, d = -np.ones((1, 9)), -1.0 - 2.0 ** -50
    assert (W @ x)[0] - d > 0  # what a naive float64 pass claims
    chain = check.Chain([], [(W, np.zeros(1), np.zeros(1), False)], 9)
    assert check.leaf_lower(chain, x[None], x[None], np.ones((1, 1, 1)), np.array([[d]]))[0, 0] <= 0


@pytest.mark.parametrize("seed", range(12))
def test_checker_bounds_are_below_the_exact_minimum(seed, tmp_path):
    """On random nets (from ONNX, read by the checker's own reader) and boxes, with random splits, slopes and
    multipliers, the checker's bound never exceeds the exact minimum (enumeration) over the whole box (its
    splits' domains are parts of the box)."""
    rng = np.random.default_rng(seed)
    net = random_network([3, 5, 4, 2], rng, relu_on_output=bool(seed % 2))
    assert net.n_relus <= MAX_RELUS
    save_onnx(net, tmp_path / "n.onnx")
    chain = check.read_onnx(tmp_path / "n.onnx")
    centre = rng.normal(size=3)
    lo, hi = centre - rng.uniform(0, 1, 3), centre + rng.uniform(0, 1, 3)
    C, d = rng.normal(size=(2, 2)), rng.normal(size=2)
    from verifier.spec import InputBox
    exact = enumerate_bound(load_onnx(tmp_path / "n.onnx"), InputBox(lo, hi), C, -d)  # the file's weights
    widths = [5, 4] + ([2] if seed % 2 else [])
    sign = [np.zeros((1, w)) for w in widths]  # one split neuron: its two sides cover the box
    layer = int(rng.integers(len(widths)))
    sign[layer][0, rng.integers(widths[layer])] = 1
    alpha = [rng.uniform(-0.5, 1.5, (1, 2, w)) for w in widths]
    beta = [rng.uniform(0, 2, (1, 2, w)) for w in widths]
    low = check.leaf_lower(chain, lo[None], hi[None], C[None], d[None], alpha=alpha)[0]
    assert np.all(low <= exact)
    # input-split leaves: forward symbolic layer bounds and the rows' interval bounds too
    assert np.all(check.leaf_lower(chain, lo[None], hi[None], C[None], d[None], forward=True)[0] <= exact)
    parts = check.leaf_lower(chain, lo[None], hi[None], C[None], d[None], sign=sign, alpha=alpha, beta=beta)[0]
    flipped = [-s for s in sign]
    other = check.leaf_lower(chain, lo[None], hi[None], C[None], d[None], sign=flipped, alpha=alpha, beta=beta)[0]
    assert np.all(np.minimum(parts, other) <= exact)
    sub_lo = lo + rng.uniform(0, 0.5, 3) * (hi - lo)  # a part of the box: the box's linear bounds minimized on it
    sub_hi = sub_lo + rng.uniform(0, 0.5, 3) * (hi - lo)
    on_part = check.leaf_lower(chain, lo[None], hi[None], C[None], d[None], alpha=alpha, at=(sub_lo[None],
                                                                                               sub_hi[None]))[0]
    exact_part = enumerate_bound(load_onnx(tmp_path / "n.onnx"), InputBox(sub_lo, sub_hi), C, -d)
    assert np.all(on_part <= exact_part)
    assert np.all(check.leaf_lower(chain, lo[None], hi[None], C[None], d[None], forward=True,
                                   at=(sub_lo[None], sub_hi[None]))[0] <= exact_part)


def test_cli_exit_codes(certs, tmp_path):
    cli = [sys.executable, "-m", "verifier.check"]
    ok = subprocess.run(cli + [str(ACAS[0]), str(ACAS[1]), str(certs["acas"])], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("valid (") and "MILP-trusted)" in ok.stdout
    bad = subprocess.run(cli + [str(ACAS[0]), str(DATA / "vnnlib/acasxu_prop_6.vnnlib"), str(certs["acas"])],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout.startswith("invalid: ")
    junk = tmp_path / "junk.npz"
    junk.write_text("not a certificate")
    for args in ([str(ACAS[0]), str(ACAS[1]), str(junk)], [str(ACAS[0]), str(ACAS[1]), str(tmp_path / "none")],
                 [str(ACAS[0]), str(ACAS[1])], [str(DATA / "Convnet_maxpool.onnx"), str(ACAS[1]),
                                                   str(certs["acas"])]):
        out = subprocess.run(cli + args, capture_output=True, text=True)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, args
    conv = subprocess.run([sys.executable, "-m", "verifier.cli", str(DATA / "Convnet_maxpool.onnx"), "--vnnlib",
                           str(MNIST[1]), "--certificate", str(tmp_path / "x.npz")], capture_output=True, text=True)
    assert conv.returncode == 2 and "dense ReLU networks only" in conv.stderr
    assert len(conv.stderr.strip().splitlines()) == 1


def test_the_checker_runs_alone_without_torch(certs, tmp_path):
    """check.py and check_io.py copied anywhere check a certificate with numpy and onnx only."""
    for name in ("check.py", "check_io.py"):
        shutil.copy(Path(check.__file__).parent / name, tmp_path / name)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import check; "
            "code = check.main(sys.argv[2:]); assert 'torch' not in sys.modules; sys.exit(code)")
    folder = tmp_path
    out = subprocess.run([sys.executable, "-c", code, str(folder), str(ACAS[0]), str(ACAS[1]), str(certs["acas"])],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("valid ("), out.stderr


@pytest.mark.parametrize("sizes,milp_after", [([4, 7, 6, 2], 0.0), ([4, 7, 2], 1.0)], ids=["milp-first", "one-layer"])
def test_milp_decided_disjuncts_are_trusted_leaves_the_checker_counts(sizes, milp_after, tmp_path):
    """relu_split with the MILP from the start (milp_after 0), or on one hidden layer the MILP after the search's
    root round: the disjunct it rules out becomes a root leaf marked trusted; the certificate is valid and the
    checker reports it as MILP-trusted rather than proved."""
    from verifier import bab
    from verifier.certificate import write_certificate
    from verifier.vnnlib import parse_vnnlib

    rng = np.random.default_rng(3)
    net = random_network(sizes, rng)
    model, vnnlib = tmp_path / "n.onnx", tmp_path / "p.vnnlib"
    save_onnx(net, model)
    net = load_onnx(model)
    from verifier.spec import InputBox
    lo, hi = np.full(4, -1.0), np.full(4, 1.0)
    exact = float(enumerate_bound(net, InputBox(lo, hi), np.array([[1.0, 0.0]]), np.zeros(1))[0])
    vnnlib.write_text("".join(f"(declare-const X_{i} Real)\n(assert (<= X_{i} 1.0))\n(assert (>= X_{i} -1.0))\n"
                              for i in range(4)) + "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
                      f"(assert (<= Y_0 {exact - 1e-4!r}))\n")
    (box, prop), = parse_vnnlib(vnnlib, 4, 2)
    trace = {"kind": "relu"}
    result = bab.relu_split(net, box, prop, deadline=time.perf_counter() + 60, milp_after=milp_after, trace=trace,
                            confirm=lambda x: False)
    assert result.status == "holds" and trace["milp"] == [0]
    assert ("milp_slot" in result.stats) == (len(sizes) == 3)
    stats = write_certificate(net, vnnlib, [(box, prop)], [trace], tmp_path / "c.npz")
    assert stats["written"] and stats["milp_trusted"] == 1
    assert check.check(model, vnnlib, tmp_path / "c.npz") == (stats["leaves"], 1)


def test_forward_bounds_on_a_network_without_relu():
    """One Gemm, no ReLU: input-split leaves get the exact interval value of the row (C W over the box)."""
    W, b = np.array([[1.0, -2.0]]), np.array([0.5])
    chain = check.Chain([], [(W, b, b, False)], 2)
    lo, hi = np.array([[0.0, 0.0]]), np.array([[1.0, 1.0]])
    low = check.leaf_lower(chain, lo, hi, np.ones((1, 1, 1)), np.array([[-2.0]]), forward=True)[0, 0]
    assert 0.5 - 1e-12 <= low <= 0.5  # the row y + 2 = x0 - 2 x1 + 2.5: its minimum over the box is 0.5


def test_leaves_the_checker_cannot_prove_are_cut_as_the_search_clips(tmp_path):
    """ACAS Xu 1_1 prop_2: some of the search's leaves were proved by clipping (or by bounds a hair above the
    checker's); the writer cuts them as the clipping does, and the certificate stays small (bisection alone
    needed about 19,600 leaves for the search's ~200)."""
    model, vnnlib = DATA / "ACASXU_run2a_1_1_batch_2000.onnx", DATA / "instances/vnnlib/acasxu_prop_2.vnnlib"
    stats = certify(model, vnnlib, tmp_path / "c.npz")
    assert stats["written"] and stats["refined"] > 0 and stats["leaves"] < 1000
    assert check.check(model, vnnlib, tmp_path / "c.npz") == (stats["leaves"], 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_conjunction_ruled_out_by_different_rows_certifies(seed, tmp_path):
    """``Y_0 <= m - h and Y_0 >= m + h and Y_1 <= 1e3`` (m: the middle of Y_0's range): no input meets it; each
    domain of the search is ruled out by the first row or the second, with only relu_bab.TUNED_ROWS of the three
    rows optimized per domain. The certificate carries every row's slopes and multipliers and checks valid."""
    from verifier import bab, relu_bab
    from verifier.certificate import write_certificate
    from verifier.spec import InputBox
    from verifier.vnnlib import parse_vnnlib

    net = random_network([4, 7, 6, 2], np.random.default_rng(seed))
    model, vnnlib = tmp_path / "n.onnx", tmp_path / "p.vnnlib"
    save_onnx(net, model)
    net = load_onnx(model)
    low, minus_high = enumerate_bound(net, InputBox(np.full(4, -1.0), np.full(4, 1.0)), np.array([[1.0, 0], [-1, 0]]))
    middle, half = float(low - minus_high) / 2, 0.05 * float(-minus_high - low)
    vnnlib.write_text("".join(f"(declare-const X_{i} Real)\n(assert (<= X_{i} 1.0))\n(assert (>= X_{i} -1.0))\n"
                              for i in range(4)) + "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
                      f"(assert (<= Y_0 {middle - half!r}))\n(assert (>= Y_0 {middle + half!r}))\n"
                      "(assert (<= Y_1 1000.0))\n")
    (box, prop), = parse_vnnlib(vnnlib, 4, 2)
    assert relu_bab.TUNED_ROWS < 3
    trace = {"kind": "relu"}
    result = bab.relu_split(net, box, prop, deadline=time.perf_counter() + 60, milp_after=1.0, trace=trace,
                            confirm=lambda x: False)
    assert result.status == "holds" and result.stats["domains"] > 1
    stats = write_certificate(net, vnnlib, [(box, prop)], [trace], tmp_path / "c.npz")
    assert stats["written"] and stats["leaves"] > 1
    assert check.check(model, vnnlib, tmp_path / "c.npz") == (stats["leaves"], stats["milp_trusted"])
