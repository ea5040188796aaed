"""VNN-LIB parsing: known answers, the shared VNN-COMP files, error messages and the meaning of the result."""
from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import numpy as np
import pytest


from verifier.errors import VnnlibError
from verifier.spec import InputBox, Property
from verifier.vnnlib import parse_vnnlib, parse_vnnlib_text

VNNLIB = Path(__file__).resolve().parents[1] / "data" / "vnnlib"
# (file, n_inputs, n_outputs) of every file in tests/data/vnnlib.
DATA_FILES = [("test_nano.vnnlib", 1, 1), ("test_tiny.vnnlib", 1, 1), ("test_small.vnnlib", 1, 1),
              ("test_prop.vnnlib", 5, 5), ("acasxu_prop_1.vnnlib", 5, 5), ("acasxu_prop_6.vnnlib", 5, 5),
              ("acasxu_prop_7.vnnlib", 5, 5), ("mnist_prop_0_0.03.vnnlib", 784, 10),
              ("linear_terms.vnnlib", 3, 3), ("input_or.vnnlib", 2, 2), ("mixed_disjuncts.vnnlib", 1, 2)]


def parse(name: str, n_inputs: int, n_outputs: int) -> list[tuple[InputBox, Property]]:
    return parse_vnnlib(VNNLIB / name, n_inputs, n_outputs)


def assert_disjuncts(prop: Property, expected: list[tuple[list, list]]) -> None:
    assert len(prop.disjuncts) == len(expected)
    for (C, d), (C_want, d_want) in zip(prop.disjuncts, expected):
        np.testing.assert_array_equal(C, np.array(C_want, dtype=float))
        np.testing.assert_array_equal(d, np.array(d_want, dtype=float))


# ---------------------------------------------------------------- known answers on tests/data/vnnlib

def test_linear_terms_strict_and_number_formats():
    ((box, prop),) = parse("linear_terms.vnnlib", 3, 3)
    np.testing.assert_array_equal(box.lo, [-0.5, 1e-3, -0.25])
    np.testing.assert_array_equal(box.hi, [0.5, 2.5, np.nextafter(0.25, 1.0)])
    assert_disjuncts(prop, [([[2, -1, 0], [1, -3, -1], [0, 0, -2], [0, 0.25, 0]],
                             [-1e-3 - 0.5, -1.0 + 6.0, 0.0, -0.25])])


def test_input_disjunction_splits_boxes_and_output_disjunctions_multiply():
    pairs = parse("input_or.vnnlib", 2, 2)
    assert len(pairs) == 2
    for (box, prop), (lo0, hi0) in zip(pairs, [(0, 1), (2, 3)]):
        np.testing.assert_array_equal(box.lo, [lo0, 0])
        np.testing.assert_array_equal(box.hi, [hi0, 1])
        assert_disjuncts(prop, [([[1, 0], [1, -1]], [0, 0]),
                                ([[1, 0], [-1, 0]], [0, -5]),
                                ([[0, -1], [0, 1], [1, -1]], [-1, 2, 0]),
                                ([[0, -1], [0, 1], [-1, 0]], [-1, 2, -5])])


def test_mixed_disjuncts_are_grouped_by_box():
    pairs = parse("mixed_disjuncts.vnnlib", 1, 2)
    assert [(b.lo.tolist(), b.hi.tolist()) for b, _ in pairs] == [([-1], [1]), ([2], [2]), ([5], [6])]
    assert_disjuncts(pairs[0][1], [([[-1, 0]], [-100]), ([[-1, 1], [1, -1]], [0.5, -0.5])])
    assert_disjuncts(pairs[1][1], [([[-1, 1]], [0])])
    assert_disjuncts(pairs[2][1], [([[0, 0]], [0])])  # always true: any output of box C is unsafe
    assert pairs[2][1].violated_by(np.array([1e6, -1e6]))


def test_vnncomp_test_family_known_answers():
    for name in ("test_nano.vnnlib", "test_tiny.vnnlib", "test_small.vnnlib"):
        ((box, prop),) = parse(name, 1, 1)
        assert (box.lo.tolist(), box.hi.tolist()) == ([-1], [1])
        want = [([[1]], [-1])] if name == "test_nano.vnnlib" else [([[-1]], [-100])]
        assert_disjuncts(prop, want)
    ((box, prop),) = parse("test_prop.vnnlib", 5, 5)
    np.testing.assert_array_equal(box.lo, [-0.30353115613746867, -0.009549296585513092, 0.4933803235848431, 0.3, 0.3])
    np.testing.assert_array_equal(box.hi, [-0.29855281193475053, 0.009549296585513092, 0.49999999998567607, 0.5, 0.5])
    C = np.zeros((4, 5))
    C[:, 0] = 1
    C[np.arange(4), np.arange(1, 5)] = -1
    assert_disjuncts(prop, [(C, np.zeros(4))])


def test_acasxu_known_answers():
    ((box, prop),) = parse("acasxu_prop_1.vnnlib", 5, 5)
    np.testing.assert_array_equal(box.lo, [0.6, -0.5, -0.5, 0.45, -0.5])
    np.testing.assert_array_equal(box.hi, [0.679857769, 0.5, 0.5, 0.5, -0.45])
    assert_disjuncts(prop, [([[-1, 0, 0, 0, 0]], [-3.991125645861615])])

    pairs = parse("acasxu_prop_6.vnnlib", 5, 5)
    assert len(pairs) == 2
    np.testing.assert_array_equal(pairs[0][0].lo, [-0.129289109, 0.11140846, -0.499999896, -0.5, -0.5])
    np.testing.assert_array_equal(pairs[1][0].hi, [0.700434925, -0.11140846, -0.499204121, 0.5, 0.5])
    coc_not_minimal = [([[-1] + [int(j == k) for j in range(1, 5)]], [0]) for k in range(1, 5)]
    for _, prop in pairs:
        assert_disjuncts(prop, coc_not_minimal)

    ((box, prop),) = parse("acasxu_prop_7.vnnlib", 5, 5)
    rows = [[[-1, 0, 0, a, b], [0, -1, 0, a, b], [0, 0, -1, a, b]] for a, b in ((1, 0), (0, 1))]
    assert_disjuncts(prop, [(r, [0, 0, 0]) for r in rows])


def test_mnist_known_answer():
    ((box, prop),) = parse("mnist_prop_0_0.03.vnnlib", 784, 10)
    label = 4  # "; Mnist property with label: 4."
    want = []
    for j in (j for j in range(10) if j != label):
        row = np.zeros(10)
        row[[label, j]] = 1, -1  # (>= Y_j Y_label) is Y_label - Y_j <= 0
        want.append(([row], [0]))
    assert_disjuncts(prop, want)
    assert box.lo[0] == 0.0 and box.hi[0] == 0.029999999329447746 and box.hi[783] == 0.029999999329447746


def test_gzip_and_text_entry_points(tmp_path):
    import gzip
    source = (VNNLIB / "acasxu_prop_7.vnnlib").read_bytes()
    (tmp_path / "p.vnnlib.gz").write_bytes(gzip.compress(source))
    (tmp_path / "bom.vnnlib").write_bytes(b"\xef\xbb\xbf" + source)  # a UTF-8 byte order mark is ignored
    a = parse_vnnlib(tmp_path / "p.vnnlib.gz", 5, 5)
    assert len(parse_vnnlib(tmp_path / "bom.vnnlib", 5, 5)) == 1
    b = parse_vnnlib_text(source.decode(), 5, 5)
    c = parse("acasxu_prop_7.vnnlib", 5, 5)
    for (box_a, prop_a), (box_b, _), (box_c, prop_c) in zip(a, b, c):
        np.testing.assert_array_equal(box_a.lo, box_c.lo)
        np.testing.assert_array_equal(box_b.hi, box_c.hi)
        assert len(prop_a.disjuncts) == len(prop_c.disjuncts)


def test_mnist_parses_fast():
    """Guard against accidental quadratic work (the target is < 50 ms; this box is shared and noisy)."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        parse("mnist_prop_0_0.03.vnnlib", 784, 10)
        times.append(time.perf_counter() - start)
    assert np.median(times) < 0.25


# ---------------------------------------------------------------- meaning: violated_by against a direct evaluation

def _sexprs(text: str) -> list:
    """Independent little reader: strip comments, pad parentheses, split, nest."""
    tokens = re.sub(r";[^\n]*", " ", text).replace("(", " ( ").replace(")", " ) ").split()
    stack: list[list] = [[]]
    for tok in tokens:
        if tok == "(":
            stack.append([])
        elif tok == ")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    return stack[0]


def _evaluate(node, env: dict[str, float]):
    """Value of a term or truth of a formula; strict comparisons read as non-strict (the documented convention)."""
    if isinstance(node, str):
        return env[node] if node in env else float(node)
    head, args = node[0], node[1:]
    if head == "and":
        return all(_evaluate(a, env) for a in args)
    if head == "or":
        return any(_evaluate(a, env) for a in args)
    values = [_evaluate(a, env) for a in args]
    if head == "+":
        return sum(values)
    if head == "-":
        return -values[0] if len(values) == 1 else values[0] - sum(values[1:])
    if head == "*":
        return float(np.prod(values))
    if head == "/":
        return values[0] / values[1]
    compare = {"<=": lambda a, b: a <= b, "<": lambda a, b: a <= b, ">=": lambda a, b: a >= b,
               ">": lambda a, b: a >= b, "=": lambda a, b: a == b}[head]
    return all(compare(a, b) for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("name, n_inputs, n_outputs", [f for f in DATA_FILES if not f[0].startswith("mnist")])
def test_violated_by_matches_direct_evaluation(name, n_inputs, n_outputs):
    text = (VNNLIB / name).read_text()
    asserts = [form[1] for form in _sexprs(text) if form[0] == "assert"]
    pairs = parse(name, n_inputs, n_outputs)
    rng = np.random.default_rng(0)
    lo = np.min([b.lo for b, _ in pairs], axis=0) - 1.0
    hi = np.max([b.hi for b, _ in pairs], axis=0) + 1.0
    xs = np.concatenate([b.sample(30, rng) for b, _ in pairs] + [rng.uniform(lo, hi, size=(30, n_inputs))])
    agree = {True: 0, False: 0}
    for x in xs:
        for _ in range(8):
            y = rng.normal(size=n_outputs) * rng.choice([1.0, 10.0, 200.0])
            if n_outputs > 1 and rng.uniform() < 0.3:  # ties exercise the non-strict boundary
                y[rng.integers(n_outputs)] = y[rng.integers(n_outputs)]
            env = {f"X_{i}": v for i, v in enumerate(x)} | {f"Y_{j}": v for j, v in enumerate(y)}
            direct = all(_evaluate(a, env) for a in asserts)
            parsed = any(box.contains(x) and bool(prop.violated_by(y)) for box, prop in pairs)
            assert parsed == direct, (x, y)
            agree[direct] += 1
    assert agree[True] > 0 and agree[False] > 0  # both outcomes were exercised


# ---------------------------------------------------------------- errors

HEAD = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0))\n(assert (<= X_0 1))\n"
ERRORS = [
    # (text, n_inputs, n_outputs, expected line, message fragment)
    ("(declare-const X_0 Real)\n(assert (<= X_0 1)\n", 1, 1, 2, "never closed"),
    ("(declare-const X_0 Real))\n", 1, 1, 1, "without a matching"),
    (HEAD + "(assert (=> Y_0 1))\n", 1, 1, 5, "unknown operator '=>'"),
    (HEAD + "(assert (<= (max Y_0 1) 1))\n", 1, 1, 5, "unknown operator 'max'"),
    (HEAD + "(assert (not (<= Y_0 1)))\n", 1, 1, 5, "unknown operator 'not'"),
    (HEAD + "(define-fun f () Real 1)\n", 1, 1, 5, "unknown command"),
    ("(declare-const X_0 Real)\n\n(declare-const X_9 Real)\n", 5, 1, 3, "X_9 does not exist: the model has 5 inputs"),
    ("(declare-const Y_10 Real)\n", 1, 10, 1, "Y_10 does not exist: the model has 10 outputs"),
    (HEAD + "(assert (<= Y_1 1))\n", 1, 2, 5, "Y_1 is used but never declared"),
    (HEAD + "(assert (<= Y_0 1.2.3))\n", 1, 1, 5, "unknown symbol '1.2.3'"),
    (HEAD + "(assert (<= Y_0 inf))\n", 1, 1, 5, "unknown symbol 'inf'"),
    (HEAD + "(assert (<= Y_0 -1e400))\n", 1, 1, 5, "out of the float64 range"),
    ("", 1, 1, 1, "no (assert ...)"),
    ("; only a comment\n\n", 1, 1, 1, "no (assert ...)"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n", 1, 1, 2, "no (assert ...)"),
    ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
     "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= Y_0 1))\n",
     2, 1, 2, "X_1 has no upper bound"),
    (HEAD + "(assert (<= Y_0 1))\n", 2, 1, 5, "X_1 is never declared"),
    (HEAD + "(assert (<= X_0 Y_0))\n", 1, 1, 5, "mixing inputs (X) and outputs (Y)"),
    ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(assert (<= X_0 X_1))\n", 2, 1, 3, "single X variable"),
    (HEAD + "(assert (<= (* Y_0 Y_0) 1))\n", 1, 1, 5, "product of variables"),
    (HEAD + "(assert (<= (/ Y_0 0) 1))\n", 1, 1, 5, "nonzero constant divisor"),
    ("(declare-const X_0 Int)\n", 1, 1, 1, "expected (declare-const X_i Real)"),
    ("(declare-const Z Real)\n", 1, 1, 1, "expected a name X_i (input) or Y_j (output)"),
    ("(declare-const X_0 Real)\n(declare-const X_0 Real)\n", 1, 1, 2, "declared twice"),
    (HEAD + "(assert (>= X_0 2))\n(assert (<= Y_0 1))\n", 1, 1, 6, "every input box is empty"),
    (HEAD + "(assert (<= 2 1))\n", 1, 1, 5, "always false"),
    (HEAD + "(assert (or))\n", 1, 1, 5, "always false"),
    ("(declare-const X_0 Real)\nassert\n", 1, 1, 2, "expected a command in parentheses"),
    (HEAD + "(assert (<= Y_0))\n", 1, 1, 5, "two or more terms"),
    (HEAD + "(assert Y_0)\n", 1, 1, 5, "expected a formula"),
    (HEAD + "(assert (<= Y_0 1) (<= Y_0 2))\n", 1, 1, 5, "one formula"),
    (HEAD + "(assert ((<= Y_0 1)))\n", 1, 1, 5, "expected an operator"),
    (HEAD + "\n((assert (<= Y_0 1)))\n", 1, 1, 6, "unknown command"),
    (HEAD + "()\n", 1, 1, 5, "unknown command"),
]


@pytest.mark.parametrize("text, n_inputs, n_outputs, line, fragment", ERRORS)
def test_errors_name_file_line_and_expectation(tmp_path, text, n_inputs, n_outputs, line, fragment):
    path = tmp_path / "bad.vnnlib"
    path.write_text(text)
    with pytest.raises(VnnlibError) as info:
        parse_vnnlib(path, n_inputs, n_outputs)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message and "\n" not in message


def test_unreadable_file_and_bad_sizes(tmp_path):
    with pytest.raises(VnnlibError, match="cannot read"):
        parse_vnnlib(tmp_path / "missing.vnnlib", 1, 1)
    with pytest.raises(VnnlibError, match="at least one input"):
        parse_vnnlib(VNNLIB / "test_nano.vnnlib", 0, 1)


def test_dnf_blowup_is_refused():
    disjunction = "(assert (or (<= Y_0 0) (<= Y_0 1) (<= Y_0 2) (<= Y_0 3) (<= Y_0 4) (<= Y_0 5)))\n"
    with pytest.raises(VnnlibError, match="more than"):
        parse_vnnlib_text(HEAD + disjunction * 8, 1, 1)  # 6 ** 8 terms


# ---------------------------------------------------------------- every shared VNN-COMP file

def _io_sizes(onnx_path: Path) -> tuple[int, int]:
    """Flat input and output sizes from the graph's declared shapes (initializers are not inputs)."""
    import onnx
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}

    def size(value) -> int:
        return int(np.prod([d.dim_value if d.dim_value > 0 else 1 for d in value.type.tensor_type.shape.dim]))

    return size(next(i for i in graph.input if i.name not in weights)), size(graph.output[0])


def _shared_files(root: Path) -> list[tuple[Path, int, int]]:
    """Every .vnnlib under root with the sizes of a network it is used with (instances.csv)."""
    files = []
    for instances in sorted(root.glob("*/instances.csv")):
        suite = instances.parent
        nets: dict[str, str] = {}
        with instances.open() as handle:
            for row in csv.DictReader(handle):
                nets.setdefault(row["vnnlib"], row["onnx"])
        sizes = {net: _io_sizes(suite / net) for net in set(nets.values())}
        files += [(suite / vnn, *sizes[net]) for vnn, net in sorted(nets.items())]
    return files


def _expected_structure(text: str, n_inputs: int) -> list[tuple[np.ndarray, np.ndarray, list[int]]]:
    """Per input box: (lo, hi, rows per disjunct), read line by line with regexes, knowing how the VNN-COMP
    files are laid out (top-level bounds; one `(and ...)` per line inside an `or`)."""
    lines = [line.split(";")[0] for line in text.splitlines()]
    bound = re.compile(r"\((<=|>=) X_(\d+) (\S+?)\)")
    y_atom = re.compile(r"\((?:<=|>=|<|>) [^()]*Y_[^()]*\)")
    top = [line for line in lines if line.startswith("(assert (") and "(or" not in line]
    and_lines = [line for line in lines if "(and" in line]
    box_lines = [line for line in and_lines if "X_" in line] or [""]
    out_lines = [line for line in and_lines if "X_" not in line]
    top_rows = sum(len(y_atom.findall(line)) for line in top)
    result = []
    for box_line in box_lines:
        lo, hi = np.full(n_inputs, -np.inf), np.full(n_inputs, np.inf)
        for op, index, value in bound.findall(" ".join(top) + box_line):
            side, pick = (hi, min) if op == "<=" else (lo, max)
            side[int(index)] = pick(side[int(index)], float(value))
        box_rows = top_rows + len(y_atom.findall(box_line))
        rows = [box_rows + len(y_atom.findall(line)) for line in out_lines] or [box_rows]
        result.append((lo, hi, rows))
    return result


def test_every_shared_file_parses_with_the_expected_structure(shared_benchmarks):
    files = _shared_files(shared_benchmarks)
    assert len(files) >= 40
    for path, n_inputs, n_outputs in files:
        pairs = parse_vnnlib(path, n_inputs, n_outputs)
        expected = _expected_structure(path.read_text(), n_inputs)
        assert len(pairs) == len(expected), path
        for (box, prop), (lo, hi, rows) in zip(pairs, expected):
            np.testing.assert_array_equal(box.lo, lo, err_msg=str(path))
            np.testing.assert_array_equal(box.hi, hi, err_msg=str(path))
            assert [C.shape for C, _ in prop.disjuncts] == [(m, n_outputs) for m in rows], path
    by_name = {(p.parent.parent.name, p.name): (n_in, n_out) for p, n_in, n_out in files}
    shapes = {"prop_6.vnnlib": [[1] * 4] * 2, "prop_7.vnnlib": [[3, 3]], "prop_8.vnnlib": [[2, 2, 2]],
              "prop_1.vnnlib": [[1]], "prop_2.vnnlib": [[4]]}
    for name, want in shapes.items():
        pairs = parse_vnnlib(shared_benchmarks / "acasxu" / "vnnlib" / name, *by_name["acasxu", name])
        assert [[C.shape[0] for C, _ in prop.disjuncts] for _, prop in pairs] == want, name


def test_shared_mnist_files_are_clipped_linf_balls(shared_benchmarks):
    paths = sorted((shared_benchmarks / "mnist_fc" / "vnnlib").glob("*.vnnlib"))
    assert paths
    for path in paths:
        eps = float(re.fullmatch(r"prop_\d+_([\d.]+)\.vnnlib", path.name).group(1))
        label = int(re.search(r"label: (\d+)", path.read_text()).group(1))
        ((box, prop),) = parse_vnnlib(path, 784, 10)
        assert len(prop.disjuncts) == 9
        assert np.all(box.lo >= 0) and np.all(box.hi <= 1) and np.all(box.lo <= box.hi)
        width = box.hi - box.lo
        assert np.all(width <= 2 * eps + 1e-6), path
        inside = (box.lo > 0) & (box.hi < 1)  # not clipped: the full 2 eps
        np.testing.assert_allclose(width[inside], 2 * eps, atol=1e-6, err_msg=str(path))
        for (C, d), j in zip(prop.disjuncts, [j for j in range(10) if j != label]):
            want = np.zeros((1, 10))
            want[0, [label, j]] = 1, -1
            np.testing.assert_array_equal(C, want)
            np.testing.assert_array_equal(d, [0])
