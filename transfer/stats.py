"""Statistics for comparing runs: paired tests on the same test images, and seed aggregates.

Both paired comparisons resample images (not models) with ``scipy.stats.bootstrap(paired=True)``,
so a resample holds the same images for both models. The interval is the *percentile* one: it keeps
the semantics these functions had before scipy did the resampling, it is the interval that matches
the bootstrap p-value derived from the same distribution, and unlike BCa it needs no jackknife of
the statistic, which for the AUC is undefined whenever leaving an image out or resampling leaves one
class only.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats as st
from sklearn.metrics import roc_auc_score

#: elements (resamples x images) per vectorised batch of the statistic: bounds memory on large test sets
_BATCH_ELEMENTS = 1 << 22
#: the smallest positive double: a floor for p-values whose asymptotic formula underflows
_TINY_P = float(np.nextafter(0.0, 1.0))


def rank_auc(positive: np.ndarray, score: np.ndarray, axis: int = -1) -> np.ndarray:
    """ROC AUC along ``axis`` as the Mann-Whitney U statistic over ``n_pos * n_neg``; NaN where one class is missing.

    ``positive``: (..., N) bool; ``score``: (..., N). Average ranks give tied scores half credit, as
    ``sklearn.metrics.roc_auc_score`` does, so both agree; this form is vectorised over resamples.
    """
    positive = np.moveaxis(np.asarray(positive, dtype=bool), axis, -1)
    ranks = st.rankdata(np.moveaxis(np.asarray(score), axis, -1), axis=-1)
    n_pos = positive.sum(-1)
    n_neg = positive.shape[-1] - n_pos
    u = (ranks * positive).sum(-1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _batch(n_images: int) -> int:
    return max(1, _BATCH_ELEMENTS // max(n_images, 1))


def _percentile_ci(boots: np.ndarray) -> list[float]:
    """95% percentile interval of a bootstrap distribution (linear interpolation, as scipy's percentile method)."""
    return [float(q) for q in np.percentile(boots, [2.5, 97.5])]


def paired_bootstrap_auc(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, *, n: int = 2000,
                         seed: int = 0) -> dict[str, Any]:
    """AUC(a) - AUC(b) on the same samples: point estimate, percentile 95% CI, two-sided bootstrap p-value.

    ``y``: (N,) binary labels (the larger one is positive, as in ``roc_auc_score``); ``score_a``,
    ``score_b``: (N,) scores of the positive class. Resampling images (not models) keeps the pairing;
    resamples holding one class only have no AUC: the statistic is NaN there, and the interval and the
    p-value are taken over the remaining resamples, whose count the ``test`` entry reports.
    """
    y, score_a, score_b = np.asarray(y), np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)
    classes = np.unique(y)
    if len(classes) != 2:
        raise ValueError(f"paired AUC needs exactly two classes in y, got {classes.tolist()}")
    if not (y.shape == score_a.shape == score_b.shape):
        raise ValueError(f"paired samples differ in shape: y {y.shape}, a {score_a.shape}, b {score_b.shape}")
    positive = y == classes[1]
    auc_a, auc_b = roc_auc_score(positive, score_a), roc_auc_score(positive, score_b)

    def auc_difference(pos: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return rank_auc(pos, a, axis) - rank_auc(pos, b, axis)

    with warnings.catch_warnings():
        # scipy's own interval is NaN (and it warns) as soon as one resample is one-class; ours skips those
        warnings.simplefilter("ignore", st.DegenerateDataWarning)
        res = st.bootstrap((positive, score_a, score_b), auc_difference, n_resamples=n, paired=True,
                           vectorized=True, method="percentile", batch=_batch(len(y)), rng=np.random.default_rng(seed))
    d = res.bootstrap_distribution[~np.isnan(res.bootstrap_distribution)]
    if len(d) == 0:
        ci, p = [float("nan"), float("nan")], float("nan")
    else:
        ci, p = _percentile_ci(d), percentile_interval_p(d)
    return {"metric": "roc_auc", "difference": float(auc_a - auc_b), "baseline": float(auc_b),
            "ci95": ci, "p_value": p, "test": f"paired bootstrap ({len(d)} resamples)"}


def percentile_interval_p(boots: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the difference is 0": the smallest level whose percentile interval excludes 0.

    It inverts the percentile interval (twice the share of resampled differences on the far side of 0), so the
    p-value and the interval always agree. Counted as (1 + k) / (1 + n), the observed sample being one of the
    possible resamples (Davison & Hinkley 1997, eq. 4.11), so it is never 0 however many resamples fall on one side.
    """
    n = len(boots)
    k = min(int((boots <= 0).sum()), int((boots >= 0).sum()))
    return float(min(1.0, 2 * (1 + k) / (1 + n)))


def paired_errors(a: np.ndarray, b: np.ndarray, *, metric: str, n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per-sample errors of two models on the same images: mean difference (a - b), bootstrap CI, Wilcoxon p.

    ``a``, ``b``: (N,) errors, N >= 2 (a bootstrap of one image says nothing).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}")
    # an image without a value for either model (e.g. nothing to score in it) is left out of the pair, and counted
    keep = np.isfinite(a) & np.isfinite(b)
    dropped = int((~keep).sum())
    a, b = a[keep], b[keep]
    if a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired errors need two or more images with values in a 1-D array, got {len(a)}")
    d = a - b

    def mean_difference(x: np.ndarray, z: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(x - z, axis=axis)

    with warnings.catch_warnings():
        # a constant difference (e.g. b = a + 1) gives a degenerate distribution: its interval is the point
        warnings.simplefilter("ignore", st.DegenerateDataWarning)
        res = st.bootstrap((a, b), mean_difference, n_resamples=n, paired=True, vectorized=True,
                           method="percentile", batch=_batch(len(a)), rng=np.random.default_rng(seed))
    ci = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    # the normal approximation of a large consistent sample can underflow to 0.0; the smallest positive double
    # keeps "never exactly 0" true (reports print it as < 1e-4)
    p = max(float(st.wilcoxon(a, b).pvalue), _TINY_P) if np.any(d != 0) else 1.0
    return {"metric": metric, "difference": float(d.mean()), "baseline": float(b.mean()), "ci95": ci, "p_value": p,
            "test": "Wilcoxon signed-rank (per image)" + (f"; {dropped} image(s) without a value left out" if dropped else "")}


def seed_aggregate(values: list[float]) -> dict[str, float]:
    """Mean, sample std and count over seeds."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "n": int(len(v))}
