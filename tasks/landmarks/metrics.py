"""Landmark metrics of the ISBI 2015 cephalometric challenge: radial error (mm), its SD, and the SDR.

Conventions:
- Points are (x, y) in original-image pixels, origin top-left.
- The radial error of a landmark is the Euclidean distance between prediction
  and annotation in millimetres, with the pixel spacing given per dataset, per
  image, or per image and axis.
- ``sd_mm`` is the standard deviation of all N x L radial errors with
  ``ddof=1`` by default (the sample SD, sqrt(sum (R_i - MRE)^2 / (N - 1)) as the
  challenge papers write it); at ISBI sizes (150 x 19 errors) ddof 0 or 1 differ
  by 0.02%.
- SDR at radius r is inclusive: a landmark counts as detected when its radial
  error is <= r (the challenge's "no greater than r mm"). Reported in percent.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: ISBI 2015 landmark names, in the CSV's order (landmark 1 is sella).
ISBI2015_LANDMARKS: tuple[str, ...] = (
    "sella", "nasion", "orbitale", "porion", "subspinale", "supramentale", "pogonion", "menton", "gnathion",
    "gonion", "lower incisal incision", "upper incisal incision", "upper lip", "lower lip", "subnasale",
    "soft tissue pogonion", "posterior nasal spine", "anterior nasal spine", "articulare",
)
DEFAULT_RADII_MM: tuple[float, ...] = (2.0, 2.5, 3.0, 4.0)
#: radii of the gross-failure shares: the percentage of landmark errors strictly above 4 mm (clinically unusable)
#: and above 10 mm (the peak on a wrong structure)
GROSS_RADII_MM: tuple[float, ...] = (4.0, 10.0)


def _check_points(
    pred_px: np.ndarray, true_px: np.ndarray, visible: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = np.asarray(pred_px, dtype=np.float64)
    true = np.asarray(true_px, dtype=np.float64)
    if pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred_px must be (N, L, 2), got shape {pred.shape}")
    if true.shape != pred.shape:
        raise ValueError(f"true_px shape {true.shape} differs from pred_px shape {pred.shape}")
    vis = np.ones(pred.shape[:2], bool) if visible is None else np.asarray(visible, dtype=bool)
    if vis.shape != pred.shape[:2]:
        raise ValueError(f"visible must be (N, L) = {pred.shape[:2]}, got shape {vis.shape}")
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(true[vis]))):
        raise ValueError("landmark coordinates contain non-finite values")
    return pred, true, vis


def _spacing_array(spacing_mm: float | np.ndarray, n: int) -> np.ndarray:
    """Spacing broadcastable to (N, L, 2): scalar, (N,) per image, or (N, 2) per image and (x, y) axis."""
    s = np.asarray(spacing_mm, dtype=np.float64)
    if s.ndim == 0:
        out = s.reshape(1, 1, 1)
    elif s.ndim == 1 and s.shape[0] == n:
        out = s.reshape(n, 1, 1)
    elif s.ndim == 2 and s.shape == (n, 2):
        out = s.reshape(n, 1, 2)
    else:
        raise ValueError(f"spacing_mm must be a scalar, (N,) or (N, 2) with N={n}, got shape {s.shape}")
    if not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise ValueError("spacing_mm must be positive and finite")
    return out


def radial_errors_mm(
    pred_px: np.ndarray, true_px: np.ndarray, spacing_mm: float | np.ndarray, visible: np.ndarray | None = None
) -> np.ndarray:
    """Radial errors (N, L) in mm of predicted vs annotated points (N, L, 2) in original-image pixels (x, y).

    ``spacing_mm``: mm per pixel, a scalar, (N,) per image, or (N, 2) per image as (x, y) spacing.
    ``visible``: optional (N, L) bool; a masked landmark (not annotated) has error NaN, and its ``true_px`` is
    not read.
    """
    pred, true, vis = _check_points(pred_px, true_px, visible)
    d = (pred - np.where(vis[..., None], true, pred)) * _spacing_array(spacing_mm, pred.shape[0])
    return np.where(vis, np.sqrt(np.sum(d * d, axis=-1)), np.nan)


def _sd(x: np.ndarray, ddof: int) -> float:
    return float(np.std(x, ddof=ddof)) if x.size > ddof else float("nan")


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")  # a landmark masked on every image has no error


def _sdr(errors: np.ndarray, radii: Sequence[float]) -> dict[str, float]:
    # inclusive: error <= r counts as a successful detection
    return {str(float(r)): 100.0 * _mean(errors <= r) for r in radii}


def _over(errors: np.ndarray) -> dict[str, float]:
    # strictly above r: the complement of the SDR at the same radius
    return {str(float(r)): 100.0 * _mean(errors > r) for r in GROSS_RADII_MM}


def landmark_metrics(
    pred_px: np.ndarray,
    true_px: np.ndarray,
    spacing_mm: float | np.ndarray,
    radii: Sequence[float] = DEFAULT_RADII_MM,
    names: Sequence[str] | None = None,
    *,
    ddof: int = 1,
    visible: np.ndarray | None = None,
) -> dict[str, Any]:
    """MRE, SD and SDR over all landmarks, and per landmark.

    Args:
        pred_px, true_px: (N, L, 2) points (x, y) in original-image pixels.
        spacing_mm: see :func:`radial_errors_mm`.
        radii: SDR radii in mm (inclusive: error <= r).
        names: L landmark names (default ``"L1".."LL"``; pass ``ISBI2015_LANDMARKS`` for the challenge).
        ddof: delta degrees of freedom of every SD (1: sample SD).
        visible: optional (N, L) bool; masked landmarks count in no statistic (``n_masked`` says how many).

    Returns:
        ``{"mre_mm", "sd_mm", "sdr": {"2.0": pct, ...}, "over": {"4.0": pct, "10.0": pct}, "n_images",
        "n_landmarks", "per_landmark": [{"index" (1-based), "name", "mean_mm", "sd_mm", "sdr": {...},
        "over": {...}}, ...]}``; ``over``: the percentage of errors above each of ``GROSS_RADII_MM``;
        plain Python numbers, ready for JSON.
    """
    return error_metrics(radial_errors_mm(pred_px, true_px, spacing_mm, visible), radii, names, ddof=ddof)


def error_metrics(
    err: np.ndarray, radii: Sequence[float] = DEFAULT_RADII_MM, names: Sequence[str] | None = None, *, ddof: int = 1
) -> dict[str, Any]:
    """:func:`landmark_metrics` from the radial errors (N, L) in mm themselves (NaN: masked), e.g. the errors of
    several runs' predictions on disjoint images pooled (cross-validation folds)."""
    if len(radii) == 0 or any(not np.isfinite(r) or r <= 0 for r in radii):
        raise ValueError(f"radii must be positive finite numbers, got {list(radii)}")
    if ddof < 0:
        raise ValueError(f"ddof must be >= 0, got {ddof}")
    err = np.asarray(err, dtype=np.float64)
    n, n_lm = err.shape
    vis = np.isfinite(err)
    if n == 0 or n_lm == 0 or not vis.any():
        raise ValueError(f"no landmarks to evaluate (shape {err.shape}, {int(vis.sum())} not masked)")
    if names is None:
        names = [f"L{i + 1}" for i in range(n_lm)]
    if len(names) != n_lm:
        raise ValueError(f"{len(names)} names for {n_lm} landmarks")
    per = [
        {"index": j + 1, "name": str(names[j]), "mean_mm": _mean(e), "sd_mm": _sd(e, ddof), "sdr": _sdr(e, radii),
         "over": _over(e)}
        for j, e in ((j, err[vis[:, j], j]) for j in range(n_lm))
    ]
    counted = err[vis]
    return {
        "mre_mm": float(counted.mean()),
        "sd_mm": _sd(counted, ddof),
        "sdr": _sdr(counted, radii),
        "over": _over(counted),
        "n_images": int(n),
        "n_landmarks": int(n_lm),
        "n_masked": int((~vis).sum()),
        "per_landmark": per,
    }


def per_landmark_table(metrics: dict[str, Any], *, include_sdr: bool = False,
                       include_over: bool = False) -> pd.DataFrame:
    """Per-landmark table (the dental seed's Table I): columns ``landmark, mean, sd`` in mm, index 1..L.

    ``include_sdr`` appends one ``sdr_<r>`` column (percent) per radius, ``include_over`` one ``over_<r>`` column
    per gross-failure radius (percent of errors above it; none for metrics computed before it existed).
    """
    rows = []
    for entry in metrics["per_landmark"]:
        row = {"landmark": entry["name"], "mean": entry["mean_mm"], "sd": entry["sd_mm"]}
        if include_sdr:
            row.update({f"sdr_{r}": v for r, v in entry["sdr"].items()})
        if include_over:
            row.update({f"over_{r}": v for r, v in (entry.get("over") or {}).items()})
        rows.append(row)
    index = pd.Index([e["index"] for e in metrics["per_landmark"]], name="index")
    return pd.DataFrame(rows, index=index)


def plot_landmark_overlay(
    image: np.ndarray,
    pred_px: np.ndarray,
    true_px: np.ndarray,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Draw annotated (green circles) and predicted (red crosses) points (L, 2) on a (H, W) image; write ``path``.

    A yellow line joins each prediction to its annotation; landmarks are numbered 1..L.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        pass  # RGB(A) is shown as is
    elif img.ndim != 2:
        raise ValueError(f"image must be (H, W) (or (H, W, 3)), got shape {img.shape}")
    pred = np.asarray(pred_px, dtype=np.float64)
    true = np.asarray(true_px, dtype=np.float64)
    if pred.ndim != 2 or pred.shape[-1] != 2 or true.shape != pred.shape:
        raise ValueError(f"pred_px and true_px must both be (L, 2), got {pred.shape} and {true.shape}")
    h, w = img.shape[:2]
    scale = 6.0 / max(h, w)
    fig = Figure(figsize=(max(w * scale, 1.0), max(h * scale, 1.0)), dpi=150)
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="bilinear")
    for (px, py), (tx, ty) in zip(pred, true):
        ax.plot([px, tx], [py, ty], c="yellow", lw=0.8)
    ax.scatter(true[:, 0], true[:, 1], s=40, facecolors="none", edgecolors="lime", linewidths=1.2,
               label="annotated")
    ax.scatter(pred[:, 0], pred[:, 1], s=40, marker="x", c="red", linewidths=1.2, label="predicted")
    for j, (tx, ty) in enumerate(true):
        ax.annotate(str(j + 1), (tx, ty), xytext=(4, 4), textcoords="offset points", color="lime", fontsize=6)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis("off")
    ax.legend(loc="lower right", fontsize=7, framealpha=0.6)
    if title:
        ax.text(0.01, 0.99, title, transform=ax.transAxes, va="top", ha="left", color="white", fontsize=8,
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 2})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
