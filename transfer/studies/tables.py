"""A study's tables and report, rebuilt from its run directories alone (no W&B, whichever machine wrote them).

Every table is a function of the finished cells on disk, so a restarted study, shards merged on a shared
folder, and an uninterrupted study all give the same tables.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from transfer.api import Task, make_task
from transfer.config import Config
from transfer.studies.cells import Cell, grid_cells, is_finished
from transfer.studies.manifest import manifest_config
from transfer.studies.report import write_report
from transfer.studies.statistics import aggregate_seeds, compare_inits, compare_within_seeds, label_efficiency_table

#: the CSV tables beside the report
TABLES = ("results.csv", "aggregate.csv", "comparisons.csv", "label_efficiency.csv", "comparisons_within_seeds.csv")


def collect_results(task: Task, root: Path, cells: list[Cell]) -> pd.DataFrame:
    """One row per finished cell, in grid order: the cell, its selection, its flat validation and test metrics."""
    rows = []
    for cell in cells:
        run_dir = root / "runs" / cell.name
        if is_finished(run_dir):
            rows.append(_result_row(task, cell, json.loads((run_dir / "summary.json").read_text())))
    return pd.DataFrame(rows)


def _result_row(task: Task, cell: Cell, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "init": cell.arm, "init_name": cell.label, "variant": cell.variant,
        "depth": cell.depth, "label_fraction": cell.label_fraction, "seed": cell.seed,
        "run": cell.name, "selected_depth": summary["selected_depth"], "best_epoch": summary["best_epoch"],
        "n_train": summary["n_train"], "seconds": summary.get("seconds"),
        "test_seconds_per_image": summary.get("test_seconds_per_image"), "peak_memory_gib": summary.get("peak_memory_gib"),
        **_flat_metrics(task, summary, "val"), **_flat_metrics(task, summary, "test"),
    }


def _flat_metrics(task: Task, summary: dict[str, Any], split: str) -> dict[str, float]:
    return {f"{split}_{k}": v for k, v in task.summary_metrics(summary.get(split, {})).items()}


def report_path(cfg: Config, root: Path) -> Path:
    """``study.report``, else ``report.md`` in the study directory."""
    return Path(cfg.study.report) if cfg.study.report else root / "report.md"


def write_study_outputs(cfg: Config, root: Path, report: Path | None = None) -> dict[str, Any]:
    """Tables (CSV), the markdown report (``report``, default :func:`report_path`) and its HTML page, from the
    finished cells under ``root/runs``."""
    task = make_task(cfg)
    cells = grid_cells(cfg)
    df = collect_results(task, root, cells)
    missing = [c.name for c in cells if not is_finished(root / "runs" / c.name)]
    out: dict[str, Any] = {"root": str(root), "n_runs": len(df), "missing": missing}
    if not len(df):
        return out
    agg = aggregate_seeds(df, task)
    comparisons = compare_inits(task, df, root / "runs", cfg.study.seed_test)
    efficiency = label_efficiency_table(task, agg)
    within = compare_within_seeds(task, df, root / "runs")
    for name, table in zip(TABLES, (df, agg, comparisons, efficiency, within)):
        table.to_csv(root / name, index=False)
    md = write_report(cfg, task, df, agg, comparisons, root, report or report_path(cfg, root),
                      efficiency=efficiency, missing=missing, within_seeds=within)
    out.update(report=str(md), html=str(md.with_suffix(".html")))
    return out


def rebuild_report(study_dir: str | Path, report: str | Path | None = None) -> dict[str, Any]:
    """``medtransfer report STUDY_DIR``: the tables and report again, from the manifest and the run directories
    (the report at ``report``, default ``STUDY_DIR/report.md``: the configured path may be relative to another
    machine's working directory)."""
    root = Path(study_dir)
    return write_study_outputs(manifest_config(root), root, Path(report) if report else root / "report.md")
