"""The numeric precision and memory format of a run's forward passes, training and scoring alike.

Resolved once per run from ``runtime`` and the device (:meth:`Precision.resolve`), given to the engine for training
and to the task (``Task.precision``) for every scoring pass, so validation, test, ``evaluate`` and ``predict`` run
under the autocast and channels_last the model was trained with (nanoGPT: one null-or-autocast context). On the CPU
both are off: AMP and channels_last are only used on CUDA.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """Autocast dtype, or None for full precision. AMP is only used on CUDA."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


@dataclass(frozen=True)
class Precision:
    """``dtype``: the autocast dtype (None: full precision); ``channels_last``: 4-D float inputs and the model in
    channels_last memory format."""

    dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def resolve(cls, device: torch.device, amp: str = "auto", channels_last: bool = True) -> "Precision":
        """What ``runtime.amp`` / ``runtime.channels_last`` mean on ``device`` (both off on the CPU)."""
        return cls(amp_dtype(device, amp), channels_last and device.type == "cuda")

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        """``torch.autocast`` at ``dtype`` on ``device_type``, or a null context in full precision."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def input(self, x: Any) -> Any:
        """A 4-D float tensor in channels_last (when on); anything else as it is."""
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point():
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def model(self, model: nn.Module) -> nn.Module:
        """``model`` in channels_last (in place, when on)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def inference_forward(model: Callable[..., Any], precision: Precision | None) -> Callable[..., Any]:
    """``model`` (or any forward callable) wrapped for scoring: its tensor arguments in ``precision``'s memory
    format, the call under its autocast on the arguments' device. Outputs may be in the autocast dtype: callers
    cast what they keep (``.float()``)."""
    if precision is None or precision == Precision():
        return model

    def forward(*inputs: Any) -> Any:
        device = next((x.device.type for x in inputs if isinstance(x, torch.Tensor)), "cpu")
        with precision.autocast(device):
            return model(*(precision.input(x) for x in inputs))

    return forward
