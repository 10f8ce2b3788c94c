"""Dice + cross-entropy, restricted to the field of view.

The soft Dice is written here rather than taken from kornia (``kornia.losses.dice_loss``)
or torchmetrics because neither takes a per-pixel validity mask: outside the field
of view the label is meaningless (DRIVE's black border) and must not count, and
the background class (most pixels) must be left out of the Dice, as is usual for
vessel / lesion segmentation. The cross-entropy is PyTorch's, weighted by the mask.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                   eps: float = 1.0) -> torch.Tensor:
    """1 - mean over foreground classes of the batch soft Dice.

    Args:
        logits: (B, K, H, W) class logits (K >= 2, class 0 = background).
        target: (B, H, W) integer class indices.
        valid: (B, H, W) bool, pixels that count (default: all).
        eps: smoothing added to numerator and denominator (a class absent from
            target and prediction scores Dice 1, not 0/0).
    """
    probs = logits.float().softmax(1)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    if valid is not None:
        v = valid[:, None].to(probs.dtype)
        probs, onehot = probs * v, onehot * v
    dims = (0, 2, 3)  # batch Dice: one ratio per class over the whole batch (stable with empty crops)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - dice[1:].mean()


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean pixel cross-entropy over ``valid`` pixels; (B, K, H, W) logits, (B, H, W) targets."""
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    if valid is None:
        return ce.mean()
    v = valid.to(ce.dtype)
    return (ce * v).sum() / v.sum().clamp_min(1.0)


class DiceCELoss(nn.Module):
    """``dice_weight * soft Dice + ce_weight * cross-entropy``, both inside ``valid``."""

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0) -> None:
        super().__init__()
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight <= 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got dice={dice_weight}, ce={ce_weight}")
        self.dice_weight, self.ce_weight = dice_weight, ce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """(B, K, H, W) logits, (B, H, W) targets, optional (B, H, W) bool -> ``{"loss", "dice_loss", "ce"}``."""
        d = soft_dice_loss(logits, target, valid) if self.dice_weight else logits.new_zeros(())
        c = masked_cross_entropy(logits, target, valid) if self.ce_weight else logits.new_zeros(())
        return {"loss": self.dice_weight * d + self.ce_weight * c, "dice_loss": d.detach(), "ce": c.detach()}
