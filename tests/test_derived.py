"""derived.py: the expression language of derived inputs (every operation, precedence,
unary minus, numbers, text -> tree -> text), its safety (nothing outside the language
is accepted, nothing is ever evaluated as Python), the residual fit, saved records,
and one arithmetic: numpy (NumpyOps) and torch (models.TorchOps in DerivedLayer and
GhostNet) agree bit for bit, extremes and non-finite values included."""
import numpy as np
import pytest
import torch

from architecture import ModelConfig
from derived import (
    Derived,
    compute_all,
    extend,
    from_dicts,
    parse_all,
    parse_expression,
    to_text,
    walk,
)
from features import Standardize
from models import DerivedLayer, build_model

B = ["a", "b", "c"]  # the branches of the language tests


def tree(text):
    return parse_expression(text, B)


def values(text, a, b, c=None):
    """float32 values of `text` on columns a, b (and c) by derived.py."""
    cols = {"a": np.float32(a), "b": np.float32(b), "c": np.float32(0 if c is None else c)}
    with np.errstate(all="ignore"):
        return Derived.parse(f"x := {text}", B).compute(
            {k: np.atleast_1d(v) for k, v in cols.items()}, B)


# ---------------------------------------------------------------------------
# the language
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("a + b", ("add", ("var", "a"), ("var", "b"))),
    ("a - b", ("sub", ("var", "a"), ("var", "b"))),
    ("a * b", ("mul", ("var", "a"), ("var", "b"))),
    ("a / b", ("div", ("var", "a"), ("var", "b"))),
    ("-a", ("neg", ("var", "a"))),
    ("+a", ("var", "a")),
    ("abs(a)", ("abs", ("var", "a"))),
    ("log(a)", ("log", ("var", "a"))),
    ("sqrt(a)", ("sqrt", ("var", "a"))),
    ("min(a, b)", ("min", ("var", "a"), ("var", "b"))),
    ("max(a, b)", ("max", ("var", "a"), ("var", "b"))),
    ("residual(a, b)", ("residual", ("var", "a"), ("var", "b"))),
    ("2", ("num", 2.0)),
    ("1e-3", ("num", 0.001)),
    (".5", ("num", 0.5)),
])
def test_every_operation_parses_to_its_node(text, expected):
    assert tree(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("a + b", 5.0), ("a - b", -1.0), ("a * b", 6.0), ("a / b", np.float32(2) / np.float32(3)),
    ("-a", -2.0), ("abs(-a)", 2.0), ("log(b)", np.log(np.float32(3))),
    ("sqrt(b)", np.sqrt(np.float32(3))), ("min(a, b)", 2.0), ("max(a, b)", 3.0),
    ("a + 0.5", 2.5),
])
def test_every_operation_computes_in_float32(text, expected):
    out = values(text, 2.0, 3.0)
    assert out.dtype == np.float32 and out[0] == np.float32(expected)


@pytest.mark.parametrize("text,same", [
    ("a + b * c", "a + (b * c)"),
    ("a * b + c", "(a * b) + c"),
    ("a - b - c", "(a - b) - c"),
    ("a / b / c", "(a / b) / c"),
    ("a - b + c", "(a - b) + c"),
    ("-a * b", "(-a) * b"),
    ("-a + b", "(-a) + b"),
    ("a * -b", "a * (-b)"),
    ("--a", "-(-a)"),
    ("a - -b", "a - (-b)"),
    ("abs(a - b) * c", "(abs(a - b)) * c"),
])
def test_precedence_and_unary_minus_as_in_arithmetic(text, same):
    assert tree(text) == tree(same)


def test_parentheses_change_the_tree_and_the_value():
    assert tree("a - (b - c)") != tree("a - b - c")
    assert tree("a / (b / c)") != tree("a / b / c")
    assert values("a - (b - c)", 1, 2, 3)[0] == 2 and values("a - b - c", 1, 2, 3)[0] == -4
    assert values("(a + b) * c", 1, 2, 3)[0] == 9 and values("a + b * c", 1, 2, 3)[0] == 7


@pytest.mark.parametrize("text", [
    "a + b * c", "(a + b) * c", "a - (b - c)", "a - b - c", "a / (b / c)", "a / b / c",
    "-a", "--a", "-(a + b)", "a * -b", "-(-a)", "a - -1.5", "-2 * a", "a * (-0.25)",
    "abs(a) + log(b) - sqrt(c)", "min(a, max(b, c)) / 3", "residual(a, b * c)",
    "1e-07 * a + 3e+20", "0.1 + 0.2", "123456789", "a / b - 1", "-(a - b) / -(c)",
    "((a))", "max(-a, -(b))", "-abs(-a)",
])
def test_text_tree_text_round_trips(text):
    t = tree(text)
    written = to_text(t)
    assert tree(written) == t              # the text parses back to the same tree
    assert to_text(tree(written)) == written  # and renders the same again


def test_numbers_are_float32_finite():
    assert tree("3")[1] == 3.0 and isinstance(tree("3")[1], float)
    assert tree("3.4028234e38") == ("num", 3.4028234e38)
    for text in ("1e39", "-1e39 + a", "1e400"):
        with pytest.raises(ValueError, match="not a finite float32"):
            tree(text)
    # the fitted constants are written as float32 numbers: they read back exactly
    v = float(np.float32(1198.4576))
    assert tree(to_text(("num", v)))[1] == v and np.float32(v) == v


def test_declarations():
    d = Derived.parse("  ratio :=  a/ b ", B)
    assert (d.name, d.expression, d.fit, d.text()) == ("ratio", "a / b", None, "ratio := a / b")
    assert d.tree(B) == tree("a / b") and not d.needs_fit()
    for text, needle in (("a / b", "cannot read derived input"),
                         ("1x := a", "cannot read derived input"),
                         ("a := b", "takes the name of a branch"),
                         ("sqrt := a", "takes the name of a function"),
                         ("x := d", "unknown branch 'd'"),
                         ("x := a +", "cannot parse")):
        with pytest.raises(ValueError, match=needle):
            Derived.parse(text, B)
    with pytest.raises(ValueError, match="x declared twice"):
        parse_all(["x := a", "y := b", "x := c"], B)
    assert [d.name for d in parse_all(["x := a", "y := b"], B)] == ["x", "y"]


# ---------------------------------------------------------------------------
# safety: only the language, never Python
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,needle", [
    ("a.real", "not allowed"),
    ("a.__class__", "not allowed"),
    ("a.__class__.__mro__", "not allowed"),
    ("exp(a)", "unknown function 'exp'"),
    ("eval('1')", "unknown function 'eval'"),
    ("open('x')", "unknown function 'open'"),
    ("__import__('os')", "unknown function '__import__'"),
    ("__import__('os').system('touch pwned')", "not allowed"),
    ("(lambda: 1)()", "not allowed"),
    ("lambda: a", "not allowed"),
    ("a[0]", "not allowed"),
    ("a[0:1]", "not allowed"),
    ("min(a=a, b=b)", "takes 2 argument"),
    ("abs(a, key=b)", "takes 1 argument"),
    ("log(*a)", "not allowed"),
    ("a ** 2", "not allowed"),
    ("a // b", "not allowed"),
    ("a % b", "not allowed"),
    ("a < b", "not allowed"),
    ("a if b else c", "not allowed"),
    ("a and b", "not allowed"),
    ("not a", "not allowed"),
    ("~a", "not allowed"),
    ("[a, b]", "not allowed"),
    ("'a'", "not allowed"),
    ("True", "not allowed"),
    ("1j", "not allowed"),
    ("f'{a}'", "not allowed"),
    ("(x := a)", "not allowed"),
    ("sqrt(a)(b)", "not allowed"),
    ("min(a)", "takes 2 argument"),
    ("abs()", "takes 1 argument"),
    ("a; b", "cannot parse"),
    ("import os", "cannot parse"),
])
def test_only_the_language_is_accepted(text, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=needle):
        tree(text)
    assert not list(tmp_path.iterdir())  # nothing ran


# ---------------------------------------------------------------------------
# the residual fit
# ---------------------------------------------------------------------------

def test_the_residual_fit_recovers_a_line_of_the_real_tracks():
    rng = np.random.default_rng(3)
    n = 20_000
    x = rng.normal(0, 1e-3, n).astype(np.float32)
    real = rng.random(n) < 0.8
    y = (0.02 + 850.0 * x).astype(np.float32)
    y[~real] = rng.normal(0, 2, (~real).sum())         # ghosts: no line at all
    y[:50], x[50:100], y[100:110] = np.nan, np.inf, -np.inf  # non-finite rows left out
    real[:110] = True
    d = Derived.parse("kick := residual(y, x)", ["y", "x"])
    assert d.needs_fit()
    with pytest.raises(ValueError, match="fitted on the training split first"):
        d.compute({"y": y, "x": x}, ["y", "x"])
    fitted = d.fitted({"y": y, "x": x}, real, ["y", "x"])
    assert not fitted.needs_fit() and fitted.expression == "residual(y, x)"
    kind, y_node, (add, (_, a), (mul, (_, b), x_node)) = fitted.tree(["y", "x"])
    assert (kind, add, mul, y_node, x_node) == ("sub", "add", "mul", ("var", "y"),
                                                 ("var", "x"))
    assert a == pytest.approx(0.02, abs=1e-6) and b == pytest.approx(850.0, rel=1e-5)
    assert np.float32(a) == a and np.float32(b) == b
    with np.errstate(all="ignore"):
        r = fitted.compute({"y": y, "x": x}, ["y", "x"])
    ok = real & np.isfinite(y) & np.isfinite(x)
    assert np.abs(r[ok]).max() < 1e-6      # the real tracks lie on the line
    assert np.abs(r[~real]).mean() > 1     # the ghosts do not
    # a fit needs two real tracks with different x
    with pytest.raises(ValueError, match="same for every real track"):
        d.fitted({"y": y, "x": np.ones(n, np.float32)}, real, ["y", "x"])
    with pytest.raises(ValueError, match="no real track"):
        d.fitted({"y": y, "x": x}, np.zeros(n, bool), ["y", "x"])


def test_a_residual_inside_an_expression_is_fitted_in_place():
    x = np.arange(10, dtype=np.float32)
    y = 3 + 2 * x
    d = Derived.parse("r := abs(residual(y, x)) * 2", ["y", "x"])
    fitted = d.fitted({"y": y, "x": x}, np.ones(10, bool), ["y", "x"])
    assert fitted.fit == "abs(y - (3.0 + 2.0 * x)) * 2.0"
    assert (fitted.compute({"y": y, "x": x}, ["y", "x"]) == 0).all()
    same = parse_all(["chi2_ndof := a / b"], B)[0]
    assert same.fitted({}, np.ones(1, bool), B) is same  # nothing to fit


def test_records_round_trip_and_are_checked():
    x = np.arange(10, dtype=np.float32)
    fitted = Derived.parse("r := residual(a, b)", B).fitted(
        {"a": 1 + x, "b": x, "c": x}, np.ones(10, bool), B)
    records = [fitted.to_dict(), Derived.parse("q := a / b", B).to_dict()]
    assert records[0] == {"name": "r", "expression": "residual(a, b)",
                          "fit": "a - (1.0 + 1.0 * b)"}
    assert from_dicts(records, B) == [fitted, Derived("q", "a / b")]
    for bad, needle in (("r", "must be a list"), ([records[0], records[0]], "declared twice"),
                        ([{"name": "q"}], "strings 'name' and 'expression'"),
                        ([{**records[1], "fit": "a"}], "only for an expression with"),
                        ([{**records[0], "fit": "residual(a, b)"}], "still holds"),
                        ([{**records[0], "fit": 3}], "must be a string")):
        with pytest.raises(ValueError, match=needle):
            from_dicts(bad, B)


# ---------------------------------------------------------------------------
# one arithmetic: numpy and torch, bit for bit
# ---------------------------------------------------------------------------

EXACT = ["s := a + b", "d := a - b", "m := a * b", "q := a / b", "n := -a",
         "ab := abs(a)", "lo := min(a, b)", "hi := max(a, b)",
         "mix := (a - b * 0.5) / (1 + abs(c)) - -c", "mm := max(min(a / b, 3), -c) * 2",
         "r := a - (0.25 + 1e3 * b)"]
LIBM = ["lg := log(a)", "sq := sqrt(b)"]  # each library's own: within 4 ulps, not exact


def _extremes(n=4096, seed=0):
    """float32 [n, 3]: ordinary values, zeros of both signs, tiny and huge ones, inf,
    -inf and NaN, in every combination the draws give."""
    rng = np.random.default_rng(seed)
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-38, 3.4e38, -3.4e38, np.inf, -np.inf,
                        np.nan, 1.0, -1.0], dtype=np.float32)
    x = (rng.normal(0, 10, (n, 3)) * 10.0 ** rng.integers(-6, 6, (n, 3))).astype(np.float32)
    pick = rng.random((n, 3)) < 0.3
    x[pick] = rng.choice(special, pick.sum())
    return x


def _same_bits(p, q):
    """Equal as float32 bit patterns, every NaN taken as one."""
    p, q = np.asarray(p, np.float32), np.asarray(q, np.float32)
    nan = np.isnan(p)
    return (nan == np.isnan(q)).all() and (p[~nan].view(np.uint32) ==
                                          q[~nan].view(np.uint32)).all()


def _within_ulps(p, q, n=4):
    """Equal but for n units in the last place (infinities and NaN where the other is)."""
    p, q = np.asarray(p, np.float32), np.asarray(q, np.float32)
    finite = np.isfinite(p)
    with np.errstate(all="ignore"):
        near = np.abs(p - q) <= n * np.spacing(np.abs(p))
    return ((np.isnan(p) == np.isnan(q)).all() and (p[np.isinf(p)] == q[np.isinf(p)]).all()
            and near[finite].all())


def test_numpy_and_torch_agree_bit_for_bit():
    """+ - * / abs min max: the same float32 operations in the same order, so the same
    bits.  log and sqrt are each library's own implementation (numpy and torch differ
    by 1-2 units in the last place on some values here): within 4 ulps."""
    derived = parse_all(EXACT + LIBM, B)
    x = _extremes()
    mine = compute_all(derived, x, B)
    with torch.inference_mode():
        theirs = DerivedLayer(derived, B)(torch.from_numpy(x)).numpy()
    assert np.array_equal(theirs[:, :3], x, equal_nan=True)  # the raw branches go through
    for j, d in enumerate(derived):
        same = _same_bits if j < len(EXACT) else _within_ulps
        assert same(mine[:, j], theirs[:, 3 + j]), d.text()
    assert np.isnan(mine).any() and np.isinf(mine).any()  # the extremes were reached
    assert _same_bits(extend(x, derived, B), np.concatenate([x, mine], axis=1))


def test_the_network_computes_them_and_is_nan_where_one_is_not_finite():
    derived = tuple(parse_all(EXACT[:4] + ["ab := abs(a) / c"], B))
    x = _extremes(2048, seed=1)
    inputs = extend(x, derived, B)
    ok = np.isfinite(inputs).all(axis=1)
    config = ModelConfig(network=1, n_features=3, hidden=(4,), inputs="standard",
                         standardization=Standardize.fit(np.clip(inputs[ok], -1e3, 1e3),
                                                         B + [d.name for d in derived]),
                         derived=derived, branches=tuple(B))
    assert config.n_inputs() == 8 and _same_bits(config.extend(x), inputs)
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.inference_mode():
        seen = model.derive(torch.from_numpy(x)).numpy()
        p = model(torch.from_numpy(x)).numpy().ravel()
    assert _same_bits(seen, inputs)
    assert (np.isnan(p) == ~ok).all()  # NaN exactly where a feature or derived input is not
    assert ok.sum() > 100


@pytest.mark.parametrize("fn", ["min", "max"])
def test_min_and_max_are_nan_where_either_side_is_not_finite(fn):
    a = np.array([1, 2, np.nan, 1, np.inf, 1, -np.inf, 3, -0.0], np.float32)
    b = np.array([2, 1, 1, np.nan, 1, np.inf, 1, 3, 0.0], np.float32)
    expected = {"min": [1, 1, np.nan, np.nan, np.nan, np.nan, np.nan, 3, 0.0],
                "max": [2, 2, np.nan, np.nan, np.nan, np.nan, np.nan, 3, 0.0]}[fn]
    derived = parse_all([f"x := {fn}(a, b)"], B)
    data = np.stack([a, b, b], axis=1)
    mine = compute_all(derived, data, B)[:, 0]
    assert np.array_equal(mine, np.array(expected, np.float32), equal_nan=True)
    with torch.inference_mode():
        theirs = DerivedLayer(derived, B)(torch.from_numpy(data)).numpy()[:, 3]
    assert _same_bits(mine, theirs)


def test_walk_gives_each_node_its_meaning():
    class Count:
        def __getattr__(self, kind):
            return lambda *args: 1 + sum(a for a in args if isinstance(a, int))
    t = tree("min(a, b) + sqrt(abs(-c)) * 2")
    assert walk(t, Count()) == 10  # one per node
    assert to_text(t) == "min(a, b) + sqrt(abs(-c)) * 2.0"


def test_extended_gives_extends_columns_one_at_a_time():
    """derived.Extended: column i of extend(x, derived, branches), the same bits, made
    when asked for (the scaling fits of make_dataset.py take it a column at a time)."""
    from derived import Extended
    derived = parse_all(EXACT + LIBM, B)
    x = _extremes()
    whole, lazy = extend(x, derived, B), Extended(x, derived, B)
    assert len(lazy) == whole.shape[1] == 3 + len(derived)
    for i in range(len(lazy)):
        assert _same_bits(lazy[i], whole[:, i]), i


def test_the_residual_line_is_the_formula_of_before():
    """_line computes x - xm and y - ym in place: the numbers of the formula written
    out, ((x - xm) (y - ym)).sum() / ((x - xm)^2).sum(), to the last bit."""
    from derived import _line
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1e-3, 100_001).astype(np.float32)
    y = (0.02 + 850.0 * x + rng.normal(0, 0.01, len(x))).astype(np.float32)
    y[:7] = np.nan
    ok = np.isfinite(y) & np.isfinite(x)
    x64, y64 = x[ok].astype(np.float64), y[ok].astype(np.float64)
    xm, ym = x64.mean(), y64.mean()
    b = ((x64 - xm) * (y64 - ym)).sum() / ((x64 - xm) ** 2).sum()
    assert _line(y, x, "kick") == (float(np.float32(ym - b * xm)), float(np.float32(b)))
