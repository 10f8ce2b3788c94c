"""One stage-2 run: data, backbone, depth (fixed or ``auto``), training, selection, test once, run directory."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transfer.api import Task, TaskModel, make_task
from transfer.backbones.feature_memo import FrozenFeatureMemo
from transfer.config import Config, to_dict
from transfer.distributed import barrier
from transfer.finetune import recalibrate_batchnorm
from transfer.runs.config_checks import check_finetune_config
from transfer.runs.context import RunContext
from transfer.runs.depth import DepthFit, auto_depth, fit_depth
from transfer.runs.image_columns import with_image_columns
from transfer.runs.memory import gpu_peak_memory_gib, peak_memory_gib, peak_memory_scope, reset_peak_memory
from transfer.runs.model_io import model_checkpoint
from transfer.runs.prior_state import claimed_run, prior_run, recorded
from transfer.runs.splits import Splits, prepare_data
from transfer.runs.timing import run_cost
from transfer.tracking import Run, atomic_torch_save, training_config
from transfer.weights import LoadReport, backbone_from_config


def default_run_name(cfg: Config) -> str:
    init = cfg.init if cfg.init in ("imagenet", "scratch") else Path(cfg.init).parent.name or "ckpt"
    return (f"{cfg.task.name}-{cfg.backbone.name.replace(':', '_')}-{init}-{cfg.train.depth}"
            f"-frac{cfg.data.label_fraction:g}-seed{cfg.seed}")


def run_finetune(cfg: Config, *, name: str | None = None, restart: bool = False,
                 feature_memo: FrozenFeatureMemo | None = None) -> dict[str, Any]:
    """Train, select on validation, test once; returns the summary written to ``summary.json``.

    A run directory that holds a finished run (``summary.json`` + ``model.pt``) is not trained again: its summary
    is returned. Resume states left by an interrupted run are checked against this config before anything is
    written; ``restart`` discards the old run's files and starts over. Config values (backbone, depth, init) are
    checked before data is read or the directory made; an error after that leaves ``failed.json`` in the directory.
    Under torchrun (a process group), every rank trains its shard and evaluates the full validation set (so all
    ranks select the same epoch and stop together); rank 0 alone writes the run directory and W&B.
    ``feature_memo``: a memo of frozen-backbone features shared with other runs in this process (a study's cells);
    the model's own, per run, otherwise.
    """
    ctx = RunContext.resolve(cfg.runtime, cfg.seed)  # device, precision, rank, seeds: worked out here, once
    ctx.seed_shared()
    t0, c0 = time.time(), time.process_time()
    task = make_task(cfg)
    check_finetune_config(cfg)
    task.precision = ctx.precision  # the engine trains and the task scores under the same autocast and memory format
    reset_peak_memory(ctx.device)  # the peak of this run, not of an earlier one in the same process (a study)
    name = name or cfg.tracking.name or default_run_name(cfg)
    run_dir = Path(cfg.tracking.out_dir) / name
    key = training_config(to_dict(cfg), "finetune")
    if not restart and (done := prior_run(run_dir, "model.pt", key, "finetune")) is not None:
        return done
    splits = prepare_data(task, cfg)
    with claimed_run(run_dir, "model.pt", key, "finetune", splits.fingerprint, restart) as done:
        if done is not None:
            return done
        run = Run.from_config(cfg.tracking, name, to_dict(cfg),
                              job_type="finetune", tags=[cfg.task.name, cfg.backbone.name, cfg.train.depth])
        barrier()  # no rank reads a resume state before rank 0 has discarded it (--restart)
        with recorded(run):
            splits.train = task.for_training(splits.train)  # after the fingerprint: what training reads besides
            model, report = _build_model(cfg, ctx, task, splits, run)
            if feature_memo is not None and model.feature_memo is not None:
                model.feature_memo = feature_memo
            summary, trained = _train_and_select(cfg, ctx, task, model, splits, run)
            summary.update(_score(cfg, ctx, task, model, splits, run))
            summary.update({"weights": report.source, "missing_keys": report.missing,
                            "unused_keys": report.unexpected,
                            **_cost(trained, summary["resumed_from_epoch"], time.time() - t0, time.process_time() - c0),
                            "peak_memory_gib": peak_memory_gib(), "peak_memory_scope": peak_memory_scope(),
                            "gpu_peak_memory_gib": gpu_peak_memory_gib(ctx.device)})
            return _finish(cfg, task, model, run, summary)


def _build_model(cfg: Config, ctx: RunContext, task: Task, splits: Splits, run: Run) -> tuple[TaskModel, LoadReport]:
    """Backbone with its weights, the task's new head; BatchNorm statistics for frozen random stages."""
    backbone, report = backbone_from_config(cfg.backbone, cfg.init)
    print(report.summary())
    if cfg.init not in ("imagenet", "scratch"):
        run.use_checkpoint(Path(cfg.init), report.provenance)
    # the head's init does not depend on how many weights were loaded. From here on each rank draws from its own
    # seed (augmentations, crops, jitter); DDP gives every rank rank 0's initial weights, so the model is shared
    ctx.seed_own()
    model = task.build_model(backbone, splits.train).to(ctx.device)
    if cfg.init == "scratch" and cfg.train.depth != "all":
        # frozen random stages need BatchNorm statistics from data (see recalibrate_batchnorm)
        recalibrate_batchnorm(backbone, splits.train.images, ctx.device, max(cfg.train.batch_size, 64))
    return model, report


def _cost(trained: DepthFit | None, resumed_from: int | None, wall: float, cpu: float) -> dict[str, Any]:
    """The run's wall and CPU seconds over all its sessions (:func:`run_cost`). A resumed ``auto`` search trained its
    earlier depths in earlier sessions, whose clocks are not kept: its cost is this process's, and says so."""
    if trained is None and resumed_from is not None:
        return {**run_cost([], None, wall, cpu), "cost": "this process"}
    return run_cost(trained.result.history if trained is not None else [], resumed_from, wall, cpu)


def _train_and_select(cfg: Config, ctx: RunContext, task: Task, model: TaskModel, splits: Splits, run: Run
                      ) -> tuple[dict[str, Any], DepthFit | None]:
    """Train at the configured depth (or search it); the selected model is left loaded. Returns the summary's
    training part and, at a fixed depth, its fit (whose history times every epoch, restored ones included)."""
    t = cfg.train
    depth_curve: list[dict[str, Any]] = []
    resumed: dict[str, Any] = {}
    if t.depth == "auto":
        chosen, fit = auto_depth(task, model, cfg, ctx, splits, run, depth_curve, resumed)
    else:  # the depth's name was checked with the config (check_finetune_config)
        chosen = t.depth
        fit = fit_depth(task, model, cfg, ctx, splits, t.depth, run, t.epochs, run.dir / "last.pt")
        if fit.result.resumed_from is not None:
            resumed.update(epoch=fit.result.resumed_from, depth=t.depth)
    return {
        "run": run.name, "task": cfg.task.name, "backbone": cfg.backbone.name, "init": cfg.init,
        "depth": t.depth, "selected_depth": chosen,
        # what was trained: stages a head never uses (above a heatmap head's feature map) get no gradient
        "trainable_stages": fit.trained_stages,
        # a further stage's own (e.g. the landmark refinement backbone's), when the model has one
        **({"extra_trainable_stages": fit.extra_trained_stages} if fit.extra_trained_stages else {}),
        "label_fraction": cfg.data.label_fraction, "seed": cfg.seed, "image_size": list(cfg.data.image_size),
        "channels": cfg.backbone.in_chans, "channel_policy": cfg.backbone.channels,
        "device": str(ctx.device), "device_name": ctx.device_name,
        # processes under torchrun; train.batch_size is per process, so the effective batch is world_size times it
        "world_size": ctx.world_size,
        # each rank's RNG seed (rank 0's is the run's seed): ranks draw their own augmentations
        "rank_seeds": ctx.rank_seeds,
        "monitor": task.monitor, "best_val": fit.best, "best_epoch": fit.best_epoch, **splits.info,
        "depth_curve": depth_curve, "task_info": task.info,
        # the first epoch trained after continuing from a resume state (None: trained from the start)
        "resumed_from_epoch": resumed.get("epoch"), "resumed_at_depth": resumed.get("depth"),
    }, (None if t.depth == "auto" else fit)


def _score(cfg: Config, ctx: RunContext, task: Task, model: TaskModel, splits: Splits, run: Run) -> dict[str, Any]:
    """Final scores of the selected model: validation, then the test split once; predictions and plots."""
    device = ctx.device
    media = cfg.tracking.log_media
    media = media and run.writes  # plots are files: rank 0's
    val = task.evaluate(model, splits.val, device, with_ci=True)
    run.write_csv("predictions_val.csv", with_image_columns(val.predictions))
    plots = task.plots(val, splits.val, run.dir, "val") if media else []
    out: dict[str, Any] = {"val": val.metrics}
    if splits.test is not None and cfg.train.eval_test:
        t0 = time.perf_counter()
        test = task.evaluate(model, splits.test, device, with_ci=True)
        # inference and metrics together, per image: what scoring a new image costs, within the metric's overhead
        out["test_seconds_per_image"] = round((time.perf_counter() - t0) / max(len(splits.test), 1), 4)
        run.write_csv("predictions_test.csv", with_image_columns(test.predictions))
        out["test"] = test.metrics
        plots += task.plots(test, splits.test, run.dir, "test") if media else []
        run.log_table("test_predictions", test.predictions)
    run.log_images(plots)
    return out


def _finish(cfg: Config, task: Task, model: TaskModel, run: Run, summary: dict[str, Any]) -> dict[str, Any]:
    """Write the model and the summary; drop the resume state a complete run no longer needs."""
    ckpt = run.dir / "model.pt"
    if not run.writes:
        return summary
    atomic_torch_save(model_checkpoint(model, cfg, task, summary["selected_depth"]), ckpt)
    run.log_summary(summary)  # summary.json + model.pt: the run is complete, its resume states can go
    for resume_state in run.dir.glob("last*.pt"):
        resume_state.unlink()
    run.log_artifact(ckpt, f"model-{run.name}", "model", {"task": cfg.task.name, "depth": summary["selected_depth"]})
    return summary
