"""Benchmark (not product code): our stage-1 step against lightly's documented SimCLR loop.

Three loops on the same backbone, batch size and in-memory images:

(a) ``ours``: ``model.training_step`` (views made inside, on the device) + backward
    + optimiser step + ``after_optimizer_step``;
(b) ``lightly``: lightly's own SimCLR example (``examples/pytorch/simclr.py``:
    a ``SimCLR(nn.Module)`` of backbone + ``SimCLRProjectionHead``,
    ``NTXentLoss()``, ``SGD(lr=0.06)``, each view forwarded separately), with
    our ``TwoViewAugment`` in place of its CPU collate transforms;
(c) ``bare``: the same backbone + head forward/backward on views made before
    timing (no augmentation): the floor for a two-view method.

All three use ``SGD(lr=0.06)`` so the optimiser costs the same. The loops run
interleaved, one step of each in turn, so background load hits them alike;
images/s come from the median step time (``*_img_s_mean`` from the total,
``*_img_s_best`` from the fastest step, the least disturbed on a shared machine).
For a method other than simclr, (b) and (c) are still the SimCLR reference:
the ratio then compares methods, not implementations.

Run: ``medtransfer bench pretrain --method simclr --backbone efficientnet_lite0``.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from ssl_pretrain.augment import TwoViewAugment
from ssl_pretrain.config import ViewAugConfig
from transfer.api import PRETRAIN_METHODS
from transfer.backbones import get_entry
from transfer.config import PretrainConfig
from transfer.engine import Engine
from transfer.weights import build_backbone


class SimCLR(nn.Module):
    """lightly's example model, verbatim apart from the head's input width (the backbone's)."""

    def __init__(self, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(num_features, 512, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(x)
        return z


def _pool(n: int, c: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """In-memory smooth random 'radiographs', a little larger than the working size (crops resize)."""
    g = torch.Generator().manual_seed(seed)
    h, w = int(size[0] * 1.25), int(size[1] * 1.25)
    x = torch.rand(n, c, max(2, h // 8), max(2, w // 8), generator=g)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


Step = Callable[[int], None]


def bench_pretrain(method: str, backbone_name: str, batch_size: int, image_size: tuple[int, int] | list[int],
                   steps: int, warmup: int = 2, init: str | None = None, in_chans: int = 1) -> dict[str, Any]:
    """Images/s of (a) our method, (b) lightly's SimCLR example loop, (c) a bare two-view loop.

    ``init``: weights of the backbone (default: imagenet when the backbone has them, else scratch).
    Returns the three rates (median step), their means, and ``ours_vs_lightly``, ``ours_vs_bare``.
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    if init is None:
        init = "imagenet" if get_entry(backbone_name).imagenet is not None else "scratch"
    backbone, _ = build_backbone(backbone_name, init, in_chans=in_chans)
    data = _pool(2 * batch_size, in_chans, image_size)
    batches = [data[i:i + batch_size] for i in range(0, data.shape[0], batch_size)]
    augment = TwoViewAugment(ViewAugConfig(), image_size)  # the default views of our contrastive methods
    loops = {"ours": _ours(method, backbone, batch_size, image_size, batches, warmup + steps),
             "lightly": _lightly(backbone, batches, augment), "bare": _bare(backbone, batches, augment)}
    times = _interleaved(loops, warmup + steps, warmup)
    result: dict[str, Any] = {"method": method, "backbone": backbone_name, "init": init, "batch_size": batch_size,
                              "image_size": list(image_size), "steps": steps, "warmup": warmup,
                              "threads": torch.get_num_threads()}
    for name, ts in times.items():
        result[f"{name}_img_s"] = batch_size / statistics.median(ts)
        result[f"{name}_img_s_mean"] = batch_size * len(ts) / sum(ts)
        result[f"{name}_img_s_best"] = batch_size / min(ts)  # least disturbed by other processes
        result[f"{name}_step_s"] = [round(t, 4) for t in ts]  # to judge the noise of a shared machine
    result["ours_vs_lightly"] = result["ours_img_s"] / result["lightly_img_s"]
    result["ours_vs_bare"] = result["ours_img_s"] / result["bare_img_s"]
    return result


def _ours(method: str, backbone: nn.Module, batch_size: int, image_size: tuple[int, int],
          batches: list[torch.Tensor], total: int) -> Step:
    """(a) the product path: the training engine driving the registered method, built from its default section."""
    cfg = PretrainConfig(method=method, batch_size=batch_size)
    method_cls = PRETRAIN_METHODS.get(method)
    options = cfg.section(method_cls.config_section) if method_cls.config_section else None
    ours = method_cls.from_config(copy.deepcopy(backbone), options, image_size).train()
    opt = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.06)
    engine = Engine(ours, opt, device="cpu", progress=False)

    def step(i: int) -> None:
        engine.train_epoch([{"image": batches[i % len(batches)]}], 0, total_steps=total, global_step=i)

    return step


def _lightly(backbone: nn.Module, batches: list[torch.Tensor], augment: TwoViewAugment) -> Step:
    """(b) lightly's example loop, with our augmentation on the in-memory batch."""
    model = SimCLR(copy.deepcopy(backbone), backbone.num_features).train()
    criterion = NTXentLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.06)
    total_loss = torch.zeros(())

    def step(i: int) -> None:
        nonlocal total_loss
        x0, x1 = augment(batches[i % len(batches)])
        z0 = model(x0)
        z1 = model(x1)
        loss = criterion(z0, z1)
        total_loss = total_loss + loss.detach()  # the example sums ``loss``; detached so graphs are not kept
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def _bare(backbone: nn.Module, batches: list[torch.Tensor], augment: TwoViewAugment) -> Step:
    """(c) bare: views made before timing (no augmentation in the step)."""
    with torch.no_grad():
        views = [augment(b) for b in batches]
    model = SimCLR(copy.deepcopy(backbone), backbone.num_features).train()
    criterion = NTXentLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.06)

    def step(i: int) -> None:
        x0, x1 = views[i % len(views)]
        loss = criterion(model(x0), model(x1))
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def _interleaved(loops: dict[str, Step], total: int, warmup: int) -> dict[str, list[float]]:
    """Step times of each loop, one step of each in turn (so background load hits them alike), after ``warmup``."""
    times: dict[str, list[float]] = {k: [] for k in loops}
    for i in range(total):
        for name, fn in loops.items():
            t0 = time.perf_counter()
            fn(i)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
    return times
