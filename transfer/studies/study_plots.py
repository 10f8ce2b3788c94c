"""Study plots read from run directories: convergence against optimiser steps, and ROC curves with intervals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from transfer.tracking import read_metrics

#: the common false-positive-rate grid ROC curves are averaged on
FPR_GRID = np.linspace(0.0, 1.0, 101)


def interval_yerr(g: pd.DataFrame, metric: str) -> np.ndarray:
    """Asymmetric error bars from the t-interval (``_lo``/``_hi``), or the SD where there is no interval (one seed:
    zero)."""
    mean = g[f"{metric}_mean"].to_numpy(dtype=float)
    if f"{metric}_lo" in g and g[f"{metric}_lo"].notna().any():
        lo = g[f"{metric}_lo"].to_numpy(dtype=float)
        hi = g[f"{metric}_hi"].to_numpy(dtype=float)
        return np.nan_to_num(np.vstack([mean - lo, hi - mean]))
    sd = np.nan_to_num(g[f"{metric}_std"].to_numpy(dtype=float))
    return np.vstack([sd, sd])


def plot_convergence(runs_dir: Path, df: pd.DataFrame, monitor: str, path: Path) -> Path:
    """Validation ``monitor`` against optimiser steps (the seed's "AUC vs mini-batches"): the mean over seeds per
    (init, depth, label fraction), on each run's cumulative step count from ``metrics.jsonl``."""
    fig = Figure(figsize=(7.2, 4.2))
    ax = fig.add_subplot()
    for (init, depth, frac), g in df.groupby(["init", "depth", "label_fraction"], sort=False):
        curves = [c for c in (_curve(runs_dir / r, monitor) for r in g["run"]) if c is not None]
        if not curves:
            continue
        n = min(len(c) for c in curves)  # early stopping ends seeds at different epochs: the common part
        steps = np.mean([c[:n, 0] for c in curves], axis=0)
        ax.plot(steps, np.mean([c[:n, 1] for c in curves], axis=0), marker=".", lw=1.2,
                label=f"{init}, {depth}, {frac:.0%}")
    ax.set_xlabel("optimiser steps")
    ax.set_ylabel(f"validation {monitor} (mean over seeds)")
    log_scale_if_wide(ax)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def log_scale_if_wide(ax) -> None:  # noqa: ANN001 (matplotlib Axes)
    """A log y-axis when the plotted values are positive and span more than a factor of 10 (errors that fall from
    tens of mm to about one: on a linear axis the first epochs hide every difference that matters)."""
    ys = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()] or [np.array([])])
    ys = ys[np.isfinite(ys)]
    if len(ys) and ys.min() > 0 and ys.max() > 10 * ys.min():
        ax.set_yscale("log")


def _curve(run_dir: Path, monitor: str) -> np.ndarray | None:
    """(epochs, 2): cumulative steps and validation ``monitor`` per epoch."""
    rows = read_metrics(run_dir)
    pts = [(r.get("steps", 0), r.get(f"val_{monitor}")) for r in rows]
    if not pts or all(v is None for _, v in pts):
        return None
    steps = np.cumsum([s or 0 for s, _ in pts])
    return np.column_stack([steps, [np.nan if v is None else v for _, v in pts]]).astype(float)


def roc_curves(runs_dir: Path, runs: list[str]) -> np.ndarray | None:
    """(runs, len(FPR_GRID)) TPR of each run's test ROC on a common FPR grid (binary predictions only)."""
    from sklearn.metrics import roc_curve

    out = []
    for r in runs:
        f = runs_dir / r / "predictions_test.csv"
        if not f.is_file():
            continue
        p = pd.read_csv(f)
        probs = [c for c in p.columns if c.startswith("prob_")]
        if len(probs) != 2 or "label" not in p:
            return None
        y = (p["label"].astype(str) == probs[1][len("prob_"):]).to_numpy()
        fpr, tpr, _ = roc_curve(y, p[probs[1]])
        out.append(np.interp(FPR_GRID, fpr, tpr))
    return np.array(out) if out else None


def plot_roc_intervals(runs_dir: Path, df: pd.DataFrame, path: Path) -> Path | None:
    """Test ROC per (init, depth) at the largest label fraction: mean TPR over seeds with a 95% band (the
    pointwise t-interval over seeds; with one seed, the curve alone). None for a task without binary
    predictions."""
    from scipy import stats

    frac = df["label_fraction"].max()
    fig = Figure(figsize=(5.6, 5.0))
    ax = fig.add_subplot()
    drawn = False
    for (init, depth), g in df[df["label_fraction"] == frac].groupby(["init", "depth"], sort=False):
        tpr = roc_curves(runs_dir, list(g["run"]))
        if tpr is None:
            continue
        mean = tpr.mean(0)
        line = ax.plot(FPR_GRID, mean, lw=1.4, label=f"{init}, {depth} ({len(tpr)} seed{'s' * (len(tpr) > 1)})")[0]
        if len(tpr) > 1:
            half = stats.t.ppf(0.975, len(tpr) - 1) * tpr.std(0, ddof=1) / np.sqrt(len(tpr))
            ax.fill_between(FPR_GRID, np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1),
                            color=line.get_color(), alpha=0.15)
        drawn = True
    if not drawn:
        return None
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"test ROC at {frac:.0%} of the labels (band: 95% over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
