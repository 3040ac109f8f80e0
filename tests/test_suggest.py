"""suggest.py: training.py --suggest-derived's ranking of candidate derived inputs
(the script's runs: tests/test_training.py)."""
import numpy as np
import pytest

from derived import Derived
from suggest import candidates, suggest, suggestions_csv, table
from utils import GhostError

NAMES = ["a", "b", "c", "d"]


def _planted(n, rng):
    """Ghost when a / b is far from 1: a and b alone tell nothing, their ratio all;
    b spans a decade, so a - b tells little; c, d are noise."""
    b = rng.uniform(1.0, 10.0, n)
    a = b * rng.uniform(0.5, 1.5, n)
    ghost = np.abs(a / b - 1.0) > 0.25
    flip = rng.random(n) < 0.002  # label noise, below the 1 % that 99 % efficiency leaves
    x = np.column_stack([a, b, rng.normal(size=n), rng.normal(size=n)]).astype(np.float32)
    return x, (ghost ^ flip).astype(np.float32).reshape(-1, 1)


def test_the_planted_ratio_is_ranked_first():
    rng = np.random.default_rng(0)
    splits = {s: _planted(n, rng) for s, n in (("train", 20_000), ("valid", 10_000))}
    base, rows, tracks = suggest(splits, NAMES, [], seed=1, tracks=15_000)
    assert tracks == (15_000, 10_000)
    top = [r["derived"].expression for r in rows[:2]]
    assert sorted(top) == ["a / b", "b / a"], top
    assert rows[0]["auc_gain"] > 0.3 and rows[0]["rejection_gain"] > 0.5
    assert rows[2]["derived"].expression == "a - b"  # a proxy of the ratio, a worse one
    assert all(r["auc_gain"] < rows[0]["auc_gain"] - 0.05 for r in rows[2:])
    assert base["auc"] < 0.7  # without the ratio, the fit is near blind
    again = suggest(splits, NAMES, [], seed=1, tracks=15_000)[1]  # the same every run
    assert [(r["derived"], r["auc_gain"]) for r in again] == \
        [(r["derived"], r["auc_gain"]) for r in rows]


def test_a_present_derived_input_is_not_suggested_again():
    present = [Derived.parse("r := a / b", NAMES)]
    tried = candidates(NAMES, present)
    texts = [d.text() for d in tried]
    assert len(tried) == 3 * 6 - 1 and "a_over_b := a / b" not in texts
    assert "b_over_a := b / a" in texts and "a_minus_b := a - b" in texts
    assert len({d.name for d in tried}) == len(tried)


def test_table_and_csv_hold_ready_derived_lines():
    rng = np.random.default_rng(3)
    splits = {s: _planted(4000, rng) for s in ("train", "valid")}
    _, rows, _ = suggest(splits, NAMES, [], seed=1)
    lines = table(rows, 3).splitlines()
    assert len(lines) == 4 and lines[0].split()[:3] == ["rank", "AUC", "gain"]
    assert lines[1].endswith(f"--derived '{rows[0]['derived'].text()}'")
    csv = suggestions_csv(rows).splitlines()
    assert csv[0].startswith("rank,name,expression,auc_gain,rejection_gain_at_99")
    assert len(csv) == len(rows) + 1 and csv[1].startswith(f"1,{rows[0]['derived'].name},")


def test_nonfinite_candidates_are_counted():
    rng = np.random.default_rng(4)
    splits = {s: _planted(4000, rng) for s in ("train", "valid")}
    splits["train"][0][:400, 3] = 0.0  # c / d is infinite where d is 0
    _, rows, _ = suggest(splits, NAMES, [], seed=1)
    by_name = {r["derived"].name: r["nonfinite"] for r in rows}
    assert by_name["c_over_d"] == pytest.approx(0.1) and by_name["c_minus_d"] == 0.0


def test_one_feature_has_no_pairs():
    rng = np.random.default_rng(5)
    splits = {s: (rng.normal(size=(100, 1)).astype(np.float32),
                  (rng.random((100, 1)) < 0.5).astype(np.float32)) for s in ("train", "valid")}
    with pytest.raises(GhostError, match="at least two features"):
        suggest(splits, ["a"], [])
