"""One stage-2 run: data, backbone, depth (fixed or ``auto``), training, selection, test once, run directory."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from transfer.config import Config
from transfer.configio import from_dict, to_dict
from transfer.data.datasets import ImageDataset
from transfer.data.splits import nested_fraction, validation_split
from transfer.engine import Engine, resolve_device
from transfer.errors import CheckpointError
from transfer.finetune import (LRSpec, build_optimizer, depth_names, freeze_stages, param_groups,
                               recalibrate_batchnorm, set_train_mode, trainable_stages)
from transfer.protocols import TASKS
from transfer.task_api import Task, TaskModel
from transfer.tracking import Run, atomic_torch_save, atomic_write_json
from transfer.weights import build_backbone

MODEL_FORMAT = "medtransfer-model/1"


def load_plugins() -> None:
    """Import the task and stage-1 method modules so they register themselves."""
    import ssl_pretrain  # noqa: F401
    import tasks.classification  # noqa: F401
    import tasks.landmarks  # noqa: F401


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Splits:
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset | None
    info: dict[str, Any]


def prepare_data(task: Task, cfg: Config) -> Splits:
    """Train / validation / test; validation carved (stratified) from training when not given.

    The label fraction is taken from the training part *after* the validation
    split, so every fraction is selected on the same validation images.
    """
    d = cfg.data
    if not d.train:
        raise CheckpointError("data.train is empty: name the training split in the config or with --set data.train=...")
    full = task.load_split(d.train, "train")
    if d.val:
        train, val = full, task.load_split(d.val, "val")
        carved = False
    else:
        groups = full.meta.get("groups")
        tr, va = validation_split(len(full), d.val_fraction, cfg.seed, task.label_array(full), groups)
        train, val = full.subset(tr), full.subset(va)
        carved = True
    n_before = len(train)
    keep = nested_fraction(len(train), d.label_fraction, cfg.seed, task.label_array(train),
                           task.info.get("class_names"), source=f"training split {d.train}")
    train = train.subset(keep)
    test = task.load_split(d.test, "test") if d.test else None
    info = {"n_train": len(train), "n_train_before_fraction": n_before, "n_val": len(val),
            "n_test": len(test) if test is not None else 0, "val_carved_from_train": carved,
            "skipped": [vars(s) for s in task.skipped]}
    if task.skipped:
        print(f"warning: skipped {len(task.skipped)} unreadable images, e.g. {task.skipped[0].path}: "
              f"{task.skipped[0].reason}")
    return Splits(train, val, test, info)


def default_run_name(cfg: Config) -> str:
    init = cfg.init if cfg.init in ("imagenet", "scratch") else Path(cfg.init).parent.name or "ckpt"
    return (f"{cfg.task.name}-{cfg.backbone.name.replace(':', '_')}-{init}-{cfg.train.depth}"
            f"-frac{cfg.data.label_fraction:g}-seed{cfg.seed}")


def _scheduler(opt: torch.optim.Optimizer, gamma: float) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)


def setup_depth(model: TaskModel, cfg: Config, depth: str
                ) -> tuple[list[str], torch.optim.Optimizer, Callable[[], None]]:
    """Freeze for ``depth``; return the trained stages, the optimiser over their LR groups, and the train-mode hook."""
    bb = model.backbone
    stages = [s for s in trainable_stages(depth, bb.stage_names) if s not in model.unused_stages]
    freeze_stages(bb, stages)
    for p in model.head.parameters():
        p.requires_grad_(True)
    t = cfg.train
    groups = param_groups(bb, model.head, stages, LRSpec(t.lr, t.head_lr_mult, t.bias_lr_mult, t.layer_decay,
                                                          t.weight_decay))
    opt = build_optimizer(groups, t.optimizer, t.momentum)

    def train_mode() -> None:
        model.train()
        set_train_mode(bb, stages)  # frozen stages keep BatchNorm in eval mode

    return stages, opt, train_mode


def fit_depth(task: Task, model: TaskModel, cfg: Config, splits: Splits, depth: str, device: torch.device,
              run: Run, epochs: int, resume_path: Path | None, tag: str = "") -> tuple[float, int, list[dict]]:
    """Train ``model`` at ``depth``; leaves the best validation state loaded. Returns (best, best_epoch, history)."""
    from transfer.engine import make_loader

    stages, opt, train_mode = setup_depth(model, cfg, depth)
    t = cfg.train
    engine = Engine(model, opt, scheduler=_scheduler(opt, t.gamma), device=device, amp=t.amp,
                    channels_last=t.channels_last, compile=t.compile, grad_clip=t.grad_clip,
                    progress=cfg.tracking.progress, train_mode=train_mode)
    num_samples = t.steps_per_epoch * t.batch_size if t.steps_per_epoch else None
    loader = make_loader(splits.train, t.batch_size, shuffle=True, num_workers=cfg.data.num_workers, seed=cfg.seed,
                         drop_last=len(splits.train) > t.batch_size or num_samples is not None, device=device,
                         num_samples=num_samples)

    def evaluate(epoch: int) -> dict[str, float]:
        res = task.evaluate(model, splits.val, device, batch_size=max(t.batch_size, 64))
        return task.summary_metrics(res.metrics)

    def on_epoch(row: dict[str, Any]) -> None:
        run.log_epoch({"depth": depth, **row} if tag else row)

    res = engine.fit(loader, epochs, evaluate=evaluate, monitor=task.monitor, mode=task.mode, patience=t.patience,
                     on_epoch=on_epoch, resume_path=resume_path, max_steps=t.max_steps)
    if res.best_state is not None:
        model.load_state_dict(res.best_state)
    return float(res.best_metric), res.best_epoch, res.history


def run_finetune(cfg: Config, *, name: str | None = None) -> dict[str, Any]:
    """Train, select on validation, test once; returns the summary written to ``summary.json``."""
    load_plugins()
    seed_everything(cfg.seed)
    t0 = time.time()
    task = TASKS.get(cfg.task.name)(cfg)
    splits = prepare_data(task, cfg)
    device = resolve_device(cfg.train.device)
    name = name or cfg.tracking.name or default_run_name(cfg)
    run = Run(cfg.tracking.out_dir, name, to_dict(cfg), wandb_mode=cfg.tracking.wandb_mode,
              project=cfg.tracking.wandb_project, entity=cfg.tracking.wandb_entity, job_type="finetune",
              tags=[cfg.task.name, cfg.backbone.name, cfg.train.depth], group=cfg.tracking.wandb_group)
    try:
        return _run(cfg, task, splits, device, run, t0)
    finally:
        run.finish()


def _run(cfg: Config, task: Task, splits: Splits, device: torch.device, run: Run, t0: float) -> dict[str, Any]:
    backbone, report = build_backbone(cfg.backbone.name, cfg.init, cfg.backbone.scratch_init, cfg.backbone.in_chans,
                                      cfg.backbone.channels)
    print(report.summary())
    if cfg.init not in ("imagenet", "scratch"):
        run.use_checkpoint(Path(cfg.init), report.provenance)
    seed_everything(cfg.seed)  # the head's init does not depend on how many weights were loaded
    model = task.build_model(backbone, splits.train).to(device)
    t = cfg.train
    if cfg.init == "scratch" and t.depth != "all":
        # frozen random stages need BatchNorm statistics from data (see recalibrate_batchnorm)
        recalibrate_batchnorm(backbone, splits.train.images, device, max(t.batch_size, 64))
    depth_curve: list[dict[str, Any]] = []
    if t.depth == "auto":
        chosen, best_metric, best_epoch = _auto_depth(task, model, cfg, splits, device, run, depth_curve)
    else:
        trainable_stages(t.depth, backbone.stage_names)  # validates the name before training
        best_metric, best_epoch, _ = fit_depth(task, model, cfg, splits, t.depth, device, run, t.epochs,
                                               run.dir / "last.pt")
        chosen = t.depth
    # final scores of the selected model: validation, then the test split once
    val_res = task.evaluate(model, splits.val, device, with_ci=True)
    val_res.predictions.to_csv(run.dir / "predictions_val.csv", index=False)
    plots = task.plots(val_res, splits.val, run.dir, "val") if cfg.tracking.log_media else []
    summary: dict[str, Any] = {
        "run": run.name, "task": cfg.task.name, "backbone": cfg.backbone.name, "init": cfg.init,
        "weights": report.source, "missing_keys": report.missing, "unused_keys": report.unexpected,
        "depth": cfg.train.depth, "selected_depth": chosen,
        "trainable_stages": trainable_stages(chosen, backbone.stage_names),
        "label_fraction": cfg.data.label_fraction, "seed": cfg.seed, "image_size": list(cfg.data.image_size),
        "channels": cfg.backbone.in_chans, "channel_policy": cfg.backbone.channels,
        "monitor": task.monitor, "best_val": best_metric, "best_epoch": best_epoch, **splits.info,
        "val": val_res.metrics, "depth_curve": depth_curve,
    }
    if splits.test is not None and t.eval_test:
        test_res = task.evaluate(model, splits.test, device, with_ci=True)
        test_res.predictions.to_csv(run.dir / "predictions_test.csv", index=False)
        summary["test"] = test_res.metrics
        if cfg.tracking.log_media:
            plots += task.plots(test_res, splits.test, run.dir, "test")
        run.log_table("test_predictions", test_res.predictions)
    summary["seconds"] = round(time.time() - t0, 1)
    ckpt = run.dir / "model.pt"
    atomic_torch_save(model_checkpoint(model, cfg, task, chosen), ckpt)
    if (run.dir / "last.pt").exists():
        (run.dir / "last.pt").unlink()  # resume state is no longer needed once the run is complete
    run.log_images(plots)
    run.log_summary(summary)
    run.log_artifact(ckpt, f"model-{run.name}", "model", {"task": cfg.task.name, "depth": chosen})
    return summary


def _auto_depth(task: Task, model: TaskModel, cfg: Config, splits: Splits, device: torch.device, run: Run,
                curve: list[dict[str, Any]]) -> tuple[str, float, int]:
    """Tajbakhsh et al.'s incremental procedure: head only, then one more stage at a time while val improves.

    Each depth continues from the best weights of the previous one; the best
    model over all depths is kept.
    """
    t = cfg.train
    epochs = t.auto_epochs or t.epochs
    sign = 1.0 if task.mode == "max" else -1.0
    names = [d for d in depth_names(model.backbone.stage_names) if d != "all"]
    best_depth, best_metric, best_epoch, best_state = None, None, -1, None
    for depth in names:
        stages = trainable_stages(depth, model.backbone.stage_names)
        if stages and stages[0] in model.unused_stages:
            continue
        metric, epoch, _ = fit_depth(task, model, cfg, splits, depth, device, run, epochs,
                                     run.dir / f"last_{depth}.pt", tag=depth)
        curve.append({"depth": depth, "val": metric, "best_epoch": epoch})
        atomic_write_json(run.dir / "depth_curve.json", curve)
        if best_metric is None or sign * (metric - best_metric) > t.auto_tolerance:
            best_depth, best_metric, best_epoch = depth, metric, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            break
    assert best_state is not None and best_depth is not None and best_metric is not None
    model.load_state_dict(best_state)
    return best_depth, best_metric, best_epoch


def model_checkpoint(model: TaskModel, cfg: Config, task: Task, depth: str) -> dict[str, Any]:
    return {"format": MODEL_FORMAT, "config": to_dict(cfg), "task_info": task.info, "depth": depth,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def load_model(path: str | Path, device: torch.device | None = None) -> tuple[Config, Task, TaskModel]:
    """Rebuild a trained model from a run directory or its ``model.pt``."""
    load_plugins()
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no trained model here (expected a run directory with model.pt)")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or ck.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path}: not a medtransfer model checkpoint")
    cfg = from_dict(Config, ck["config"], source=str(path))
    task = TASKS.get(cfg.task.name)(cfg)
    task.info = dict(ck["task_info"])
    backbone, _ = build_backbone(cfg.backbone.name, "scratch", cfg.backbone.scratch_init, cfg.backbone.in_chans,
                                 cfg.backbone.channels)
    model = task.build_model(backbone)
    model.load_state_dict(ck["state_dict"])
    model.to(device or torch.device("cpu")).eval()
    return cfg, task, model


def stage_table(model: TaskModel) -> list[tuple[str, int]]:
    return [(s, sum(p.numel() for _, p in ps)) for s, ps in model.backbone.stage_parameters().items()]
