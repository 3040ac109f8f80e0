"""Derived inputs: TMVA-style expressions of a track's feature branches, computed
inside the network's first layer, so the deployed model still takes the raw branches.

    chi2_ndof := chi2 / ndof
    kick := residual(pr_match_dtx, qop)

The language is small and safe (Python's `ast` parses it, a walker accepts only what
is listed here; nothing is ever evaluated as Python): numbers, branch names, + - * /,
unary minus, parentheses, abs(a), log(a), sqrt(a), min(a, b), max(a, b), and the
data-fitted residual(y, x) = y - (a + b * x), whose a and b are fitted by least
squares on the real tracks of the training split (Derived.fitted) and then written
into the expression as numbers, like the standardization's constants.

One arithmetic wherever it runs: every operation in float32, in the order written;
min and max return NaN when either side is NaN or infinite (where(a < b, a, b) +
(a - a) + (b - b)), so numpy, torch, the ONNX graph and the C++ header agree: bit
for bit on + - * / abs min max; log and sqrt are each library's own (numpy and torch
differ by a unit or two in the last place on some values).  The walker
`walk(tree, ops)` serves all four: `ops` gives each node its meaning.
"""
import ast
import re
from dataclasses import dataclass

import numpy as np

FUNCTIONS = {"abs": 1, "log": 1, "sqrt": 1, "min": 2, "max": 2, "residual": 2}
_BINARY = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div"}
_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_PRECEDENCE = {"add": 1, "sub": 1, "mul": 2, "div": 2}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
SYNTAX = ("name := expression, with numbers, branch names, + - * /, parentheses, "
          "abs, log, sqrt, min, max and residual(y, x)")


def parse_expression(text, branches):
    """The tree of an expression over `branches` (nested tuples: ("num", v),
    ("var", name), ("neg", a), (op, a, b), (function, args...)); ValueError naming
    what is wrong: a syntax error, an unknown branch or function, a wrong count of
    arguments, anything that is not in the language."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"cannot parse {text!r}: expected {SYNTAX}") from None
    return _tree(node, text, list(branches))


def _tree(node, text, branches):
    def sub(n):
        return _tree(n, text, branches)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        with np.errstate(over="ignore"):
            finite = np.isfinite(np.float32(node.value))
        if not finite:
            raise ValueError(f"the number {node.value!r} in {text!r} is not a finite float32")
        return ("num", float(node.value))
    if isinstance(node, ast.Name):
        if node.id not in branches:
            raise ValueError(f"unknown branch {node.id!r} in {text!r}: the branches are "
                             f"{', '.join(branches)}")
        return ("var", node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = sub(node.operand)
        return ("neg", inner) if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return (_BINARY[type(node.op)], sub(node.left), sub(node.right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        if name not in FUNCTIONS:
            raise ValueError(f"unknown function {name!r} in {text!r}: the functions are "
                             f"{', '.join(FUNCTIONS)}")
        if node.keywords or len(node.args) != FUNCTIONS[name]:
            raise ValueError(f"{name}() takes {FUNCTIONS[name]} argument(s) in {text!r}")
        return (name, *(sub(a) for a in node.args))
    piece = ast.get_source_segment(text.strip(), node) or type(node).__name__
    raise ValueError(f"{piece!r} in {text!r} is not allowed: expected {SYNTAX}")


def walk(tree, ops, fitted=True):
    """The value of a tree under `ops`: an object with num(v), var(name), neg(a),
    add/sub/mul/div(a, b), abs/log/sqrt(a), min/max(a, b).  A residual must have
    been fitted (Derived.fitted) before it can be computed (fitted=False: `ops`
    gives residual(y, x) its own meaning)."""
    kind, *args = tree
    if kind == "residual" and fitted:
        raise ValueError("residual(y, x) must be fitted on the training split first")
    if kind in ("num", "var"):
        return getattr(ops, kind)(args[0])
    return getattr(ops, kind)(*(walk(a, ops, fitted) for a in args))


def branches_of(tree):
    """The branch names a tree reads, in order of first use."""
    kind, *args = tree
    if kind == "var":
        return [args[0]]
    if kind == "num":
        return []
    return list(dict.fromkeys(n for a in args for n in branches_of(a)))


class _Text:
    """Renders a tree as text that parses back to the same tree: (text, precedence)."""
    def num(self, v):
        return (repr(float(v)), 4) if v >= 0 else (f"({float(v)!r})", 4)

    def var(self, name):
        return name, 4

    def neg(self, a):
        return "-" + _wrap(a, 3), 3

    def __getattr__(self, kind):
        if kind in _SYMBOL:
            def binary(a, b):
                p = _PRECEDENCE[kind]
                right = _wrap(b, p + 1 if kind in ("sub", "div") else p)
                return f"{_wrap(a, p)} {_SYMBOL[kind]} {right}", p
            return binary
        if kind in FUNCTIONS:
            return lambda *args: (f"{kind}({', '.join(a[0] for a in args)})", 4)
        raise AttributeError(kind)


def _wrap(rendered, precedence):
    text, p = rendered
    return text if p >= precedence else f"({text})"


def to_text(tree):
    return _text(tree)[0]


def _text(tree):
    kind, *args = tree
    if kind in ("num", "var"):
        return getattr(_Text(), kind)(args[0])
    return getattr(_Text(), kind)(*(_text(a) for a in args))


class ArrayOps:
    """walk()'s meaning on the arrays of a numpy-like library `lib` (numpy here, torch
    in models.DerivedLayer), float32 throughout: `column(name)` gives a branch's
    values, `const(v)` a number as a float32 of the library."""
    def __init__(self, lib, column, const):
        self.lib, self.var, self.num = lib, column, const

    def neg(self, a):
        return -a

    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b

    def mul(self, a, b):
        return a * b

    def div(self, a, b):
        return a / b

    def abs(self, a):
        return self.lib.abs(a)

    def log(self, a):
        return self.lib.log(a)

    def sqrt(self, a):
        return self.lib.sqrt(a)

    def min(self, a, b):
        return self.lib.where(a < b, a, b) + (a - a) + (b - b)

    def max(self, a, b):
        return self.lib.where(a > b, a, b) + (a - a) + (b - b)


def numpy_ops(columns):
    """ArrayOps of numpy over columns {branch: array}."""
    return ArrayOps(np, lambda name: np.asarray(columns[name], dtype=np.float32), np.float32)


@dataclass(frozen=True)
class Derived:
    """One derived input: its name and its expression over the track type's
    feature branches (`expression`, as declared; `fit` holds the fitted text once
    residual() constants are fitted, else None)."""
    name: str
    expression: str
    fit: str = None

    @classmethod
    def parse(cls, text, branches):
        """From 'name := expression' (ValueError naming what is wrong)."""
        name, sep, expression = text.partition(":=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise ValueError(f"cannot read derived input {text!r}: expected {SYNTAX}")
        if name in branches or name in FUNCTIONS:
            raise ValueError(f"derived input {name!r} in {text!r} takes the name of a "
                             f"{'branch' if name in branches else 'function'}")
        tree = parse_expression(expression.strip(), branches)
        return cls(name, to_text(tree))

    def tree(self, branches):
        return parse_expression(self.fit or self.expression, branches)

    def text(self):
        """'name := expression' as declared."""
        return f"{self.name} := {self.expression}"

    def needs_fit(self):
        return self.fit is None and "residual(" in self.expression

    def fitted(self, columns, real, branches):
        """This input with each residual(y, x) replaced by y - (a + b * x), a and b
        the least-squares line through the tracks selected by `real` (bool) whose y
        and x are finite; ValueError if fewer than 2 such tracks or x is constant."""
        def resolve(tree):
            kind, *args = tree
            if kind == "residual":
                y, x = resolve(args[0]), resolve(args[1])
                a, b = _line(values(y)[real], values(x)[real], self.text())
                return ("sub", y, ("add", ("num", a), ("mul", ("num", b), x)))
            if kind in ("num", "var"):
                return tree
            return (kind, *(resolve(a) for a in args))

        def values(tree):
            return np.broadcast_to(walk(tree, numpy_ops(columns)), real.shape)
        if not self.needs_fit():
            return self
        return Derived(self.name, self.expression, to_text(resolve(self.tree(branches))))

    def unfitted_values(self, columns, branches):
        """float32 [tracks] with each residual(y, x) taken as y + (x - x): finite
        where the fitted input will be (a line of finite x is finite)."""
        ops = numpy_ops(columns)
        ops.residual = lambda y, x: y + (x - x)
        n = len(columns[branches[0]])
        with np.errstate(all="ignore"):
            return np.broadcast_to(walk(parse_expression(self.expression, branches), ops,
                                        fitted=False), (n,))

    def compute(self, columns, branches):
        """float32 [tracks] from columns {branch: array} (numpy)."""
        n = len(columns[branches[0]])
        return np.broadcast_to(walk(self.tree(branches), numpy_ops(columns)), (n,))

    def to_dict(self):
        return {"name": self.name, "expression": self.expression, "fit": self.fit}

    @classmethod
    def from_dict(cls, d, branches):
        """From a saved record; ValueError if malformed or not in the language."""
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str)
                                              for k in ("name", "expression")):
            raise ValueError("a derived input must hold strings 'name' and 'expression'")
        if d.get("fit") is not None and not isinstance(d["fit"], str):
            raise ValueError(f"derived input {d['name']!r}: 'fit' must be a string")
        derived = cls.parse(f"{d['name']} := {d['expression']}", branches)
        derived = cls(derived.name, derived.expression, d.get("fit"))
        if derived.fit is not None:
            if "residual(" not in derived.expression:
                raise ValueError(f"derived input {derived.name!r}: a 'fit' is only for an "
                                 "expression with residual()")
            if "residual(" in to_text(derived.tree(branches)):
                raise ValueError(f"derived input {derived.name!r}: its fit still holds "
                                 "residual()")
        return derived


def _line(y, x, what):
    """(a, b) of the least-squares line y = a + b * x (float64 sums, float32 numbers)."""
    ok = np.isfinite(y) & np.isfinite(x)
    y, x = y[ok].astype(np.float64), x[ok].astype(np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError(f"cannot fit {what}: " + ("its x is the same for every real track"
                         if len(x) else "no real track with finite y and x") + " (a line "
                         "needs 2 real tracks with different x)")
    xm, ym = x.mean(), y.mean()
    x -= xm  # x - xm and y - ym in place: the same numbers, two copies fewer
    y -= ym
    b = (x * y).sum() / (x ** 2).sum()
    return float(np.float32(ym - b * xm)), float(np.float32(b))


def parse_all(texts, branches):
    """Derived inputs from 'name := expression' texts; ValueError on a repeated name."""
    return _distinct([Derived.parse(t, branches) for t in texts])


def from_dicts(records, branches):
    """Derived inputs from saved records (Derived.to_dict's, in a dataset JSON or a
    model config); ValueError if one is malformed or a name repeats."""
    if not isinstance(records, list):
        raise ValueError("the derived inputs must be a list")
    return _distinct([Derived.from_dict(r, branches) for r in records])


def _distinct(derived):
    names = [d.name for d in derived]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"derived input(s) {', '.join(twice)} declared twice")
    return derived


def fit_all(derived, columns, real, branches):
    return [d.fitted(columns, real, branches) for d in derived]


def compute_all(derived, data, branches):
    """float32 [tracks, len(derived)] from data [tracks, len(branches)]."""
    columns = {name: data[:, i] for i, name in enumerate(branches)}
    out = np.empty((len(data), len(derived)), dtype=np.float32)
    with np.errstate(all="ignore"):
        for j, d in enumerate(derived):
            out[:, j] = d.compute(columns, branches)
    return out


class Extended:
    """extend(data, derived, branches) as a sequence of its columns, each made when
    asked for: a view of data, or one derived input's values (compute_all's), so the
    extended array is never whole."""
    def __init__(self, data, derived, branches):
        self.data, self.derived, self.branches = data, list(derived), list(branches)

    def __len__(self):
        return len(self.branches) + len(self.derived)

    def __getitem__(self, i):
        j = i - len(self.branches)
        if j < 0:
            return self.data[:, i]
        return compute_all(self.derived[j:j + 1], self.data, self.branches)[:, 0]


def input_labels(branches, derived):
    """The names of the columns extend() gives: the branches, then each derived input
    as 'name := expression' (how the figures and tables name it)."""
    return list(branches) + [d.text() for d in derived]


def extend(data, derived, branches):
    """[raw branches | derived inputs]: what the network's scaling sees."""
    if not derived:
        return np.asarray(data, dtype=np.float32)
    return np.concatenate([np.asarray(data, dtype=np.float32),
                           compute_all(derived, data, branches)], axis=1)
