"""diagnostics.py: what a trained classifier has learned (permutation ranking), and
the rank correlations' ranks."""
import numpy as np

from diagnostics import permutation_ranking


def test_permuting_an_irrelevant_feature_ranks_it_last():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 3)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 0.5, 20_000) > 0)

    def score(data):
        return 1 / (1 + np.exp(-(2 * data[:, 0] + data[:, 1])))
    reference, ranked = permutation_ranking(score, x, y, ["strong", "weak", "noise"])
    assert [r["feature"] for r in ranked] == ["strong", "weak", "noise"]
    assert ranked[-1]["auc_drop"] == 0.0 and ranked[0]["auc_drop"] > 0.2
    assert reference["auc"] > 0.9


def test_ranking_csv_quotes_a_derived_input_holding_a_comma():
    from diagnostics import ranking_csv
    rows = [{"feature": "kick := residual(pr_match_dtx, qop)", "auc_drop": 0.1,
             "rejection_drop": 0.2}, {"feature": "chi2", "auc_drop": 0.0, "rejection_drop": 0.0}]
    import csv
    parsed = list(csv.reader(ranking_csv(rows).splitlines()))
    assert parsed[1] == ["1", "kick := residual(pr_match_dtx, qop)", "0.1", "0.2"]
    assert parsed[2][1] == "chi2" and ranking_csv(rows).splitlines()[2].startswith("2,chi2,")


def test_average_ranks_are_scipys_rankdata_bit_for_bit():
    from scipy.stats import rankdata

    from diagnostics import average_ranks
    rng = np.random.default_rng(4)
    for x in (rng.normal(size=1000).astype(np.float32),
              rng.integers(0, 7, 1000).astype(np.float32),  # long runs of ties
              # long inputs with many ties
              rng.integers(0, 50, 200_000).astype(np.float32),
              rng.normal(size=200_000).round(2),
              np.array([3.0, -0.0, 0.0, 1e-45, 3.0], dtype=np.float32),  # -0.0 == 0.0
              np.array([1.0, np.nan, 0.0, np.inf, -np.inf]),  # NaN: all NaN
              np.array([5.0]), np.array([])):
        want = rankdata(x)
        got = average_ranks(x)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), x
