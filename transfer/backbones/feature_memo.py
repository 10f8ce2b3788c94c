"""Pooled features of a frozen backbone, remembered by image content, so head-only training does not run the same
images through the same frozen network again (every validation pass, every epoch, the test pass).

A head-only run (``train.depth: head``) trains a linear head on features that cannot change: every backbone
parameter is frozen and every BatchNorm is in eval mode. Each validation pass then recomputes the same 500
features, and a 1% label fraction draws the same 47 training images 40 times over 30 steps. Keyed by the bytes of
the input image and of the weights, a remembered feature is what the backbone returns for that image (up to the
float rounding of another batch composition; the tests compare them), whatever augmentation does: an augmented image
is another image and is simply computed.

The memo steps aside (calls the backbone) whenever its answer could differ from the backbone's: a parameter that
requires grad, a module in training mode, inputs not on the CPU (on a GPU the frozen forward is cheap and hashing
would need a device-to-host copy). Why not timm's or torchvision's feature extraction: they compute features, they
do not remember them; and not ``functools.lru_cache``: tensors are not hashable by content.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import xxhash
from torch import nn

from transfer.backbones.staged import StagedBackbone

#: memory the remembered features may take (lite0's 1280 floats: about 100k images)
DEFAULT_MAX_BYTES = 512 * 2**20


class FrozenFeatureMemo:
    """``memo(backbone, images)`` = ``backbone(images)``, computed once per (weights, image) while the backbone is
    frozen.

    One memo may serve several runs (a study's head-only cells on the same ImageNet weights): entries are keyed by
    a hash of the weights too, so a different backbone never reads another's features. Least recently used entries
    are dropped above ``max_bytes``. ``hits`` and ``misses`` count images.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self._store: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def applies(backbone: StagedBackbone, images: torch.Tensor) -> bool:
        """True when the backbone is a pure function of its input: frozen, every module its stages run in eval mode
        (BatchNorm, dropout, drop-path: where the mode changes the output), on CPU tensors. The containers and the
        modules outside every stage (timm's unused classifier) keep the mode ``model.train()`` gave them; the
        backbone's forward never runs them."""
        return (images.device.type == "cpu" and not any(p.requires_grad for p in backbone.parameters())
                and not any(m.training for view in backbone.stages().values() for part in view.parts
                            for m in part.modules()))

    def __call__(self, backbone: StagedBackbone, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D) pooled features, from the memo where the same weights saw the same image."""
        if not self.applies(backbone, images):
            return backbone(images)
        weights = weights_fingerprint(backbone) + _autocast_state()  # bf16 features are other features
        keys = [(weights, _hash(img)) for img in images]
        missing = [i for i, k in enumerate(keys) if k not in self._store]
        if missing:
            with torch.no_grad():
                computed = backbone(images[missing])
            for i, feature in zip(missing, computed):
                if keys[i] not in self._store:  # the same image twice in one batch
                    self._store[keys[i]] = feature.clone()  # not a view of the batch: it outlives it
                    self._bytes += feature.numel() * feature.element_size()
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        for k in keys:
            self._store.move_to_end(k)
        out = torch.stack([self._store[k] for k in keys])
        while self._bytes > self.max_bytes and len(self._store) > 1:
            _, dropped = self._store.popitem(last=False)
            self._bytes -= dropped.numel() * dropped.element_size()
        return out

    def __len__(self) -> int:
        return len(self._store)


def weights_fingerprint(module: nn.Module) -> str:
    """A hash of every parameter and buffer (names, shapes, dtypes and bytes): equal only for the same weights."""
    h = xxhash.xxh3_128()
    for name, t in (*module.named_parameters(), *module.named_buffers()):
        h.update(name.encode())
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(_bytes(t))
    return h.hexdigest()


def _autocast_state() -> str:
    """The CPU autocast dtype in force ("" without autocast), part of every key."""
    try:
        enabled, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    except (TypeError, AttributeError):  # torch < 2.4: no device argument, no get_autocast_dtype
        enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return f"/autocast={dtype}" if enabled else ""


def _hash(image: torch.Tensor) -> str:
    return xxhash.xxh3_128_hexdigest(_bytes(image)) + str((tuple(image.shape), image.dtype))


def _bytes(t: torch.Tensor) -> memoryview:
    a = t.detach().cpu().contiguous()
    return memoryview(a.reshape(-1).view(torch.uint8).numpy() if a.numel() else np.zeros(0, np.uint8))
