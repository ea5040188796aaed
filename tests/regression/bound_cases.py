"""The fixed problems whose bounds are pinned in known_bounds.json, and the script that (re)writes the pins.

Run `python tests/regression/bound_cases.py` only when a change of bounds is intended; the test
test_known_bounds.py checks the current code against the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from verifier.bounds import METHODS, bound
from verifier.onnx import load_onnx
from verifier.spec import linf_ball, margin_rows
from verifier.vnnlib import parse_vnnlib

ROOT = Path(__file__).resolve().parents[2]
PINS = Path(__file__).with_name("known_bounds.json")
# (method name in the pins, registry method, options, relative tolerance); opt is iterative: looser
VARIANTS = [("ibp", "ibp", {}, 1e-6), ("dual_wk", "dual", {"slopes": "wk"}, 1e-6),
            ("dual_adaptive", "dual", {"slopes": "adaptive"}, 1e-6), ("dual_opt", "dual", {"slopes": "opt"}, 1e-4),
            ("lp", "lp", {}, 1e-6)]


def cases():
    """Yield (name, network, box, C, d) for every pinned problem."""
    for model, data, eps, samples in [("models/digits_mlp.onnx", "models/digits.npz", 0.02, 3),
                                      ("models/toy2d.onnx", "models/toy2d.npz", 0.05, 3)]:
        net = load_onnx(ROOT / model)
        arrays = np.load(ROOT / data)
        for i in range(samples):
            C, d = margin_rows(int(arrays["y"][i]), net.n_outputs)
            yield f"{Path(model).stem}[{i}]@{eps}", net, linf_ball(arrays["x"][i], eps), C, d
    for model, prop in [("tests/data/ACASXU_run2a_1_1_batch_2000.onnx", "tests/data/vnnlib/acasxu_prop_1.vnnlib"),
                        ("tests/data/mnist-net_256x2.onnx", "tests/data/vnnlib/mnist_prop_0_0.03.vnnlib")]:
        net = load_onnx(ROOT / model)
        box, prop_ = parse_vnnlib(ROOT / prop, net.n_inputs, net.n_outputs)[0]
        rows = [prop_.objective_rows(k) for k in range(len(prop_.disjuncts))]
        C, d = np.vstack([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
        yield f"{Path(model).stem}:{Path(prop).stem}", net, box, C, d


def variants():
    """The pinned method variants available in this build."""
    return [v for v in VARIANTS if v[1] in METHODS]


def compute(net, box, C, d, method, options) -> list[float]:
    return [float(v) for v in bound(net, box, C, d, method=method, **options).lower]


if __name__ == "__main__":
    pins = {name: {label: compute(net, box, C, d, method, options) for label, method, options, _ in variants()}
            for name, net, box, C, d in cases()}
    PINS.write_text(json.dumps(pins, indent=1) + "\n")
    print(f"wrote {PINS}: {len(pins)} problems x {len(variants())} methods")
