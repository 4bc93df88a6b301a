"""mmtm.stats on hand-made per-seed numbers."""
import math

import pytest

from mmtm import stats


def test_mean_and_sample_std():
    assert stats.mean_std([0.8, 0.9]) == pytest.approx((0.85, math.sqrt(0.005)))
    mean, std = stats.mean_std([0.7])
    assert mean == 0.7 and math.isnan(std)


def test_bootstrap_interval_of_the_mean():
    assert stats.bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)          # no spread, no width
    # Two values: resampled means are 0, 0.5 or 1 with chances 1/4, 1/2, 1/4, so the 2.5% and 97.5%
    # quantiles are the extremes.
    assert stats.bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    lo, hi = stats.bootstrap_ci(values)
    # Normal approximation of the bootstrap: mean ± 1.96 · (population std / √n) = 3 ± 1.96·√2/√5.
    half = 1.96 * math.sqrt(2) / math.sqrt(5)
    assert lo == pytest.approx(3 - half, abs=0.12) and hi == pytest.approx(3 + half, abs=0.12)
    assert stats.bootstrap_ci(values) == (lo, hi)                       # seeded: the same table twice
    assert stats.bootstrap_ci(values, level=0.5)[1] - stats.bootstrap_ci(values, level=0.5)[0] < hi - lo


def test_paired_differences_and_sign_agreement():
    a = {0: 0.80, 1: 0.90, 2: 0.85, 7: 0.5}
    b = {0: 0.70, 1: 0.95, 2: 0.80}
    p = stats.paired(a, b)                    # seed 7 has no partner and is left out
    assert p["n"] == 3
    assert p["mean"] == pytest.approx((0.10 - 0.05 + 0.05) / 3)
    assert p["agree"] == pytest.approx(2 / 3)  # two of three differences are positive, like the mean
    lo, hi = p["ci"]
    assert lo < p["mean"] < hi and lo >= -0.05 - 1e-12 and hi <= 0.10 + 1e-12
    assert stats.paired({0: 1.0}, {1: 1.0})["n"] == 0


def test_formatting():
    assert stats.fmt_mean_std_ci([0.5]) == "0.500"
    assert stats.fmt_mean_std_ci([0.0, 1.0]) == "0.500 ± 0.707 [0.000, 1.000]"
    assert stats.fmt_paired({"n": 4, "mean": -0.1, "ci": (-0.2, 0.01), "agree": 0.75}) == "-0.100 [-0.200, +0.010] 3/4"
    assert stats.fmt_paired(stats.paired({}, {})) == "–"
