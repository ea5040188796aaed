"""`verify --norm inf|2|1`: the JSON document's input set, the side-by-side table with the smoothed classifier's
radius, and the one-line errors (exit 2) for what balls do not support."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from verifier.cli import main
from verifier.spec import ball

ROOT = Path(__file__).resolve().parents[2]


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("norm, name", [("2", "l2"), ("1", "l1")])
def test_json_names_the_norm_and_orders_the_bounds(norm, name, model, capsys):
    methods = "pgd,fgsm,ibp,dual,lp" + (",milp" if norm == "1" else "")
    code, out, err = run_cli([model, "--eps", "0.3", "--norm", norm, "--data", model.parent / "data.npz",
                              "--method", methods, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["input_set"] == {"norm": name, "eps": 0.3, "clip": [0.0, 1.0]}
    data = np.load(model.parent / "data.npz")
    for sample in doc["samples"]:
        m = sample["methods"]
        assert set(m) == set(methods.split(","))
        for certified in ("ibp", "dual", "lp"):
            assert m[certified]["lower"] <= min(m["pgd"]["upper"], m["fgsm"]["upper"]) + 1e-9
        assert ball(data["x"][sample["index"]], 0.3, norm).contains(np.array(m["pgd"]["x"]))
        if norm == "1":
            assert m["ibp"]["lower"] <= m["milp"]["lower"] + 1e-7 <= m["pgd"]["upper"] + 2e-7


def test_table_with_the_smoothed_radius_column(model, capsys):
    code, out, err = run_cli([model, "--eps", "0.1", "--norm", "2", "--data", model.parent / "data.npz",
                              "--method", "pgd,dual", "--smoothing", "0.25", "--n", "500", "--n0", "20",
                              "--json"], capsys)
    assert code == 0, err
    assert "smoothed L2 radius" in err and "smoothed classifier certified" in err
    doc = json.loads(out)
    assert doc["smoothing"]["sigma"] == 0.25 and "smoothing_certified" in doc["summary"]
    for sample in doc["samples"]:
        entry = sample["smoothing"]
        assert entry["radius"] >= 0 and entry["certified"] == (entry["prediction"] == sample["label"]
                                                               and entry["radius"] > 0.1)


@pytest.mark.parametrize("extra, words", [
    (["--eps", "0.1", "--norm", "2", "--method", "milp"], "milp"),
    (["--vnnlib", ROOT / "tests" / "data" / "vnnlib" / "test_tiny.vnnlib", "--norm", "2"], "VNN-LIB"),
    (["--vnnlib", ROOT / "tests" / "data" / "vnnlib" / "test_tiny.vnnlib", "--norm", "inf"], "VNN-LIB"),
    (["--eps", "0.1", "--norm", "1", "--smoothing", "0.25"], "--norm 2"),
    (["--eps", "0.1", "--smoothing", "0.25"], "--norm 2"),
])
def test_unsupported_combinations_are_one_line_errors(extra, words, model, capsys):
    code, out, err = run_cli([model, "--data", model.parent / "data.npz", *extra], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("verify: error:") and words in err
