"""Statistics for comparisons (`mmtm compare`, `mmtm report`) and for one run's test split (`mmtm eval-cur`).

Over seeds (a handful of values): a mean's 95% interval is Student's t-interval (df = n − 1); a paired difference
(seed k of every policy shares its initial weights and data order) gets the t-interval of the mean difference and
a sign-flip permutation p-value: exact over all 2^n sign patterns up to EXACT_SIGN_FLIPS seeds, Monte Carlo
(PERMUTATIONS seeded draws, with its standard error) beyond. One seed, or differences with no spread, give no
interval; one seed gives no test. The p-values of one table are adjusted together by Holm's step-down method.
A percentile bootstrap is not used over seeds: with 5 values it covers about 85%, not 95%.
Over the objects of one test split (hundreds): Wilson score intervals for a run's accuracies; a percentile bootstrap
that resamples the objects for its CURs (widened where no object changes outcome, see `object_intervals`);
McNemar's exact test for two runs scored on the same objects.
Across runs: Spearman's rank correlation with a permutation p-value (exact over all n! orderings up to
EXACT_SPEARMAN points, Monte Carlo beyond) and, below |ρ| = 1, a Fisher-z interval (Bonett-Wright standard error);
within strata (policies), the mean within-stratum ρ with a p-value from permutations inside each stratum.
A permutation p-value counts the observed arrangement, so it is never 0.
"""
from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
OBJECT_RESAMPLES = 2000
EXACT_SIGN_FLIPS = 16  # 2^16 sign patterns at most; Monte Carlo beyond
EXACT_SPEARMAN = 10    # 10! orderings at most; Monte Carlo beyond
PERMUTATIONS = 20000   # Monte Carlo draws (seeded, so a comparison rebuilds byte for byte): p's error ≤ 0.0036
_CHUNK = 1 << 18       # orderings scored at a time (bounds memory at n = 10)


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
    """Student's t-interval of the mean, df = n − 1; None for fewer than two values or no spread (a zero-width
    interval would claim certainty that a handful of equal values does not give)."""
    n = len(values)
    if n < 2:
        return None
    mean, std = mean_std(values)
    if std <= 1e-12 * max(1.0, abs(mean)):  # equal up to rounding
        return None
    half = _scipy_stats().t.ppf((1 + level) / 2, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def _monte_carlo(hits: int, draws: int) -> tuple[float, float]:
    """p = (hits + 1)/(draws + 1), counting the observed arrangement as one draw, and its standard error."""
    p = (hits + 1) / (draws + 1)
    return p, math.sqrt(p * (1 - p) / draws)


def _at_least(values: np.ndarray, observed: float) -> int:
    # A tolerance, so an arrangement equal to the observed one up to rounding counts as "at least as extreme".
    return int(np.count_nonzero(values >= observed - 1e-9 * max(1.0, observed)))


def sign_flip_p(diffs: Sequence[float]) -> tuple[float, float]:
    """Two-sided permutation p-value of a mean paired difference and its Monte Carlo error (0 when exact): the
    share of sign patterns whose mean is at least as far from 0 as the observed one; all 2^n patterns up to
    EXACT_SIGN_FLIPS differences, PERMUTATIONS random ones beyond. n = 5 differences all of one sign give 2/32."""
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("sign_flip_p needs at least one difference")
    observed = abs(d.sum())
    if n <= EXACT_SIGN_FLIPS:
        signs = 1.0 - 2.0 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        return _at_least(np.abs(signs @ d), observed) / 2 ** n, 0.0
    signs = np.random.default_rng(0).choice((-1.0, 1.0), size=(PERMUTATIONS, n))
    return _monte_carlo(_at_least(np.abs(signs @ d), observed), PERMUTATIONS)


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values of one family (nan entries are not tests and stay nan): the i-th smallest
    of m becomes max over j ≤ i of min(1, (m − j + 1)·p_(j))."""
    order = sorted((i for i, p in enumerate(ps) if not math.isnan(p)), key=lambda i: ps[i])
    out = [math.nan] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * ps[i]))
        out[i] = running
    return out


def describe(values: Sequence[float]) -> dict:
    """`n`, `mean`, `sd` (sample) and the t-interval `ci_low`, `ci_high` of the values that are not nan (nan where
    not defined: no values, one value, no spread)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean, sd = mean_std(values)
    ci = t_interval(values) or (math.nan, math.nan)
    return {"n": len(values), "mean": mean, "sd": sd, "ci_low": ci[0], "ci_high": ci[1]}


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """a − b over the seeds both have: `describe` of the differences, sign-flip `p` and its Monte Carlo error
    `p_error` (nan for one seed: no test), and `k`, the number of seeds whose difference has the sign of the mean."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds if not (math.isnan(a[s]) or math.isnan(b[s]))]
    out = describe(diffs) | {"p": math.nan, "p_error": math.nan, "k": 0}
    if diffs:
        mean = out["mean"]
        out["k"] = sum(1 for d in diffs if d != 0 and math.copysign(1, d) == math.copysign(1, mean))
    if len(diffs) > 1:
        out["p"], out["p_error"] = sign_flip_p(diffs)
    return out


def missing(value: float | None) -> bool:
    """None (as comparison.json holds a missing number) or nan."""
    return value is None or math.isnan(value)


def fmt_num(value: float | None, digits: int = 3, signed: bool = False) -> str:
    """A number to `digits` places; `—` for none or nan; a value that rounds to zero prints unsigned, never -0.000."""
    if missing(value):
        return "—"
    text = f"{value:{'+' if signed else ''}.{digits}f}"
    return text.lstrip("+-") if float(text) == 0 else text


def fmt_described(d: dict, digits: int = 3) -> str:
    """A `describe` result as `mean ± sd [lo, hi]`; `mean [—]` for one value, `[—]` without an interval, `—` for
    no values. Takes None for nan, as comparison.json holds it."""
    if not d["n"]:
        return "—"
    if d["n"] == 1:
        return f"{fmt_num(d['mean'], digits)} [—]"
    ci = "[—]" if missing(d["ci_low"]) else f"[{fmt_num(d['ci_low'], digits)}, {fmt_num(d['ci_high'], digits)}]"
    return f"{fmt_num(d['mean'], digits)} ± {fmt_num(d['sd'], digits)} {ci}"


def fmt_p(p: float | None, error: float | None = 0.0) -> str:
    """A p-value: 3 decimals, or 2 significant digits below 0.001; a Monte Carlo one with its standard error."""
    if missing(p):
        return "—"
    text = f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
    return text if missing(error) or not error else f"{text} (MC ±{error:.1g})"


def fmt_paired(p: dict, digits: int = 3) -> str:
    """`+Δ [lo, hi] p=… (Holm …) k/n` for a `paired` result (`[—]` without an interval, `p=—` without a test); the
    Holm part where `p_holm` is given."""
    if not p["n"]:
        return "—"
    ci = ("[—]" if missing(p["ci_low"]) else
          f"[{fmt_num(p['ci_low'], digits, True)}, {fmt_num(p['ci_high'], digits, True)}]")
    holm_p = f" (Holm {fmt_p(p['p_holm'])})" if not missing(p.get("p_holm")) else ""
    return (f"{fmt_num(p['mean'], digits, True)} {ci} p={fmt_p(p['p'], p['p_error'])}{holm_p} "
            f"{p['k']}/{p['n']}")


def _ranks(values: Sequence[float]) -> np.ndarray:
    return _scipy_stats().rankdata(values)


@functools.lru_cache(maxsize=2)
def _orderings(n: int) -> np.ndarray:
    """All n! orderings of range(n), [n!, n] int8 (3.6 M rows, 36 MB at n = 10)."""
    out = np.zeros((1, 1), dtype=np.int8)
    for k in range(1, n):
        out = np.concatenate([np.insert(out, pos, k, axis=1) for pos in range(k + 1)])
    return out


@functools.lru_cache(maxsize=8)
def _null_products(a: tuple, b: tuple) -> np.ndarray:
    """|a · b[π]| over every ordering π: the exact null distribution (depends on the values, not their order)."""
    a_, b_ = np.asarray(a), np.asarray(b)
    perms = _orderings(len(a))
    return np.concatenate([np.abs(b_[perms[i:i + _CHUNK]] @ a_) for i in range(0, len(perms), _CHUNK)])


def _rank_permutation_p(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided permutation p of the centred ranks' product a · b (ρ is that over a fixed norm)."""
    observed = abs(float(a @ b))
    if len(a) <= EXACT_SPEARMAN:
        null = _null_products(tuple(np.sort(a).tolist()), tuple(np.sort(b).tolist()))
        return _at_least(null, observed) / len(null), 0.0
    perms = np.argsort(np.random.default_rng(0).random((PERMUTATIONS, len(a))), axis=1)
    return _monte_carlo(_at_least(np.abs(b[perms] @ a), observed), PERMUTATIONS)


def _centred_ranks(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """Centred ranks of two variables, or None when one of them is constant (ρ undefined)."""
    a, b = _ranks(x), _ranks(y)
    a, b = a - a.mean(), b - b.mean()
    return None if not a.any() or not b.any() else (a, b)


def spearman(x: Sequence[float], y: Sequence[float], level: float = LEVEL) -> dict:
    """Spearman's ρ of paired values (pairs with a nan dropped), its two-sided permutation p-value and Monte Carlo
    error (see `_rank_permutation_p`), and a Fisher-z interval (SE = √((1 + ρ²/2)/(n − 3)), Bonett & Wright 2000)
    for n ≥ 4 and |ρ| < 1; ρ and p are nan below 3 points or when a variable is constant."""
    pairs = [(a, b) for a, b in zip(x, y) if not (math.isnan(a) or math.isnan(b))]
    n = len(pairs)
    out = {"n": n, "rho": math.nan, "ci": None, "p": math.nan, "p_error": math.nan}
    centred = _centred_ranks([a for a, _ in pairs], [b for _, b in pairs]) if n >= 3 else None
    if centred is None:
        return out
    a, b = centred
    rho = float(np.clip(a @ b / math.sqrt((a @ a) * (b @ b)), -1.0, 1.0))
    p, error = _rank_permutation_p(a, b)
    ci = None
    if n >= 4 and abs(rho) < 1 - 1e-12:
        z, se = math.atanh(rho), math.sqrt((1 + rho ** 2 / 2) / (n - 3))
        q = _scipy_stats().norm.ppf((1 + level) / 2)
        ci = (math.tanh(z - q * se), math.tanh(z + q * se))
    return {"n": n, "rho": rho, "ci": ci, "p": p, "p_error": error}


def stratified_spearman(x: Sequence[float], y: Sequence[float], strata: Sequence) -> dict:
    """The mean of Spearman's ρ within each stratum (strata of fewer than 3 points or a constant variable left out)
    and a two-sided Monte Carlo p-value from permuting y within each stratum: a test of association within strata
    that differences between strata (a policy's shift of both variables) cannot produce."""
    groups: dict = {}
    for a, b, s in zip(x, y, strata):
        if not (math.isnan(a) or math.isnan(b)):
            groups.setdefault(s, []).append((a, b))
    used = [c for c in (_centred_ranks([a for a, _ in g], [b for _, b in g]) for g in groups.values() if len(g) >= 3)
            if c is not None]
    n = sum(len(a) for a, _ in used)
    if not used:
        return {"n": n, "strata": 0, "rho": math.nan, "p": math.nan, "p_error": math.nan}
    rng = np.random.default_rng(0)
    observed, null = 0.0, np.zeros(PERMUTATIONS)
    for a, b in used:
        norm = math.sqrt((a @ a) * (b @ b))
        observed += float(a @ b) / norm
        null += b[np.argsort(rng.random((PERMUTATIONS, len(a))), axis=1)] @ a / norm
    p, error = _monte_carlo(_at_least(np.abs(null), abs(observed)), PERMUTATIONS)
    return {"n": n, "strata": len(used), "rho": observed / len(used), "p": p, "p_error": error}


def mcnemar(right_a: Sequence[int], right_b: Sequence[int]) -> dict:
    """McNemar's exact two-sided test for two classifiers scored on the same objects: `only_a`/`only_b`, the
    objects right in one and wrong in the other, and `p`, how likely a split at least this uneven is if each such
    object went either way with chance 1/2."""
    a, b = np.asarray(right_a, dtype=bool), np.asarray(right_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(_scipy_stats().binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p": p}


def wilson(right: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson's score interval of a proportion right/n: inside [0, 1], never of zero width (n ≥ 1)."""
    z = _scipy_stats().norm.ppf((1 + level) / 2)
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def object_intervals(objects: dict[str, Sequence[int]], level: float = LEVEL, resamples: int = OBJECT_RESAMPLES,
                     seed: int = 0, split: str = "test") -> dict:
    """Intervals over the objects of one run's `split` (its method says which). acc, A(f0), A(f1): Wilson score
    intervals. u(m1|m0), u(m0|m1), d_util: percentile bootstrap, resampling objects with replacement (the five
    outcomes of an object kept together); where no object changes outcome when the flow is turned off, every
    resample gives the same u, so the interval is widened by the exact (Clopper-Pearson) bound on the share of
    objects that could change, 1 − ((1 − level)/2)^(1/n), over A(f). `objects` holds 0/1 per object: fused, f0,
    f0_only, f1, f1_only (f0_only/f1_only absent for a single-view run)."""
    right = {k: np.asarray(v, dtype=np.float64) for k, v in objects.items() if k != "index"}
    n = len(right["fused"])
    drawn = "test objects" if split == "test" else f"objects of the {split} split"
    out = {"method": f"Wilson score (accuracies); percentile bootstrap over the {n} {drawn}, {resamples} "
                     "resamples (CURs)", "level": level}
    for key, head in (("acc", "fused"), ("acc_m0", "f0"), ("acc_m1", "f1")):
        out[key] = list(wilson(int(right[head].sum()), n, level))
    if "f0_only" not in right:
        return out
    draws = np.random.default_rng(seed).integers(0, n, (resamples, n))
    acc = {k: v[draws].mean(axis=1) for k, v in right.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        u10 = np.where(acc["f0"] > 0, (acc["f0"] - acc["f0_only"]) / acc["f0"], np.nan)
        u01 = np.where(acc["f1"] > 0, (acc["f1"] - acc["f1_only"]) / acc["f1"], np.nan)
    lo, hi = (1 - level) / 2, (1 + level) / 2
    bound = 1 - lo ** (1 / n)  # share of objects that could change outcome, none having changed
    widen = {}
    for key, head in (("u_m1_given_m0", "f0"), ("u_m0_given_m1", "f1")):
        same = not np.any(right[head] != right[f"{head}_only"])
        widen[key] = bound / right[head].mean() if same and right[head].any() else 0.0
    widen["d_util"] = widen["u_m1_given_m0"] + widen["u_m0_given_m1"]
    for key, values in (("u_m1_given_m0", u10), ("u_m0_given_m1", u01), ("d_util", u10 - u01)):
        q = [float(np.nanquantile(values, lo)), float(np.nanquantile(values, hi))]
        out[key] = [q[0] - widen[key], q[1] + widen[key]] if q[0] == q[1] else q
    return out
