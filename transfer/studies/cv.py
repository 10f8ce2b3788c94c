"""Cross-validation of one config: run k tests on fold k of ``data.folds`` and trains on the other folds.

``medtransfer cv CONFIG`` trains (or reads back) one ordinary fine-tuning run per fold, ``<out_dir>/<name>-fold<k>``.
Each is resumable, so the folds run in pieces, or in parallel processes (``--folds 0 2`` in one, ``--folds 1 3`` in
another). The report then gives:
- each fold's test metrics;
- their mean and sample SD over folds: the spread that another split of the same images would show;
- the metrics of every fold's test images pooled: each labelled image scored once, by the model that never saw it,
  with the task's per-landmark tables where the task can pool predictions (:meth:`Task.pooled_test_metrics`).

Model selection and early stopping stay inside the training folds (``data.val_fraction`` carves the validation part
from them); a test fold is read once, at the end of its run.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from transfer.api import Task, make_task
from transfer.config import Config, to_dict
from transfer.data.folds import read_folds
from transfer.errors import MedTransferError
from transfer.markdown import md_table
from transfer.runs.finetune import run_finetune
from transfer.tracking import atomic_write_text, completed_summary, training_config


class CrossValidationError(MedTransferError):
    """A cross-validation that cannot be run or reported as asked (no folds file, a fold out of range)."""


def fold_count(cfg: Config) -> int:
    """The number of folds of ``data.folds`` (a config without one is not a cross-validation)."""
    if not cfg.data.folds:
        raise CrossValidationError("medtransfer cv needs data.folds (a folds file: medtransfer folds make)")
    return int(read_folds(Path(cfg.data.folds)).max()) + 1


def fold_config(cfg: Config, name: str, fold: int) -> Config:
    """Fold ``fold``'s run: that fold is the test split, its run directory ``<out_dir>/<name>-fold<fold>``."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fold=fold),
                               tracking=dataclasses.replace(cfg.tracking, name=f"{name}-fold{fold}"))


def run_cv(cfg: Config, name: str, folds: list[int] | None = None, *, train: bool = True,
           report: Path | None = None, command: str = "", progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or read back) the runs of ``folds`` (default: all), then write ``<out_dir>/<name>-cv.json`` and the
    report (``report``, default ``<out_dir>/<name>-cv.md``) over every fold finished so far. ``train=False``: only
    rebuild them from the finished runs (while other processes still train)."""
    k = fold_count(cfg)
    folds = list(range(k)) if folds is None else folds
    if bad := [f for f in folds if not 0 <= f < k]:
        raise CrossValidationError(f"--folds {bad}: {cfg.data.folds} has folds 0..{k - 1}")
    task = make_task(cfg)
    if train:
        for f in folds:
            progress(f"fold {f} of {k}: training (or reading back) {Path(cfg.tracking.out_dir) / f'{name}-fold{f}'}")
            summary = run_finetune(fold_config(cfg, name, f))
            progress(f"fold {f}: test {_headline(task, summary)}")
    result = collect_cv(task, cfg, name, k)
    out = Path(cfg.tracking.out_dir)
    atomic_write_text(out / f"{name}-cv.json", json.dumps(result, indent=1, default=str))
    path = report or out / f"{name}-cv.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_cv(task, cfg, name, result, command=command))
    progress(f"wrote {path}")
    return result


def collect_cv(task: Task, cfg: Config, name: str, k: int) -> dict[str, Any]:
    """Per fold: the finished run's summary metrics (a run of another config is refused, naming the keys); over
    folds: mean and sample SD of each test metric; pooled: the task's metrics of all finished folds' test images."""
    rows, predictions, pending, images = [], [], [], set()
    for f in range(k):
        c = fold_config(cfg, name, f)
        run_dir = Path(c.tracking.out_dir) / c.tracking.name
        summary = completed_summary(run_dir, ("model.pt",), training_config(to_dict(c), "finetune"))
        if summary is None:
            pending.append(f)
            continue
        test = task.summary_metrics(summary.get("test") or {})
        rows.append({"fold": f, "run": c.tracking.name, "n_train": summary.get("n_train"),
                     "n_val": summary.get("n_val"), "n_test": summary.get("n_test"),
                     "selected_depth": summary.get("selected_depth"), "best_epoch": summary.get("best_epoch"),
                     f"val_{task.monitor}": summary.get("best_val"),
                     **{m: test.get(m) for m in task.report_metrics},
                     "train_min": (summary.get("seconds") or math.nan) / 60,
                     "test_s_per_image": summary.get("test_seconds_per_image"),
                     "peak_gib": summary.get("peak_memory_gib")})
        pred = pd.read_csv(run_dir / "predictions_test.csv")
        if overlap := images & set(pred["image"]):
            raise CrossValidationError(f"{run_dir}: test images also in another fold's test split (e.g. "
                                       f"{sorted(overlap)[0]}): the folds are not disjoint")
        images |= set(pred["image"])
        predictions.append(pred)
    per_fold = pd.DataFrame(rows)
    over = {}
    for m in (m for m in task.report_metrics if m in per_fold):  # an empty frame (no fold finished) has no column
        values = per_fold[m].dropna()
        if len(values):
            over[m] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
                       "min": float(values.min()), "max": float(values.max()), "folds": int(len(values))}
    pooled = task.pooled_test_metrics(predictions) if predictions else None
    return {"k": k, "folds": rows, "over_folds": over, "pooled": pooled, "pooled_images": len(images),
            "pending": pending}


def render_cv(task: Task, cfg: Config, name: str, result: dict[str, Any], *, command: str = "") -> str:
    """The cross-validation as markdown: per fold, mean ± SD over folds, pooled, the task's pooled sections."""
    digits = task.report_digits
    k, done = result["k"], len(result["folds"])
    lines = [f"# Cross-validation: {name} ({k} folds)", ""]
    if command:
        lines += ["Regenerate (resumable: finished folds are read back, an interrupted one continues):", "",
                  f"    {command}", ""]
    lines += [f"Folds: `{cfg.data.folds}` over the listings {_listings(cfg)}; run k tests on fold k and trains on the "
              f"other {k - 1}, with model selection and early stopping on a validation part carved from them "
              f"(`data.val_fraction` {cfg.data.val_fraction:g}); a test fold is read once, at the end of its run. "
              f"Backbone `{cfg.backbone.name}`, init `{cfg.init}`, depth `{cfg.train.depth}`, seed {cfg.seed}.", ""]
    if result["pending"]:
        lines += [f"**Not finished yet** (run the command again to continue them): fold(s) "
                  f"{', '.join(map(str, result['pending']))}; every table below is over the {done} finished fold(s).",
                  ""]
    if not done:
        return "\n".join(lines)
    lines += ["## Each fold's test split", "", md_table(pd.DataFrame(result["folds"]), digits), ""]
    over = pd.DataFrame([{"metric": m, **v} for m, v in result["over_folds"].items()])
    lines += ["## Over folds", "",
              "Mean and sample SD of each fold's test metric (the spread another split of the same images would "
              "show), with the worst and best fold.", "", md_table(over, digits), ""]
    if (pooled := result["pooled"]) is not None:
        row = {m: v for m, v in task.summary_metrics(pooled).items() if m in task.report_metrics}
        lines += ["## All folds' test images pooled", "",
                  f"The {result['pooled_images']} test images of the {done} finished fold(s), each once, scored by the "
                  "model that did not train on it; the per-landmark tables below are of these pooled images.", "",
                  md_table(pd.DataFrame([row]), digits), "",
                  *task.report_sections({f"{name} (pooled folds)": {"test": pooled}},
                                        lambda df: md_table(df, digits))]
    return "\n".join(lines)


def _listings(cfg: Config) -> str:
    train = cfg.data.train if isinstance(cfg.data.train, list) else [cfg.data.train]
    return ", ".join(f"`{t}`" for t in train)


def _headline(task: Task, summary: dict[str, Any]) -> str:
    test = task.summary_metrics(summary.get("test") or {})
    return ", ".join(f"{m} {test[m]:.4g}" for m in task.report_metrics if isinstance(test.get(m), float))
