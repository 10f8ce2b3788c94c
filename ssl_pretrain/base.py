"""What the stage-1 methods share: the two-view contrastive base, momentum targets, the pair accuracy.

The method contract itself (``PretrainMethod``: encoder, training step, hooks,
media) is the core's, in ``transfer.api``, so third-party methods need only the
core.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from ssl_pretrain.config import ContrastiveConfig
from ssl_pretrain.augment import TwoViewAugment
from transfer.api import Batch, PretrainMethod
from transfer.backbones.staged import StagedBackbone


@torch.no_grad()
def positive_pair_accuracy(a: Tensor, b: Tensor) -> Tensor:
    """a, b: (B, D) embeddings of two views -> fraction of rows i whose most cosine-similar row of b is i."""
    sim = F.normalize(a.detach().float(), dim=1) @ F.normalize(b.detach().float(), dim=1).T
    return (sim.argmax(1) == torch.arange(a.shape[0], device=a.device)).float().mean()


class TwoViewMethod(PretrainMethod):
    """A method trained on two augmented views of each image (SimCLR, MoCo, BYOL): ``pretrain.contrastive``."""

    config_section = "contrastive"
    config_class = ContrastiveConfig

    def __init__(self, encoder: StagedBackbone, options: ContrastiveConfig, image_size: tuple[int, int]) -> None:
        super().__init__(encoder, image_size)
        self.options = options
        self.augment = TwoViewAugment(options.views, self.image_size)

    @torch.no_grad()
    def media(self, batch: Batch) -> dict[str, np.ndarray]:
        return {"views": self.augment.media(batch["image"])}


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


class MomentumTarget(TwoViewMethod):
    """Online encoder + projection head, and their momentum copies (MoCo's key encoder, BYOL's target).

    Subclasses set ``projection_head``, then call :meth:`init_momentum`.
    """

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

    def get_extra_state(self) -> dict[str, Any]:
        """Training state outside parameters and buffers, kept in the run's resume state (``state_dict``'s
        ``_extra_state``; the backbone checkpoint holds ``encoder`` only): the momentum last applied, which the
        next step logs."""
        return {"current_momentum": self.current_momentum}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.current_momentum = float(state["current_momentum"])

    def after_optimizer_step(self, progress: float) -> None:
        m = self.momentum_at(progress)
        update_momentum(self.encoder, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)
        self.current_momentum = m
