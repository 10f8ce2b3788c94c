"""SimCLR: two views of each image, NT-Xent over the batch (lightly's head and loss).

The two views go through the network as two batches of B, as in lightly's
example: measured on CPU (efficientnet_lite0, B=32, 128 px) one 2B batch took
1.6 s per step against 1.1 s for two B batches. ``pretext_acc`` is
the fraction of view-0 embeddings whose nearest view-1 embedding is their own
positive.
"""
from __future__ import annotations

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import Tensor

from ssl_pretrain.base import TwoViewMethod, positive_pair_accuracy
from ssl_pretrain.config import ContrastiveConfig
from transfer.api import Batch
from transfer.backbones.staged import StagedBackbone


class SimCLR(TwoViewMethod):
    """SimCLR pre-training: encoder + ``SimCLRProjectionHead``, ``NTXentLoss``."""

    options_read = ("proj_hidden", "proj_dim", "temperature", "views")

    def __init__(self, backbone: StagedBackbone, options: ContrastiveConfig, image_size: tuple[int, int]) -> None:
        super().__init__(backbone, options, image_size)
        c = options
        self.projection_head = SimCLRProjectionHead(backbone.num_features, c.proj_hidden, c.proj_dim)
        # under DDP the negatives are every rank's views (lightly gathers them, with gradients); one process: the
        # same as without gathering
        self.criterion = NTXentLoss(temperature=c.temperature, gather_distributed=True)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in [0, 1] -> projections (B, proj_dim)."""
        return self.projection_head(self.encoder(x))

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        x0, x1 = self.augment(batch["image"])
        z0, z1 = self(x0), self(x1)
        loss = self.criterion(z0, z1)
        return {"loss": loss, "pretext_acc": positive_pair_accuracy(z0, z1)}
