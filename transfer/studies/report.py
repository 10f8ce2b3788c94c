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
from typing import Any

import pandas as pd
import yaml
from matplotlib.figure import Figure

from transfer.api import Task
from transfer.config import Config, StudyConfig


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def md_table(df: pd.DataFrame, digits: int = 3) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c], digits) for c in cols) + " |")
    return "\n".join(lines)


def _mean_std(row: pd.Series, m: str, digits: int) -> str:
    mean, std = row.get(f"{m}_mean"), row.get(f"{m}_std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _save(fig: Figure, ax, path: Path, legend_size: int = 8) -> Path:  # noqa: ANN001 (matplotlib Axes)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_metric_vs_depth(agg: pd.DataFrame, metric: str, depths: list[str], path: Path, ylabel: str) -> Path:
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for (init, frac), g in agg.groupby(["init", "label_fraction"], sort=False):
        g = g.set_index("depth").reindex([d for d in depths if d in set(g["depth"])])
        ax.errorbar(range(len(g)), g[f"{metric}_mean"], yerr=g[f"{metric}_std"].fillna(0), marker="o", capsize=3,
                    label=f"{init}, {frac:.0%} of labels")
        ax.set_xticks(range(len(g)), list(g.index), rotation=20)
    ax.set_xlabel("fine-tuning depth (trained stages)")
    ax.set_ylabel(ylabel)
    return _save(fig, ax, path)


def plot_metric_vs_fraction(agg: pd.DataFrame, metric: str, path: Path, ylabel: str) -> Path:
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for (init, depth), g in agg.groupby(["init", "depth"], sort=False):
        g = g.sort_values("label_fraction")
        ax.errorbar(g["label_fraction"], g[f"{metric}_mean"], yerr=g[f"{metric}_std"].fillna(0), marker="o",
                    capsize=3, label=f"{init}, {depth}")
    ax.set_xscale("log")
    ax.set_xlabel("label fraction of the training set")
    ax.set_ylabel(ylabel)
    return _save(fig, ax, path)


def plot_curves(runs_dir: Path, runs: list[str], monitor: str, path: Path) -> Path:
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for r in runs:
        f = runs_dir / r / "metrics.jsonl"
        if not f.is_file():
            continue
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        ys = [row.get(f"val_{monitor}") for row in rows]
        ax.plot(range(len(ys)), ys, label=r, lw=1.2)
    ax.set_xlabel("epoch (consecutive across depths for auto)")
    ax.set_ylabel(f"validation {monitor}")
    return _save(fig, ax, path, legend_size=6)


def write_report(cfg: Config, task: Task, df: pd.DataFrame, agg: pd.DataFrame, comparisons: pd.DataFrame,
                 root: Path) -> Path:
    """The study's markdown report (and its plots, next to it) at ``study.report``."""
    st = cfg.study
    out = Path(st.report)  # type: ignore[arg-type]
    out.parent.mkdir(parents=True, exist_ok=True)
    runs_dir = root / "runs"
    summaries = run_summaries(runs_dir, list(df["run"]))
    lines = [
        *_title_section(st),
        *_setup_section(cfg, task, df, describe_devices(run_devices(runs_dir, summaries))),
        *_results_section(task, agg),
        *_comparisons_section(task, comparisons),
        *_references_section(st),
        *_plots_section(st, task, df, agg, runs_dir, out),
        *task.report_sections(summaries, md_table),
        *_runs_section(task, df),
        *_notes_section(st),
    ]
    out.write_text("\n".join(lines))
    return out


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


def _title_section(st: StudyConfig) -> list[str]:
    lines = [f"# {st.title or st.name}", ""]
    if st.command:
        lines += ["Regenerate (from the project root, with `../shared/data` present):", "", "```", st.command, "```", ""]
    return lines


def _setup_section(cfg: Config, task: Task, df: pd.DataFrame, devices: str) -> list[str]:
    """Data, backbone, training recipe, augmentation and grid, as the runs used them."""
    t, d, st = cfg.train, cfg.data, cfg.study
    total_s = float(df["seconds"].fillna(0).sum())
    val_desc = f"`{d.val}`" if d.val else f"{d.val_fraction:.0%} of train ({'stratified' if task.stratify_key else 'random'})"
    return [
        "## Setup", "",
        f"- Task: {cfg.task.name}; data: `{d.train}` (train), {val_desc} (validation), "
        f"`{d.test}` (test, evaluated once per run with the model selected on validation).",
        f"- Backbone: `{cfg.backbone.name}`, input {d.image_size[0]}x{d.image_size[1]} (H x W), "
        f"{cfg.backbone.in_chans} channel(s), channel policy `{cfg.backbone.channels}`.",
        f"- Training: {t.optimizer}, lr {t.lr:g} for pretrained stages, head x{t.head_lr_mult:g}, "
        f"bias x{t.bias_lr_mult:g}, momentum {t.momentum:g}, weight decay {t.weight_decay:g} (not on 1-D tensors), "
        f"lr x{t.gamma:g} per epoch, at most {t.epochs} epochs, batch {t.batch_size}, early stopping patience "
        f"{t.patience} on validation `{task.monitor}`.",
        f"- Augmentation: {json.dumps(dataclasses_asdict(d.augment))}.",
        f"- Grid: inits {list(st.inits)}, depths {list(st.depths)}, label fractions {list(st.label_fractions)}, "
        f"seeds {list(st.seeds)}: {len(df)} runs, {total_s / 60:.1f} min of training in all on {devices}.",
        f"- Training images per run: {sorted(set(df['n_train']))}.",
        "",
    ]


def _results_section(task: Task, agg: pd.DataFrame) -> list[str]:
    """The task's report metrics on the test split, mean ± SD over seeds per (init, depth, label fraction)."""
    metrics = [m for m in task.report_metrics if f"test_{m}_mean" in agg.columns]
    table = pd.DataFrame({
        "init": agg["init"], "depth": agg["depth"], "labels": agg["label_fraction"], "seeds": agg["seeds"],
        **{m: [_mean_std(r, f"test_{m}", task.report_digits) for _, r in agg.iterrows()] for m in metrics},
    })
    return ["## Results on the test split", "", md_table(table), "",
            "Mean ± sample standard deviation over seeds where there is more than one seed.", ""]


def _comparisons_section(task: Task, comparisons: pd.DataFrame) -> list[str]:
    if not len(comparisons):
        return []
    better = "positive" if task.mode == "max" else "negative"
    direction = f" (for `{task.monitor}`, {better} is better)" if task.monitor in set(comparisons["metric"]) else ""
    cols = ["depth", "label_fraction", "seed", "init", "vs", "metric", "difference", "ci95_lo", "ci95_hi", "p_value",
            "test"]
    return ["## Paired comparisons on the test images", "",
            f"Difference = first init minus the baseline{direction}.", "",
            md_table(comparisons[cols], 4), ""]


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
    plots.append(plot_curves(runs_dir, list(df["run"]), monitor, out.parent / f"{out.stem}_curves.png"))
    best = best_on_validation(task, df)
    plots += _copy_test_plots(runs_dir / best, out)
    return ["## Plots", "",
            f"Test plots (`*_best_test_*`) are of `{best}`, the run with the best validation {monitor}.", "",
            *[f"![{p.stem}]({p.name})" for p in plots], ""]


def _grid_plots(st: StudyConfig, monitor: str, agg: pd.DataFrame, out: Path) -> list[Path]:
    """The test metric against depth and against label fraction, where the grid varies them."""
    plots = []
    if len(st.depths) > 1:
        plots.append(plot_metric_vs_depth(agg, f"test_{monitor}", list(st.depths), out.parent / f"{out.stem}_depth.png",
                                          f"test {monitor}"))
    if len(st.label_fractions) > 1:
        plots.append(plot_metric_vs_fraction(agg, f"test_{monitor}", out.parent / f"{out.stem}_fraction.png",
                                             f"test {monitor}"))
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
