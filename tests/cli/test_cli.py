"""The `verify` command end to end: the JSON contract, the table, and bad input (exit 2, one line)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from verifier.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_document_matches_contract(model, capsys):
    code, out, err = run_cli([model, "--eps", "0.05", "--data", model.parent / "data.npz", "--method",
                              "ibp", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["network"] == {"inputs": 6, "outputs": 3, "widths": [10, 8], "relus": 18}
    assert doc["input_set"] == {"norm": "linf", "eps": 0.05, "clip": [0.0, 1.0]}
    assert len(doc["samples"]) == 5 and doc["summary"]["n"] == 5
    for s in doc["samples"]:
        assert s["label"] == s["prediction"]  # the labels are the model's own predictions
        assert set(s["methods"]) == {"ibp"} and s["verdict"] in {"certified", "unknown"}
        assert (s["verdict"] == "certified") == (s["methods"]["ibp"]["lower"] > 0)
    assert doc["summary"]["certified"]["ibp"] == sum(s["verdict"] == "certified" for s in doc["samples"])


def test_start_limit_and_single_input(model, capsys):
    code, out, _ = run_cli([model, "--eps", "0.0", "--data", model.parent / "data.npz", "--start", "2",
                            "--limit", "2", "--method", "ibp", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and [s["index"] for s in doc["samples"]] == [2, 3]
    # eps 0: IBP is exact at a point, so a correctly classified sample with a positive margin is certified
    assert all(s["verdict"] == "certified" for s in doc["samples"])
    label = int(np.load(model.parent / "data.npz")["y"][0])
    code, out, _ = run_cli([model, "--eps", "0.01", "--input", model.parent / "x.npy", "--label", label,
                            "--method", "ibp", "--json"], capsys)
    assert code == 0 and json.loads(out)["samples"][0]["label"] == label


def test_table_on_stderr_without_json(model, capsys):
    code, out, err = run_cli([model, "--eps", "0.05", "--data", model.parent / "data.npz", "--method", "ibp"],
                             capsys)
    assert code == 0 and out == ""
    assert "ibp (lower)" in err and "clean accuracy 5/5" in err


def _bad_models(tmp_path: Path, model: Path) -> dict[str, Path]:
    text = tmp_path / "notonnx.onnx"
    text.write_text("hello, I am not a model")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])
    proto = onnx.load(str(model))
    init = proto.graph.initializer[0]
    values = onnx.numpy_helper.to_array(init).copy()
    values.flat[0] = np.nan
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    nan = tmp_path / "nan.onnx"
    onnx.save(proto, str(nan))
    return {"missing": tmp_path / "missing.onnx", "text": text, "truncated": truncated, "nan": nan}


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "nan"])
def test_bad_model_files(case, model, tmp_path, capsys):
    path = _bad_models(tmp_path, model)[case]
    code, out, err = run_cli([path, "--eps", "0.1", "--input", model.parent / "x.npy", "--label", "0"], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert path.name in err


@pytest.mark.parametrize("extra, words", [
    (["--eps", "-0.1"], "eps"),
    (["--eps", "0.1", "--label", "0", "--clip", "1", "0"], "clip"),
    (["--eps", "0.1", "--label", "7"], "label 7"),
    (["--eps", "0.1", "--label", "0", "--method", "magic"], "magic"),
])
def test_bad_arguments(extra, words, model, capsys):
    code, out, err = run_cli([model, "--input", model.parent / "x.npy", *extra], capsys)
    assert code == 2 and out == "" and words in err and "Traceback" not in err


@pytest.mark.parametrize("selection", [["--limit", "0"], ["--start", "5"], ["--start", "4", "--limit", "-1"]])
def test_empty_sample_selection_is_bad_input(selection, model, capsys):
    """The fixture's data holds 5 samples: a selection of none is an error naming the file, not an empty table."""
    code, out, err = run_cli([model, "--eps", "0.1", "--data", model.parent / "data.npz", *selection], capsys)
    assert code == 2 and out == "" and "no samples selected" in err and "data.npz" in err and "holds 5" in err


def test_input_of_wrong_size(model, tmp_path, capsys):
    np.save(tmp_path / "short.npy", np.zeros(4))
    code, _, err = run_cli([model, "--eps", "0.1", "--input", tmp_path / "short.npy", "--label", "0"], capsys)
    assert code == 2 and "4 values" in err and "6 inputs" in err


def test_console_script_runs(model):
    exe = Path(sys.executable).with_name("verify")
    proc = subprocess.run([str(exe), str(model), "--eps", "0.02", "--data", str(model.parent / "data.npz"),
                           "--method", "ibp", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["summary"]["n"] == 5


def test_smoothing_mode(model, capsys):
    code, out, err = run_cli([model, "--smoothing", "0.1", "--data", model.parent / "data.npz", "--n", "2000",
                              "--n0", "50", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["samples"]) == 5
    acc = doc["certified_accuracy"]
    assert list(acc) == ["0.0", "0.25", "0.5", "0.75", "1.0"]
    assert all(a >= b for a, b in zip(acc.values(), list(acc.values())[1:]))  # non-increasing in the radius
    for s in doc["samples"]:
        # the largest radius n samples can certify: sigma * Phi^-1(alpha^(1/n)) < 0.1 * 3.9
        assert 0 <= s["radius"] < 0.4 and (s["prediction"] is not None or s["radius"] == 0)
    code, _, err = run_cli([model, "--smoothing", "-1", "--data", model.parent / "data.npz"], capsys)
    assert code == 2 and "smoothing" in err


def test_conv_network_runs_every_method_in_order(tmp_path, capsys):
    conv = ROOT / "tests" / "data" / "Convnet_maxpool.onnx"  # Conv + MaxPool: a graph, not a dense chain
    from verifier.onnx import load_onnx

    x = np.random.default_rng(0).uniform(0, 1, 784)
    np.save(tmp_path / "x.npy", x)
    label = int(np.argmax(load_onnx(conv).forward(x)))
    code, out, err = run_cli([conv, "--eps", "0.001", "--input", tmp_path / "x.npy", "--label", label, "--method",
                              "pgd,ibp,dual,lp,milp", "--json"], capsys)
    assert code == 0, err
    sample = json.loads(out)["samples"][0]
    methods = sample["methods"]
    assert set(methods) == {"pgd", "ibp", "dual", "lp", "milp"} and methods["milp"]["status"] == "optimal"
    chain = [methods["ibp"]["lower"], methods["dual"]["lower"], methods["lp"]["lower"], methods["milp"]["lower"],
             methods["milp"]["upper"], methods["pgd"]["upper"]]  # certified <= exact <= attack
    assert all(a <= b + 1e-7 for a, b in zip(chain, chain[1:])), chain
    assert methods["lp"]["lower"] > 0 and sample["verdict"] == "certified"  # eps 0.001: far from the boundary
