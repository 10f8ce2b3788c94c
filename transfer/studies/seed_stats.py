"""Statistics over seeds: bounded intervals, paired tests between initialisations, effect sizes, Holm, label efficiency.

A seed is the unit of replication here (it draws the label subset, the head's init and the batch order), so a
cell's interval is over its seeds, and two initialisations are compared on the seeds they share (paired: the
same seed means the same labelled subset). p-values come from scipy or from an exact enumeration; these functions
choose which test answers the question and collect what a report needs.

Two rules hold for every number returned here:
- an interval never leaves the range its metric can take: a proportion (AUC, accuracy, Dice, recall...) gets the
  t-interval on the logit scale, a positive quantity (an error in mm, a distance) the t-interval on the log scale,
  and a paired difference of bounded metrics the t-interval truncated to the range a difference can take; with
  fewer than :data:`MIN_SEEDS_FOR_INTERVAL` values there is no interval (NaN, printed "-"): a t-interval over two
  seeds (t = 12.7) says nothing;
- a p-value is never exactly 0 and never NaN because of one bad seed: seeds whose value is NaN are left out of
  the difference, its interval and the test alike, and counted (``n_dropped``).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Literal, Sequence

import numpy as np
from scipy import stats as st
from scipy.special import expit, logit

SeedTest = Literal["wilcoxon", "ttest", "signflip"]
Bounds = tuple[float, float]

#: the range of a metric that can take any value
UNBOUNDED: Bounds = (-math.inf, math.inf)

#: fewest values over which an interval is reported
MIN_SEEDS_FOR_INTERVAL = 3

#: how each seed-level test is named in tables and the report
TEST_NAMES: dict[str, str] = {"wilcoxon": "Wilcoxon signed-rank, exact (paired by seed)",
                              "ttest": "paired t-test (paired by seed)",
                              "signflip": "sign-flip permutation test of the mean, exact (paired by seed)"}

#: how each kind of range is turned into an interval, as the report states it
INTERVAL_NAMES: dict[str, str] = {
    "logit": "t-interval on the logit scale, mapped back (stays inside the metric's range)",
    "log": "t-interval on the log scale, mapped back (stays positive)",
    "t": "t-interval of the mean",
}

#: sign assignments enumerated exactly up to this many pairs (2**16 = 65,536); Monte Carlo above
_EXACT_SIGNFLIP_MAX = 16
_MONTE_CARLO_FLIPS = 100_000


def _finite(values: Sequence[float]) -> np.ndarray:
    v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
    return v[np.isfinite(v)]


def interval_kind(bounds: Bounds) -> str:
    """Which transform keeps an interval inside ``bounds``: ``logit`` (both ends finite), ``log`` (positive,
    unbounded above) or ``t`` (unbounded)."""
    lo, hi = bounds
    if math.isfinite(lo) and math.isfinite(hi):
        return "logit"
    if lo == 0 and not math.isfinite(hi):
        return "log"
    if math.isfinite(lo) or math.isfinite(hi):
        raise ValueError(f"no interval transform for the range {bounds}: give both ends, or 0 and inf")
    return "t"


def _t_bounds(x: np.ndarray, confidence: float) -> tuple[float, float]:
    """t-interval of the mean of ``x`` (n >= 2); the point when the SD is 0."""
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    if sd == 0:
        return mean, mean
    lo, hi = st.t.interval(confidence, len(x) - 1, loc=mean, scale=sd / math.sqrt(len(x)))
    return float(lo), float(hi)


def seed_interval(values: Sequence[float], bounds: Bounds = UNBOUNDED, confidence: float = 0.95,
                  min_n: int = MIN_SEEDS_FOR_INTERVAL) -> dict[str, Any]:
    """Mean, sample SD, the count of finite values ``n`` and a 95% interval that stays inside ``bounds``.

    ``bounds`` (lo, hi) finite: the values are mapped to [0, 1], then to the logit scale (clipped half a percent of
    a point inside the ends, so a seed at exactly 0 or 1 has a finite logit), where the t-interval is taken and
    mapped back. (0, inf): the same on the log scale. Unbounded: the plain t-interval. The interval is NaN with
    fewer than ``min_n`` finite values; ``reason`` then says why.
    """
    v = _finite(values)
    n = len(v)
    out: dict[str, Any] = {"mean": float(v.mean()) if n else math.nan,
                           "sd": float(v.std(ddof=1)) if n > 1 else math.nan,
                           "lo": math.nan, "hi": math.nan, "n": n, "interval": interval_kind(bounds), "reason": ""}
    if n < min_n:
        out["reason"] = f"{n} seed{'s' * (n != 1)} with a value: no interval below {min_n}"
        return out
    kind = out["interval"]
    if kind == "t":
        out["lo"], out["hi"] = _t_bounds(v, confidence)
    elif kind == "log":
        z = np.log(np.maximum(v, np.finfo(float).tiny))
        lo, hi = _t_bounds(z, confidence)
        out["lo"], out["hi"] = math.exp(lo), math.exp(hi)
    else:
        a, b = bounds
        eps = 0.005
        z = logit(np.clip((v - a) / (b - a), eps, 1 - eps))
        lo, hi = _t_bounds(z, confidence)
        out["lo"], out["hi"] = a + (b - a) * float(expit(lo)), a + (b - a) * float(expit(hi))
    return out


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample SD, n and the plain t-interval of the mean over the finite values (NaN bounds below two)."""
    r = seed_interval(values, UNBOUNDED, confidence, min_n=2)
    return {k: r[k] for k in ("mean", "sd", "lo", "hi", "n")}


def paired_seed_test(a: Sequence[float], b: Sequence[float], test: SeedTest = "wilcoxon",
                     bounds: Bounds = UNBOUNDED) -> dict[str, Any]:
    """``a - b`` over paired seeds: mean difference with its interval, p-value and effect sizes.

    Pairs where either value is NaN are dropped before anything is computed (``n_dropped``), so the difference,
    the interval and the p-value all rest on the same ``n_pairs``. ``bounds``: the range of the metric; a
    difference of a bounded metric lies within +-(hi - lo), and its t-interval is truncated there.

    ``wilcoxon``: exact signed-rank test (its smallest two-sided p with n pairs is 2 / 2**n). ``signflip``: the
    exact sign-flip permutation test of the mean difference (every one of the 2**n sign assignments; the observed
    one among them, so p >= 2 / 2**n, never 0). ``ttest``: ``scipy.stats.ttest_rel``; when every difference is the
    same non-zero number its statistic is infinite and scipy says p = 0, so the exact sign-flip p is used there
    and the ``test`` column says so. Effect sizes: Cohen's d_z (mean difference / SD of the differences) and the
    matched-pairs rank-biserial correlation (T+ - T-) / (T+ + T-), which is what the Wilcoxon test is a test of.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired seeds differ in shape: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    d = a - b
    n = len(d)
    ci = _difference_interval(d, bounds)
    out: dict[str, Any] = {"n_pairs": n, "n_dropped": int((~keep).sum()), "difference": float(d.mean()) if n else math.nan,
                           "ci95_lo": ci[0], "ci95_hi": ci[1], "cohens_dz": _cohens_dz(d),
                           "rank_biserial": _rank_biserial(d), "test": TEST_NAMES[test], "min_p": min_attainable_p(n, test)}
    if n < 2:
        out["p_value"] = math.nan
    elif not np.any(d != 0):
        out["p_value"] = 1.0
    elif test == "wilcoxon":
        out["p_value"] = float(st.wilcoxon(a, b, method="exact" if np.all(d != 0) else "auto").pvalue)
    elif test == "signflip":
        out["p_value"] = signflip_p(d)
    elif np.std(d) == 0:
        out["p_value"] = signflip_p(d)
        out["test"] = f"{TEST_NAMES['ttest']}; exact sign-flip p (every difference equal: t undefined)"
    else:
        out["p_value"] = float(st.ttest_rel(a, b).pvalue)
    return out


def _difference_interval(d: np.ndarray, bounds: Bounds) -> tuple[float, float]:
    """t-interval of the mean difference, truncated to +-(hi - lo) of a bounded metric; NaN below the minimum."""
    if len(d) < MIN_SEEDS_FOR_INTERVAL:
        return math.nan, math.nan
    lo, hi = _t_bounds(d, 0.95)
    width = bounds[1] - bounds[0]
    return max(lo, -width), min(hi, width)


def signflip_p(d: Sequence[float], *, seed: int = 0) -> float:
    """Two-sided p of the sign-flip permutation test of ``mean(d) = 0`` (paired differences).

    Under the null each difference is as likely to have either sign, so the p-value is the share of sign
    assignments whose |sum| reaches the observed one. Exact over all 2**n assignments up to
    :data:`_EXACT_SIGNFLIP_MAX` pairs (the observed assignment is one of them: p >= 1 / 2**(n - 1)); above, a
    Monte Carlo estimate as (1 + k) / (1 + n_resamples), which is never 0. Written out because scipy's
    ``permutation_test(permutation_type="samples")`` needs ``vectorized`` statistics and an ``n_resamples`` above
    2**n to be exact, and returns the same numbers (checked in the tests).
    """
    d = np.asarray(d, dtype=float)
    observed = abs(d.sum())
    tol = 1e-12 * max(1.0, float(np.abs(d).sum()))  # equal sums must count as "as extreme" despite rounding
    if len(d) <= _EXACT_SIGNFLIP_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ np.abs(d)) >= observed - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(_MONTE_CARLO_FLIPS, len(d)))
    k = int(np.sum(np.abs(signs @ np.abs(d)) >= observed - tol))
    return (1 + k) / (1 + _MONTE_CARLO_FLIPS)


def _cohens_dz(d: np.ndarray) -> float:
    if len(d) < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    return math.copysign(math.inf, float(d.mean())) if sd == 0 and d.mean() != 0 else (
        0.0 if sd == 0 else float(d.mean() / sd))


def _rank_biserial(d: np.ndarray) -> float:
    nz = d[d != 0]
    if len(nz) == 0:
        return 0.0
    ranks = st.rankdata(np.abs(nz))
    pos, neg = ranks[nz > 0].sum(), ranks[nz < 0].sum()
    return float((pos - neg) / (pos + neg))


def min_attainable_p(n_pairs: int, test: SeedTest = "wilcoxon") -> float:
    """The smallest two-sided p the test can give with ``n_pairs`` (exact Wilcoxon and sign-flip: 2 / 2**n;
    t-test: no floor, 0 here)."""
    if test == "ttest":
        return 0.0 if n_pairs >= 2 else math.nan
    return min(1.0, 2.0 / 2 ** n_pairs) if n_pairs else math.nan


def seeds_needed(alpha: float = 0.05, n_comparisons: int = 1) -> int:
    """Fewest seeds with which an exact two-sided Wilcoxon or sign-flip test can reject at ``alpha`` after Holm
    over ``n_comparisons`` (the smallest p is compared with ``alpha / n_comparisons``)."""
    n = 1
    while 2.0 / 2 ** n >= alpha / max(n_comparisons, 1):
        n += 1
    return n


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN stays NaN and is not counted).

    Written out here rather than taken from statsmodels' ``multipletests(method="holm")`` (which gives the same
    numbers) so the package does not depend on statsmodels for five lines: scipy's ``false_discovery_control``
    does Benjamini-Hochberg/Yekutieli only.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for k, i in enumerate(order):  # the k-th smallest p is multiplied by (m - k); adjusted values never decrease
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out.tolist()


def label_efficiency(fractions: Sequence[float], means: Sequence[float], los: Sequence[float],
                     his: Sequence[float], reference: float, mode: str = "max") -> dict[str, float]:
    """The smallest label fraction whose mean reaches ``reference`` (scratch at 100% of the labels), and its
    interval: the first fraction whose upper bound reaches it (optimistic) to the first whose lower bound
    does (conservative). NaN where no fraction of the grid reaches it, or where the cells have no interval
    (too few seeds). Fractions are the grid's points, not interpolated between them.
    """
    sign = 1.0 if mode == "max" else -1.0

    def first(values: Sequence[float]) -> float:
        for f, v in sorted(zip(fractions, values)):
            if v is not None and not math.isnan(v) and sign * (v - reference) >= 0:
                return float(f)
        return math.nan

    optimistic, conservative = (his, los) if mode == "max" else (los, his)
    return {"fraction": first(means), "fraction_lo": first(optimistic), "fraction_hi": first(conservative)}
