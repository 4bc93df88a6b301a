"""mmtm.analysis.stats on hand-made numbers: t-intervals, sign-flip and Spearman permutation p-values (exact and Monte
Carlo), Holm, Wilson and object-level intervals, McNemar, formatting."""
import itertools
import math

import pytest

from mmtm.analysis import stats


def test_mean_and_sample_std():
    assert stats.mean_std([0.8, 0.9]) == pytest.approx((0.85, math.sqrt(0.005)))
    mean, std = stats.mean_std([0.7])
    assert mean == 0.7 and math.isnan(std)


def test_t_interval_of_the_mean():
    # 1..5: mean 3, s = √2.5, t(0.975, 4) = 2.776445: half width 2.776445·√2.5/√5 = 1.963243
    lo, hi = stats.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (lo, hi) == pytest.approx((3 - 1.963243, 3 + 1.963243), abs=1e-6)
    assert stats.t_interval([0.3, 0.3, 0.3]) is None                        # no spread: no interval, not [0.3, 0.3]
    assert stats.t_interval([0.7]) is None                                  # one seed: no interval


def test_exact_sign_flip_p_values():
    # five differences of one sign: only the all-plus and all-minus patterns are as extreme: 2/32
    assert stats.sign_flip_p([0.1, 0.2, 0.05, 0.3, 0.15]) == (2 / 32, 0.0)
    # [1, 1, 1, -1]: mean 0.5; patterns with |mean| ≥ 0.5: ±(1,1,1,-1) and the eight with three equal signs
    # and one flipped... counted by hand: |sum| ≥ 2 ⇔ not two plus two minus: 16 − 6 = 10 patterns
    assert stats.sign_flip_p([1.0, 1.0, 1.0, -1.0]) == (10 / 16, 0.0)
    assert stats.sign_flip_p([0.0, 0.0]) == (1.0, 0.0)
    assert stats.sign_flip_p([0.1] * 16) == (2 / 2 ** 16, 0.0)  # still exact at 16 seeds


@pytest.mark.parametrize("n", [17, 21, 40])
def test_sign_flip_beyond_the_exact_range_is_monte_carlo_never_0_and_does_not_crash(n):
    p, error = stats.sign_flip_p([0.1] * n)  # exact: 2/2^n, below what MC resolves; MC counts the observed draw
    assert 1 / (stats.PERMUTATIONS + 1) <= p < 0.001 and 0 < error <= p
    p, error = stats.sign_flip_p([1.0, -1.0] * (n // 2) + [0.5] * (n % 2))  # mean ≈ 0: nearly every pattern
    assert p > 0.5 and error < 0.01
    assert stats.sign_flip_p([0.1] * n) == (p1 := stats.sign_flip_p([0.1] * n)) and p1[0] > 0  # seeded
    row = stats.paired({s: 1.0 + 0.01 * s for s in range(n)}, {s: 0.9 for s in range(n)})
    assert row["n"] == n and row["p"] > 0 and row["p_error"] > 0 and "(MC ±" in stats.fmt_paired(row)
    assert stats.describe([0.5] * n)["n"] == n


def test_holm_adjustment():
    # sorted 0.01 < 0.03 < 0.04 of m = 3: 3·0.01, max(0.03, 2·0.03), max(0.06, 1·0.04)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = stats.holm([0.2, math.nan, 0.9, 0.5])  # nan is no test: m = 3; 3·0.2, 2·0.5, then ≥ 1.0
    assert adjusted[0] == pytest.approx(0.6) and math.isnan(adjusted[1]) and adjusted[2:] == [1.0, 1.0]
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]


def test_paired_differences():
    a = {0: 0.80, 1: 0.90, 2: 0.85, 7: 0.5}
    b = {0: 0.70, 1: 0.95, 2: 0.80}
    p = stats.paired(a, b)                    # seed 7 has no partner and is left out
    assert p["n"] == 3 and p["mean"] == pytest.approx((0.10 - 0.05 + 0.05) / 3)
    assert p["k"] == 2                          # two of three differences are positive, like the mean
    assert (p["ci_low"], p["ci_high"]) == pytest.approx(stats.t_interval([0.10, -0.05, 0.05]))
    assert (p["p"], p["p_error"]) == stats.sign_flip_p([0.10, -0.05, 0.05])
    one = stats.paired({0: 1.0}, {0: 0.5})
    assert one["n"] == 1 and math.isnan(one["ci_low"]) and math.isnan(one["p"])  # one seed: no interval, no test
    assert stats.paired({0: 1.0}, {1: 1.0})["n"] == 0
    flat = stats.paired({0: 0.3, 1: 0.4, 2: 0.5}, {0: 0.2, 1: 0.3, 2: 0.4})  # every difference 0.1: no spread
    assert math.isnan(flat["ci_low"]) and flat["p"] == 2 / 8


def fmt(values):
    return stats.fmt_described(stats.describe(values))


def test_formatting():
    assert fmt([0.5]) == "0.500 [—]"                                   # one seed: no interval
    lo, hi = stats.t_interval([0.0, 1.0])
    assert fmt([0.0, 1.0]) == f"0.500 ± 0.707 [{lo:.3f}, {hi:.3f}]"
    assert fmt([0.3, 0.3, 0.3]) == "0.300 ± 0.000 [—]"                 # zero variance: no interval
    assert fmt([math.nan]) == "—"                                      # nothing to summarise: no nan
    assert "-0.000" not in fmt([-0.0004, -0.0002, -0.0003])                 # a tiny negative mean
    assert stats.fmt_num(-0.0001) == "0.000" and stats.fmt_num(-0.0001, signed=True) == "0.000"  # no -0.000
    assert stats.fmt_num(-0.02, signed=True) == "-0.020" and stats.fmt_num(math.nan) == "—"
    row = {"n": 4, "mean": -0.1, "ci_low": -0.2, "ci_high": 0.01, "p": 0.125, "p_error": 0.0, "k": 3}
    assert stats.fmt_paired(row) == "-0.100 [-0.200, +0.010] p=0.125 3/4"
    assert stats.fmt_paired(row | {"p_holm": 0.5}) == "-0.100 [-0.200, +0.010] p=0.125 (Holm 0.500) 3/4"
    assert stats.fmt_paired(stats.paired({0: 0.7}, {0: 0.5})) == "+0.200 [—] p=— 1/1"  # one seed: no p = 1.000
    assert stats.fmt_paired(stats.paired({0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.5})) == "0.000 [—] p=1.000 0/2"
    assert stats.fmt_paired(stats.paired({}, {})) == "—"
    assert stats.fmt_p(0.0123, 0.0008) == "0.012 (MC ±0.0008)" and stats.fmt_p(2e-5) == "2.0e-05"


def test_object_level_bootstrap_on_a_hand_made_cur():
    # 10 objects; head 0 right on all, with flow off on 5: u(m1|m0) = 0.5; head 1 right on 8, alone on 8: u = 0
    objects = {"fused": [1] * 10, "f0": [1] * 10, "f0_only": [1] * 5 + [0] * 5, "f1": [1] * 8 + [0] * 2,
               "f1_only": [1] * 8 + [0] * 2}
    got = stats.object_intervals(objects, resamples=4000)
    # 10 of 10 right: Wilson [n/(n + z²), 1], not the bootstrap's [1, 1]
    assert got["acc"] == pytest.approx([10 / (10 + 1.959964 ** 2), 1.0]) and got["acc_m0"] == got["acc"]
    assert got["acc_m1"] == pytest.approx(stats.wilson(8, 10))
    lo, hi = got["u_m1_given_m0"]
    assert lo < 0.5 < hi and 0.1 <= lo and hi <= 0.9  # binomial(10, 0.5) spread
    # f1' right exactly where f1 is: every resample gives u = 0; the interval is ± the exact bound on the share of
    # objects that could change (none of 10 did: 1 − 0.025^(1/10)), over A(f1) = 0.8 — not [0, 0]
    bound = (1 - 0.025 ** (1 / 10)) / 0.8
    assert got["u_m0_given_m1"] == pytest.approx([-bound, bound])
    assert got["d_util"][0] < 0.5 < got["d_util"][1]
    assert "10 test objects" in got["method"] and "Wilson" in got["method"]
    assert stats.object_intervals(objects, resamples=4000) == got  # seeded
    single = stats.object_intervals({"fused": [1, 0], "f0": [1, 0], "f1": [1, 0]})
    assert set(single) == {"method", "level", "acc", "acc_m0", "acc_m1"}


def test_mcnemar_exact():
    a = [1] * 10 + [0] * 0
    b = [0] * 10
    # ten discordant objects, all for a: p = 2 · 0.5^10
    assert stats.mcnemar(a, b)["p"] == pytest.approx(2 * 0.5 ** 10)
    assert stats.mcnemar([1, 0, 1], [1, 0, 1])["p"] == 1.0               # no discordant object
    assert stats.mcnemar([1, 0], [0, 1])["p"] == 1.0


def test_spearman_with_interval():
    s = stats.spearman([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])
    assert s["rho"] == pytest.approx(1 - 6 * 6 / (6 * 35))  # Σd² = 6: ρ = 1 − 6Σd²/(n(n²−1))
    lo, hi = s["ci"]
    assert lo < s["rho"] < hi <= 1 and s["n"] == 6
    assert math.isnan(stats.spearman([1, 2], [1, 2])["rho"])           # too few runs
    assert stats.spearman([1, 2, 3], [1, 2, 3])["ci"] is None          # a rank and a p (2/6), no interval
    assert stats.spearman([1, 2, 3, 4], [5, 5, 5, 5])["ci"] is None    # a constant variable
    assert math.isnan(stats.spearman([1, 2, 3, 4], [5, 5, 5, 5])["p"])


def test_spearman_perfect_ranking_of_4_has_exact_p_1_over_12_and_no_interval():
    s = stats.spearman([0.1, 0.4, 0.5, 0.9], [3, 5, 8, 9])
    assert s["rho"] == 1.0 and s["p"] == pytest.approx(2 / 24) and s["p_error"] == 0.0  # identity and reverse
    assert s["ci"] is None                                                               # not [+1.00, +1.00]
    assert stats.spearman([1, 2, 3, 4], [4, 3, 2, 1])["p"] == pytest.approx(1 / 12)


def brute_force_p(x, y):
    """Two-sided permutation p by listing every ordering of y."""
    rho = stats.spearman(x, y)["rho"]
    rhos = [stats.spearman(x, list(perm))["rho"] for perm in itertools.permutations(y)]
    return sum(abs(r) >= abs(rho) - 1e-12 for r in rhos) / len(rhos)


def test_spearman_exact_p_matches_listing_every_ordering_with_and_without_ties():
    x, y = [0.3, 0.1, 0.8, 0.5, 0.2, 0.7], [2.0, 1.5, 3.0, 1.0, 0.5, 2.5]
    assert stats.spearman(x, y)["p"] == pytest.approx(brute_force_p(x, y))
    tied = [1.0, 1.0, 2.0, 3.0, 3.0]
    assert stats.spearman(tied, [5.0, 3.0, 4.0, 1.0, 2.0])["p"] == pytest.approx(brute_force_p(tied, [5.0, 3.0, 4.0,
                                                                                                     1.0, 2.0]))


def test_spearman_beyond_10_points_is_monte_carlo_with_its_error_never_0():
    x = list(range(12))
    s = stats.spearman(x, x)
    assert s["rho"] == 1.0 and s["p"] == 1 / (stats.PERMUTATIONS + 1) and s["p_error"] > 0 and s["ci"] is None
    noisy = stats.spearman(x, [3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10])
    assert 0 < noisy["p"] < 0.01 and noisy["ci"] is not None


def test_stratified_spearman_ignores_shifts_between_strata():
    # Within each stratum y falls as x rises; stratum b sits higher in both: pooled ρ > 0, within-strata ρ = −1.
    x = [1, 2, 3, 4, 11, 12, 13, 14]
    y = [4, 3, 2, 1, 14, 13, 12, 11]
    strata = ["a"] * 4 + ["b"] * 4
    assert stats.spearman(x, y)["rho"] > 0.5
    s = stats.stratified_spearman(x, y, strata)
    assert s["rho"] == -1.0 and s["strata"] == 2 and s["n"] == 8
    # exact: both strata perfectly ranked one way, of 24·24 orderings: 2/576
    assert s["p"] == pytest.approx(2 / 576, abs=4 * s["p_error"])
    shuffled = stats.stratified_spearman(x, [4, 1, 3, 2, 12, 14, 11, 13], strata)
    assert shuffled["p"] > 0.2


def test_wilson_interval():
    lo, hi = stats.wilson(0, 20)
    assert lo == 0 and 0 < hi < 0.2  # 0 of 20: not [0, 0]
    lo, hi = stats.wilson(10, 20)
    assert lo == pytest.approx(1 - hi) and lo == pytest.approx(0.299, abs=1e-3)
