"""Backbone registry: ``@register("name")`` builders and where their ImageNet weights come from."""
from __future__ import annotations

from transfer.errors import UnknownNameError

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

from transfer.backbones.staged import StagedBackbone


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


_REGISTRY: dict[str, BackboneEntry] = {}
_TIMM_PREFIX = "timm:"


def register(
    name: str, imagenet: Callable[[], WeightsSource] | None = None, description: str = ""
) -> Callable[[Callable[[], StagedBackbone]], Callable[[], StagedBackbone]]:
    def deco(fn: Callable[[], StagedBackbone]) -> Callable[[], StagedBackbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = BackboneEntry(name, fn, imagenet, description)
        return fn

    return deco


def _ensure_loaded() -> None:
    # importing the adapter modules runs their @register decorators
    from transfer.backbones import timm_adapters, tiny, torchvision_adapters  # noqa: F401


def backbone_names() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_entry(name: str) -> BackboneEntry:
    """The registry entry for ``name``; ``timm:<model>`` builds any timm model generically."""
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(_TIMM_PREFIX):
        from transfer.backbones.timm_adapters import generic_timm_entry

        return generic_timm_entry(name[len(_TIMM_PREFIX) :])
    raise UnknownNameError(f"unknown backbone {name!r}; registered: {', '.join(sorted(_REGISTRY))}, or timm:<any timm model>")
