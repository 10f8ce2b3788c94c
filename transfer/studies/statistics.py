"""A study's statistics: test metrics over seeds per cell, paired comparisons of inits, Holm, label efficiency.

With several seeds, two inits are compared on the seeds they share at the same depth and label fraction
(a seed-level test, see :mod:`transfer.studies.seed_stats`); with one seed, on the test images of that seed's
two runs (the task's paired bootstrap). Holm's correction runs over every comparison of the study.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transfer.api import Task
from transfer.studies.seed_stats import SeedTest, holm, label_efficiency, paired_seed_test, seed_interval

#: the baselines every other init is compared with, in this order
BASELINES: tuple[str, ...] = ("imagenet", "scratch")


def aggregate_seeds(df: pd.DataFrame, task: Task) -> pd.DataFrame:
    """Test metrics per (init, depth, fraction): mean, SD, a 95% interval over seeds that stays inside the metric's
    range (:func:`seed_interval`), and the number of seeds each metric's numbers really use (``<metric>_n``).

    ``runs`` counts the finished runs of the cell; ``seeds`` the runs whose monitor is a number (a NaN seed is
    left out of every statistic, and the report shows "k of n")."""
    rows = []
    metrics = [f"test_{m}" for m in task.report_metrics if f"test_{m}" in df.columns]
    for (init, depth, frac), g in df.groupby(["init", "depth", "label_fraction"], sort=False):
        monitor = f"test_{task.monitor}"
        seeds = int(pd.to_numeric(g[monitor], errors="coerce").notna().sum()) if monitor in g else len(g)
        row: dict[str, Any] = {"init": init, "depth": depth, "label_fraction": frac, "runs": len(g), "seeds": seeds,
                               "train_minutes": _mean(g, "seconds") / 60,
                               "test_seconds_per_image": _mean(g, "test_seconds_per_image"),
                               "peak_memory_gib": _mean(g, "peak_memory_gib")}
        for m in metrics:
            a = seed_interval(pd.to_numeric(g[m], errors="coerce").tolist(), task.metric_range(m[len("test_"):]))
            row.update({f"{m}_mean": a["mean"], f"{m}_std": a["sd"], f"{m}_lo": a["lo"], f"{m}_hi": a["hi"],
                        f"{m}_n": a["n"], f"{m}_interval": a["interval"]})
        rows.append(row)
    return pd.DataFrame(rows)


def _mean(g: pd.DataFrame, column: str) -> float:
    """Mean of a column over seeds; NaN when the runs did not record it (runs written by older versions)."""
    return float(pd.to_numeric(g[column], errors="coerce").mean()) if column in g else float("nan")


def _pairs(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(arm, baseline) pairs. Within a variant (or in a study without variants): every init against imagenet and
    scratch, imagenet vs scratch once (as imagenet - scratch). Across variants: each variant against the first one
    listed, with the same init."""
    arms = df.drop_duplicates("init")
    names = arms["init_name"] if "init_name" in arms else arms["init"]
    variants = arms["variant"] if "variant" in arms else pd.Series([""] * len(arms), index=arms.index)
    arm_of = {(v, n): a for v, n, a in zip(variants, names, arms["init"])}
    pairs = []
    for v in dict.fromkeys(variants):
        inits = [n for (w, n) in arm_of if w == v]
        pairs += [(arm_of[v, i], arm_of[v, b]) for b in BASELINES if b in inits for i in inits
                  if i != b and not (b == "imagenet" and i == "scratch")]
    reference, *others = dict.fromkeys(variants)
    pairs += [(arm_of[v, n], arm_of[reference, n]) for v in others for n in dict.fromkeys(names)
              if (v, n) in arm_of and (reference, n) in arm_of]
    return pairs


def compare_inits(task: Task, df: pd.DataFrame, runs_dir: Path, test: SeedTest = "wilcoxon") -> pd.DataFrame:
    """Paired comparisons of ``task.monitor`` on the test split, with Holm-adjusted p-values over all of them.

    ``relative`` is the difference over the baseline's mean *of the same quantity* on the same pairs: over seeds,
    the monitor's mean on the seeds used; over test images (one seed), the baseline's value of the quantity the
    task's paired test compares (its ``metric`` column: e.g. per-image F1 for detection, not mAP)."""
    rows = []
    col = f"test_{task.monitor}"
    bounds = task.metric_range(task.monitor)
    for (depth, frac), g in df.groupby(["depth", "label_fraction"], sort=False):
        for init, base in _pairs(df):
            a = g[g["init"] == init].set_index("seed")
            b = g[g["init"] == base].set_index("seed")
            seeds = sorted(set(a.index) & set(b.index))
            if not seeds:
                continue
            cell = {"depth": depth, "label_fraction": frac, "init": init, "vs": base, "seeds": len(seeds)}
            if len(seeds) > 1:
                va = pd.to_numeric(a.loc[seeds, col], errors="coerce").to_numpy(float)
                vb = pd.to_numeric(b.loc[seeds, col], errors="coerce").to_numpy(float)
                res = paired_seed_test(va, vb, test, bounds)
                used = np.isfinite(va) & np.isfinite(vb)
                baseline = float(vb[used].mean()) if used.any() else float("nan")
                rows.append({**cell, "seeds": res["n_pairs"], "metric": task.monitor, "unit": "seed", **res,
                             "relative": _relative(res["difference"], baseline)})
            else:
                res = _paired_images(task, runs_dir / a.loc[seeds[0], "run"], runs_dir / b.loc[seeds[0], "run"])
                if res is not None:
                    rows.append({**cell, "unit": "test image", **res,
                                 "relative": _relative(res["difference"], res.get("baseline", float("nan")))})
    out = pd.DataFrame(rows)
    if len(out):
        out["p_holm"] = holm(out["p_value"].tolist())
    return out


def compare_within_seeds(task: Task, df: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """With several seeds, the supplementary view: each seed's two runs compared on the test images (the task's
    paired test), Holm over these rows. It says how sure we are about two trained models, not about the inits."""
    if df["seed"].nunique() < 2:
        return pd.DataFrame()
    rows = []
    for (depth, frac, seed), g in df.groupby(["depth", "label_fraction", "seed"], sort=False):
        runs = dict(zip(g["init"], g["run"]))
        for init, base in _pairs(df):
            if init in runs and base in runs:
                res = _paired_images(task, runs_dir / runs[init], runs_dir / runs[base])
                if res is not None:
                    rows.append({"depth": depth, "label_fraction": frac, "seed": seed, "init": init, "vs": base, **res})
    out = pd.DataFrame(rows)
    if len(out):
        out["p_holm"] = holm(out["p_value"].tolist())
    return out


def _relative(difference: float, baseline: float) -> float:
    """The difference as a fraction of the baseline's mean of the same quantity (how papers state "22% lower
    error"); NaN where the baseline is 0 or unknown."""
    return difference / baseline if baseline and math.isfinite(baseline) else float("nan")


def _paired_images(task: Task, run: Path, base: Path) -> dict[str, Any] | None:
    """The task's paired comparison of two runs' test predictions (None when either run has none)."""
    a, b = run / "predictions_test.csv", base / "predictions_test.csv"
    if not (a.is_file() and b.is_file()):
        return None
    res = task.paired_comparison(pd.read_csv(a), pd.read_csv(b))
    return {**{k: v for k, v in res.items() if k != "ci95"}, "ci95_lo": res["ci95"][0], "ci95_hi": res["ci95"][1]}


def label_efficiency_table(task: Task, agg: pd.DataFrame) -> pd.DataFrame:
    """Per (init, depth): the label fraction at which the test monitor first matches scratch at 100% of the labels
    (at the same depth), with the interval from the cells' t-intervals. Empty without a scratch cell at 100%."""
    m = f"test_{task.monitor}"
    ref = agg[(agg["init"] == "scratch") & (agg["label_fraction"] == 1.0)].set_index("depth")
    rows = []
    if f"{m}_mean" not in agg.columns or agg["label_fraction"].nunique() < 2:
        return pd.DataFrame(rows)
    for (init, depth), g in agg.groupby(["init", "depth"], sort=False):
        if depth not in ref.index:
            continue
        reference = float(ref.loc[depth, f"{m}_mean"])
        eff = label_efficiency(g["label_fraction"].tolist(), g[f"{m}_mean"].tolist(), g[f"{m}_lo"].tolist(),
                               g[f"{m}_hi"].tolist(), reference, task.mode)
        rows.append({"init": init, "depth": depth, "scratch_at_100%": reference, **eff})
    return pd.DataFrame(rows)
