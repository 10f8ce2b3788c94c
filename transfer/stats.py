"""Statistics for comparing runs: paired tests on the same test images, and seed aggregates."""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats as st
from sklearn.metrics import roc_auc_score


def paired_bootstrap_auc(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, *, n: int = 2000,
                         seed: int = 0) -> dict[str, Any]:
    """AUC(a) - AUC(b) on the same samples: point estimate, percentile 95% CI, two-sided bootstrap p-value.

    Resampling images (not models) keeps the pairing; resamples holding one
    class only are skipped.
    """
    y = np.asarray(y)
    diff = roc_auc_score(y, score_a) - roc_auc_score(y, score_b)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) < 2:
            continue
        diffs.append(roc_auc_score(y[i], score_a[i]) - roc_auc_score(y[i], score_b[i]))
    d = np.asarray(diffs)
    # two-sided p: how often the bootstrap distribution, centred on 0, is as extreme as the observed difference
    p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean()))) if len(d) else float("nan")
    return {"metric": "roc_auc", "difference": float(diff), "ci95": [float(np.percentile(d, 2.5)),
            float(np.percentile(d, 97.5))], "p_value": p, "test": f"paired bootstrap ({len(d)} resamples)"}


def paired_errors(a: np.ndarray, b: np.ndarray, *, metric: str, n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per-sample errors of two models on the same images: mean difference (a - b), bootstrap CI, Wilcoxon p."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    p = float(st.wilcoxon(a, b).pvalue) if np.any(d != 0) else 1.0
    return {"metric": metric, "difference": float(d.mean()), "ci95": [float(np.percentile(boots, 2.5)),
            float(np.percentile(boots, 97.5))], "p_value": p, "test": "Wilcoxon signed-rank (per image)"}


def seed_aggregate(values: list[float]) -> dict[str, float]:
    """Mean, sample std and count over seeds."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "n": int(len(v))}
