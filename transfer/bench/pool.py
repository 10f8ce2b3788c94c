"""Benchmark: stage 1's pool, streamed (packed uint16 file) vs in memory (one float32 tensor).

``medtransfer bench pool --images 1000 10000 --size 224`` writes a synthetic grayscale pool of that many PNG files
once per count (under ``--work-dir``; or reads ``--folder``), then, for each pool and each path, in a fresh process
(so that its peak resident memory is its own):

- ``prep_cold``: images/s of preparing the pool with an empty decode cache (read + hash + decode + resize + cache
  entry, then the pack or the tensor); ``prep_warm``: the same with the cache (and the pack) already there. The
  operating system's page cache is not dropped (that needs root): "cold" is the decode cache's;
- ``data_w0`` / ``data_w2``: images/s of one epoch of the data path alone (DataLoader with 0 and 2 workers, collate,
  the engine's float conversion; no model), at ``--batch-size``, after one untimed warm-up epoch;
- ``step``: images/s of a stage-1 step with the model (``--method`` on ``--backbone`` at ``--step-batch``, the
  loader as the run would build it: ``data.num_workers: auto``), median of ``--steps`` steps after 2 warm-up steps;
- ``peak_rss_gib``: the process's peak resident memory (and its workers').

The in-memory path is skipped where its tensor would exceed ``--max-in-memory-gib``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bench_pool", "write_pool"]


def write_pool(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` synthetic grayscale PNGs of ``size`` px in ``folder`` (smooth shapes + noise, like radiographs);
    written once: an existing folder with exactly ``n`` PNGs is reused."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) == n:
        return folder
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        a, b, c = rng.random(3)
        img = 0.5 + 0.3 * np.sin(6 * (a * xx + b * yy) + 6 * c) + rng.normal(0, 0.05, (size, size))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:07d}.png", compress_level=1)
    return folder


def _cfg(folder: Path, cache: Path, size: int, in_memory: bool, backbone: str, method: str, batch: int) -> Any:
    from transfer.config import Config
    from transfer.config.io import from_dict

    return from_dict(Config, {
        "backbone": {"name": backbone, "in_chans": 1}, "init": "scratch",
        "data": {"root": str(folder.parent), "image_size": [size, size], "cache_dir": str(cache),
                 "in_memory": in_memory},
        "pretrain": {"pool": folder.name, "method": method, "batch_size": batch},
        "tracking": {"progress": False, "wandb_mode": "disabled"}})


def _epoch_rate(dataset: Any, batch: int, workers: int) -> float:
    import torch

    from transfer.engine import make_loader, to_device

    loader = make_loader(dataset, batch, shuffle=True, num_workers=workers, seed=0, drop_last=True)
    for epoch in range(2):  # the first (untimed) starts the workers and warms the page cache
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        t0, n = time.perf_counter(), 0
        for b in loader:
            n += len(to_device(b, torch.device("cpu"))["image"])
        rate = n / (time.perf_counter() - t0)
    del loader
    return rate


def _step_rate(cfg: Any, pool: Any, steps: int) -> float:
    import torch

    from transfer.api import PRETRAIN_METHODS
    from transfer.engine import make_loader, to_device
    from transfer.runs.pretrain import build_pretrain_optimizer
    from transfer.weights import backbone_from_config

    torch.manual_seed(0)
    method_cls = PRETRAIN_METHODS.get(cfg.pretrain.method)
    backbone, _ = backbone_from_config(cfg.backbone, cfg.init)
    options = cfg.pretrain.section(method_cls.config_section) if method_cls.config_section else None
    method = method_cls.from_config(backbone, options, tuple(cfg.data.image_size))
    opt = build_pretrain_optimizer(method, cfg.pretrain)
    loader = make_loader(pool.dataset(), cfg.pretrain.batch_size, shuffle=True, seed=0, drop_last=True,
                         num_workers=cfg.data.workers(pool.streamed))
    method.train()
    times: list[float] = []
    it = iter(loader)
    for s in range(steps + 2):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        out = method.training_step(to_device(batch, torch.device("cpu")))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.after_optimizer_step(0.0)
        if s >= 2:
            times.append(time.perf_counter() - t0)
    return cfg.pretrain.batch_size / statistics.median(times)


def _peak_rss_gib() -> float:
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return round(peak * (1 if sys.platform == "darwin" else 1024) / 2**30, 3)


def _child(a: argparse.Namespace) -> dict[str, Any]:
    """One path on one pool, in this (fresh) process."""
    from transfer.runs.pool import load_pool

    folder, cache = Path(a.folder), Path(a.cache)
    cfg = _cfg(folder, cache, a.size, a.mode == "memory", a.backbone, a.method, a.step_batch)
    out: dict[str, Any] = {"mode": a.mode}
    if a.cold:
        shutil.rmtree(cache, ignore_errors=True)
        t0 = time.perf_counter()
        pool = load_pool(cfg)
        out["prep_cold"] = len(pool) / (time.perf_counter() - t0)
        del pool
    t0 = time.perf_counter()
    pool = load_pool(cfg)
    out["prep_warm"] = len(pool) / (time.perf_counter() - t0)
    out["n"] = len(pool)
    for w in a.workers:
        out[f"data_w{w}"] = _epoch_rate(pool.dataset(), a.batch_size, w)
    if a.steps:
        out["step"] = _step_rate(cfg, pool, a.steps)
        out["step_workers"] = cfg.data.workers(pool.streamed)
    out["peak_rss_gib"] = _peak_rss_gib()
    return out


def bench_pool(counts: list[int], size: int = 224, *, work_dir: Path, folder: Path | None = None,
               batch_size: int = 64, workers: tuple[int, ...] = (0, 2), backbone: str = "tiny_resnet",
               method: str = "simclr", step_batch: int = 16, steps: int = 10, max_in_memory_gib: float = 4.0,
               modes: tuple[str, ...] = ("stream", "memory")) -> list[dict[str, Any]]:
    """One row per (pool, path); see the module's docstring."""
    rows = []
    pools = [(folder, len([p for p in folder.rglob("*") if p.is_file()]))] if folder else \
        [(work_dir / f"pool{n}" / "pool", n) for n in counts]
    for pool_dir, n in pools:
        if folder is None:
            t0 = time.perf_counter()
            write_pool(pool_dir, n, size)
            print(f"pool of {n} PNGs ready in {time.perf_counter() - t0:.0f} s: {pool_dir}", file=sys.stderr)
        cache = work_dir / f"cache{n}"
        for i, mode in enumerate(modes):
            if mode == "memory" and n * size * size * 4 > max_in_memory_gib * 2**30:
                rows.append({"n": n, "mode": mode, "skipped": f"over --max-in-memory-gib {max_in_memory_gib}"})
                continue
            cmd = [sys.executable, "-m", "transfer.bench.pool", "--child", "--folder", str(pool_dir),
                   "--cache", str(cache), "--size", str(size), "--mode", mode, "--backbone", backbone,
                   "--method", method, "--step-batch", str(step_batch), "--steps", str(steps),
                   "--batch-size", str(batch_size), "--workers", *map(str, workers)]
            if i == 0:
                cmd.append("--cold")  # the first path fills the decode cache; the others find it warm
            res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if res.returncode != 0:
                raise RuntimeError(f"bench pool child failed:\n{res.stderr[-3000:]}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["n"] = n
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                  file=sys.stderr)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (images/s, GiB)."""
    keys = ["prep_cold", "prep_warm", "data_w0", "data_w2", "step", "peak_rss_gib"]
    lines = ["| images | path | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for r in rows:
        cells = [("-" if r.get(k) is None else f"{r[k]:.0f}" if k != "peak_rss_gib" else f"{r[k]:.2f}")
                 for k in keys]
        if "skipped" in r:
            cells = [r["skipped"]] + [""] * (len(keys) - 1)
        lines.append(f"| {r['n']} | {r['mode']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--folder")
    ap.add_argument("--cache")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--mode", default="stream")
    ap.add_argument("--backbone", default="tiny_resnet")
    ap.add_argument("--method", default="simclr")
    ap.add_argument("--step-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--cold", action="store_true")
    a = ap.parse_args()
    print(json.dumps(_child(a)))


if __name__ == "__main__":
    _main()
