"""Backbone registry: ``@register("name")`` builders and where their ImageNet weights come from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

from transfer.backbones.staged import StagedBackbone
from transfer.errors import UnknownNameError
from transfer.registry import Registry


class WeightsSource(Protocol):
    """Where a backbone's ImageNet weights live and how to read them."""

    def cache_file(self) -> Path:
        """The exact file the weights are read from (or must be placed at)."""
        ...

    def needs_download(self) -> bool: ...

    def load(self) -> dict[str, torch.Tensor]:
        """The library's own state dict (its keys, not prefixed)."""
        ...


@dataclass
class BackboneEntry:
    name: str
    build: Callable[[], StagedBackbone]
    imagenet: Callable[[], WeightsSource] | None
    description: str = ""


#: name -> entry; the adapter modules register theirs with ``@register``
BACKBONES: Registry[BackboneEntry] = Registry("backbone")
_TIMM_PREFIX = "timm:"


def register(
    name: str, imagenet: Callable[[], WeightsSource] | None = None, description: str = ""
) -> Callable[[Callable[[], StagedBackbone]], Callable[[], StagedBackbone]]:
    def deco(fn: Callable[[], StagedBackbone]) -> Callable[[], StagedBackbone]:
        BACKBONES.register(name)(BackboneEntry(name, fn, imagenet, description))
        return fn

    return deco


def _ensure_loaded() -> None:
    # importing the adapter modules runs their @register decorators
    from transfer.backbones import timm_adapters, tiny, torchvision_adapters  # noqa: F401


def backbone_names() -> list[str]:
    _ensure_loaded()
    return BACKBONES.names()


def get_entry(name: str) -> BackboneEntry:
    """The registry entry for ``name``; ``timm:<model>`` builds any timm model generically."""
    _ensure_loaded()
    if name.startswith(_TIMM_PREFIX):
        from transfer.backbones.timm_adapters import generic_timm_entry

        return generic_timm_entry(name[len(_TIMM_PREFIX) :])
    if name not in BACKBONES:
        raise UnknownNameError(f"unknown backbone {name!r}; registered: {', '.join(BACKBONES.names())}, "
                               f"or timm:<any timm model>")
    return BACKBONES.get(name)
