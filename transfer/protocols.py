"""The contracts between the core and its plug-ins (tasks, stage-1 methods).

The core owns the registries; ``tasks`` and ``ssl_pretrain`` modules register
themselves when the CLI imports them, so ``transfer`` never imports them at
module level.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from transfer.registry import Registry

Batch = dict[str, Any]


@runtime_checkable
class StepModel(Protocol):
    """What the training engine drives (an ``nn.Module``).

    ``training_step`` returns a dict with a scalar ``loss`` plus anything worth
    logging (scalars) under other keys.
    """

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]: ...

    def after_optimizer_step(self, progress: float) -> None:
        """Hook after each optimiser step (momentum encoders); ``progress`` in [0, 1]."""
        ...


#: stage-1 methods: name -> class ``(backbone, cfg: PretrainConfig, image_size) -> StepModel``
PRETRAIN_METHODS: Registry[Any] = Registry("pretrain method")
#: downstream tasks: name -> Task class (see transfer/task_api.py)
TASKS: Registry[Any] = Registry("task")
