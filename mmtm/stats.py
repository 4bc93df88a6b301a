"""Statistics over seeds for `mmtm compare`: mean ± sample std, a percentile-bootstrap 95% interval of the mean,
and paired per-seed differences (seed k of every policy shares its initial weights and data order, so the
difference of two policies at the same seed removes that part of the noise)."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for fewer than two values)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def bootstrap_ci(values: Sequence[float], *, level: float = LEVEL, resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample the values with replacement, take the mean of each
    resample, and return the (1−level)/2 and (1+level)/2 quantiles. Seeded, so a table is reproducible.
    With n values the interval can only reflect the spread those n show: with 5 seeds it is wide and rough."""
    x = np.asarray(values, dtype=np.float64)
    means = x[np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """a − b over the seeds both have: {n, mean, ci, agree}; `agree` is the share of seeds whose difference has
    the sign of the mean difference (1.0: every seed points the same way)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return {"n": 0, "mean": math.nan, "ci": (math.nan, math.nan), "agree": math.nan}
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    agree = sum(1 for d in diffs if math.copysign(1, d) == math.copysign(1, mean) and d != 0) / len(diffs)
    return {"n": len(diffs), "mean": mean, "ci": bootstrap_ci(diffs), "agree": agree}


def fmt_mean_std_ci(values: Sequence[float], digits: int = 3) -> str:
    """`mean ± std [lo, hi]` (just the value for one seed)."""
    mean, std = mean_std(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    lo, hi = bootstrap_ci(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt_paired(p: dict, digits: int = 3) -> str:
    """`+Δ [lo, hi] k/n` for a `paired` result."""
    if p["n"] == 0:
        return "–"
    lo, hi = p["ci"]
    return (f"{p['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] "
            f"{round(p['agree'] * p['n'])}/{p['n']}")
