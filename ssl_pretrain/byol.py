"""BYOL: online network + predictor regress the momentum target's projection (lightly's heads, loss, EMA).

Symmetric loss ``0.5 * (NCS(p0, z1) + NCS(p1, z0))`` with lightly's
``NegativeCosineSimilarity`` (so it lies in [-1, 1]). As in BYOL and lightly's
example each view goes through the networks separately. The target copies
(``copy.deepcopy``, ``requires_grad`` off, never checkpointed) follow the
online backbone and projection head with the cosine momentum schedule after
each optimiser step.
"""
from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from torch import Tensor

from ssl_pretrain.base import MomentumTarget, positive_pair_accuracy
from ssl_pretrain.config import ContrastiveConfig
from transfer.api import Batch
from transfer.backbones.staged import StagedBackbone


class BYOL(MomentumTarget):
    """BYOL pre-training."""

    options_read = ("proj_hidden", "proj_dim", "pred_hidden", "momentum_start", "momentum_end", "views")

    def __init__(self, backbone: StagedBackbone, options: ContrastiveConfig, image_size: tuple[int, int]) -> None:
        super().__init__(backbone, options, image_size)
        c = options
        self.projection_head = BYOLProjectionHead(backbone.num_features, c.proj_hidden, c.proj_dim)
        self.prediction_head = BYOLPredictionHead(c.proj_dim, c.pred_hidden, c.proj_dim)
        self.init_momentum(c.momentum_start, c.momentum_end)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, x: Tensor) -> Tensor:
        """Images -> online predictions (B, proj_dim)."""
        return self.prediction_head(self.projection_head(self.encoder(x)))

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        x0, x1 = self.augment(batch["image"])
        p0, p1 = self(x0), self(x1)
        z0, z1 = self.forward_momentum(x0), self.forward_momentum(x1)
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        return {"loss": loss, "pretext_acc": positive_pair_accuracy(p0, z1),
                "momentum": torch.tensor(self.current_momentum, device=loss.device)}
