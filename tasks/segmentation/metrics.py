"""Segmentation metrics inside a field of view: overlap, pixel ROC AUC, boundary distances; overlay plots.

Overlap counts come straight from the confusion of two boolean masks (a few
lines; sklearn's ``f1_score`` / ``jaccard_score`` give the same numbers and are
the reference in the tests, but are 20x slower on 300k-pixel images). Boundary
distances use scipy's exact Euclidean distance transform, as MONAI and
torchmetrics do; torchmetrics' ``hausdorff_distance`` has no percentile and no
ASSD, so the surface distances are computed here (reference in the tests).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score


def overlap_metrics(pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """Dice, IoU, sensitivity, specificity of boolean masks (same shape), counted inside ``valid``.

    Both masks empty: Dice = IoU = 1 (perfect agreement); sensitivity is NaN without
    positives, specificity NaN without negatives.
    """
    p, t = pred.astype(bool), true.astype(bool)
    if valid is not None:
        v = valid.astype(bool)
        p, t = p[v], t[v]
    tp = float(np.count_nonzero(p & t))
    fp = float(np.count_nonzero(p & ~t))
    fn = float(np.count_nonzero(~p & t))
    tn = float(p.size - tp - fp - fn)
    both = tp + fp + fn
    return {
        "dice": 2 * tp / (2 * tp + fp + fn) if both else 1.0,
        "iou": tp / both if both else 1.0,
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
    }


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels: in the mask, with a 4-neighbour outside it (the image border counts as outside)."""
    if not mask.any():
        return mask
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0)
    return mask & ~eroded


def surface_distances(pred: np.ndarray, true: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (in ``spacing`` units, (row, col)) from each boundary pixel of one mask to the other's boundary.

    Returns (pred -> true distances, true -> pred distances); empty arrays when a mask is empty.
    """
    sp, st = _surface(pred.astype(bool)), _surface(true.astype(bool))
    if not sp.any() or not st.any():
        return np.zeros(0), np.zeros(0)
    dt_true = ndimage.distance_transform_edt(~st, sampling=spacing)
    dt_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return dt_true[sp], dt_pred[st]


def boundary_metrics(pred: np.ndarray, true: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)
                     ) -> dict[str, float]:
    """95th-percentile Hausdorff distance and average symmetric surface distance.

    HD95 = max of the two directed 95th percentiles (MONAI's convention);
    ASSD = mean of all boundary-to-boundary distances of both directions.
    Both masks empty: 0; exactly one empty: NaN (undefined, reported, not hidden).
    """
    p, t = pred.astype(bool), true.astype(bool)
    if not p.any() and not t.any():
        return {"hd95": 0.0, "assd": 0.0}
    if not p.any() or not t.any():
        return {"hd95": float("nan"), "assd": float("nan")}
    a, b = surface_distances(p, t, spacing)
    hd95 = max(float(np.percentile(a, 95)), float(np.percentile(b, 95)))
    assd = float((a.sum() + b.sum()) / (len(a) + len(b)))
    return {"hd95": hd95, "assd": assd}


def image_metrics(pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None, num_classes: int,
                  prob: np.ndarray | None = None, spacing_mm: float | None = None) -> dict[str, float]:
    """Per-image metrics of class-index maps (H, W), inside ``valid``; foreground classes averaged.

    ``prob``: (K, H, W) probabilities, for the pixel ROC AUC (binary: vessel
    probability; multi-class: one-vs-rest mean over foreground classes present).
    Keys: dice, iou, sensitivity, specificity, auc, hd95_px, assd_px (+ _mm
    when ``spacing_mm``), and ``<metric>_<class index>`` per foreground class
    when there are several.
    """
    v = np.ones(true.shape, bool) if valid is None else valid.astype(bool)
    per: dict[str, list[float]] = {}
    out: dict[str, float] = {}
    for c in range(1, num_classes):
        m = overlap_metrics(pred == c, true == c, v)
        m.update({f"{k}_px": x for k, x in boundary_metrics((pred == c) & v, (true == c) & v).items()})
        if spacing_mm:
            m.update({f"{k}_mm": x for k, x in boundary_metrics((pred == c) & v, (true == c) & v,
                                                                 (spacing_mm, spacing_mm)).items()})
        if prob is not None:
            y = (true == c)[v]
            m["auc"] = float(roc_auc_score(y, prob[c][v])) if 0 < y.sum() < y.size else float("nan")
        for k, x in m.items():
            per.setdefault(k, []).append(x)
            if num_classes > 2:
                out[f"{k}_{c}"] = x
    with np.errstate(all="ignore"):
        for k, xs in per.items():
            arr = np.asarray(xs, float)
            out[k] = float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")
    return out


def pooled_auc(probs: list[np.ndarray], trues: list[np.ndarray], valids: list[np.ndarray]) -> float:
    """Binary pixel ROC AUC over every valid pixel of every image pooled (the DRIVE convention)."""
    y = np.concatenate([t[v] for t, v in zip(trues, valids)]) > 0
    s = np.concatenate([p[v] for p, v in zip(probs, valids)])
    return float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else float("nan")


def overlay(image: np.ndarray, pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 overlay: true positives white, false positives red, false negatives green (foreground = > 0)."""
    g = image if image.ndim == 2 else image.mean(0) if image.shape[0] in (1, 3) else image.mean(-1)
    base = (np.clip(g, 0, 1) * 0.6 * 255).astype(np.uint8)
    rgb = np.repeat(base[..., None], 3, axis=-1)
    p, t = pred > 0, true > 0
    if valid is not None:
        p, t = p & valid, t & valid
    rgb[p & t] = (255, 255, 255)
    rgb[p & ~t] = (230, 40, 40)
    rgb[~p & t] = (40, 210, 60)
    return rgb


def plot_overlay(image: np.ndarray, pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None, path: Path,
                 title: str) -> Path:
    """Save the image beside its overlay (TP white, FP red, FN green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    img = image.transpose(1, 2, 0) if image.ndim == 3 and image.shape[0] == 3 else image.squeeze()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    axes[0].imshow(np.clip(img, 0, 1), cmap="gray")
    axes[0].set_title("image")
    axes[1].imshow(overlay(image.squeeze() if image.shape[0] == 1 else image, pred, true, valid))
    axes[1].set_title(title)
    axes[1].legend(handles=[Patch(color="white", label="true positive"), Patch(color=(0.9, 0.16, 0.16), label="false positive"),
                            Patch(color=(0.16, 0.82, 0.24), label="false negative")], loc="lower right", fontsize=8,
                   facecolor="gray")
    for a in axes:
        a.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def dataset_means(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Mean over images of each per-image metric (NaNs left out, their count reported)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out: dict[str, Any] = {}
    for k in keys:
        arr = np.asarray([r.get(k, np.nan) for r in rows], float)
        out[k] = float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")
        nan = int((~np.isfinite(arr)).sum())
        if nan:
            out.setdefault("undefined_counts", {})[k] = nan
    return out
