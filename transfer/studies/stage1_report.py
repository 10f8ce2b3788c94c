"""The stage-1 runs of a study: each method's curves (loss and pretext metric per epoch) and how flat they ended.

A reader of an unlabelled-data verdict asks first whether stage 1 was trained long enough; this section answers
with the curves and one number per method, the share of the loss's whole decrease made in the last quarter of its
epochs. That number is only a hint: with a cosine schedule the learning rate goes to zero at the end, which
flattens any curve.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from matplotlib.figure import Figure

from transfer.tracking import read_metrics

#: a curve that made less than this share of its whole loss decrease in its last quarter is called flat
FLAT = 0.05
#: the methods' own training metrics, the first one a run logs is shown beside its loss
PRETEXT_METRICS = ("train_psnr", "train_pretext_acc")


def read_stage1(pretrain_dir: Path) -> dict[str, pd.DataFrame]:
    """Method -> its ``metrics.jsonl`` as a frame (one row per epoch), for each finished stage-1 run."""
    runs = sorted(d for d in pretrain_dir.iterdir() if d.is_dir()) if pretrain_dir.is_dir() else []
    return {d.name: pd.DataFrame(rows) for d in runs if (rows := read_metrics(d))}


def last_quarter_share(loss: pd.Series) -> float:
    """(loss three quarters through - loss at the end) / (first loss - loss at the end): the share of the whole
    decrease still made in the last quarter (any sign of the loss; NaN for a curve that did not go down)."""
    first, end = float(loss.iloc[0]), float(loss.iloc[-1])
    three_quarters = float(loss.iloc[int(0.75 * (len(loss) - 1))])
    return (three_quarters - end) / (first - end) if first > end else float("nan")


def _pretext_metric(frame: pd.DataFrame) -> str | None:
    """The method's own training metric (PSNR for the autoencoder, pretext accuracy...), if it logs one."""
    return next((m for m in PRETEXT_METRICS if m in frame.columns), None)


def plot_stage1(curves: dict[str, pd.DataFrame], path: Path) -> Path:
    """One panel per method: training loss (left axis) and its pretext metric (right axis) against epochs."""
    n = len(curves)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows))
    for k, (method, frame) in enumerate(curves.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.plot(frame["epoch"], frame["train_loss"], color="C0", lw=1.4)
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("training loss", color="C0", fontsize=8)
        ax.grid(alpha=0.3)
        metric = _pretext_metric(frame)
        if metric:
            twin = ax.twinx()
            twin.plot(frame["epoch"], frame[metric], color="C1", lw=1.2)
            twin.set_ylabel(metric.removeprefix("train_"), color="C1", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _kept(selection: dict[str, Any] | None) -> str:
    """Which epoch's encoder the checkpoint holds, and why (``pretrain.keep: best`` by the probe, or the last)."""
    if not selection:
        return "last"
    if selection.get("by") is None or selection.get("kept") != "best":
        return f"last (epoch {selection.get('epoch')})"
    stop = ", plateau stop" if selection.get("stopped_on_plateau") else ""
    return (f"epoch {selection['epoch']} of {selection.get('epochs_trained')}: "
            f"{selection['by'].removeprefix('val_')} {selection['value']:.3f}{stop}")


def stage1_section(root: Path, out: Path, md_table: Callable[[pd.DataFrame, int], str]) -> list[str]:
    """The report's stage-1 section (empty when the study pretrained nothing)."""
    curves = read_stage1(root / "pretrain")
    if not curves:
        return []
    rows: list[dict[str, Any]] = []
    for method, frame in curves.items():
        summary_file = root / "pretrain" / method / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        metric = _pretext_metric(frame)
        share = last_quarter_share(frame["train_loss"])
        rows.append({"method": method, "epochs": len(frame), "images": str(summary.get("pool_size", "-")),
                     "first loss": float(frame["train_loss"].iloc[0]), "last loss": float(frame["train_loss"].iloc[-1]),
                     "last quarter": "-" if math.isnan(share) else f"{share:.1%}",
                     "flat": "loss rose" if math.isnan(share) else "yes" if share < FLAT else "no",
                     "pretext metric": f"{metric.removeprefix('train_')} {float(frame[metric].iloc[-1]):.3f}"
                     if metric else "-", "kept": _kept(summary.get("selection")),
                     "minutes": (summary.get("seconds") or float("nan")) / 60})
    plot = plot_stage1(curves, out.parent / f"{out.stem}_stage1.png")
    return ["## Stage 1 (unlabelled adaptation)", "",
            "Training curves of each stage-1 run this study made; one run per method, shared by every seed and label "
            "fraction of stage 2. `last quarter`: the share of the training loss's whole decrease made in the last "
            f"quarter of the epochs; `flat` when under {FLAT:.0%}; `loss rose` for a curve that ends above its start (MoCo's loss grows "
            "while its queue of negatives fills). `kept`: the epoch whose encoder the checkpoint holds (with "
            "`pretrain.keep: best`, the best validation probe, and whether the probe's plateau stopped stage 1). The cosine schedule's learning rate ends near zero, which "
            "flattens every curve, so read the curves as well.", "",
            md_table(pd.DataFrame(rows), 3), "", f"![{plot.stem}]({plot.name})", ""]
