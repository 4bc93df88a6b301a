"""Statistics for comparisons (`mmtm compare`, `mmtm report`) and for one run's test split (`mmtm eval-cur`).

Over seeds (a handful of values): a mean's 95% interval is Student's t-interval (df = n − 1); a paired difference
(seed k of every policy shares its initial weights and data order) gets the t-interval of the mean difference and
an exact sign-flip permutation p-value, over all 2^n sign patterns of the differences. One seed gives no interval.
A percentile bootstrap is not used over seeds: with 5 values it covers about 85%, not 95%.
Over the objects of one test split (hundreds): a percentile bootstrap that resamples the objects, labelled as such,
for the accuracies and CURs of one run; McNemar's exact test for two runs scored on the same objects.
Across runs: Spearman's rank correlation with a Fisher-z interval (Bonett-Wright standard error).
"""
from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence

import numpy as np

from mmtm import formulas

LEVEL = 0.95
OBJECT_RESAMPLES = 2000
MAX_EXACT_SIGNS = 20  # 2^20 sign patterns at most


def _scipy_stats():
    # Imported on first use: scipy.stats takes ~0.6 s to import, and every training process imports this module
    # (through eval-cur) without needing it.
    from scipy import stats
    return stats


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for fewer than two values)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """Student's t-interval of the mean, df = n − 1; None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    mean, std = mean_std(values)
    half = _scipy_stats().t.ppf((1 + level) / 2, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided permutation p-value of a mean paired difference: the share of the 2^n sign patterns whose
    mean is at least as far from 0 as the observed one. n = 5 differences all of one sign give 2/32."""
    d = np.asarray(diffs, dtype=np.float64)
    if not 1 <= len(d) <= MAX_EXACT_SIGNS:
        raise ValueError(f"sign_flip_p takes 1..{MAX_EXACT_SIGNS} differences, got {len(d)}")
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    means = np.abs(signs @ d) / len(d)
    observed = abs(d.mean())
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """a − b over the seeds both have: n, mean, t-interval `ci` (None for one seed), exact sign-flip `p`, and
    `agree`, the share of seeds whose difference has the sign of the mean."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds if not (math.isnan(a[s]) or math.isnan(b[s]))]
    if not diffs:
        return {"n": 0, "mean": math.nan, "ci": None, "p": math.nan, "agree": math.nan}
    mean = statistics.fmean(diffs)
    agree = sum(1 for d in diffs if d != 0 and math.copysign(1, d) == math.copysign(1, mean)) / len(diffs)
    return {"n": len(diffs), "mean": mean, "ci": t_interval(diffs), "p": sign_flip_p(diffs), "agree": agree}


def fmt_mean_std_ci(values: Sequence[float], digits: int = 3) -> str:
    """`mean ± std [lo, hi]` with the t-interval; `mean [—]` for one value."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "nan"
    mean, std = mean_std(values)
    ci = t_interval(values)
    if ci is None:
        return f"{mean:.{digits}f} [—]"
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def fmt_p(p: float) -> str:
    return "—" if math.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def fmt_paired(p: dict, digits: int = 3) -> str:
    """`+Δ [lo, hi] p=… k/n` for a `paired` result (`[—]` without an interval)."""
    if p["n"] == 0:
        return "–"
    ci = "[—]" if p["ci"] is None else f"[{p['ci'][0]:+.{digits}f}, {p['ci'][1]:+.{digits}f}]"
    return f"{p['mean']:+.{digits}f} {ci} p={fmt_p(p['p'])} {round(p['agree'] * p['n'])}/{p['n']}"


def spearman(x: Sequence[float], y: Sequence[float], level: float = LEVEL) -> dict:
    """Spearman's ρ of paired values with a Fisher-z interval (SE = √((1 + ρ²/2)/(n − 3)), Bonett & Wright 2000)
    and its two-sided p-value; nan where n < 4 or a variable is constant."""
    pairs = [(a, b) for a, b in zip(x, y) if not (math.isnan(a) or math.isnan(b))]
    n = len(pairs)
    out = {"n": n, "rho": math.nan, "ci": None, "p": math.nan}
    if n < 4 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return out
    result = _scipy_stats().spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    rho = float(result.statistic)
    z, se = math.atanh(max(min(rho, 0.999999), -0.999999)), math.sqrt((1 + rho ** 2 / 2) / (n - 3))
    q = _scipy_stats().norm.ppf((1 + level) / 2)
    return {"n": n, "rho": rho, "ci": (math.tanh(z - q * se), math.tanh(z + q * se)), "p": float(result.pvalue)}


def mcnemar_p(right_a: Sequence[int], right_b: Sequence[int]) -> float:
    """McNemar's exact two-sided p-value for two classifiers scored on the same objects: the discordant objects
    (right in one, wrong in the other) split as a fair coin would split them."""
    a, b = np.asarray(right_a, dtype=bool), np.asarray(right_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(_scipy_stats().binomtest(only_a, only_a + only_b, 0.5).pvalue)


def object_intervals(objects: dict[str, Sequence[int]], level: float = LEVEL, resamples: int = OBJECT_RESAMPLES,
                     seed: int = 0) -> dict:
    """Percentile-bootstrap intervals over the test objects of one run (resampling objects with replacement, the
    five outcomes of an object kept together) for acc, A(f0), A(f1), u(m1|m0), u(m0|m1) and d_util. `objects`
    holds 0/1 per object: fused, f0, f0_only, f1, f1_only (f0_only/f1_only absent for a single-view run)."""
    right = {k: np.asarray(v, dtype=np.float64) for k, v in objects.items() if k != "index"}
    n = len(right["fused"])
    draws = np.random.default_rng(seed).integers(0, n, (resamples, n))
    acc = {k: v[draws].mean(axis=1) for k, v in right.items()}
    measures = {"acc": acc["fused"], "acc_m0": acc["f0"], "acc_m1": acc["f1"]}
    if "f0_only" in acc:
        with np.errstate(divide="ignore", invalid="ignore"):
            u10 = np.array([formulas.conditional_utilization(a, b) for a, b in zip(acc["f0"], acc["f0_only"])])
            u01 = np.array([formulas.conditional_utilization(a, b) for a, b in zip(acc["f1"], acc["f1_only"])])
        measures |= {"u_m1_given_m0": u10, "u_m0_given_m1": u01, "d_util": u10 - u01}
    lo, hi = (1 - level) / 2, (1 + level) / 2
    return {"method": f"percentile bootstrap over the {n} test objects, {resamples} resamples", "level": level,
            **{k: [float(np.nanquantile(v, lo)), float(np.nanquantile(v, hi))] for k, v in measures.items()}}
