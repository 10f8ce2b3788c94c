"""A study's statistics from its results table: what `relative` divides by, NaN seeds, bounded intervals in the
report, the answer lines. Each test names the defect of the old code it guards against."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from transfer.api import TASKS
from transfer.config import Config
from transfer.config.io import load_config
from transfer.studies.report import answer_section, md_table, write_report
from transfer.studies.seed_stats import signflip_p
from transfer.studies.statistics import aggregate_seeds, compare_inits


def _task(*sets: str):
    cfg = load_config(Config, None, ["data.format=npz", "tracking.progress=false", *sets])
    return cfg, TASKS.get(cfg.task.name)(cfg)


def _results(values: dict[str, list[float]], fraction: float = 0.1, depth: str = "head") -> pd.DataFrame:
    rows = []
    for init, vals in values.items():
        for seed, v in enumerate(vals):
            rows.append({"init": init, "init_name": init, "variant": "", "depth": depth, "label_fraction": fraction,
                         "seed": seed, "run": f"{init}-{depth}-frac{fraction:g}-seed{seed}", "selected_depth": depth,
                         "best_epoch": 1, "n_train": 40, "seconds": 10.0, "val_roc_auc": v, "test_roc_auc": v,
                         "test_accuracy": v})
    return pd.DataFrame(rows)


class _PerImageF1Task:
    """A detection-like task: the monitor is a pooled mAP, the paired test is on per-image F1."""

    monitor, mode = "map_50", "max"

    def metric_range(self, metric: str) -> tuple[float, float]:
        return (0.0, 1.0)

    def paired_comparison(self, a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
        return {"metric": "f1_per_image", "difference": 0.1, "baseline": 0.5, "ci95": [0.05, 0.15], "p_value": 0.01,
                "test": "Wilcoxon signed-rank (per image)"}


def test_one_seed_relative_divides_by_the_baseline_of_the_compared_quantity(tmp_path):
    """Old: the per-image F1 difference (0.1) was divided by the baseline's mAP@0.5 mean (0.25): relative 0.4. The
    baseline's per-image F1 is 0.5, so the difference is 20% of it."""
    df = pd.DataFrame({"init": ["imagenet", "scratch"], "depth": "all", "label_fraction": 1.0, "seed": 0,
                       "run": ["a", "b"], "test_map_50": [0.35, 0.25]})
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "predictions_test.csv").write_text("image\nx.png\n")
    out = compare_inits(_PerImageF1Task(), df, tmp_path)  # type: ignore[arg-type]
    row = out.iloc[0]
    assert row["metric"] == "f1_per_image" and row["relative"] == pytest.approx(0.2)


def test_a_nan_seed_is_left_out_of_the_counts_the_interval_and_the_test(tmp_path):
    """Old: the table said 6 seeds while the mean used 5, and the paired test's p was NaN while the difference used
    the other seeds."""
    _, task = _task()
    a = [0.91, 0.93, float("nan"), 0.92, 0.95, 0.94]
    b = [0.81, 0.80, 0.82, 0.79, 0.83, 0.80]
    df = _results({"imagenet": a, "scratch": b})
    agg = aggregate_seeds(df, task).set_index("init")
    assert agg.loc["imagenet", "seeds"] == 5 and agg.loc["imagenet", "runs"] == 6
    assert agg.loc["imagenet", "test_roc_auc_mean"] == pytest.approx(np.nanmean(a))
    cmp = compare_inits(task, df, tmp_path, "signflip").iloc[0]
    d = np.subtract(a, b)[[0, 1, 3, 4, 5]]
    assert cmp["seeds"] == 5 and cmp["difference"] == pytest.approx(d.mean())
    assert cmp["p_value"] == pytest.approx(signflip_p(d)) and cmp["relative"] == pytest.approx(
        d.mean() / np.mean(np.asarray(b)[[0, 1, 3, 4, 5]]))
    text = write_report(load_config(Config, None, ["data.format=npz", f"study.report={tmp_path / 'r.md'}"]), task,
                        df, aggregate_seeds(df, task), compare_inits(task, df, tmp_path, "signflip"), tmp_path).read_text()
    assert "| 5 of 6 |" in text


INTERVAL_COLUMNS = re.compile(r"(95% CI low|95% CI high|ci95_lo|ci95_hi)")


def bounded_interval_violations(markdown: str, bounds: dict[str, tuple[float, float]]) -> list[str]:
    """Every table row of ``markdown`` whose interval column lies outside its metric's range: intervals of a metric
    ("<metric> mean" tables, per-class recall) must stay in [lo, hi], intervals of differences (comparison tables)
    in [-(hi - lo), hi - lo]. ``bounds``: metric -> range; used for every table of the report."""
    bad = []
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if not (line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---")):
            continue
        header = [c.strip() for c in line.strip("|").split("|")]
        cols = [j for j, c in enumerate(header) if INTERVAL_COLUMNS.fullmatch(c)]
        if not cols:
            continue
        difference = "difference" in header
        metric_col = header.index("metric") if "metric" in header else None
        named = next((c[: -len(" mean")] for c in header if c.endswith(" mean")), "recall" if "recall" in header else None)
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in row.strip("|").split("|")]
            metric = cells[metric_col] if metric_col is not None else named
            if metric is None or metric not in bounds:  # a table that names no metric has no range to hold
                continue
            lo, hi = bounds[metric]
            lo, hi = (-(hi - lo), hi - lo) if difference else (lo, hi)
            for j in cols:
                if cells[j] not in ("-", "") and not lo - 1e-9 <= float(cells[j]) <= hi + 1e-9:
                    bad.append(row)
    return bad


def test_intervals_in_report_tables_stay_inside_the_metric_range(tmp_path):
    """Old: a t-interval over 3 seeds of AUC [0.99, 0.40, 0.98] ran to 1.39; per-class recall intervals went far
    below 0."""
    cfg, task = _task(f"study.report={tmp_path / 'r.md'}", "study.depths=[head]")
    df = _results({"imagenet": [0.99, 0.40, 0.98], "scratch": [0.60, 0.98, 0.30]})
    for _, r in df.iterrows():  # per-class recall from predictions: one seed recalls nothing of class a
        d = tmp_path / "runs" / r["run"]
        d.mkdir(parents=True)
        hit = 0 if r["seed"] == 1 else 1
        pd.DataFrame({"image": ["1", "2", "3", "4"], "label": ["a", "a", "b", "b"],
                      "predicted": ["a" if hit else "b", "a" if hit else "b", "b", "a"],
                      "prob_a": [0.9, 0.8, 0.1, 0.6], "prob_b": [0.1, 0.2, 0.9, 0.4]}).to_csv(
            d / "predictions_test.csv", index=False)
    agg = aggregate_seeds(df, task)
    assert agg["test_roc_auc_hi"].max() <= 1 and agg["test_roc_auc_lo"].min() >= 0
    text = write_report(cfg, task, df, agg, compare_inits(task, df, tmp_path / "runs", "ttest"), tmp_path).read_text()
    assert "Per-class recall" in text and "95% CI low" in text
    bounds = {m: task.metric_range(m) for m in ("roc_auc", "accuracy", "recall")}
    assert bounded_interval_violations(text, bounds) == []
    # the scanner itself finds what the old t-interval printed
    old = "| init | roc_auc mean | 95% CI low | 95% CI high |\n|---|---|---|---|\n| x | 0.79 | 0.375 | 1.393 |\n"
    assert bounded_interval_violations(old, bounds) == ["| x | 0.79 | 0.375 | 1.393 |"]


def test_two_seeds_print_no_interval_and_say_why(tmp_path):
    cfg, task = _task(f"study.report={tmp_path / 'r.md'}", "study.depths=[head]")
    df = _results({"imagenet": [0.9, 0.8], "scratch": [0.7, 0.75]})
    agg = aggregate_seeds(df, task)
    assert agg["test_roc_auc_lo"].isna().all()
    text = write_report(cfg, task, df, agg, compare_inits(task, df, tmp_path), tmp_path).read_text()
    assert "fewer than 3 seeds" in text and "t-quantile is 12.7" in text


def test_answer_section_states_the_headline_first_with_p_holm_and_interval(tmp_path):
    cfg, task = _task(f"study.report={tmp_path / 'r.md'}", "study.depths=[head]", "study.seed_test=signflip")
    a = [0.90 + 0.004 * i for i in range(10)]
    b = [0.75 + 0.003 * ((7 * i) % 10) for i in range(10)]
    df = pd.concat([_results({"imagenet": a, "scratch": b}, 0.01), _results({"imagenet": b, "scratch": b}, 0.1)])
    cmp = compare_inits(task, df, tmp_path, "signflip")
    lines = answer_section(task, cmp, "signflip")
    text = "\n".join(lines)
    assert lines[0] == "## Answer"
    assert "`imagenet` is better in 1 and worse in 0 of 2 cells" in text
    assert "1% of the labels" in text and "p_holm 0.0039: better" in text  # 2/1024, Holm x2
    assert "10% of the labels: difference +0.0000" in text and "no difference shown" in text
    assert re.search(r"95% CI \[\+0\.\d{4}, \+0\.\d{4}\]", text)
    report = write_report(cfg, task, df, aggregate_seeds(df, task), cmp, tmp_path).read_text()
    title_end = report.index("## Answer")
    assert title_end < report.index("## Setup")


def test_p_values_never_print_as_zero():
    table = md_table(pd.DataFrame({"p_value": [1e-12, 0.04], "p_holm": [3e-5, math.nan]}), 4)
    assert "0.0000" not in table and "<0.0001" in table and "| 0.0400 | - |" in table


class _DeclaredRanges(dict):
    """Every metric some registered task declares a range for (the committed reports span all four tasks)."""

    def __missing__(self, metric: str) -> tuple[float, float]:
        for name in TASKS.names():
            bounds = TASKS.get(name).metric_range(metric)
            if math.isfinite(bounds[0]) or math.isfinite(bounds[1]):
                return bounds
        raise KeyError(metric)

    def __contains__(self, metric: object) -> bool:
        try:
            self[metric]  # type: ignore[index]
            return True
        except KeyError:
            return False


def test_no_committed_report_prints_an_interval_outside_its_metric_range():
    reports = sorted((Path(__file__).resolve().parents[3] / "reports").glob("*.md"))
    assert reports
    for report in reports:
        assert bounded_interval_violations(report.read_text(), _DeclaredRanges()) == [], report.name
