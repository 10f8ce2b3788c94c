"""Benchmark: the engine's training throughput against a bare PyTorch loop, and the data-wait share."""
from __future__ import annotations

import time
from typing import Any

import torch

from transfer.api import make_task
from transfer.config import Config
from transfer.engine import to_device
from transfer.runs.context import RunContext
from transfer.runs.depth import setup_depth
from transfer.runs.splits import prepare_data
from transfer.weights import backbone_from_config


def bench_finetune(cfg: Config, steps: int = 20, warmup: int = 3, rounds: int = 3) -> dict[str, Any]:
    """Images/s of ``Engine.train_epoch`` and of a bare loop on the same model, batch and in-memory tensors.

    Rounds alternate bare and engine and keep each one's best, so a noisy
    neighbour does not decide the ratio. The data-wait share is measured on
    the real DataLoader over the (warm) decoded training set.
    """
    ctx = RunContext.resolve(cfg.runtime, cfg.seed)
    ctx.seed_shared()
    device = ctx.device
    task = make_task(cfg)
    task.precision = ctx.precision
    splits = prepare_data(task, cfg)
    splits.train = task.for_training(splits.train)
    backbone, _ = backbone_from_config(cfg.backbone, cfg.init)
    model = task.build_model(backbone, splits.train).to(device)
    depth = "all" if cfg.train.depth == "auto" else cfg.train.depth
    _, opt, train_mode = setup_depth(model, cfg, depth)
    t = cfg.train
    bs = min(t.batch_size, len(splits.train))
    loader = ctx.train_loader(splits.train, bs, num_workers=0, drop_last=True)
    batch = to_device(next(iter(loader)), device)

    engine = ctx.engine(model, opt, progress=False, train_mode=train_mode)
    # the bare loop runs at the engine's precision (autocast, channels_last, the fp16 scaler), so the ratio compares
    # loops, not an fp32 loop with a bf16 one
    precision, scaler = engine.precision, engine.scaler
    batch = to_device(batch, device, precision.channels_last)

    def bare(n: int) -> float:
        train_mode()
        t0 = time.perf_counter()
        for _ in range(n):
            with precision.autocast(device.type):
                out = model.training_step(batch)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(out["loss"]).backward()
                scaler.step(opt)
                scaler.update()
            else:
                out["loss"].backward()
                opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n * bs / (time.perf_counter() - t0)

    def eng(n: int) -> float:
        stats = engine.train_epoch([batch] * n, 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return stats.images_per_s

    bare(warmup)
    eng(warmup)
    bare_best = eng_best = 0.0
    for _ in range(rounds):
        bare_best = max(bare_best, bare(steps))
        eng_best = max(eng_best, eng(steps))
    stats = engine.train_epoch(loader, 0, max_steps=steps)
    return {
        "backbone": cfg.backbone.name, "task": cfg.task.name, "depth": depth, "batch_size": bs,
        "image_size": list(cfg.data.image_size), "device": str(device), "steps": steps, "rounds": rounds,
        "amp": str(precision.dtype).replace("torch.", "") if precision.dtype else "off",
        "channels_last": precision.channels_last,
        "bare_images_per_s": round(bare_best, 2), "engine_images_per_s": round(eng_best, 2),
        "ratio_engine_over_bare": round(eng_best / bare_best, 3),
        "dataloader_images_per_s": round(stats.images_per_s, 2),
        "data_wait_share": round(stats.data_wait_share, 4),
    }
