"""A study's statistics: test metrics aggregated over seeds, and paired comparisons of inits on the test images."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from transfer.api import Task
from transfer.stats import seed_aggregate

#: the baselines every other init is compared with, in this order
BASELINES: tuple[str, ...] = ("imagenet", "scratch")


def aggregate_seeds(df: pd.DataFrame, task: Task) -> pd.DataFrame:
    """Test metrics per (init, depth, fraction): mean and std over seeds."""
    rows = []
    metrics = [f"test_{m}" for m in task.report_metrics if f"test_{m}" in df.columns]
    for (init, depth, frac), g in df.groupby(["init", "depth", "label_fraction"], sort=False):
        row: dict[str, Any] = {"init": init, "depth": depth, "label_fraction": frac, "seeds": len(g)}
        for m in metrics:
            a = seed_aggregate(g[m].dropna().tolist()) if g[m].notna().any() else {"mean": float("nan"), "std": float("nan")}
            row[f"{m}_mean"], row[f"{m}_std"] = a["mean"], a["std"]
        rows.append(row)
    return pd.DataFrame(rows)


def compare_inits(task: Task, df: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """Every init against imagenet and scratch, per (depth, fraction, seed), paired on the test images."""
    rows = []
    baselines = [b for b in BASELINES if b in set(df["init"])]
    for (depth, frac, seed), g in df.groupby(["depth", "label_fraction", "seed"], sort=False):
        runs = dict(zip(g["init"], g["run"]))
        for base in baselines:
            for init, run in runs.items():
                if init == base or (base == "imagenet" and init == "scratch"):
                    continue  # imagenet vs scratch is reported once, as imagenet - scratch
                res = _paired(task, runs_dir / run, runs_dir / runs[base])
                if res is not None:
                    rows.append({"depth": depth, "label_fraction": frac, "seed": seed, "init": init, "vs": base, **res})
    return pd.DataFrame(rows)


def _paired(task: Task, run: Path, base: Path) -> dict[str, Any] | None:
    """The task's paired comparison of two runs' test predictions (None when either run has none)."""
    a, b = run / "predictions_test.csv", base / "predictions_test.csv"
    if not (a.is_file() and b.is_file()):
        return None
    res = task.paired_comparison(pd.read_csv(a), pd.read_csv(b))
    return {**{k: v for k, v in res.items() if k != "ci95"}, "ci95_lo": res["ci95"][0], "ci95_hi": res["ci95"][1]}
