"""`verify MODEL --vnnlib P`: verdicts on the VNN-COMP `test` family, result files, and bad property files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from verifier.cli import main
from verifier.onnx import load_onnx, run_onnxruntime
from verifier.vnnlib import parse_vnnlib

DATA = Path(__file__).resolve().parents[1] / "data"
FAMILY = [("test_nano", "test_nano", "unsat"), ("test_tiny", "test_tiny", "unsat"),
          ("test_small", "test_small", "unsat"), ("test_sat", "test_prop", "sat"),
          ("test_unsat", "test_prop", "unsat")]


@pytest.mark.parametrize("net, prop, expected", FAMILY)
def test_test_family_verdicts(net, prop, expected, tmp_path, capsys):
    result = tmp_path / "result.txt"
    code = main([str(DATA / f"{net}.onnx"), "--vnnlib", str(DATA / "vnnlib" / f"{prop}.vnnlib"),
                 "--timeout", "30", "--result-file", str(result)])
    out, _ = capsys.readouterr()
    assert code == 0 and out.strip() == expected
    lines = result.read_text().splitlines()
    assert lines[0] == expected
    if expected == "sat":  # the assignment is a real counterexample: in the box, and unsafe per onnxruntime
        import re

        values = dict(re.findall(r"\((\w+) ([-+0-9.eE]+)\)", " ".join(lines[1:])))
        network = load_onnx(DATA / f"{net}.onnx")
        x = np.array([float(values[f"X_{i}"]) for i in range(network.n_inputs)])
        box, property_ = parse_vnnlib(DATA / "vnnlib" / f"{prop}.vnnlib", network.n_inputs, network.n_outputs)[0]
        assert box.contains(x)
        y = run_onnxruntime(network, x)
        assert property_.violated_by(y)
        np.testing.assert_allclose([float(values[f"Y_{j}"]) for j in range(network.n_outputs)], y, rtol=1e-6)


def test_timeout_is_respected(tmp_path, capsys):
    import time

    start = time.perf_counter()
    code = main([str(DATA / "ACASXU_run2a_1_1_batch_2000.onnx"), "--vnnlib",
                 str(DATA / "vnnlib" / "acasxu_prop_1.vnnlib"), "--timeout", "1"])
    out, _ = capsys.readouterr()
    assert code == 0 and out.strip() in {"timeout", "unsat"} and time.perf_counter() - start < 3.0


@pytest.mark.parametrize("text, words", [
    ("(declare-const X_0 Real)\n(declare-const X_9 Real)\n(assert (<= X_9 1))", "X_9"),
    ("(declare-const X_0 Real)\n(assert (<= X_0 1)", "parenthes"),
])
def test_bad_vnnlib(text, words, tmp_path, capsys):
    path = tmp_path / "bad.vnnlib"
    path.write_text(text)
    code = main([str(DATA / "test_nano.onnx"), "--vnnlib", str(path)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and words in err and "bad.vnnlib" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("device, words", [("tpu", "not a torch device"), ("cuda:7", "CUDA device"),
                                           ("meta", "only cpu and cuda")])
def test_a_device_torch_cannot_run_on_is_refused(device, words, capsys):
    code = main([str(DATA / "test_nano.onnx"), "--vnnlib", str(DATA / "vnnlib" / "test_nano.vnnlib"),
                 "--device", device])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and f"--device {device}" in err and words in err
    assert len(err.strip().splitlines()) == 1


def test_the_device_reaches_the_search(monkeypatch, capsys):
    import importlib

    verify_module = importlib.import_module("verifier.verify")
    original, seen = verify_module.verify_instance, []
    monkeypatch.setattr(verify_module, "verify_instance",
                        lambda *a, **k: seen.append(k["device"]) or original(*a, **k))
    code = main([str(DATA / "test_nano.onnx"), "--vnnlib", str(DATA / "vnnlib" / "test_nano.vnnlib"),
                 "--device", "cpu"])
    assert code == 0 and seen == ["cpu"]


def test_seed_reaches_the_attacks(monkeypatch, tmp_path, capsys):
    import importlib

    verify_module = importlib.import_module("verifier.verify")
    original, seen = verify_module.verify_instance, []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("seed"))
        return original(*args, **kwargs)

    monkeypatch.setattr(verify_module, "verify_instance", recording)
    code = main([str(DATA / "test_sat.onnx"), "--vnnlib", str(DATA / "vnnlib" / "test_prop.vnnlib"), "--seed", "7"])
    assert code == 0 and capsys.readouterr().out.strip() == "sat" and seen == [7]
    suite = tmp_path / "instances.csv"  # a suite run in this process (one worker): every instance gets the seed
    suite.write_text("onnx,vnnlib,timeout_s,expected\n"
                     f"{DATA / 'test_sat.onnx'},{DATA / 'vnnlib' / 'test_prop.vnnlib'},20,sat\n"
                     f"{DATA / 'test_nano.onnx'},{DATA / 'vnnlib' / 'test_nano.vnnlib'},20,unsat\n")
    assert main(["--instances", str(suite), "--seed", "5"]) == 0 and seen[1:] == [5, 5]


def test_progress_lines_on_stderr(capsys):
    """A --vnnlib run prints the branch and bound's state on stderr (a line per phase at least), stdout unchanged."""
    import re

    code = main([str(DATA / "ACASXU_run2a_1_1_batch_2000.onnx"), "--vnnlib",
                 str(DATA / "vnnlib" / "acasxu_prop_1.vnnlib"), "--timeout", "1"])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip() in {"timeout", "unsat"}
    lines = [line for line in err.splitlines() if "input split:" in line]
    assert lines and all(re.fullmatch(r"\s*[\d.]+ s  input split: [\d,]+ domains, [\d,]+ open(, lowest bound \S+)?",
                                      line) for line in lines)
    assert f"({out.strip()}) in " in err.splitlines()[-1]  # the verdict line comes last
