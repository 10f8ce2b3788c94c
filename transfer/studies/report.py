"""Markdown study reports: setup, results table, paired comparisons, references, plots."""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from transfer.config import Config


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


def write_report(cfg: Config, task: Any, df: pd.DataFrame, agg: pd.DataFrame, comparisons: pd.DataFrame,
                 root: Path) -> Path:
    st = cfg.study
    out = Path(st.report)  # type: ignore[arg-type]
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.stem
    monitor = task.monitor
    digits = 2 if monitor.endswith("_mm") else 3
    lines: list[str] = [f"# {st.title or st.name}", ""]
    if st.command:
        lines += ["Regenerate (from the project root, with `../shared/data` present):", "", "```", st.command, "```", ""]
    t = cfg.train
    total_s = float(df["seconds"].fillna(0).sum())
    val_desc = (f"`{cfg.data.val}`" if cfg.data.val else
                f"{cfg.data.val_fraction:.0%} of train ({'stratified' if task.stratify_key else 'random'})")
    lines += [
        "## Setup", "",
        f"- Task: {cfg.task.name}; data: `{cfg.data.train}` (train), "
        f"{val_desc} (validation), "
        f"`{cfg.data.test}` (test, evaluated once per run with the model selected on validation).",
        f"- Backbone: `{cfg.backbone.name}`, input {cfg.data.image_size[0]}x{cfg.data.image_size[1]} (H x W), "
        f"{cfg.backbone.in_chans} channel(s), channel policy `{cfg.backbone.channels}`.",
        f"- Training: {t.optimizer}, lr {t.lr:g} for pretrained stages, head x{t.head_lr_mult:g}, "
        f"bias x{t.bias_lr_mult:g}, momentum {t.momentum:g}, weight decay {t.weight_decay:g} (not on 1-D tensors), "
        f"lr x{t.gamma:g} per epoch, at most {t.epochs} epochs, batch {t.batch_size}, early stopping patience "
        f"{t.patience} on validation `{monitor}`.",
        f"- Augmentation: {json.dumps(dataclasses_asdict(cfg.data.augment))}.",
        f"- Grid: inits {list(st.inits)}, depths {list(st.depths)}, label fractions {list(st.label_fractions)}, "
        f"seeds {list(st.seeds)}: {len(df)} runs, {total_s / 60:.1f} min of training in all "
        f"on {platform.processor() or platform.machine()} CPU ({_cpu_count()} cores).",
        f"- Training images per run: {sorted(set(df['n_train']))}.",
        "",
        "## Results on the test split", "",
    ]
    metrics = [m for m in task.report_metrics if f"test_{m}_mean" in agg.columns]
    table = pd.DataFrame({
        "init": agg["init"], "depth": agg["depth"], "labels": agg["label_fraction"], "seeds": agg["seeds"],
        **{m: [_mean_std(r, f"test_{m}", digits) for _, r in agg.iterrows()] for m in metrics},
    })
    lines += [md_table(table), "",
              "Mean ± sample standard deviation over seeds where there is more than one seed.", ""]
    if len(comparisons):
        c = comparisons.copy()
        lines += ["## Paired comparisons on the test images", "",
                  "Difference = first init minus the baseline (for errors, negative is better; for AUC, positive).", "",
                  md_table(c[["depth", "label_fraction", "seed", "init", "vs", "metric", "difference", "ci95_lo",
                              "ci95_hi", "p_value", "test"]], 4), ""]
    if st.references:
        ref_metrics = sorted({k for r in st.references for k in r.metrics})
        ref = pd.DataFrame([{"result": r.name, **{k: r.metrics.get(k) for k in ref_metrics}, "note": r.note}
                            for r in st.references])
        lines += ["## Published results, for reference", "",
                  "Different protocols (input size, training budget, architecture); not used for any choice here.", "",
                  md_table(ref, 3), ""]
    plots = []
    depth_order = list(st.depths)
    if len(depth_order) > 1:
        plots.append(plot_metric_vs_depth(agg, f"test_{monitor}", depth_order, out.parent / f"{stem}_depth.png",
                                          f"test {monitor}"))
    if len(st.label_fractions) > 1:
        plots.append(plot_metric_vs_fraction(agg, f"test_{monitor}", out.parent / f"{stem}_fraction.png",
                                             f"test {monitor}"))
    plots.append(plot_curves(root / "runs", list(df["run"]), monitor, out.parent / f"{stem}_curves.png"))
    # the test plots of the run best on *validation* (never chosen on test)
    vals = df[f"val_{monitor}"]
    best = df.loc[vals.idxmax() if task.mode == "max" else vals.idxmin()]
    import shutil

    for f in sorted((root / "runs" / best["run"]).glob("test_*.png")):
        dst = out.parent / f"{stem}_best_{f.name}"
        shutil.copyfile(f, dst)
        plots.append(dst)
    lines += ["## Plots", "",
              f"Test plots (`*_best_test_*`) are of `{best['run']}`, the run with the best validation {monitor}.", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    per = _per_landmark_section(root / "runs", df)
    if per:
        lines += per
    sel = df[["run", "selected_depth", "best_epoch", f"val_{monitor}", f"test_{monitor}", "seconds"]]
    lines += ["## Runs", "", md_table(sel, digits), ""]
    if st.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in st.notes] + [""]
    out.write_text("\n".join(lines))
    return out


def _per_landmark_section(runs_dir: Path, df: pd.DataFrame) -> list[str]:
    """Per-landmark mean and SD (mm) per run, the dental seed's Table I layout."""
    cols: dict[str, list[str]] = {}
    names: list[str] = []
    for run in df["run"]:
        f = runs_dir / run / "summary.json"
        if not f.is_file():
            continue
        s = json.loads(f.read_text())
        per = (s.get("test") or {}).get("per_landmark")
        if not per:
            return []
        names = [p["name"] for p in per]
        cols[run] = [f"{p['mean_mm']:.2f} ± {p['sd_mm']:.2f}" for p in per]
    if not cols:
        return []
    table = pd.DataFrame({"landmark": names, **cols})
    return ["## Per-landmark radial error on the test split (mm, mean ± SD)", "", md_table(table), ""]


def dataclasses_asdict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(obj).items() if v}


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

