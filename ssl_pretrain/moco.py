"""MoCo v2: a momentum key encoder and a queue of negatives (lightly's head, loss, memory bank, EMA).

The query goes through the online encoder + ``MoCoProjectionHead``; the key
through their momentum copies (``copy.deepcopy``, ``requires_grad`` off, no
gradient, never checkpointed: only ``encoder`` is). ``NTXentLoss`` with
``memory_bank_size=(queue_size, proj_dim)`` keeps the queue of past keys.
After each optimiser step the copies move towards the online weights with a
momentum rising from ``momentum_start`` to ``momentum_end`` on lightly's cosine
schedule.

Notes: single-device BatchNorm needs no shuffling (shuffle-BN matters across
GPUs only; it is not implemented: under DDP each rank's key encoder normalises
its own batch). Under DDP the queue is filled with the keys of every rank
(``gather_distributed``): W ranks at batch B enqueue W * B keys a step, and
every rank holds the same queue. The queue is a non-persistent buffer in lightly (so it is not in
``encoder``'s checkpoint); the method's extra state (``get_extra_state``)
carries it, with its write pointer, into the run's resume state, so a resumed
run continues with the queue it had.
"""
from __future__ import annotations

from typing import Any

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from torch import Tensor

from ssl_pretrain.base import MomentumTarget, positive_pair_accuracy
from ssl_pretrain.config import ContrastiveConfig
from transfer.api import Batch
from transfer.backbones.staged import StagedBackbone
from transfer.distributed import world_size


#: above this share of the pool, the queue's false negatives (an image's own earlier key) are warned about
QUEUE_SHARE_WARNING = 0.25


class MoCo(MomentumTarget):
    """MoCo v2 pre-training."""

    options_read = ("proj_hidden", "proj_dim", "temperature", "queue_size", "momentum_start", "momentum_end",
                    "views")

    def __init__(self, backbone: StagedBackbone, options: ContrastiveConfig, image_size: tuple[int, int]) -> None:
        super().__init__(backbone, options, image_size)
        c = options
        self.projection_head = MoCoProjectionHead(backbone.num_features, c.proj_hidden, c.proj_dim)
        self.init_momentum(c.momentum_start, c.momentum_end)
        bank = (c.queue_size, c.proj_dim) if c.queue_size > 0 else 0
        # under DDP every rank enqueues the keys of every rank (lightly all-gathers them before enqueueing), so the
        # ranks' queues stay identical and DDP's per-forward broadcast of rank 0's buffers changes nothing
        self.criterion = NTXentLoss(temperature=c.temperature, memory_bank_size=bank, gather_distributed=True)
        self.queue_size = c.queue_size
        # lightly's queue starts as random unit vectors. Against them a constant embedding scores far above chance
        # (its positive at cosine 1, its negatives near 0), and MoCo from scratch collapsed onto one direction within
        # 10 steps (PneumoniaMNIST, lite0: positive-pair accuracy exactly 1/batch, the loss then at chance, ln(K+1)).
        # So until the queue holds real keys only, the negatives are the batch's own (SimCLR's loss on (q, k)) and
        # the keys are enqueued as usual
        self.batch_criterion = NTXentLoss(temperature=c.temperature, gather_distributed=True)
        self.keys_enqueued = 0

    def pool_warnings(self, pool_size: int) -> list[str]:
        """A queue that holds much of the pool holds each image's own key from the previous epoch (another view, an
        older encoder) as a negative: a false negative as hard as the positive. MoCo's own setting is 65,536 keys
        for ImageNet's 1.28M images (5%), lightly's CIFAR-10 benchmark 4,096 for 50,000 (8%)."""
        share = self.queue_size / max(pool_size, 1)
        if share <= QUEUE_SHARE_WARNING:
            return []
        return [f"pretrain.contrastive.queue_size={self.queue_size} holds {share:.0%} of the pool's {pool_size} images: "
                "each image's own key from the last epoch is among its negatives about that often; keep it under "
                f"{QUEUE_SHARE_WARNING:.0%} of the pool (at most {int(pool_size * QUEUE_SHARE_WARNING)})"]

    def get_extra_state(self) -> dict[str, Any]:
        """The momentum (see the base) and the queue of past keys with its write pointer (lightly's memory bank)."""
        bank = self.criterion.memory_bank
        return {**super().get_extra_state(), "queue": bank.bank.detach().clone(), "queue_ptr": bank.bank_ptr.clone(),
                "keys_enqueued": self.keys_enqueued}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        bank = self.criterion.memory_bank
        if state["queue"].shape != bank.bank.shape:
            raise ValueError(f"queue shape {tuple(state['queue'].shape)} != {tuple(bank.bank.shape)} "
                             "(pretrain.contrastive.queue_size / proj_dim changed)")
        bank.bank.copy_(state["queue"])
        bank.bank_ptr.copy_(state["queue_ptr"])
        # a state from before the warm-up existed: its queue was filled long ago unless its pointer never wrapped
        self.keys_enqueued = int(state.get("keys_enqueued", self.queue_size))

    def forward(self, x: Tensor) -> Tensor:
        """Images -> query projections (B, proj_dim)."""
        return self.projection_head(self.encoder(x))

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        x_q, x_k = self.augment(batch["image"])
        q = self(x_q)
        k = self.forward_momentum(x_k)
        if self.queue_size and self.keys_enqueued < self.queue_size:  # the queue still holds random vectors
            loss = self.batch_criterion(q, k)
            self.criterion.memory_bank(torch.nn.functional.normalize(k, dim=1), update=True)  # gathers under DDP
        else:
            loss = self.criterion(q, k)  # enqueues k (q requires grad)
        self.keys_enqueued += k.shape[0] * world_size()
        return {"loss": loss, "pretext_acc": positive_pair_accuracy(q, k),
                "momentum": torch.tensor(self.current_momentum, device=loss.device)}
