"""``medtransfer study``: the grid initialisation x depth x label fraction x seed, then tables, statistics, report."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from transfer.config import Config
from transfer.config.io import to_dict
from transfer.api import TASKS
from transfer.stats import seed_aggregate
from transfer.tracking import Run, atomic_write_json

#: resolves ``pretrain:<method>`` inits to a checkpoint path; set by transfer.runs.pretrain when imported
PretrainResolver = Callable[[Config, str, Path], Path]


def init_label(init: str) -> str:
    if init in ("imagenet", "scratch"):
        return init
    if init.startswith("pretrain:"):
        return init.split(":", 1)[1]
    return Path(init).parent.name or Path(init).stem


def _flat_metrics(task: Any, summary: dict[str, Any], split: str) -> dict[str, float]:
    return {f"{split}_{k}": v for k, v in task.summary_metrics(summary.get(split, {})).items()}


def run_study(cfg: Config, *, resolve_pretrain: PretrainResolver | None = None,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every grid cell (skipping cells already complete on disk), then write results and the report."""
    from transfer.runs.finetune import run_finetune

    st = cfg.study
    root = Path(st.out_dir) / st.name
    root.mkdir(parents=True, exist_ok=True)
    task = TASKS.get(cfg.task.name)(cfg)
    rows: list[dict[str, Any]] = []
    cells = [(i, d, f, s) for i in st.inits for d in st.depths for f in st.label_fractions for s in st.seeds]
    t0 = time.time()
    for k, (init, depth, frac, seed) in enumerate(cells, 1):
        label = init_label(init)
        name = f"{label}-{depth}-frac{frac:g}-seed{seed}"
        run_dir = root / "runs" / name
        init_value = init
        if init.startswith("pretrain:"):
            if resolve_pretrain is None:
                from transfer.runs.pretrain import resolve_pretrain_init

                resolve_pretrain = resolve_pretrain_init
            init_value = str(resolve_pretrain(cfg, init.split(":", 1)[1], root))
        if (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
            progress(f"[{k}/{len(cells)}] {name}: done earlier, reusing {run_dir}")
        else:
            progress(f"[{k}/{len(cells)}] {name} ...")
            c = dataclasses.replace(
                cfg, init=init_value, seed=seed,
                train=dataclasses.replace(cfg.train, depth=depth),
                data=dataclasses.replace(cfg.data, label_fraction=frac),
                tracking=dataclasses.replace(cfg.tracking, out_dir=str(root / "runs"), name=name,
                                             wandb_group=cfg.tracking.wandb_group or st.name),
            )
            summary = run_finetune(c, name=name)
        rows.append({
            "init": label, "depth": depth, "label_fraction": frac, "seed": seed, "run": name,
            "selected_depth": summary["selected_depth"], "best_epoch": summary["best_epoch"],
            "n_train": summary["n_train"], "seconds": summary.get("seconds"),
            **_flat_metrics(task, summary, "val"), **_flat_metrics(task, summary, "test"),
        })
    df = pd.DataFrame(rows)
    df.to_csv(root / "results.csv", index=False)
    comparisons = compare_inits(task, df, root / "runs")
    comparisons.to_csv(root / "comparisons.csv", index=False)
    agg = aggregate_seeds(df, task)
    agg.to_csv(root / "aggregate.csv", index=False)
    out = {"root": str(root), "n_runs": len(df), "seconds": round(time.time() - t0, 1)}
    atomic_write_json(root / "study.json", {**out, "config": to_dict(cfg)})
    if st.report:
        from transfer.studies.report import write_report

        out["report"] = str(write_report(cfg, task, df, agg, comparisons, root))
    _log_study_wandb(cfg, root, df, comparisons)
    return out


def aggregate_seeds(df: pd.DataFrame, task: Any) -> pd.DataFrame:
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


def compare_inits(task: Any, df: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """Every init against imagenet and scratch, per (depth, fraction, seed), paired on the test images."""
    rows = []
    baselines = [b for b in ("imagenet", "scratch") if b in set(df["init"])]
    for (depth, frac, seed), g in df.groupby(["depth", "label_fraction", "seed"], sort=False):
        runs = dict(zip(g["init"], g["run"]))
        for base in baselines:
            for init, run in runs.items():
                if init == base or (base == "imagenet" and init == "scratch"):
                    continue  # imagenet vs scratch is reported once, as imagenet - scratch
                a, b = runs_dir / run / "predictions_test.csv", runs_dir / runs[base] / "predictions_test.csv"
                if not (a.is_file() and b.is_file()):
                    continue
                res = task.paired_comparison(pd.read_csv(a), pd.read_csv(b))
                rows.append({"depth": depth, "label_fraction": frac, "seed": seed, "init": init, "vs": base, **{
                    k: v for k, v in res.items() if k != "ci95"}, "ci95_lo": res["ci95"][0], "ci95_hi": res["ci95"][1]})
    return pd.DataFrame(rows)


def _log_study_wandb(cfg: Config, root: Path, df: pd.DataFrame, comparisons: pd.DataFrame) -> None:
    run = Run(root, "wandb-study", to_dict(cfg), wandb_mode=cfg.tracking.wandb_mode, project=cfg.tracking.wandb_project,
              entity=cfg.tracking.wandb_entity, job_type="study", group=cfg.tracking.wandb_group or cfg.study.name,
              tags=["study", cfg.task.name])
    try:
        run.log_table("study/results", df)
        if len(comparisons):
            run.log_table("study/comparisons", comparisons)
        run.log_images(sorted(root.glob("*.png")), prefix="study/")
    finally:
        run.finish()
