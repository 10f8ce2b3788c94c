"""Classification metrics: the seed's table (accuracy, precision, recall, F1, G-mean), ROC AUC with a bootstrap CI.

Everything is computed by scikit-learn except specificity and G-mean, which
sklearn does not provide and which are read off the confusion matrix. The
returned dict holds plain Python numbers and lists so it can be written to JSON
as is; a metric that is undefined (e.g. ROC AUC with one class present) is
``nan``.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats as st
from sklearn import metrics as skm

from transfer.stats import rank_auc


def _check_inputs(y_true: np.ndarray, prob: np.ndarray, positive: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate labels (N,) and probabilities (N, K); return them as arrays and K."""
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D (N,), got shape {y.shape}")
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"prob must be (N, K) with N={y.shape[0]}, got shape {p.shape}")
    k = p.shape[1]
    if k < 2:
        raise ValueError(f"prob needs K >= 2 class columns, got {k}")
    if y.shape[0] == 0:
        raise ValueError("no samples")
    if not np.all(np.isfinite(p)):
        raise ValueError("prob contains non-finite values")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true values must be class indices in [0, {k}), got range [{y.min()}, {y.max()}]")
    if not 0 <= positive < k:
        raise ValueError(f"positive={positive} is not a class index in [0, {k})")
    return y, p, k


def _roc_auc(y: np.ndarray, p: np.ndarray, positive: int) -> float:
    """Binary: AUC of prob[:, positive]; multi-class: one-vs-rest macro AUC. ``nan`` when undefined."""
    k = p.shape[1]
    if len(np.unique(y)) < 2:
        return math.nan
    try:
        if k == 2:
            return float(skm.roc_auc_score(y == positive, p[:, positive]))
        return float(skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=np.arange(k)))
    except ValueError:  # e.g. a class absent from y_true in the multi-class case
        return math.nan


def _specificities(cm: np.ndarray) -> np.ndarray:
    """Per-class specificity TN / (TN + FP) from a (K, K) confusion matrix (rows true, columns predicted)."""
    total = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = total - tp - fp - fn
    return np.where(tn + fp > 0, tn / np.maximum(tn + fp, 1), np.nan)


def _recalls(cm: np.ndarray) -> np.ndarray:
    """Per-class recall TP / (TP + FN); ``nan`` for a class with no true samples."""
    support = cm.sum(axis=1)
    return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def classification_metrics(
    y_true: np.ndarray,
    prob: np.ndarray,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    positive: int = 1,
) -> dict[str, Any]:
    """Metrics of predicted class probabilities.

    Args:
        y_true: (N,) integer class indices in [0, K).
        prob: (N, K) class probabilities (rows sum to 1 for K > 2: sklearn's
            multi-class AUC requires it); the prediction is the argmax.
        bootstrap: number of percentile-bootstrap resamples for the AUC's 95% CI
            (0 disables it: the CI is ``[nan, nan]``). Resamples in which a class
            of the full sample is missing have no AUC and are skipped.
        seed: seed of the bootstrap's own generator (no global state touched).
        positive: the positive class for binary (K == 2) precision, recall,
            specificity and AUC; ignored for K > 2.

    Returns:
        ``accuracy, balanced_accuracy, precision, recall, specificity, f1,
        g_mean, roc_auc, roc_auc_ci95 ([lo, hi]), confusion_matrix (K x K list,
        rows true, columns predicted), n``. For K > 2 precision, recall, F1 and
        specificity are macro averages over classes, and G-mean is the geometric
        mean of the per-class recalls.
    """
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    y, p, k = _check_inputs(y_true, prob, positive)
    labels = np.arange(k)
    pred = p.argmax(axis=1)
    cm = skm.confusion_matrix(y, pred, labels=labels)
    avg: dict[str, Any] = {"average": "binary", "pos_label": positive} if k == 2 else {"average": "macro"}
    spec, g_mean = _specificity_and_g_mean(cm, positive)
    auc = _roc_auc(y, p, positive)
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, labels=labels, zero_division=0, **avg)),
        "recall": float(skm.recall_score(y, pred, labels=labels, zero_division=0, **avg)),
        "specificity": spec,
        "f1": float(skm.f1_score(y, pred, labels=labels, zero_division=0, **avg)),
        "g_mean": g_mean,
        "roc_auc": auc,
        "roc_auc_ci95": _auc_ci(y, p, positive, bootstrap, seed) if bootstrap and not math.isnan(auc) else
        [math.nan, math.nan],
        "confusion_matrix": cm.tolist(),
        "n": int(len(y)),
    }


def _specificity_and_g_mean(cm: np.ndarray, positive: int) -> tuple[float, float]:
    """Binary: of the positive class. K > 2: mean specificity, geometric mean of the recalls of present classes."""
    if len(cm) == 2:
        spec = float(_specificities(cm)[positive])
        sens = float(_recalls(cm)[positive])
        return spec, math.sqrt(sens * spec) if not (math.isnan(sens) or math.isnan(spec)) else math.nan
    specs = _specificities(cm)
    spec = float(np.nanmean(specs)) if np.any(~np.isnan(specs)) else math.nan
    rec = _recalls(cm)
    rec = rec[~np.isnan(rec)]  # classes absent from y_true have no recall
    return spec, float(np.prod(rec) ** (1.0 / len(rec))) if len(rec) else math.nan


def _auc_ci(y: np.ndarray, p: np.ndarray, positive: int, n_resamples: int, seed: int) -> list[float]:
    """Percentile 95% CI of the AUC over image resamples (``scipy.stats.bootstrap``).

    Resamples that miss a class of the full sample have no AUC: the statistic is NaN there and the
    interval is taken over the others (scipy's own interval would be NaN as soon as one is).
    """
    n_classes = len(np.unique(y))

    def auc_of(idx: np.ndarray) -> float:
        idx = idx.astype(np.int64)
        return _roc_auc(y[idx], p[idx], positive) if len(np.unique(y[idx])) == n_classes else math.nan

    def binary_auc_of(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        # all resamples at once: the rank (Mann-Whitney) AUC equals roc_auc_score and is NaN for one-class resamples;
        # one sklearn call per resample took 9 s of a 20 s quickstart run for 1000 resamples
        idx = np.moveaxis(idx, axis, -1).astype(np.int64)
        return rank_auc(y[idx] == positive, p[idx, positive])

    binary = p.shape[1] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", st.DegenerateDataWarning)
        res = st.bootstrap((np.arange(len(y)),), binary_auc_of if binary else auc_of, n_resamples=n_resamples,
                           vectorized=binary, method="percentile", rng=np.random.default_rng(seed))
    aucs = res.bootstrap_distribution[~np.isnan(res.bootstrap_distribution)]
    return [float(q) for q in np.percentile(aucs, [2.5, 97.5])] if len(aucs) else [math.nan, math.nan]


def roc_curve_points(
    y_true: np.ndarray, prob: np.ndarray, positive: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of class ``positive`` against the rest: (fpr, tpr, thresholds), each (M,), from sklearn."""
    y, p, _ = _check_inputs(y_true, prob, positive)
    fpr, tpr, thr = skm.roc_curve(y == positive, p[:, positive])
    return fpr, tpr, thr


def _new_figure(figsize: tuple[float, float]) -> Figure:
    # an Agg canvas on a bare Figure: no pyplot global state, no GUI backend
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    return out


def plot_roc(
    y_true: np.ndarray,
    prob: np.ndarray,
    path: str | Path,
    *,
    positive: int = 1,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write the ROC curve (binary: class ``positive``; K > 2: one curve per class, one-vs-rest) to ``path``."""
    y, p, k = _check_inputs(y_true, prob, positive)
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names for {k} classes")
    fig = _new_figure((4.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for c in ([positive] if k == 2 else range(k)):
        if len(np.unique(y == c)) < 2:
            continue  # no ROC without both positives and negatives
        fpr, tpr, _ = skm.roc_curve(y == c, p[:, c])
        ax.plot(fpr, tpr, lw=1.5, label=f"{names[c]} (AUC {skm.auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)",
           title=title or "ROC", aspect="equal")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_confusion(cm: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path,
                   *, title: str | None = None) -> Path:
    """Write a (K, K) confusion matrix (rows true, columns predicted) as an annotated image to ``path``."""
    m = np.asarray(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"cm must be square (K, K), got shape {m.shape}")
    if len(class_names) != m.shape[0]:
        raise ValueError(f"class_names has {len(class_names)} names for a {m.shape[0]}-class matrix")
    k = m.shape[0]
    fig = _new_figure((1.2 * k + 2.0, 1.2 * k + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    row = m.sum(axis=1, keepdims=True)
    share = np.divide(m, row, out=np.zeros(m.shape, dtype=float), where=row > 0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{m[i, j]}\n{100 * share[i, j]:.1f}%", ha="center", va="center", fontsize=8,
                    color="white" if m[i, j] > 0.5 * m.max() else "black")
    ax.set(xticks=range(k), yticks=range(k), xticklabels=list(class_names), yticklabels=list(class_names),
           xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    return _save(fig, path)
