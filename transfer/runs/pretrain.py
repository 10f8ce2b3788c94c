"""One stage-1 run: an unlabelled pool, a method from the registry, the engine, a backbone checkpoint with provenance."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from transfer.api import PRETRAIN_METHODS, PretrainMethod
from transfer.config import Config, PretrainConfig, to_dict
from transfer.distributed import barrier
from transfer.engine import FitResult
from transfer.errors import DatasetError
from transfer.runs.memory import gpu_peak_memory_gib, peak_memory_gib, peak_memory_scope, reset_peak_memory
from transfer.runs.pool import Pool, load_pool
from transfer.runs.probe import probe_data, representation_probe
from transfer.runs.context import RunContext
from transfer.runs.prior_state import claimed_run, prior_run, recorded
from transfer.runs.timing import run_cost
from transfer.tracking import Run, atomic_write_json, training_config
from transfer.weights import LoadReport, backbone_from_config, save_backbone_checkpoint


def default_pretrain_name(cfg: Config) -> str:
    init = cfg.init if cfg.init in ("imagenet", "scratch") else Path(cfg.init).parent.name
    return f"pretrain-{cfg.pretrain.method}-{cfg.backbone.name.replace(':', '_')}-{init}-seed{cfg.seed}"


def run_pretrain(cfg: Config, *, name: str | None = None, restart: bool = False) -> dict[str, Any]:
    """Train one stage-1 method; write ``backbone.pt`` (loadable with ``init: <path>``) and a summary.

    A finished run (``summary.json`` + ``backbone.pt``) is not trained again; a resume state is checked against
    this config before anything is written; ``restart`` discards the old run's files and starts over.
    """
    p = cfg.pretrain
    method_cls = PRETRAIN_METHODS.get(p.method)
    ctx = RunContext.resolve(cfg.runtime, cfg.seed)  # device, precision, rank, seeds: worked out here, once
    # each rank its own seed (rank 0: the run's): its own views and augmentations; the pool draws nothing, and DDP
    # gives every rank rank 0's initial weights
    ctx.seed_own()
    t0, cpu0 = time.time(), time.process_time()
    name = name or cfg.tracking.name or default_pretrain_name(cfg)
    run_dir = Path(cfg.tracking.out_dir) / name
    key = training_config(to_dict(cfg), "pretrain")
    if not restart and (done := prior_run(run_dir, "backbone.pt", key, "pretrain")) is not None:
        return done
    pool = load_pool(cfg)
    if len(pool) < p.batch_size:
        raise DatasetError(f"the pretrain pool has {len(pool)} images, fewer than pretrain.batch_size={p.batch_size}")
    with claimed_run(run_dir, "backbone.pt", key, "pretrain", pool.digests, restart) as done:
        return done if done is not None else _run(cfg, ctx, method_cls, pool, name, key, (t0, cpu0))


def _run(cfg: Config, ctx: RunContext, method_cls: type[PretrainMethod], pool: Pool, name: str, key: dict[str, Any],
         started: tuple[float, float]) -> dict[str, Any]:
    """The run directory, the fit and the checkpoint (under the run's lock); ``started``: wall and CPU clocks."""
    p = cfg.pretrain
    t0, cpu0 = started
    reset_peak_memory(ctx.device)
    run = Run.from_config(cfg.tracking, name, to_dict(cfg), job_type="pretrain",
                          tags=["pretrain", p.method, cfg.backbone.name])
    barrier()  # under torchrun: no rank reads a resume state before rank 0 has discarded it (--restart)
    with recorded(run):
        backbone, report = backbone_from_config(cfg.backbone, cfg.init)
        print(report.summary())
        if cfg.init not in ("imagenet", "scratch"):
            run.use_checkpoint(Path(cfg.init), report.provenance)
        options = p.section(method_cls.config_section) if method_cls.config_section else None
        method = method_cls.from_config(backbone, options, tuple(cfg.data.image_size))
        for msg in method.pool_warnings(len(pool)):
            run.warn(msg)
        res = _train(cfg, ctx, method, pool, run, key)
        history = res.history
        selection = selection_record(cfg, res)
        ckpt, provenance = _save(cfg, method, pool, report, run, selection)
        summary = {
            "run": name, "method": p.method, "backbone": cfg.backbone.name, "init": cfg.init,
            "pool": pool.source, "pool_size": len(pool), "streamed": pool.streamed, "skipped": pool.skipped,
            "data_fingerprint": pool.fingerprint, "epochs": len(history), "final": history[-1],
            "selection": selection, "checkpoint": str(ckpt),
            # over all the run's sessions: a resumed run adds the restored epochs' own clocks
            **run_cost(history, res.resumed_from, time.time() - t0, time.process_time() - cpu0),
            "resumed_from_epoch": res.resumed_from,  # the first epoch trained after resuming (None: from the start)
            "peak_memory_gib": peak_memory_gib(), "peak_memory_scope": peak_memory_scope(),
            "gpu_peak_memory_gib": gpu_peak_memory_gib(ctx.device),
        }
        run.log_summary(summary)  # summary.json + backbone.pt: complete, the resume state is no longer needed
        if run.writes:
            (run.dir / "last.pt").unlink(missing_ok=True)
        run.log_artifact(ckpt, f"backbone-{name}", "backbone", {k: v for k, v in provenance.items() if k != "config"})
        return summary


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup`` epochs, then cosine decay to 0 by ``epochs`` (stepped per epoch)."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs - warmup))
    if warmup == 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warmup])


def build_pretrain_optimizer(model: torch.nn.Module, p: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the method's trainable parameters; no weight decay on 1-D tensors (biases, norms)."""
    decay = [q for q in model.parameters() if q.requires_grad and q.ndim > 1]
    no_decay = [q for q in model.parameters() if q.requires_grad and q.ndim <= 1]
    groups = [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if p.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=p.lr, momentum=p.sgd_momentum)
    return torch.optim.AdamW(groups, lr=p.lr)


def _train(cfg: Config, ctx: RunContext, method: PretrainMethod, pool: Pool, run: Run, key: dict[str, Any]
           ) -> FitResult:
    """The engine over the pool, with the optional representation check and media every few epochs.

    ``key``: the training config the resume state is stored with (and checked against).
    """
    p = cfg.pretrain
    opt = build_pretrain_optimizer(method, p)
    engine = ctx.engine(method, opt, scheduler=warmup_cosine(opt, p.warmup_epochs, p.epochs), grad_clip=p.grad_clip,
                        progress=cfg.tracking.progress,
                        train_mode=(lambda: train_with_frozen_bn_stats(method)) if p.freeze_bn_stats else None)
    loader = ctx.train_loader(pool.dataset(), p.batch_size, num_workers=cfg.data.workers(pool.streamed),
                              drop_last=True)
    sample = {"image": pool.sample(8).to(ctx.device)}
    probe = _probe(cfg, method, ctx.device)
    monitored = probe is not None
    res = engine.fit(loader, p.epochs, evaluate=probe, monitor=p.monitor_metric if monitored else None, mode="max",
                     patience=p.monitor_patience or None, min_delta=p.monitor_min_delta,
                     state_of=method.encoder.state_dict if monitored else None,
                     on_epoch=_media_logger(cfg, method, sample, run), resume_path=run.dir / "last.pt",
                     max_steps=p.max_steps, resume_config=key, resume_data=pool.digests,
                     on_start=lambda history: run.keep_metrics(len(history)))
    if monitored and p.keep == "best" and res.best_state is not None:
        method.encoder.load_state_dict(res.best_state)  # the encoder of the best check, not of the last epoch
    return res


def train_with_frozen_bn_stats(method: PretrainMethod) -> None:
    """Train mode for the method, eval mode for its encoder's BatchNorm layers (``pretrain.freeze_bn_stats``): they
    normalise with the statistics the encoder started with, which no batch moves, while their affine weights train."""
    method.train()
    for m in method.encoder.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def selection_record(cfg: Config, res: FitResult) -> dict[str, Any]:
    """What the checkpoint holds and why: the epoch whose encoder was kept, by which probe score, and whether the
    probe's plateau stopped training (recorded in the summary and the checkpoint's provenance)."""
    p = cfg.pretrain
    if not (p.monitor_every and p.monitor_data):
        return {"kept": "last", "epoch": len(res.history) - 1, "by": None}
    kept_best = p.keep == "best" and res.best_state is not None
    return {"kept": "best" if kept_best else "last", "epoch": res.best_epoch if kept_best else len(res.history) - 1,
            "by": f"val_{p.monitor_metric}", "value": res.best_metric, "best_epoch": res.best_epoch,
            "epochs_trained": len(res.history), "stopped_on_plateau": bool(res.stopped_early),
            "patience": p.monitor_patience, "min_delta": p.monitor_min_delta}


def _probe(cfg: Config, method: PretrainMethod, device: torch.device) -> Callable[[int], dict[str, float]] | None:
    p = cfg.pretrain
    if not (p.monitor_every and p.monitor_data):
        return None
    images, labels = probe_data(cfg)

    def evaluate(epoch: int) -> dict[str, float]:
        if (epoch + 1) % p.monitor_every and epoch + 1 != p.epochs:
            return {}
        return representation_probe(method.encoder, images, labels, device)

    return evaluate


def _media_logger(cfg: Config, method: PretrainMethod, sample: dict[str, torch.Tensor], run: Run
                  ) -> Callable[[dict[str, Any]], None]:
    def on_epoch(row: dict[str, Any]) -> None:
        run.log_epoch(row)
        if cfg.tracking.log_media and (row["epoch"] + 1 == cfg.pretrain.epochs or row["epoch"] % 10 == 0):
            run.log_media({f"pretrain/{k}": v for k, v in _media(method, sample).items()})

    return on_epoch


def _media(method: PretrainMethod, sample: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The method's media on ``sample``; random views are drawn on forked RNGs, so logging media (a tracking
    choice) never changes what training draws next."""
    was_training = method.training
    method.eval()
    devices = [sample["image"].device] if sample["image"].device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            return method.media(sample)
    finally:
        method.train(was_training)


def _save(cfg: Config, method: PretrainMethod, pool: Pool, report: LoadReport, run: Run,
          selection: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """``backbone.pt`` with its provenance (which epoch's encoder it holds, and why), and the method's media as PNGs
    beside it."""
    ckpt = run.dir / "backbone.pt"
    provenance = {
        "method": cfg.pretrain.method, "source_weights": cfg.init, "weights_report": report.source, "selection": selection,
        "data_fingerprint": pool.fingerprint, "pool": pool.source, "pool_size": len(pool),
        "input_size": list(cfg.data.image_size), "config": to_dict(cfg), "artifact_name": f"backbone-{run.name}",
    }
    if not run.writes:  # under torchrun: rank 0's files
        return ckpt, provenance
    save_backbone_checkpoint(method.encoder, ckpt, provenance)
    sample = {"image": pool.sample(8).to(next(method.parameters()).device)}
    for k, v in _media(method, sample).items():
        Image.fromarray(v).save(run.dir / f"{k}.png")
    return ckpt, provenance


def resolve_pretrain_init(cfg: Config, method: str, root: Path, *, source: str | None = None,
                          name: str | None = None) -> Path:
    """For studies: the checkpoint of ``method`` pretrained with this config (run once, then reused), started from
    ``source`` (default: the config's ``init``), in ``<root>/pretrain/<name>`` (default: the method's name)."""
    c = study_pretrain_config(cfg, method, root, source=source, name=name)
    if (ckpt := finished_study_pretrain(c)) is not None:
        return ckpt
    print(f"pretraining {method} from {c.init} for the study ...")
    s = run_pretrain(c)
    run_dir = Path(c.tracking.out_dir) / c.tracking.name
    atomic_write_json(run_dir / "pretrain_summary.json", s)
    return run_dir / "backbone.pt"


def study_pretrain_config(cfg: Config, method: str, root: Path, *, source: str | None = None,
                          name: str | None = None) -> Config:
    """The stage-1 config of a study's ``pretrain:<method>[@<source>]`` init: its run in ``<root>/pretrain/<name>``."""
    return dataclasses.replace(cfg, init=source or cfg.init,
                               pretrain=dataclasses.replace(cfg.pretrain, method=method),
                               tracking=dataclasses.replace(cfg.tracking, out_dir=str(root / "pretrain"),
                                                            name=name or method,
                                                            wandb_group=cfg.tracking.wandb_group or cfg.study.name))


def finished_study_pretrain(c: Config) -> Path | None:
    """The checkpoint of a finished stage-1 run of config ``c`` (from :func:`study_pretrain_config`), or None when
    there is none yet. A checkpoint trained with another config is a :class:`RunStateError` naming the changed
    keys: a study must not fine-tune from another config's stage 1."""
    run_dir = Path(c.tracking.out_dir) / c.tracking.name
    if prior_run(run_dir, "backbone.pt", training_config(to_dict(c), "pretrain"), "pretrain") is None:
        return None
    return run_dir / "backbone.pt"
