"""Markdown study reports: setup, results table, paired comparisons, references, plots, task sections, runs."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from transfer.api import Task
from transfer.config import Config, DataConfig, StudyConfig
from transfer.studies.html_report import markdown_to_html
from transfer.studies.per_class import per_class_recall
from transfer.studies.stage1_report import stage1_section
from transfer.studies.seed_stats import (INTERVAL_NAMES, MIN_SEEDS_FOR_INTERVAL, TEST_NAMES, interval_kind,
                                         min_attainable_p, seeds_needed)
from transfer.studies.study_plots import (plot_roc_intervals, plot_test_metric, plot_validation_curves,
                                          validation_curves)
from transfer.markdown import fmt_cell, fmt_p, md_table
from transfer.tracking import atomic_write_text


def _mean_std(row: pd.Series, m: str, digits: int) -> str:
    mean, std = row.get(f"{m}_mean"), row.get(f"{m}_std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_report(cfg: Config, task: Task, df: pd.DataFrame, agg: pd.DataFrame, comparisons: pd.DataFrame,
                 root: Path, out: Path | None = None, *, efficiency: pd.DataFrame | None = None,
                 missing: Sequence[str] = (), within_seeds: pd.DataFrame | None = None) -> Path:
    """The study's markdown report at ``out`` (default ``study.report``), its plots next to it, and the same
    report as one self-contained HTML page (``.html`` beside the ``.md``)."""
    st = cfg.study
    out = Path(out or st.report)  # type: ignore[arg-type]
    out.parent.mkdir(parents=True, exist_ok=True)
    runs_dir = root / "runs"
    summaries = run_summaries(runs_dir, list(df["run"]))
    lines = [
        *_title_section(st, str(cfg.data.train).startswith("builtin:")),
        *answer_section(task, comparisons, st.seed_test),
        *_missing_section(missing),
        *_setup_section(cfg, task, df, describe_devices(run_devices(runs_dir, summaries))),
        *_results_section(task, agg),
        *comparisons_section(task, comparisons, st.seed_test),
        *within_seeds_section(within_seeds),
        *efficiency_section(task, efficiency),
        *_references_section(st),
        *_plots_section(st, task, df, agg, runs_dir, out),
        *stage1_section(root, out, md_table),
        *_task_sections(task, df, summaries),
        *per_class_section(runs_dir, df),
        *_runs_section(task, df),
        *_notes_section(st),
    ]
    text = "\n".join(lines)
    atomic_write_text(out, text)
    atomic_write_text(out.with_suffix(".html"), markdown_to_html(text, out.parent, st.title or st.name))
    return out


#: cells listed per comparison in the answer section (the rest are in the comparisons table)
_ANSWER_CELLS = 8


def answer_section(task: Task, comparisons: pd.DataFrame, seed_test: str) -> list[str]:
    """The report's first lines: for each pair of inits compared, where one is better after Holm, with the
    difference, its bounded interval and ``p_holm``, cell by cell (the strongest first when there are many)."""
    if not len(comparisons):
        return []
    lines = ["## Answer", ""]
    for (init, vs), g in comparisons.groupby(["init", "vs"], sort=False):
        shown = g.sort_values("p_holm", kind="stable").head(_ANSWER_CELLS).sort_index()
        wins = int(((g["p_holm"] < 0.05) & (_better(task, g["difference"]))).sum())
        losses = int(((g["p_holm"] < 0.05) & (_better(task, -g["difference"]))).sum())
        unit = g["unit"].iloc[0] if "unit" in g else "seed"
        lo, hi = int(g["seeds"].min()), int(g["seeds"].max())
        how = (f"{TEST_NAMES.get(seed_test, seed_test)}, {lo if lo == hi else f'{lo}-{hi}'} seeds"
               if unit == "seed" else f"{g['test'].iloc[0]}, one seed")
        lines.append(f"**`{init}` vs `{vs}`** (test `{g['metric'].iloc[0]}`, {how}; Holm over all "
                     f"{len(comparisons)} comparisons): `{init}` is better in {wins} and worse in {losses} of "
                     f"{len(g)} cells at p_holm < 0.05.")
        lines.append("")
        for _, r in shown.iterrows():
            verdict = ("better" if _better(task, r["difference"]) else "worse") if r["p_holm"] < 0.05 else "no difference shown"
            ci = ("95% CI -" if pd.isna(r.get("ci95_lo")) else f"95% CI [{r['ci95_lo']:+.4f}, {r['ci95_hi']:+.4f}]")
            lines.append(f"- depth `{r['depth']}`, {r['label_fraction']:.0%} of the labels: difference "
                         f"{r['difference']:+.4f} ({ci}), p_holm {fmt_p(r['p_holm'])}: {verdict}.")
        if len(g) > len(shown):
            lines.append(f"- ... {len(g) - len(shown)} more cells in *Paired comparisons*.")
        lines.append("")
    return lines


def _better(task: Task, difference: Any) -> Any:
    """Whether a difference (first minus baseline) favours the first, given the monitor's direction."""
    return difference > 0 if task.mode == "max" else difference < 0


def per_class_section(runs_dir: Path, df: pd.DataFrame) -> list[str]:
    table = per_class_recall(runs_dir, df)
    if not len(table):
        return []
    return ["## Per-class recall on the test split", "",
            "The share of each true class predicted as itself (at the argmax threshold): mean over seeds with its 95% "
            "interval (t-interval on the logit scale, inside [0, 1]; `-` below three seeds). On an imbalanced set "
            "this shows what accuracy hides.", "", md_table(table, 3), ""]


def _missing_section(missing: Sequence[str]) -> list[str]:
    if not missing:
        return []
    return [f"**Incomplete study: {len(missing)} cell(s) not finished yet** ({', '.join(missing[:8])}"
            f"{', ...' if len(missing) > 8 else ''}); every table below is over the finished cells only.", ""]


def _task_sections(task: Task, df: pd.DataFrame, summaries: dict[str, dict[str, Any]]) -> list[str]:
    """The task's own sections (per-landmark tables...), one column per run: with several seeds, the first seed's
    run of each cell only, so a 3-seed grid does not make the table three times as wide."""
    first = df["seed"].min()
    shown = df.loc[df["seed"] == first, "run"] if df["seed"].nunique() > 1 else df["run"]
    summaries = {r: summaries[r] for r in shown if r in summaries}
    lines = task.report_sections(summaries, md_table)
    if lines and df["seed"].nunique() > 1:
        lines.insert(2, f"Seed {first} of each cell (the other seeds' runs are in their run directories).\n")
    return lines


def run_summaries(runs_dir: Path, runs: list[str]) -> dict[str, dict[str, Any]]:
    """Each run's ``summary.json``, by run name in the given order (runs without one are left out)."""
    out = {}
    for run in runs:
        f = runs_dir / run / "summary.json"
        if f.is_file():
            out[run] = json.loads(f.read_text())
    return out


def run_devices(runs_dir: Path, summaries: dict[str, dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(device, device name) each run trained on: from its summary, else its config's ``runtime.device``.

    The config may only say ``auto``, which does not tell the device apart.
    """
    out = []
    for run, summary in summaries.items():
        device = summary.get("device")
        if device is None:
            f = runs_dir / run / "config.yaml"
            config = (yaml.safe_load(f.read_text()) or {}) if f.is_file() else {}
            device = (config.get("runtime") or {}).get("device")
        out.append((str(device or "auto"), summary.get("device_name")))
    return out


def describe_devices(devices: list[tuple[str, str | None]]) -> str:
    """"CPU (2 cores, x86_64)", a CUDA device's name, or one of these per group of runs when they differ."""
    counts = Counter(devices)
    if not counts:
        return "no recorded device"
    if len(counts) == 1:
        return _device_phrase(*devices[0])
    return ", ".join(f"{_device_phrase(*d)} ({n} run{'s' if n > 1 else ''})" for d, n in counts.items())


def _device_phrase(device: str, name: str | None) -> str:
    kind = device.split(":", 1)[0]
    if kind == "cpu":
        return f"CPU ({cpu_count()} cores, {name or platform.processor() or platform.machine()})"
    if kind == "cuda":
        return name or f"CUDA device `{device}` (name not recorded)"
    if kind == "auto":
        return "a device the runs did not record (`runtime.device: auto`)"
    return name or f"`{device}`"


def _title_section(st: StudyConfig, builtin_data: bool = False) -> list[str]:
    lines = [f"# {st.title or st.name}", ""]
    if st.command:
        where = "from the project root" if builtin_data else "from the project root, with `../shared/data` present"
        lines += [f"Regenerate ({where}):", "", "```", st.command, "```", ""]
    return lines


def _data_desc(d: DataConfig, val_desc: str) -> str:
    """Where the splits came from: the listings, or the folds of the listings under ``data.fold``."""
    train = ", ".join(f"`{t}`" for t in d.train) if isinstance(d.train, list) else f"`{d.train}`"
    if d.fold is None:
        return f"{train} (train), {val_desc} (validation), `{d.test}`"
    return (f"{train} dealt into the folds of `{d.folds}`: the other folds (train), {val_desc} (validation), "
            f"fold `data.fold` ({d.fold} in the base config; a variant may set it)")


def _setup_section(cfg: Config, task: Task, df: pd.DataFrame, devices: str) -> list[str]:
    """Data, backbone, training recipe, augmentation and grid, as the runs used them."""
    t, d, st = cfg.train, cfg.data, cfg.study
    total_s = float(df["seconds"].fillna(0).sum())
    val_desc = f"`{d.val}`" if d.val else f"{d.val_fraction:.0%} of train ({'stratified' if task.stratify_key else 'random'})"
    return [
        "## Setup", "",
        f"- Task: {cfg.task.name}; data: {_data_desc(d, val_desc)} (test, evaluated once per run with the model "
        "selected on validation).",
        f"- Backbone: `{cfg.backbone.name}`, input {d.image_size[0]}x{d.image_size[1]} (H x W), "
        f"{cfg.backbone.in_chans} channel(s), channel policy `{cfg.backbone.channels}`.",
        f"- Training: {t.optimizer}, lr {t.lr:g} for pretrained stages, head x{t.head_lr_mult:g}, "
        f"bias x{t.bias_lr_mult:g}, momentum {t.momentum:g}, weight decay {t.weight_decay:g} (not on 1-D tensors), "
        f"lr x{t.gamma:g} per epoch, at most {t.epochs} epochs, batch {t.batch_size}, early stopping patience "
        f"{t.patience} on validation `{task.monitor}`.",
        f"- Augmentation: {json.dumps(dataclasses_asdict(d.augment)) if dataclasses_asdict(d.augment) else 'none'}.",
        f"- Grid: {f'variants {list(st.variants)}, ' if st.variants else ''}inits {list(st.inits)}, depths "
        f"{list(st.depths)}, label fractions {list(st.label_fractions)}, seeds {list(st.seeds)}: {len(df)} runs, "
        f"{total_s / 60:.1f} min of training in all on {devices}.",
        *[f"- Variant `{v}`: {', '.join(f'`{k}: {json.dumps(x)}`' for k, x in o.items()) or 'this config as written'}."
          for v, o in st.variants.items()],
        f"- Training images per run: {sorted(set(df['n_train']))}.",
        "",
    ]


def _results_section(task: Task, agg: pd.DataFrame) -> list[str]:
    """The task's report metrics on the test split per (init, depth, label fraction): mean ± SD, and the monitor's
    95% interval over seeds, inside the metric's range."""
    metrics = [m for m in task.report_metrics if f"test_{m}_mean" in agg.columns]
    seeds = seeds_column(agg)
    table = pd.DataFrame({
        "init": agg["init"], "depth": agg["depth"], "labels": agg["label_fraction"], "seeds": seeds,
        **{m: [_mean_std(r, f"test_{m}", task.report_digits) for _, r in agg.iterrows()] for m in metrics},
        "train min": _formatted(agg, "train_minutes", 1),
        "test s/image": _formatted(agg, "test_seconds_per_image", 3),
        "peak GiB": _formatted(agg, "peak_memory_gib", 2),
    }).dropna(axis=1, how="all")
    m = f"test_{task.monitor}"
    ci = pd.DataFrame({"init": agg["init"], "depth": agg["depth"], "labels": agg["label_fraction"],
                       "seeds": seeds, f"{task.monitor} mean": agg[f"{m}_mean"],
                       "95% CI low": agg.get(f"{m}_lo"), "95% CI high": agg.get(f"{m}_hi")})
    return ["## Results on the test split", "", md_table(table), "",
            "Mean ± sample standard deviation over seeds where there is more than one seed; `seeds`: the runs whose "
            "metric is a number (\"4 of 5\": one seed's value was NaN and is left out of every statistic). `train "
            "min`: wall time of a run (data, training, selection, scoring); `test s/image`: scoring the test split, "
            "inference and metrics, per image, on the device of the setup line; `peak GiB`: the run's largest "
            "resident memory (process or DataLoader worker).", "",
            f"### {task.monitor}: 95% interval over seeds", "",
            interval_sentence(task, task.monitor), "",
            md_table(ci, task.report_digits), ""]


def seeds_column(agg: pd.DataFrame) -> list[str]:
    """"n", or "k of n" where some runs' monitor is NaN."""
    runs = agg["runs"] if "runs" in agg else agg["seeds"]
    return [f"{k}" if k == n else f"{k} of {n}" for k, n in zip(agg["seeds"], runs)]


def interval_sentence(task: Task, metric: str) -> str:
    """How the intervals of ``metric`` were computed, as the report states it."""
    lo, hi = task.metric_range(metric)
    kind = interval_kind((lo, hi))
    where = {"logit": f" (`{metric}` lies in [{lo:g}, {hi:g}])", "log": f" (`{metric}` is positive)", "t": ""}[kind]
    return (f"{INTERVAL_NAMES[kind].capitalize()}{where}, over the seeds whose value is a number. "
            f"`-`: fewer than {MIN_SEEDS_FOR_INTERVAL} seeds, where an interval says nothing (with 2 seeds the "
            "t-quantile is 12.7).")


def _formatted(agg: pd.DataFrame, column: str, digits: int) -> list[str] | None:
    """A resource column as text with its own precision ("-" where a run did not record it); None if absent."""
    if column not in agg or agg[column].isna().all():
        return None
    return [fmt_cell(float(v), digits) for v in agg[column]]


def comparisons_section(task: Task, comparisons: pd.DataFrame, seed_test: str = "wilcoxon") -> list[str]:
    """Paired comparisons with Holm-adjusted p-values, the test used, effect sizes, and what the seeds allow."""
    if not len(comparisons):
        return []
    better = "positive" if task.mode == "max" else "negative"
    n = len(comparisons)
    by_seed = comparisons[comparisons["unit"] == "seed"] if "unit" in comparisons else comparisons.iloc[:0]
    cols = [c for c in ["depth", "label_fraction", "init", "vs", "seeds", "metric", "difference", "relative",
                        "ci95_lo", "ci95_hi", "cohens_dz", "rank_biserial", "p_value", "p_holm", "test"] if c in comparisons]
    lines = ["## Paired comparisons", "",
             f"Difference = first init minus the baseline on the test split, in the quantity of the `metric` column "
             f"(for `{task.monitor}`, {better} is better), at the same depth and label fraction; `relative` = "
             "difference / the baseline's mean of that same quantity on the same seeds or images (-0.22: 22% lower "
             f"than the baseline). Holm's correction runs over all {n} comparisons of this study (`p_holm`); read a "
             "difference as shown only where `p_holm` < 0.05.", ""]
    if len(by_seed):
        pairs = int(by_seed["seeds"].min())
        lo, hi = task.metric_range(task.monitor)
        truncated = (f", truncated to ±{hi - lo:g}, the range a difference of `{task.monitor}` can take"
                     if math.isfinite(hi - lo) else "")
        lines += [f"- With several seeds the unit is the seed: each init's test `{task.monitor}` is paired by seed "
                  f"(same seed, same labelled subset; a seed whose value is NaN in either run is left out of the pair "
                  f"and `seeds` counts the pairs used), tested with the {TEST_NAMES[seed_test]}; the interval is the "
                  f"t-interval of the mean paired difference{truncated} (`-` below {MIN_SEEDS_FOR_INTERVAL} pairs); "
                  "effect sizes: Cohen's d_z (mean / SD of the differences) and the matched-pairs rank-biserial "
                  "correlation.",
                  _limits_line(seed_test, pairs, n)]
    if len(by_seed) < n:
        lines += ["- With one seed the unit is the test image: the task's paired test over test images, named in "
                  "the `test` column, on the quantity named in `metric` (classification: a paired bootstrap of the "
                  "AUC difference, percentile interval, p = (1 + k) / (1 + resamples); landmarks: Wilcoxon "
                  "signed-rank on per-image error; detection: per-image F1 at the score threshold, since mAP has no "
                  "per-image value); it shows how sure we are about these two trained models, not about the init, "
                  "since another seed may train differently."]
    return lines + ["", md_table(comparisons[cols], 4), ""]


def _limits_line(seed_test: str, pairs: int, n: int) -> str:
    if seed_test in ("wilcoxon", "signflip"):
        name = "exact Wilcoxon" if seed_test == "wilcoxon" else "exact sign-flip"
        floor = min_attainable_p(pairs, seed_test)
        verdict = ("so no comparison here can reach p < 0.05, whatever the differences" if floor >= 0.05 else
                   "small enough for one comparison" if floor >= 0.05 / n else "small enough even after Holm")
        return (f"- Limits: with {pairs} paired seeds the {name} test cannot give a two-sided p below "
                f"{floor:.3g} (2/2^{pairs}), {verdict}; a conclusion at 0.05 needs at least {seeds_needed(0.05)} "
                f"seeds for one comparison, {seeds_needed(0.05, n)} for the strongest of these {n} after Holm.")
    return (f"- Limits: the paired t-test with {pairs} seeds has {pairs - 1} degree(s) of freedom and assumes "
            "normally distributed differences, which so few seeds cannot check; the exact sign-flip test "
            f"(`study.seed_test: signflip`) assumes only symmetry and needs {seeds_needed(0.05)} seeds to reach "
            "p < 0.05 at all.")


def within_seeds_section(within: pd.DataFrame | None) -> list[str]:
    """The supplementary per-seed comparisons on the test images."""
    if within is None or not len(within):
        return []
    cols = [c for c in ["depth", "label_fraction", "seed", "init", "vs", "metric", "difference", "ci95_lo", "ci95_hi",
                        "p_value", "p_holm", "test"] if c in within]
    return ["### Within each seed, on the test images (supplementary)", "",
            "Each seed's two runs compared on the same test images (Holm over these rows). This measures how sure we "
            "are about these two trained models, not about the inits: another seed trains differently, which is "
            "what the seed-level test above accounts for. Read it as the within-seed view while seeds are few.", "",
            md_table(within[cols], 4), ""]


def efficiency_section(task: Task, efficiency: pd.DataFrame | None) -> list[str]:
    """The label fraction at which each init first matches scratch at 100% of the labels."""
    if efficiency is None or not len(efficiency):
        return []
    return ["## Label efficiency", "",
            f"The smallest label fraction of the grid at which an init's mean test `{task.monitor}` reaches "
            "scratch's at 100% of the labels (same depth); the interval runs from the first fraction whose "
            "upper 95% bound reaches it to the first whose lower bound does. `-`: not reached within the grid.", "",
            md_table(efficiency, 3), ""]


def _references_section(st: StudyConfig) -> list[str]:
    if not st.references:
        return []
    ref_metrics = sorted({k for r in st.references for k in r.metrics})
    ref = pd.DataFrame([{"result": r.name, **{k: r.metrics.get(k) for k in ref_metrics}, "note": r.note}
                        for r in st.references])
    return ["## Published results, for reference", "",
            "Different protocols (input size, training budget, architecture); not used for any choice here.", "",
            md_table(ref, 3), ""]


def _plots_section(st: StudyConfig, task: Task, df: pd.DataFrame, agg: pd.DataFrame, runs_dir: Path,
                   out: Path) -> list[str]:
    """Metric vs depth and vs label fraction, validation curves, and the test plots of the best run on validation."""
    monitor = task.monitor
    plots = _grid_plots(st, monitor, agg, out)
    bounds = task.metric_range(monitor)
    curves = validation_curves(runs_dir, list(df["run"]), monitor)
    plots.append(plot_validation_curves(curves, df, monitor, bounds, out.parent / f"{out.stem}_curves.png"))
    plots.append(plot_validation_curves(curves, df, monitor, bounds, out.parent / f"{out.stem}_convergence.png",
                                       x="steps"))
    roc = plot_roc_intervals(runs_dir, df, out.parent / f"{out.stem}_roc.png")
    plots += [roc] if roc is not None else []
    best = best_on_validation(task, df)
    plots += _copy_test_plots(runs_dir / best, out)
    return ["## Plots", "",
            "One panel per depth or label fraction, one line per init: the mean over seeds, with error bars or a band "
            "for the 95% interval over seeds as in the tables (inside the metric's range; none below three seeds). "
            f"`{out.stem}_curves`: validation {monitor} per epoch; `{out.stem}_convergence`: the same against "
            "optimiser steps. "
            f"Test plots (`*_best_test_*`) are of `{best}`, the run with the best validation {monitor}.", "",
            *[f"![{p.stem}]({p.name})" for p in plots], ""]


def _grid_plots(st: StudyConfig, monitor: str, agg: pd.DataFrame, out: Path) -> list[Path]:
    """The test metric against depth and against label fraction, where the grid varies them."""
    plots = []
    if len(st.depths) > 1:
        plots.append(plot_test_metric(agg, f"test_{monitor}", "depth", list(st.depths),
                                      out.parent / f"{out.stem}_depth.png", f"test {monitor}"))
    if len(st.label_fractions) > 1:
        plots.append(plot_test_metric(agg, f"test_{monitor}", "label_fraction", sorted(st.label_fractions),
                                      out.parent / f"{out.stem}_fraction.png", f"test {monitor}"))
    return plots


def best_on_validation(task: Task, df: pd.DataFrame) -> str:
    """The run with the best validation monitor (never chosen on test)."""
    vals = df[f"val_{task.monitor}"]
    return str(df.loc[vals.idxmax() if task.mode == "max" else vals.idxmin(), "run"])


def _copy_test_plots(run_dir: Path, out: Path) -> list[Path]:
    """The run's test plots, copied next to the report as ``<stem>_best_<name>``."""
    copied = []
    for f in sorted(run_dir.glob("test_*.png")):
        dst = out.parent / f"{out.stem}_best_{f.name}"
        shutil.copyfile(f, dst)
        copied.append(dst)
    return copied


def _runs_section(task: Task, df: pd.DataFrame) -> list[str]:
    m = task.monitor
    sel = df[["run", "selected_depth", "best_epoch", f"val_{m}", f"test_{m}", "seconds"]]
    return ["## Runs", "", md_table(sel, task.report_digits), ""]


def _notes_section(st: StudyConfig) -> list[str]:
    if not st.notes:
        return []
    return ["## Notes", "", *[f"- {n}" for n in st.notes], ""]


def dataclasses_asdict(obj: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(obj).items() if v}


def cpu_count() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
