"""VNN-LIB text -> ``[(InputBox, Property)]``.

A VNN-LIB file declares inputs ``X_i`` and outputs ``Y_j`` (``(declare-const X_0 Real)``) and asserts formulas
over them. All asserts are conjoined; the conjunction is the *unsafe* set: the property is violated when some
input reaches it. The formula is rewritten in disjunctive normal form; each conjunction splits into its input
atoms (bounds on one ``X_i`` each, intersected into a box) and its output atoms (rows of ``C y <= d``). Terms
with the same box are gathered into one `Property` (a disjunction of unsafe conjunctions), so the result holds
one ``(InputBox, Property)`` pair per distinct input box; the file is violated iff some pair is.

Supported: atoms ``<= >= < > =`` (chains like ``(<= a b c)`` mean ``a <= b and b <= c``) between linear
terms built from variables, numbers (``1e-3``, ``-0.5``, ``.5``), ``+``, ``-`` (unary too), ``*`` with at most
one non-constant factor and ``/`` by a constant; ``and``/``or`` nested in any way; ``;`` comments.

Conventions:
- Strict inequalities are read as non-strict (the VNN-COMP convention). The unsafe set becomes its closure, a
  superset, so "holds" stays sound; only a counterexample lying exactly on the boundary of a strict atom (a
  measure-zero set) could be spurious.
- Constants are float64. An input bound that needed arithmetic (``a * X_i <= c`` with ``|a| != 1``, or constants
  on both sides) is widened outwards by one ulp, so rounding does not shrink the box.
- A conjunction without output atoms (any input of its box is unsafe) gets the always-true row ``0 y <= 0``.
- Input boxes that are empty after intersection cannot be reached and are dropped.
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

from .errors import VnnlibError
from .spec import InputBox, Property

# One scan over the whole text: a comment, a parenthesis or an atom (anything else up to a delimiter).
_TOKEN = re.compile(r";[^\n]*|\(|\)|[^\s();]+")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_VARIABLE = re.compile(r"([XY])_(0|[1-9]\d*)")
_COMPARISONS = {"<=", ">=", "<", ">", "="}
_IGNORED_COMMANDS = {"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"}
_END = -1  # token index of errors about the file as a whole: reported at its last token
# Guard against exponential blow-up of the product of disjunctions (real files have a handful of terms).
MAX_TERMS = 100_000

# A DNF term: (input atoms, output atoms). Input atom: (index, is_upper, value) meaning X_index <= / >= value.
# Output atom: (((j, coef), ...), rhs) meaning sum coef * Y_j <= rhs.
_Term = tuple[tuple, tuple]


class _List(list):
    """A parenthesised expression; pos is the index of its "(" among the tokens (for error lines)."""

    __slots__ = ("pos",)


def parse_vnnlib(path: str | Path, n_inputs: int, n_outputs: int) -> list[tuple[InputBox, Property]]:
    """Parse a VNN-LIB file (``.vnnlib`` or ``.vnnlib.gz``) for a model with n_inputs inputs, n_outputs outputs.

    Returns one ``(InputBox, Property)`` per distinct input box: boxes (n_inputs,), each Property's disjuncts
    ``(C (m, n_outputs), d (m,))``. Raises `VnnlibError` ("file:line: what was expected") on anything malformed
    or unsupported.
    """
    path = Path(path)
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise VnnlibError(f"{path}: cannot read the file ({err})") from None
    return parse_vnnlib_text(text, n_inputs, n_outputs, name=str(path))


def parse_vnnlib_text(text: str, n_inputs: int, n_outputs: int,
                      name: str = "<text>") -> list[tuple[InputBox, Property]]:
    """`parse_vnnlib` on a string; name is what error messages call the source."""
    if n_inputs < 1 or n_outputs < 1:
        raise VnnlibError(f"{name}: the model needs at least one input and one output "
                          f"(got {n_inputs} inputs, {n_outputs} outputs)")
    return _Parser(text, n_inputs, n_outputs, name).parse()


class _Parser:
    """One file's parse: the text (for line numbers), the model sizes and the declared variables."""

    def __init__(self, text: str, n_inputs: int, n_outputs: int, name: str) -> None:
        self.text, self.n_inputs, self.n_outputs, self.name = text, n_inputs, n_outputs, name
        self.declared: dict[str, tuple[str, int]] = {}  # name -> its key in linear terms: (kind "X"/"Y", index)
        self.declared_at: dict[str, int] = {}  # name -> token index of its declaration

    def error(self, pos: int, message: str) -> VnnlibError:
        """The error at token index pos (-1: the last token); the token's text offset is found only now."""
        matches = list(_TOKEN.finditer(self.text))
        offset = matches[pos].start() if matches else 0
        line = self.text.count("\n", 0, offset) + 1
        return VnnlibError(f"{self.name}:{line}: {message}")

    # ---------------------------------------------------------------- text -> s-expressions
    def read(self) -> list:
        """The top-level expressions: nested `_List` of atom strings."""
        stack: list[_List] = [_List()]
        # findall and token indices, not finditer and offsets: half the time on large files.
        for index, token in enumerate(_TOKEN.findall(self.text)):
            first = token[0]
            if first == "(":
                node = _List()
                node.pos = index
                stack.append(node)
            elif first == ")":
                if len(stack) == 1:
                    raise self.error(index, "unbalanced parentheses: ')' without a matching '('")
                node = stack.pop()
                stack[-1].append(node)
            elif first != ";":
                if len(stack) == 1:
                    raise self.error(index, f"expected a command in parentheses, got {token!r}")
                stack[-1].append(token)
        if len(stack) > 1:
            raise self.error(stack[1].pos, "unbalanced parentheses: this '(' is never closed")
        return stack[0]

    # ---------------------------------------------------------------- commands
    def parse(self) -> list[tuple[InputBox, Property]]:
        asserted: list[list[_Term]] = []
        for form in self.read():
            head = form[0] if form else None
            if head == "declare-const":
                self.declare(form)
            elif head == "assert":
                if len(form) != 2:
                    raise self.error(form.pos, "expected (assert FORMULA) with one formula")
                asserted.append(self.formula(form[1], form))
            elif not (isinstance(head, str) and head in _IGNORED_COMMANDS):
                raise self.error(form.pos, f"unknown command {_show(head)}: expected declare-const or assert")
        if not asserted:
            raise self.error(_END, "no (assert ...) in the file: expected at least one constraint")
        return self.assemble(self.product(asserted, _END))

    def declare(self, form: _List) -> None:
        if len(form) != 3 or isinstance(form[1], _List) or form[2] != "Real":
            raise self.error(form.pos, "expected (declare-const X_i Real) or (declare-const Y_j Real)")
        var = form[1]
        match = _VARIABLE.fullmatch(var)
        if match is None:
            raise self.error(form.pos, f"variable {var!r}: expected a name X_i (input) or Y_j (output)")
        kind, index = match.group(1), int(match.group(2))
        size = self.n_inputs if kind == "X" else self.n_outputs
        if index >= size:
            what = "inputs" if kind == "X" else "outputs"
            raise self.error(form.pos, f"{var} does not exist: the model has {size} {what} "
                                       f"({kind}_0..{kind}_{size - 1})")
        if var in self.declared:
            raise self.error(form.pos, f"{var} is declared twice")
        self.declared[var] = (kind, index)
        self.declared_at[var] = form.pos

    # ---------------------------------------------------------------- formulas -> DNF
    def formula(self, node, parent: _List) -> list[_Term]:
        """DNF of a boolean formula: a list of terms (an empty list is false, [((), ())] is true)."""
        if not isinstance(node, _List) or not node:
            raise self.error(parent.pos, f"expected a formula (and/or/comparison), got {_show(node)}")
        head = node[0]
        if not isinstance(head, str):
            raise self.error(node.pos, f"expected an operator after '(', got {_show(head)}")
        if head == "and":
            return self.product([self.formula(child, node) for child in node[1:]], node.pos)
        if head == "or":
            return [term for child in node[1:] for term in self.formula(child, node)]
        if head in _COMPARISONS:
            if len(node) < 3:
                raise self.error(node.pos, f"expected ({head} TERM TERM) with two or more terms")
            sides = [self.linear(child, node) for child in node[1:]]
            # A chain a <= b <= c is the conjunction of its neighbouring pairs.
            return self.product([self.comparison(head, a, b, node) for a, b in zip(sides, sides[1:])], node.pos)
        raise self.error(node.pos, f"unknown operator {_show(head)}: expected and, or, <=, >=, <, >, =")

    def product(self, factors: list[list[_Term]], pos: int) -> list[_Term]:
        """DNF of the conjunction of DNFs; single-term factors are merged once instead of multiplied."""
        base_in: list = []
        base_out: list = []
        several = []
        for terms in factors:
            if not terms:
                return []
            if len(terms) == 1:
                base_in.extend(terms[0][0])
                base_out.extend(terms[0][1])
            else:
                several.append(terms)
        result = [(tuple(base_in), tuple(base_out))]
        for terms in several:
            if len(result) * len(terms) > MAX_TERMS:
                raise self.error(pos, f"the disjunctive normal form has more than {MAX_TERMS} terms")
            result = [(a_in + b_in, a_out + b_out) for a_in, a_out in result for b_in, b_out in terms]
        return result

    def comparison(self, op: str, left: tuple[dict, float], right: tuple[dict, float], node: _List) -> list[_Term]:
        """DNF of ``left op right`` (one atom, two for "=")."""
        if op == "=":
            return self.product([self.atom(left, right, node), self.atom(right, left, node)], node.pos)
        if op == "<=" or op == "<":
            return self.atom(left, right, node)
        return self.atom(right, left, node)

    def atom(self, small: tuple[dict, float], large: tuple[dict, float], node: _List) -> list[_Term]:
        """DNF of ``small <= large`` as one input bound or one output row (or a constant truth value)."""
        coefs = dict(small[0])
        for var, coef in large[0].items():
            coefs[var] = coefs.get(var, 0.0) - coef
        terms = [(var, coef) for var, coef in coefs.items() if coef != 0.0]  # var = (kind, index)
        rhs = large[1] - small[1]  # sum coef * var <= rhs
        kinds = {var[0] for var, _ in terms}
        if not kinds:
            return [((), ())] if 0.0 <= rhs else []
        if len(kinds) > 1:
            raise self.error(node.pos, "unsupported constraint mixing inputs (X) and outputs (Y): "
                                       "expected input bounds and output constraints in separate atoms")
        if "Y" in kinds:
            row = tuple(sorted((index, coef) for (_, index), coef in terms))
            return [((), ((row, rhs),))]
        if len(terms) != 1:
            names = ", ".join(f"X_{index}" for (_, index), _ in sorted(terms))
            raise self.error(node.pos, f"unsupported input constraint on {names}: "
                                       "expected a bound on a single X variable (the input set is a box)")
        (((_, index), coef),) = terms
        value = rhs / coef + 0.0  # + 0.0 turns -0.0 into 0.0, so equal boxes get equal keys
        if abs(coef) != 1.0 or (small[1] != 0.0 and large[1] != 0.0):
            # value came out of float arithmetic: widen by one ulp so the box does not lose points
            value = float(np.nextafter(value, np.inf if coef > 0 else -np.inf))
        return [(((index, coef > 0, value),), ())]

    # ---------------------------------------------------------------- linear terms
    def linear(self, node, parent: _List) -> tuple[dict, float]:
        """A linear term as (coefficients {(kind, index): coef}, constant)."""
        if not isinstance(node, _List):
            var = self.declared.get(node)
            if var is not None:
                return {var: 1.0}, 0.0
            if _NUMBER.fullmatch(node):
                value = float(node)
                if not np.isfinite(value):
                    raise self.error(parent.pos, f"number {node} is out of the float64 range")
                return {}, value
            if _VARIABLE.fullmatch(node):
                raise self.error(parent.pos, f"{node} is used but never declared: expected (declare-const {node} Real)")
            raise self.error(parent.pos, f"unknown symbol {node!r}: expected a number or a declared variable")
        if not node or isinstance(node[0], _List):
            raise self.error(node.pos, f"expected an arithmetic term (+, -, *, /), got {_show(node)}")
        head, args = node[0], [self.linear(child, node) for child in node[1:]]
        if not args:
            raise self.error(node.pos, f"expected ({head} TERM ...) with at least one term")
        if head == "+":
            return _combine(args, [1.0] * len(args))
        if head == "-":
            if len(args) == 1:
                return _combine(args, [-1.0])
            return _combine(args, [1.0] + [-1.0] * (len(args) - 1))
        if head == "*":
            variable = [arg for arg in args if arg[0]]
            if len(variable) > 1:
                raise self.error(node.pos, "unsupported product of variables: expected at most one "
                                           "non-constant factor in (* ...)")
            factor = float(np.prod([arg[1] for arg in args if not arg[0]]))
            return _combine(variable or [({}, 1.0)], [factor])
        if head == "/":
            if len(args) != 2 or args[1][0] or args[1][1] == 0.0:
                raise self.error(node.pos, "expected (/ TERM NUMBER) with a nonzero constant divisor")
            divisor = args[1][1]
            return {var: coef / divisor for var, coef in args[0][0].items()}, args[0][1] / divisor
        raise self.error(node.pos, f"unknown operator {_show(head)} in a term: expected +, -, *, / or a number")

    # ---------------------------------------------------------------- DNF -> boxes and properties
    def assemble(self, terms: list[_Term]) -> list[tuple[InputBox, Property]]:
        """Group the DNF terms by input box; each group becomes one Property."""
        groups: dict[tuple, tuple[np.ndarray, np.ndarray, list]] = {}
        by_atoms: dict[tuple, tuple | None] = {}  # identical input atom tuples are common (product)
        first_empty = None
        for ins, outs in terms:
            if ins not in by_atoms:
                by_atoms[ins] = self.box(ins)
            key = by_atoms[ins]
            if key is None:
                if first_empty is None:
                    first_empty = ins
                continue
            groups.setdefault(key, (*self.bounded(key), []))[2].append(self.rows(outs))
        if not groups:
            raise self.error(_END, _empty_reason(first_empty))
        return [(InputBox(lo, hi), Property(tuple(disjuncts))) for lo, hi, disjuncts in groups.values()]

    def box(self, ins: tuple) -> tuple | None:
        """Hashable (lo bytes, hi bytes) of the intersection of input atoms, None when it is empty."""
        lo = np.full(self.n_inputs, -np.inf)
        hi = np.full(self.n_inputs, np.inf)
        if ins:
            index, upper, value = (np.array(column) for column in zip(*ins))
            upper = upper.astype(bool)
            np.minimum.at(hi, index[upper], value[upper])
            np.maximum.at(lo, index[~upper], value[~upper])
        if np.any(lo > hi):
            return None
        return lo.tobytes(), hi.tobytes()

    def bounded(self, key: tuple) -> tuple[np.ndarray, np.ndarray]:
        """The box arrays of a key; every input must have finite bounds on both sides."""
        lo, hi = np.frombuffer(key[0]), np.frombuffer(key[1])
        for side, values in (("lower", lo), ("upper", hi)):
            missing = np.flatnonzero(np.isinf(values))
            if missing.size:
                var = f"X_{missing[0]}"
                if var not in self.declared:
                    raise self.error(_END, f"{var} is never declared: the model has "
                                     f"{self.n_inputs} inputs and each needs (declare-const {var} Real) and bounds")
                raise self.error(self.declared_at[var], f"{var} has no {side} bound: expected an assert "
                                                        f"bounding every input on both sides")
        return lo.copy(), hi.copy()

    def rows(self, outs: tuple) -> tuple[np.ndarray, np.ndarray]:
        """(C, d) of a conjunction of output atoms; no atom -> the always-true row 0 y <= 0."""
        C = np.zeros((max(len(outs), 1), self.n_outputs))
        d = np.zeros(C.shape[0])
        for k, (row, rhs) in enumerate(outs):
            for j, coef in row:
                C[k, j] = coef
            d[k] = rhs
        return C, d


def _combine(args: list[tuple[dict, float]], factors: list[float]) -> tuple[dict, float]:
    """sum factor_k * arg_k of linear terms."""
    coefs: dict[tuple, float] = {}
    const = 0.0
    for (arg_coefs, arg_const), factor in zip(args, factors):
        for var, coef in arg_coefs.items():
            coefs[var] = coefs.get(var, 0.0) + factor * coef
        const += factor * arg_const
    return coefs, const


def _show(node) -> str:
    """A short rendering of an s-expression for error messages."""
    if isinstance(node, _List):
        inner = " ".join(_show(child) for child in node[:4])
        return f"({inner}{' ...' if len(node) > 4 else ''})"
    return repr(node)


def _empty_reason(ins: tuple | None) -> str:
    if ins is None:
        return "the asserted formula is always false: expected a satisfiable unsafe set"
    return "every input box is empty (some X has lower bound > upper bound): expected lo <= hi"
