"""mmtm.stats on hand-made numbers: t-intervals, exact sign-flip p-values, object-level bootstrap, McNemar, Spearman."""
import math

import pytest

from mmtm import stats


def test_mean_and_sample_std():
    assert stats.mean_std([0.8, 0.9]) == pytest.approx((0.85, math.sqrt(0.005)))
    mean, std = stats.mean_std([0.7])
    assert mean == 0.7 and math.isnan(std)


def test_t_interval_of_the_mean():
    # 1..5: mean 3, s = √2.5, t(0.975, 4) = 2.776445: half width 2.776445·√2.5/√5 = 1.963243
    lo, hi = stats.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (lo, hi) == pytest.approx((3 - 1.963243, 3 + 1.963243), abs=1e-6)
    assert stats.t_interval([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))  # no spread, no width
    assert stats.t_interval([0.7]) is None                                  # one seed: no interval


def test_exact_sign_flip_p_values():
    # five differences of one sign: only the all-plus and all-minus patterns are as extreme: 2/32
    assert stats.sign_flip_p([0.1, 0.2, 0.05, 0.3, 0.15]) == 2 / 32
    # [1, 1, 1, -1]: mean 0.5; patterns with |mean| ≥ 0.5: ±(1,1,1,-1) and the eight with three equal signs
    # and one flipped... counted by hand: |sum| ≥ 2 ⇔ not two plus two minus: 16 − 6 = 10 patterns
    assert stats.sign_flip_p([1.0, 1.0, 1.0, -1.0]) == 10 / 16
    assert stats.sign_flip_p([0.0, 0.0]) == 1.0


def test_paired_differences():
    a = {0: 0.80, 1: 0.90, 2: 0.85, 7: 0.5}
    b = {0: 0.70, 1: 0.95, 2: 0.80}
    p = stats.paired(a, b)                    # seed 7 has no partner and is left out
    assert p["n"] == 3 and p["mean"] == pytest.approx((0.10 - 0.05 + 0.05) / 3)
    assert p["agree"] == pytest.approx(2 / 3)  # two of three differences are positive, like the mean
    assert p["ci"] == pytest.approx(stats.t_interval([0.10, -0.05, 0.05]))
    assert p["p"] == stats.sign_flip_p([0.10, -0.05, 0.05])
    one = stats.paired({0: 1.0}, {0: 0.5})
    assert one["n"] == 1 and one["ci"] is None
    assert stats.paired({0: 1.0}, {1: 1.0})["n"] == 0


def test_formatting():
    assert stats.fmt_mean_std_ci([0.5]) == "0.500 [—]"                 # one seed: no interval
    lo, hi = stats.t_interval([0.0, 1.0])
    assert stats.fmt_mean_std_ci([0.0, 1.0]) == f"0.500 ± 0.707 [{lo:.3f}, {hi:.3f}]"
    assert stats.fmt_paired({"n": 4, "mean": -0.1, "ci": (-0.2, 0.01), "p": 0.125, "agree": 0.75}) == \
        "-0.100 [-0.200, +0.010] p=0.125 3/4"
    assert stats.fmt_paired({"n": 1, "mean": 0.2, "ci": None, "p": 1.0, "agree": 1.0}) == "+0.200 [—] p=1.000 1/1"
    assert stats.fmt_paired(stats.paired({}, {})) == "–"


def test_object_level_bootstrap_on_a_hand_made_cur():
    # 10 objects; head 0 right on all, with flow off on 5: u(m1|m0) = 0.5; head 1 right on 8, alone on 8: u = 0
    objects = {"fused": [1] * 10, "f0": [1] * 10, "f0_only": [1] * 5 + [0] * 5, "f1": [1] * 8 + [0] * 2,
               "f1_only": [1] * 8 + [0] * 2}
    got = stats.object_intervals(objects, resamples=4000)
    assert got["acc"] == [1.0, 1.0] and got["acc_m0"] == [1.0, 1.0]
    lo, hi = got["u_m1_given_m0"]
    assert lo < 0.5 < hi and 0.1 <= lo and hi <= 0.9  # binomial(10, 0.5) spread
    assert got["u_m0_given_m1"] == [0.0, 0.0]          # f1' right exactly where f1 is: no resample moves it
    assert got["d_util"][0] < 0.5 < got["d_util"][1]
    assert "10 test objects" in got["method"]
    assert stats.object_intervals(objects, resamples=4000) == got  # seeded
    single = stats.object_intervals({"fused": [1, 0], "f0": [1, 0], "f1": [1, 0]})
    assert set(single) == {"method", "level", "acc", "acc_m0", "acc_m1"}


def test_mcnemar_exact():
    a = [1] * 10 + [0] * 0
    b = [0] * 10
    # ten discordant objects, all for a: p = 2 · 0.5^10
    assert stats.mcnemar_p(a, b) == pytest.approx(2 * 0.5 ** 10)
    assert stats.mcnemar_p([1, 0, 1], [1, 0, 1]) == 1.0               # no discordant object
    assert stats.mcnemar_p([1, 0], [0, 1]) == 1.0


def test_spearman_with_interval():
    s = stats.spearman([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])
    assert s["rho"] == pytest.approx(1 - 6 * 6 / (6 * 35))  # Σd² = 6: ρ = 1 − 6Σd²/(n(n²−1))
    lo, hi = s["ci"]
    assert lo < s["rho"] < hi <= 1 and s["n"] == 6
    assert math.isnan(stats.spearman([1, 2, 3], [1, 2, 3])["rho"])  # too few runs
    assert stats.spearman([1, 2, 3, 4], [5, 5, 5, 5])["ci"] is None  # a constant variable
