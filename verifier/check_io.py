"""The checker's readers (check.py): a dense ReLU chain from an ONNX file, the unsafe conjunctions of a
VNN-LIB file, and a certificate with the structure of its proof (which property it covers, the leaves of its
trees: coverage). Like check.py, they share no code with the rest of the package (numpy and the `onnx` protobuf
reader only): the checker's own view of the files.
"""
from __future__ import annotations

import hashlib
import json
import re
from fractions import Fraction
from pathlib import Path

import numpy as np


FORMAT = "verifier-certificate"
VERSION = 1


class BadInput(Exception):
    """A file that cannot be read or holds something this checker does not support (exit code 2)."""


class Invalid(Exception):
    """The certificate does not prove the property (exit code 1)."""


def down(x):
    return np.nextafter(x, -np.inf)


def up(x):
    return np.nextafter(x, np.inf)


# ---------------------------------------------------------------------------------------------- the network
class Chain:
    """The network as checked: `pre`, elementwise ops [(name, c (n_inputs,))] applied to the input box first;
    `layers` [(W (out, in), b_lo (out,), b_hi (out,), relu)], every layer but maybe the last with relu."""

    def __init__(self, pre: list, layers: list, n_inputs: int) -> None:
        self.pre, self.layers, self.n_inputs = pre, layers, n_inputs
        self.n_outputs = layers[-1][0].shape[0]


def read_onnx(path: Path) -> Chain:
    """The chain of an ONNX file (module docstring of check.py); BadInput for anything else."""
    try:
        return _read_onnx(path)
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise BadInput(f"{path}: an unsupported graph ({type(exc).__name__}: {exc})") from None


def _read_onnx(path: Path) -> Chain:
    import onnx
    from onnx import helper, numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:
        raise BadInput(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    const = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer}
    data_inputs = [i for i in graph.input if i.name not in const]
    if len(data_inputs) != 1:
        raise BadInput(f"{path}: expected one data input, found {len(data_inputs)}")
    shape = tuple(max(d.dim_value, 1) for d in data_inputs[0].type.tensor_type.shape.dim)
    n = int(np.prod(shape))
    data, pre, layers, state = data_inputs[0].name, [], [], "input"
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        op, ins = node.op_type, list(node.input)
        if op == "Constant":
            const[node.output[0]] = numpy_helper.to_array(attrs["value"]).astype(np.float64)
            continue
        if data not in ins:
            raise BadInput(f"{path}: node {node.name or op} ({op}) is not on the single data path")
        other = [const[i] for i in ins if i != data and i in const]
        if op in ("Flatten", "Reshape", "Identity", "Squeeze", "Unsqueeze"):
            pass
        elif op == "Relu" and state == "dense":
            layers[-1][3] = True
            state = "relu"
        elif op in ("Sub", "Add", "Mul", "Div") and len(other) == 1 and ins[0] == data:
            c = other[0]
            if state == "input":
                pre.append((op, np.broadcast_to(c, shape).reshape(-1).copy() if c.size != n else c.reshape(-1)))
            elif state == "dense" and op in ("Add", "Sub") and c.size in (1, layers[-1][0].shape[0]):
                c = np.broadcast_to(c.reshape(-1), layers[-1][1].shape) * (1.0 if op == "Add" else -1.0)
                layers[-1][1], layers[-1][2] = down(layers[-1][1] + c), up(layers[-1][2] + c)
            else:
                raise BadInput(f"{path}: {op} after a {'ReLU' if state == 'relu' else 'matrix'} is not supported")
        elif op in ("MatMul", "Gemm") and state != "dense" and other:
            if op == "Gemm":
                if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
                    raise BadInput(f"{path}: Gemm with alpha/beta != 1 or transA is not supported")
                B = const[ins[1]]
                W = B if attrs.get("transB", 0) else B.T
                b = const[ins[2]].reshape(-1) if len(ins) > 2 and ins[2] else np.zeros(W.shape[0])
            else:
                W = other[0].T if ins[0] == data else other[0]
                b = np.zeros(W.shape[0])
            if W.ndim != 2:
                raise BadInput(f"{path}: {op} with a {W.ndim}-d constant is not supported")
            layers.append([W, np.broadcast_to(b, W.shape[0]).copy(), np.broadcast_to(b, W.shape[0]).copy(), False])
            state = "dense"
        else:
            raise BadInput(f"{path}: node {node.name or op} ({op}) is not supported by the checker (dense ReLU "
                           "chains only)")
        data = node.output[0]
    if any(not np.all(np.isfinite(a)) for layer in layers for a in layer[:3]) or \
            any(not np.all(np.isfinite(c)) for _, c in pre):
        raise BadInput(f"{path}: weights or constants hold NaN or infinities")
    if not layers or data != graph.output[0].name:
        raise BadInput(f"{path}: the output is not the end of a chain of dense layers")
    for (W, *_), (W2, *_) in zip(layers, layers[1:]):
        if W2.shape[1] != W.shape[0]:
            raise BadInput(f"{path}: layer sizes do not chain ({W.shape} then {W2.shape})")
    if layers[0][0].shape[1] != n or any(not (layer[3] or k == len(layers) - 1) for k, layer in enumerate(layers)):
        raise BadInput(f"{path}: not a chain of dense layers with ReLU between them")
    return Chain(pre, [tuple(layer) for layer in layers], n)


def preprocess(chain: Chain, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box (B, n) through the elementwise ops before the first matrix, rounded outwards."""
    for op, c in chain.pre:
        if op in ("Add", "Sub"):
            c = c if op == "Add" else -c
            lo, hi = down(lo + c), up(hi + c)
        else:
            if op == "Div" and np.any(c == 0):
                raise BadInput("the model divides by 0")
            a, b = (lo * c, hi * c) if op == "Mul" else (lo / c, hi / c)
            lo, hi = down(np.minimum(a, b)), up(np.maximum(a, b))
    return lo, hi


# --------------------------------------------------------------------------------------------- VNN-LIB
def read_vnnlib(path: Path, n_in: int, n_out: int) -> list[tuple[list, list, list]]:
    """The unsafe conjunctions of a VNN-LIB file: [(lo [Fraction | None] (n_in,), hi, rows [(coef {j: Fraction},
    rhs Fraction)] meaning sum coef Y_j <= rhs)]; constants read as float64, arithmetic exact."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read ({exc})") from None
    tokens = re.findall(r"\(|\)|[^\s()]+", re.sub(r";[^\n]*", " ", text))
    stack, top = [[]], None
    for tok in tokens:
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) < 2:
                raise BadInput(f"{path}: unbalanced parentheses")
            top = stack.pop()
            stack[-1].append(top)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise BadInput(f"{path}: unbalanced parentheses")
    terms = [([], [])]
    for expr in stack[0]:
        if isinstance(expr, list) and expr and expr[0] == "assert":
            terms = [(a + c, b + e) for a, b in terms for c, e in _dnf(path, expr[1], n_in, n_out)]
    result = []
    for inputs, rows in terms:
        lo, hi, empty = [None] * n_in, [None] * n_in, False
        for i, upper, v in inputs:
            if upper:
                hi[i] = v if hi[i] is None else min(hi[i], v)
            else:
                lo[i] = v if lo[i] is None else max(lo[i], v)
            empty |= lo[i] is not None and hi[i] is not None and lo[i] > hi[i]
        if not empty and all(r is not False for r in rows):
            result.append((lo, hi, [r for r in rows if r is not True]))
    return result


def _dnf(path, e, n_in, n_out) -> list[tuple[list, list]]:
    if not isinstance(e, list) or not e:
        raise BadInput(f"{path}: expected a formula, got {e!r}")
    if e[0] == "and":
        out = [([], [])]
        for sub in e[1:]:
            out = [(a + c, b + d) for a, b in out for c, d in _dnf(path, sub, n_in, n_out)]
        return out
    if e[0] == "or":
        return [t for sub in e[1:] for t in _dnf(path, sub, n_in, n_out)]
    if e[0] not in ("<=", ">=", "<", ">", "=") or len(e) < 3:
        raise BadInput(f"{path}: unsupported formula {e[0]!r}")
    parts = [_linear(path, x) for x in e[1:]]
    atoms = []
    for a, b in zip(parts, parts[1:]):
        pairs = [(a, b)] if e[0] in ("<=", "<") else [(b, a)] if e[0] in (">=", ">") else [(a, b), (b, a)]
        for x, y in pairs:  # x <= y  <=>  sum coef v + const <= 0
            atoms.append(({k: x[0].get(k, 0) - y[0].get(k, 0) for k in set(x[0]) | set(y[0])}, x[1] - y[1]))
    inputs, rows = [], []
    for coef, c in atoms:
        coef = {k: v for k, v in coef.items() if v != 0}
        xs, ys = [k for k in coef if k[0] == "X"], [k for k in coef if k[0] == "Y"]
        if any(k[1] >= (n_in if k[0] == "X" else n_out) for k in coef):
            raise BadInput(f"{path}: a variable beyond the model's {n_in} inputs / {n_out} outputs")
        if not coef:
            rows.append(c <= 0)  # a constant atom: True (no constraint) or False (the conjunction is empty)
        elif xs and ys or len(xs) > 1:
            raise BadInput(f"{path}: atoms mixing inputs and outputs, or several inputs, are not supported")
        elif xs:
            a = coef[xs[0]]
            inputs.append((xs[0][1], a > 0, -c / a))
        else:
            rows.append(({k[1]: v for k, v in coef.items()}, -c))
    return [(inputs, rows)]


def _linear(path, e) -> tuple[dict, Fraction]:
    """({(kind, index): coefficient}, constant) of a linear term."""
    if isinstance(e, str):
        m = re.fullmatch(r"([XY])_(\d+)", e)
        if m:
            return {(m.group(1), int(m.group(2))): Fraction(1)}, Fraction(0)
        try:
            return {}, Fraction(float(e))
        except ValueError:
            raise BadInput(f"{path}: not a number or variable: {e!r}") from None
    args = [_linear(path, x) for x in e[1:]]
    if e[0] in ("+", "-") and args:
        signs = [1] + [-1 if e[0] == "-" else 1] * (len(args) - 1) if len(args) > 1 else [-1 if e[0] == "-" else 1]
        coef: dict = {}
        for s, (c, _) in zip(signs, args):
            for k, v in c.items():
                coef[k] = coef.get(k, 0) + s * v
        return coef, sum((s * a[1] for s, a in zip(signs, args)), Fraction(0))
    if e[0] == "*" and len(args) == 2 and (not args[0][0] or not args[1][0]):
        (c, k), (c2, k2) = args if not args[0][0] else args[::-1]
        return {key: k * v for key, v in c2.items()}, k * k2
    raise BadInput(f"{path}: unsupported term {e[0]!r}")


# ------------------------------------------------------------------------------------------- certificates
def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_certificate(path: Path) -> tuple[dict, list[dict]]:
    """(meta, pairs): a pair is a dict of lo, hi (n,), C, d (lists per disjunct), kind and its proof's arrays."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as exc:
        raise BadInput(f"{path}: not a certificate ({type(exc).__name__})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise BadInput(f"{path}: not a {FORMAT} of version {VERSION}")
    pairs = []
    for i, info in enumerate(meta["pairs"]):
        pair = {k[len(f"p{i}_"):]: v for k, v in arrays.items() if k.startswith(f"p{i}_")}
        pair["kind"] = info["kind"]
        pair["C"] = [pair.pop(f"C{k}") for k in range(info["disjuncts"])]
        pair["d"] = [pair.pop(f"d{k}") for k in range(info["disjuncts"])]
        pairs.append(pair)
    return meta, pairs


def covered(term: tuple, pairs: list[dict]) -> bool:
    """Whether some pair's box holds the term's input box and some disjunct of it is implied by the term's rows."""
    lo, hi, rows = term
    if any(v is None for v in lo + hi):
        return False
    for pair in pairs:
        if not all(Fraction(float(a)) <= b for a, b in zip(pair["lo"], lo)):
            continue
        if not all(Fraction(float(a)) >= b for a, b in zip(pair["hi"], hi)):
            continue
        for C, d in zip(pair["C"], pair["d"]):
            if all(any(all(Fraction(float(c)) == coef.get(j, 0) for j, c in enumerate(C[r])) and
                       Fraction(float(d[r])) >= rhs for coef, rhs in rows) for r in range(len(d))):
                return True
    return False


def leaf_boxes(pair: dict) -> tuple[np.ndarray, ...]:
    """The leaf boxes lo, hi (L, n) of an input-split tree (flags in pre-order, 1 cut / 0 leaf; cut dims and
    points), and the boxes of the ancestors whose linear bounds they may use instead of their own ("via": levels
    up per leaf, default 1: the parent; the root's: itself)."""
    stack, leaves, cut = [(pair["lo"].copy(), pair["hi"].copy(), ())], [], 0
    dims, points = pair["dim"], pair["point"]
    for flag in pair["tree"]:
        if not stack:
            raise Invalid("the input-split tree has nodes after its last leaf")
        lo, hi, path = stack.pop()
        if flag:
            if cut >= len(dims) or not 0 <= dims[cut] < len(lo):
                raise Invalid(f"cut {cut} of the input-split tree is missing or names no input")
            k, p = int(dims[cut]), float(points[cut])
            if not lo[k] <= p <= hi[k]:
                raise Invalid(f"cut {cut} at {p!r} lies outside its box's [{lo[k]!r}, {hi[k]!r}] on input {k}")
            left_hi, right_lo = hi.copy(), lo.copy()
            left_hi[k], right_lo[k] = p, p
            stack += [(right_lo, hi, path + ((lo, hi),)), (lo, left_hi, path + ((lo, hi),))]
            cut += 1
        else:
            leaves.append((lo, hi, path))
    if stack:
        raise Invalid(f"the input-split tree leaves {len(stack)} piece(s) of the box without a leaf (a gap)")
    via = pair.get("via", np.array([min(1, len(path)) for _, _, path in leaves]))
    if len(via) != len(leaves) or any(not 0 <= v <= len(path) for v, (_, _, path) in zip(via, leaves)):
        raise Invalid("the input-split tree's leaves name ancestors they do not have")
    anchors = [path[-v] if v else (lo, hi) for v, (lo, hi, path) in zip(via, leaves)]
    n = len(pair["lo"])
    return tuple(np.array(x).reshape(-1, n) for x in ([a for a, _, _ in leaves], [b for _, b, _ in leaves],
                                                      [a for a, _ in anchors], [b for _, b in anchors]))


def relu_coverage(splits: np.ndarray) -> str | None:
    """None when the leaves' splits (L, N) in {-1, 0, 1} form a complete binary tree of ReLU splits (each
    subtree's leaves share a split neuron with both sides present, down to a leaf), else what is missing."""
    stack = [(np.arange(len(splits)), np.zeros(splits.shape[1], dtype=splits.dtype))]
    while stack:
        idx, fixed = stack.pop()
        if not len(idx):
            fixed_at = {int(j): int(fixed[j]) for j in np.flatnonzero(fixed)}
            return f"no leaf covers the domain with splits {fixed_at}"
        extra = (splits[idx] != 0) & (fixed == 0)
        if (~extra.any(1)).any():  # a leaf with no split beyond this subtree's: it covers the subtree
            continue
        common = np.flatnonzero(extra.all(0))
        if not len(common):
            return f"{len(idx)} leaves under splits {np.flatnonzero(fixed).tolist()} share no further split"
        j = common[0]
        for side in (1, -1):
            f = fixed.copy()
            f[j] = side
            stack.append((idx[splits[idx, j] == side], f))
    return None


def padded(pair: dict) -> tuple[np.ndarray, np.ndarray]:
    K, M = len(pair["d"]), max(len(d) for d in pair["d"])
    C = np.zeros((K, M, pair["C"][0].shape[1]))
    d = np.full((K, M), np.inf)
    for k in range(K):
        C[k, :len(pair["d"][k])], d[k, :len(pair["d"][k])] = pair["C"][k], pair["d"][k]
    return C, d
