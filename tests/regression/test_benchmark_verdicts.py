"""Expected verdicts of a fixed set of VNN-COMP instances (tests/data/instances/instances.csv: ACAS Xu, the `test`
family, MNIST 256x2, verivital avgpool), decided within small timeouts; the suite runner, its CLI and the VNN-COMP
scripts."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from verifier.cli import main
from verifier.errors import InputError
from verifier.onnx import load_onnx, run_onnxruntime
from verifier.suite import read_instances, run_suite
from verifier.verify import verify_instance
from verifier.vnnlib import parse_vnnlib

ROOT = Path(__file__).resolve().parents[2]
INSTANCES = ROOT / "tests" / "data" / "instances" / "instances.csv"
HARD = ("ACASXU_run2a_4_2_batch_2000.onnx", "acasxu_prop_2.vnnlib")  # unsat, ~12 s: the timeout test's instance
TIMEOUT = 20.0  # every other instance takes < 5 s on one core
EXPECTED = {"sat": "violated", "unsat": "holds"}


def instances() -> list[dict]:
    return [row for row in read_instances(INSTANCES)
            if (Path(row["onnx"]).name, Path(row["vnnlib"]).name) != HARD]


@pytest.mark.parametrize("row", instances(), ids=lambda row: f"{Path(row['onnx']).stem}:{Path(row['vnnlib']).stem}")
def test_expected_verdict(row):
    network = load_onnx(row["onnx"])
    verdict = verify_instance(network, row["vnnlib"], TIMEOUT)
    assert verdict.status == EXPECTED[row["expected"]]
    if verdict.status == "violated":  # a real counterexample of one of the file's input boxes, by onnxruntime
        x, y = verdict.counterexample
        np.testing.assert_array_equal(run_onnxruntime(row["onnx"], x), y)
        pairs = parse_vnnlib(row["vnnlib"], network.n_inputs, network.n_outputs)
        assert any(box.contains(x) and prop.violated_by(y) for box, prop in pairs)


def test_one_second_on_a_hard_instance_is_a_timeout_within_three_seconds():
    row = next(r for r in read_instances(INSTANCES) if (Path(r["onnx"]).name, Path(r["vnnlib"]).name) == HARD)
    network = load_onnx(row["onnx"])
    start = time.perf_counter()
    verdict = verify_instance(network, row["vnnlib"], 1.0)
    assert verdict.status == "timeout" and time.perf_counter() - start < 3.0


def family_csv(tmp_path: Path, wrong: bool) -> Path:
    """The `test` family as an instances file beside tests/data's copies (one expected verdict flipped if wrong)."""
    lines = ["onnx,vnnlib,timeout_s,expected"]
    for net, prop, expected in (("test_nano", "test_nano", "unsat"), ("test_sat", "test_prop", "sat"),
                                ("test_unsat", "test_prop", "unsat")):
        if wrong and net == "test_sat":
            expected = "unsat"
        data = ROOT / "tests" / "data"
        lines.append(f"{data / (net + '.onnx')},{data / 'vnnlib' / (prop + '.vnnlib')},20,{expected}")
    path = tmp_path / "instances.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_run_suite_writes_results_and_counts(tmp_path):
    out = tmp_path / "results.csv"
    rows, summary = run_suite(family_csv(tmp_path, wrong=False), out=out, progress=False)
    assert [r["verdict"] for r in rows] == ["holds", "violated", "holds"]
    assert summary["n"] == 3 and summary["correct"] == 3 and summary["wrong"] == 0 and summary["unsolved"] == 0
    assert summary["total_seconds"] == pytest.approx(sum(r["seconds"] for r in rows), abs=1e-2)
    with out.open() as handle:
        written = list(csv.DictReader(handle))
    assert list(written[0]) == ["onnx", "vnnlib", "verdict", "result", "seconds", "domains", "expected", "timeout",
                               "error"]
    assert [w["result"] for w in written] == ["unsat", "sat", "unsat"]


def test_instances_files_without_header_and_bad_rows(tmp_path):
    """VNN-COMP's own instances.csv has no header and no expected column."""
    data = ROOT / "tests" / "data"
    path = tmp_path / "plain.csv"
    path.write_text(f"{data / 'test_nano.onnx'},{data / 'vnnlib' / 'test_nano.vnnlib'},7\n")
    (row,) = read_instances(path)
    assert row["timeout"] == 7.0 and row["expected"] == "" and row["onnx"].endswith("test_nano.onnx")
    rows, summary = run_suite(path, progress=False)
    assert rows[0]["verdict"] == "holds" and summary["correct"] == 0 and summary["wrong"] == 0
    path.write_text("onnx,vnnlib,timeout_s\na.onnx,b.vnnlib,soon\n")
    with pytest.raises(InputError, match="soon"):
        read_instances(path)


def test_cli_exit_code_three_on_a_wrong_answer(tmp_path, capsys):
    assert main(["--instances", str(family_csv(tmp_path, wrong=False))]) == 0
    assert main(["--instances", str(family_csv(tmp_path, wrong=True)), "--timeout-scale", "0.5"]) == 3
    _, err = capsys.readouterr()
    assert "WRONG" in err and "test_sat" in err
    assert main(["--instances", str(tmp_path / "missing.csv")]) == 2


def test_workers_give_the_same_verdicts(tmp_path):
    rows, summary = run_suite(family_csv(tmp_path, wrong=False), workers=2, progress=False)
    assert [r["verdict"] for r in rows] == ["holds", "violated", "holds"] and summary["wrong"] == 0


def test_vnncomp_scripts(tmp_path):
    scripts = ROOT / "vnncomp_scripts"
    data = ROOT / "tests" / "data"
    onnx, vnnlib = data / "test_sat.onnx", data / "vnnlib" / "test_prop.vnnlib"
    prepared = subprocess.run([scripts / "prepare_instance.sh", "v1", "test", onnx, vnnlib], capture_output=True)
    assert prepared.returncode == 0
    bad = subprocess.run([scripts / "prepare_instance.sh", "v1", "test", onnx, tmp_path / "none.vnnlib"],
                         capture_output=True)
    assert bad.returncode != 0
    results = tmp_path / "out.txt"
    ran = subprocess.run([scripts / "run_instance.sh", "v1", "test", onnx, vnnlib, results, "30"],
                         capture_output=True)
    assert ran.returncode == 0
    lines = results.read_text().splitlines()
    assert lines[0] == "sat"
    values = dict(re.findall(r"\((\w+) ([^()\s]+)\)", " ".join(lines[1:])))
    x = np.array([float(values[f"X_{i}"]) for i in range(5)])
    box, prop = parse_vnnlib(vnnlib, 5, 5)[0]
    assert box.contains(x) and prop.violated_by(run_onnxruntime(onnx, x))
    # a device torch cannot use: the one-line error, exit code 2, and "unknown" rather than a verdict
    refused = subprocess.run([scripts / "run_instance.sh", "v1", "test", onnx, vnnlib, results, "30"],
                             capture_output=True, env={**os.environ, "VERIFY_DEVICE": "tpu"})
    assert refused.returncode == 2 and b"--device tpu" in refused.stderr
    assert results.read_text().split() == ["unknown"]
