"""Study plots read from run directories and the aggregate table: one panel per value of a factor, the mean over
seeds with its bounded interval (a band or error bars), one legend outside the data."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from transfer.studies.seed_stats import seed_interval
from transfer.tracking import read_metrics

#: the common false-positive-rate grid ROC curves are averaged on
FPR_GRID = np.linspace(0.0, 1.0, 101)


def interval_yerr(g: pd.DataFrame, metric: str) -> np.ndarray:
    """Asymmetric error bars from the bounded interval (``_lo``/``_hi``); none (zero) where a cell has no interval
    (fewer than three seeds): an SD bar would suggest an interval the report does not give."""
    mean = g[f"{metric}_mean"].to_numpy(dtype=float)
    if f"{metric}_lo" not in g:
        return np.zeros((2, len(g)))
    lo = g[f"{metric}_lo"].to_numpy(dtype=float)
    hi = g[f"{metric}_hi"].to_numpy(dtype=float)
    return np.nan_to_num(np.vstack([mean - lo, hi - mean]))


def facet_figure(panels: list[Any], title: Callable[[Any], str], width: float = 3.6,
                 height: float = 3.0) -> tuple[Figure, dict[Any, Any]]:
    """One axes per panel key, side by side (wrapping after three), sharing the y-axis so panels compare at a
    glance; room on the right for a legend outside the data."""
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(width * cols + 1.8, height * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    out = {}
    for k, ax in zip(panels, axes.flat):
        ax.set_title(title(k), fontsize=9)
        ax.grid(alpha=0.3)
        out[k] = ax
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return fig, out


def save_with_outside_legend(fig: Figure, axes: list[Any], path: Path) -> Path:
    """One legend for the figure, right of the panels (it never covers a line), deduplicated by label."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.tight_layout(rect=(0, 0, 1 - min(0.45, 1.9 / fig.get_figwidth()), 1))
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center right", fontsize=8, frameon=False)
    fig.savefig(path, dpi=110)
    return path


def validation_curves(runs_dir: Path, runs: list[str], monitor: str) -> dict[str, np.ndarray]:
    """Each run's (epochs, 2) cumulative steps and validation ``monitor``, read once for every curve plot; runs
    without one are left out."""
    curves = {r: _curve(runs_dir / r, monitor) for r in runs}
    return {r: c for r, c in curves.items() if c is not None}


def plot_validation_curves(curves: dict[str, np.ndarray], df: pd.DataFrame, monitor: str, bounds: tuple[float, float],
                           path: Path, x: str = "epoch") -> Path:
    """Validation ``monitor`` per epoch (``x="epoch"``) or against cumulative optimiser steps (``x="steps"``, the
    seed's "AUC vs mini-batches"): one panel per (depth, label fraction), one line per init, the mean over seeds
    with a band (the 95% interval over the seeds still training at that point, inside the metric's range; none
    where fewer than three are). ``curves``: :func:`validation_curves`."""
    keys = list(dict.fromkeys(zip(df["depth"], df["label_fraction"])))
    fig, axes = facet_figure(keys, lambda k: f"depth {k[0]}, {k[1]:.0%} of the labels")
    colours = {init: f"C{i}" for i, init in enumerate(dict.fromkeys(df["init"]))}
    for (init, depth, frac), g in df.groupby(["init", "depth", "label_fraction"], sort=False):
        curves_of_cell = [curves[r] for r in g["run"] if r in curves]
        if not curves_of_cell:
            continue
        n = max(len(c) for c in curves_of_cell)  # seeds stopped early contribute up to their last epoch
        ys = np.full((len(curves_of_cell), n), np.nan)
        xs = np.full((len(curves_of_cell), n), np.nan)
        for i, c in enumerate(curves_of_cell):
            ys[i, : len(c)] = c[:, 1]
            xs[i, : len(c)] = np.arange(len(c)) if x == "epoch" else c[:, 0]
        stats = [seed_interval(ys[:, j].tolist(), bounds) for j in range(n)]
        # the mean of the one or two seeds that trained longest is not the cell's curve: drawn while at least three
        # seeds (or every seed of a cell with fewer) are still training
        drawn = [j for j in range(n) if stats[j]["n"] >= min(3, len(curves_of_cell))]
        xm = np.nanmean(xs, axis=0)[drawn]
        stats = [stats[j] for j in drawn]
        ax = axes[(depth, frac)]
        ax.plot(xm, [st["mean"] for st in stats], marker=".", lw=1.4, color=colours[init],
                label=f"{init} ({len(curves_of_cell)} seed{'s' * (len(curves_of_cell) > 1)})")
        ax.fill_between(xm, [st["lo"] for st in stats], [st["hi"] for st in stats], color=colours[init], alpha=0.18,
                        lw=0)
    for ax in axes.values():
        ax.set_xlabel("epoch (consecutive across depths for auto)" if x == "epoch" else "optimiser steps", fontsize=8)
        log_scale_if_wide(ax)
    next(iter(axes.values())).set_ylabel(f"validation {monitor}")
    return save_with_outside_legend(fig, list(axes.values()), path)


def plot_test_metric(agg: pd.DataFrame, metric: str, along: str, order: list[Any], path: Path, ylabel: str) -> Path:
    """The test metric's mean with its 95% interval over seeds against ``along`` (``depth`` or ``label_fraction``),
    one panel per value of the other factor, one line per init."""
    other = "label_fraction" if along == "depth" else "depth"
    keys = list(dict.fromkeys(agg[other]))
    fig, axes = facet_figure(keys, (lambda k: f"{k:.0%} of the labels") if other == "label_fraction" else
                             (lambda k: f"depth {k}"))
    for k, ax in axes.items():
        for i, (init, g) in enumerate(agg[agg[other] == k].groupby("init", sort=False)):
            g = g.set_index(along).reindex([v for v in order if v in set(g[along])]).reset_index()
            xs = range(len(g)) if along == "depth" else g[along]
            ax.errorbar(xs, g[f"{metric}_mean"], yerr=interval_yerr(g, metric), marker="o", capsize=3, color=f"C{i}",
                        label=init)
            if along == "depth":
                ax.set_xticks(range(len(g)), list(g[along]), rotation=20)
        if along == "label_fraction":
            ax.set_xscale("log")
        ax.set_xlabel("fine-tuning depth (trained stages)" if along == "depth" else "label fraction of the training set",
                      fontsize=8)
    next(iter(axes.values())).set_ylabel(ylabel)
    return save_with_outside_legend(fig, list(axes.values()), path)


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
