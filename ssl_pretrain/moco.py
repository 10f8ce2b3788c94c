"""MoCo v2: a momentum key encoder and a queue of negatives (lightly's head, loss, memory bank, EMA).

The query goes through the online encoder + ``MoCoProjectionHead``; the key
through their momentum copies (``copy.deepcopy``, ``requires_grad`` off, no
gradient, never checkpointed: only ``encoder`` is). ``NTXentLoss`` with
``memory_bank_size=(queue_size, proj_dim)`` keeps the queue of past keys.
After each optimiser step the copies move towards the online weights with a
momentum rising from ``momentum_start`` to ``momentum_end`` on lightly's cosine
schedule.

Notes: single-device BatchNorm needs no shuffling (shuffle-BN matters across
GPUs only); the queue is a non-persistent buffer, so a resumed run starts with
a fresh queue.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from ssl_pretrain.augment import TwoViewAugment
from ssl_pretrain.simclr import positive_pair_accuracy
from transfer.backbones.staged import StagedBackbone
from transfer.pretrain_config import PretrainConfig
from transfer.protocols import PRETRAIN_METHODS, Batch

_SCHEDULE_STEPS = 1_000_000  # resolution of progress in [0, 1] for lightly's step-based schedule


def scheduled_momentum(progress: float, start: float, end: float) -> float:
    """Momentum at ``progress`` in [0, 1]: lightly's ``cosine_schedule`` from ``start`` (0) to ``end`` (1).

    Equals ``end - (end - start) * (cos(pi * progress) + 1) / 2``.
    """
    progress = min(max(float(progress), 0.0), 1.0)
    return cosine_schedule(round(progress * _SCHEDULE_STEPS), _SCHEDULE_STEPS + 1, start, end)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad`` off, for a momentum (target) network."""
    target = copy.deepcopy(module)
    deactivate_requires_grad(target)
    return target


class MomentumTarget(nn.Module):
    """Online encoder + projection head, and their momentum copies (MoCo's key encoder, BYOL's target).

    Subclasses set ``encoder``, ``projection_head``, then call :meth:`init_momentum`.
    """

    encoder: StagedBackbone
    projection_head: nn.Module

    def init_momentum(self, start: float, end: float) -> None:
        self.backbone_momentum = momentum_copy(self.encoder)
        self.projection_head_momentum = momentum_copy(self.projection_head)
        self.momentum_start, self.momentum_end = start, end
        self.current_momentum = start

    @torch.no_grad()
    def forward_momentum(self, x: Tensor) -> Tensor:
        """Images -> momentum projections (B, proj_dim), no gradient."""
        return self.projection_head_momentum(self.backbone_momentum(x))

    def momentum_at(self, progress: float) -> float:
        return scheduled_momentum(progress, self.momentum_start, self.momentum_end)

    def after_optimizer_step(self, progress: float) -> None:
        m = self.momentum_at(progress)
        update_momentum(self.encoder, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)
        self.current_momentum = m

    @torch.no_grad()
    def media(self, batch: Batch) -> dict[str, np.ndarray]:
        return {"views": self.augment.media(batch["image"])}


@PRETRAIN_METHODS.register("moco")
class MoCo(MomentumTarget):
    """MoCo v2 pre-training."""

    def __init__(self, backbone: StagedBackbone, cfg: PretrainConfig, image_size: tuple[int, int]) -> None:
        super().__init__()
        c = cfg.contrastive
        self.encoder = backbone
        self.augment = TwoViewAugment(c.views, image_size)
        self.projection_head = MoCoProjectionHead(backbone.num_features, c.proj_hidden, c.proj_dim)
        self.init_momentum(c.momentum_start, c.momentum_end)
        bank = (c.queue_size, c.proj_dim) if c.queue_size > 0 else 0
        self.criterion = NTXentLoss(temperature=c.temperature, memory_bank_size=bank)

    def forward(self, x: Tensor) -> Tensor:
        """Images -> query projections (B, proj_dim)."""
        return self.projection_head(self.encoder(x))

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        x_q, x_k = self.augment(batch["image"])
        q = self(x_q)
        k = self.forward_momentum(x_k)
        loss = self.criterion(q, k)  # enqueues k (q requires grad)
        return {"loss": loss, "pretext_acc": positive_pair_accuracy(q, k),
                "momentum": torch.tensor(self.current_momentum, device=loss.device)}
