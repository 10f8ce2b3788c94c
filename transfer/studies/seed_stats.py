"""Statistics over seeds: t-intervals, paired tests between initialisations, effect sizes, Holm, label efficiency.

A seed is the unit of replication here (it draws the label subset, the head's init and the batch order), so a
cell's interval is over its seeds, and two initialisations are compared on the seeds they share (paired: the
same seed means the same labelled subset). All p-values and intervals come from scipy; these functions only
choose which scipy call answers the question and collect what a report needs.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np
from scipy import stats as st

SeedTest = Literal["wilcoxon", "ttest"]

#: how each seed-level test is named in tables and the report
TEST_NAMES: dict[str, str] = {"wilcoxon": "Wilcoxon signed-rank, exact (paired by seed)",
                              "ttest": "paired t-test (paired by seed)"}


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample SD, n and the t-interval of the mean (NaN bounds with fewer than two values)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"mean": math.nan, "sd": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "sd": math.nan, "lo": math.nan, "hi": math.nan, "n": 1}
    sd = float(v.std(ddof=1))
    if sd == 0:
        return {"mean": mean, "sd": 0.0, "lo": mean, "hi": mean, "n": n}
    lo, hi = st.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return {"mean": mean, "sd": sd, "lo": float(lo), "hi": float(hi), "n": n}


def paired_seed_test(a: Sequence[float], b: Sequence[float], test: SeedTest = "wilcoxon") -> dict[str, Any]:
    """``a - b`` over paired seeds: mean difference with its t-interval, p-value and effect sizes.

    ``wilcoxon``: exact signed-rank test (``method="exact"``; no normality assumed, but with n pairs its
    smallest two-sided p is 2 / 2**n). ``ttest``: ``scipy.stats.ttest_rel``. Effect sizes: Cohen's d_z
    (mean difference / SD of the differences) and the matched-pairs rank-biserial correlation
    (T+ - T-) / (T+ + T-), which is what the Wilcoxon test is a test of.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired seeds differ in shape: {a.shape} vs {b.shape}")
    d = a - b
    ci = t_interval(d)
    out: dict[str, Any] = {"n_pairs": len(d), "difference": ci["mean"], "ci95_lo": ci["lo"], "ci95_hi": ci["hi"],
                           "cohens_dz": _cohens_dz(d), "rank_biserial": _rank_biserial(d), "test": TEST_NAMES[test],
                           "min_p": min_attainable_p(len(d), test)}
    if len(d) < 2 or not np.any(d != 0):
        out["p_value"] = 1.0 if len(d) and not np.any(d != 0) else math.nan
    elif test == "wilcoxon":
        out["p_value"] = float(st.wilcoxon(a, b, method="exact" if np.all(d != 0) else "auto").pvalue)
    else:
        out["p_value"] = float(st.ttest_rel(a, b).pvalue) if np.std(d) > 0 else 0.0
    return out


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
    """The smallest two-sided p the test can give with ``n_pairs`` (exact Wilcoxon: 2 / 2**n; t-test: 0)."""
    if test == "ttest":
        return 0.0 if n_pairs >= 2 else math.nan
    return min(1.0, 2.0 / 2 ** n_pairs) if n_pairs else math.nan


def seeds_needed(alpha: float = 0.05, n_comparisons: int = 1) -> int:
    """Fewest seeds with which an exact two-sided Wilcoxon can reject at ``alpha`` after Holm over
    ``n_comparisons`` (the smallest p is compared with ``alpha / n_comparisons``)."""
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
    does (conservative). NaN where no fraction of the grid reaches it. Fractions are the grid's points, not
    interpolated between them.
    """
    sign = 1.0 if mode == "max" else -1.0

    def first(values: Sequence[float]) -> float:
        for f, v in sorted(zip(fractions, values)):
            if v is not None and not math.isnan(v) and sign * (v - reference) >= 0:
                return float(f)
        return math.nan

    optimistic, conservative = (his, los) if mode == "max" else (los, his)
    return {"fraction": first(means), "fraction_lo": first(optimistic), "fraction_hi": first(conservative)}
