"""The three sides on the shipped digits models: certified <= exact (MILP) <= attack, and pinned exact values."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from verifier.compare import evaluate_sample
from verifier.onnx import load_onnx
from verifier.report import summarize

ROOT = Path(__file__).resolve().parents[2]
PINS = Path(__file__).with_name("known_exact.json")
METHODS = ["pgd", "ibp", "dual", "lp", "milp"]
SAMPLES = 6


def records(model: str, eps: float) -> list[dict]:
    net = load_onnx(ROOT / "models" / model)
    data = np.load(ROOT / "models" / "digits.npz")
    return [evaluate_sample(net, data["x"][i], int(data["y"][i]), eps, methods=METHODS, index=i,
                            options={"milp": {"time_limit": 60}}) for i in range(SAMPLES)]


CASES = [(m, eps) for m in ("digits_mlp.onnx", "digits_mlp_pgd.onnx") for eps in (0.02, 0.05)]


@pytest.mark.parametrize("model, eps", CASES)
def test_certified_exact_attack_order_and_pins(model, eps):
    recs = records(model, eps)
    pinned = json.loads(PINS.read_text())[f"{model}@{eps}"]
    for r, pin in zip(recs, pinned):
        assert r["verdict"] == pin["verdict"], r
        if r["verdict"] == "misclassified":
            continue
        m = r["methods"]
        exact = m["milp"]
        assert exact["status"] == "optimal"
        for certified in ("ibp", "dual", "lp"):
            assert m[certified]["lower"] <= exact["lower"] + 1e-6, (certified, r)
        assert exact["lower"] <= exact["upper"] <= m["pgd"]["upper"] + 1e-6
        assert exact["upper"] == pytest.approx(pin["exact"], abs=1e-5)
        # verdicts follow the numbers
        assert (r["verdict"] == "attacked") == (m["pgd"]["upper"] < 0 and m["pgd"]["success"])
        assert (exact["lower"] > 0) == (r["verdict"] in ("certified", "robust"))
    summary = summarize(recs, METHODS)
    assert summary["attacked"] == sum(r["verdict"] == "attacked" for r in recs)
    assert summary["certified"]["dual"] == sum(r["methods"].get("dual", {}).get("lower", -1) > 0 for r in recs)


if __name__ == "__main__":  # rewrite the pins (only when a change of the models is intended)
    PINS.write_text(json.dumps({f"{m}@{eps}": [
        {"index": r["index"], "verdict": r["verdict"], "exact": r["methods"].get("milp", {}).get("upper")}
        for r in records(m, eps)] for m, eps in CASES}, indent=1) + "\n")
    print(f"wrote {PINS}")
