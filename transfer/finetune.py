"""Layer-wise fine-tuning: depth names, freezing by stage, per-stage learning-rate groups.

Depth names follow Tajbakhsh et al. 2016 (Table II, "FT:conv3-fc8"): ``head``
trains only the new head, ``<stage>-head`` trains that stage, every stage
above it and the head, ``all`` trains everything, ``auto`` searches the depth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from transfer.backbones import StagedBackbone
from transfer.errors import UnknownNameError


def depth_names(stage_names: Sequence[str]) -> list[str]:
    """Every valid fixed depth, shallowest first: head, <top>-head, ..., <bottom>-head (= all)."""
    return ["head"] + [f"{s}-head" for s in reversed(stage_names)] + ["all"]


def trainable_stages(depth: str, stage_names: Sequence[str]) -> list[str]:
    """Backbone stages trained at ``depth`` (the head is always trained)."""
    if depth == "all":
        return list(stage_names)
    if depth == "head":
        return []
    if depth.endswith("-head") and depth[: -len("-head")] in stage_names:
        i = list(stage_names).index(depth[: -len("-head")])
        return list(stage_names[i:])
    raise UnknownNameError(f"unknown fine-tuning depth {depth!r}; valid: {', '.join(depth_names(stage_names))}, auto")


def freeze_stages(backbone: StagedBackbone, trainable: Iterable[str]) -> None:
    """``requires_grad`` True exactly for parameters of ``trainable`` stages."""
    keep = set(trainable)
    unknown = keep - set(backbone.stage_names)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; {backbone.name} has {backbone.stage_names}")
    for stage, params in backbone.stage_parameters().items():
        for _, p in params:
            p.requires_grad_(stage in keep)


def set_train_mode(backbone: StagedBackbone, trainable: Iterable[str]) -> None:
    """Train mode for trainable stages; frozen stages stay in eval mode so BatchNorm statistics do not move."""
    keep = set(trainable)
    backbone.train()
    for name, view in backbone.stages().items():
        if name not in keep:
            view.eval()


@dataclass(frozen=True)
class LRSpec:
    lr: float
    head_lr_mult: float = 10.0
    bias_lr_mult: float = 1.0
    layer_decay: float | None = None
    weight_decay: float = 0.0


def param_groups(
    backbone: StagedBackbone, head: nn.Module, trainable: Sequence[str], spec: LRSpec, prefix: str = ""
) -> list[dict]:
    """Optimiser parameter groups; pure (never touches ``requires_grad``).

    One group per (stage, decay / no decay, bias) combination. Pretrained
    stages get ``lr`` (times ``layer_decay ** distance_from_top`` when set),
    the head ``lr * head_lr_mult``, biases a further ``bias_lr_mult``; weight
    decay only on tensors with more than one dimension. ``prefix`` starts every group's name (a model's
    second stage). Each group's ``role`` (``backbone`` or ``head``) and ``role_lr_mult`` (its rate over the role's
    base rate) let the engine log one comparable rate per role.
    """
    names = list(backbone.stage_names)
    groups: list[dict] = []

    def add(label: str, named: list[tuple[str, nn.Parameter]], base_lr: float, role: str, role_mult: float) -> None:
        buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for pname, p in named:
            is_bias = pname.endswith(".bias") or pname == "bias"
            decay = p.ndim > 1
            buckets.setdefault((decay, is_bias), []).append(p)
        for (decay, is_bias), ps in sorted(buckets.items()):
            groups.append({
                "params": ps,
                "lr": base_lr * (spec.bias_lr_mult if is_bias else 1.0),
                "weight_decay": spec.weight_decay if decay else 0.0,
                "name": f"{prefix}{label}/{'decay' if decay else 'no_decay'}{'/bias' if is_bias else ''}",
                # the group's rate is the role's base rate (train.lr, or the head's) times this: the logged lr_head
                # and lr_backbone are the base rates, the same at every depth
                "role": role, "role_lr_mult": role_mult * (spec.bias_lr_mult if is_bias else 1.0),
            })

    stage_params = backbone.stage_parameters()
    top = len(names) - 1
    for stage in trainable:
        i = names.index(stage)
        decay = spec.layer_decay ** (top - i) if spec.layer_decay else 1.0
        add(stage, stage_params[stage], spec.lr * decay, "backbone", decay)
    add("head", list(head.named_parameters()), spec.lr * spec.head_lr_mult, "head", 1.0)
    for g in groups:
        g["initial_lr"] = g["lr"]
    return groups


def build_optimizer(groups: list[dict], name: str, momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(groups, lr=groups[0]["lr"])
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"])
    raise ValueError(f"unknown optimizer {name!r}; valid: sgd, adam, adamw")


@torch.no_grad()
def recalibrate_batchnorm(backbone: StagedBackbone, images: torch.Tensor, device: torch.device,
                          batch_size: int = 64) -> None:
    """Estimate BatchNorm running statistics of a randomly initialised backbone on training images.

    A scratch backbone's BatchNorm layers start with mean 0 / variance 1; a
    frozen stage keeps them in eval mode, and through a deep random network
    the activations then vanish (efficientnet_lite0: ~1e-10 at conv_head), so
    a head on frozen random features sees a constant. One pass over the
    training images (no labels, no gradient; torch's ``update_bn``) gives
    frozen random stages real statistics.
    """
    from torch.optim.swa_utils import update_bn

    update_bn((images[i : i + batch_size] for i in range(0, len(images), batch_size)), backbone, device=device)
