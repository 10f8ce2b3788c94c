"""``medtransfer export``: a backbone checkpoint as the plain state dict timm or torchvision load themselves.

The staged backbone wraps an unmodified timm or torchvision model (``StagedBackbone.model``), so its state dict,
without the ``model.`` prefix, is that library's own key set: ``timm.create_model(name, num_classes=0,
checkpoint_path=OUT)`` or torchvision's ``load_state_dict`` takes it as it is. The task head is not part of it
(each task builds its own); a sidecar ``OUT.json`` says which model name to create, the input channels and the
normalisation the backbone was trained with, and the keys of the library's classifier the file does not hold.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from transfer.errors import CheckpointError
from transfer.tracking import atomic_torch_save, atomic_write_text
from transfer.weights import CHECKPOINT_FORMAT, TASK_MODEL_FORMAT_PREFIX, build_backbone, read_checkpoint

ExportFormat = Literal["timm", "torchvision"]

#: medtransfer backbone -> the model of the same architecture and key names in each library
TARGETS: dict[str, dict[str, str]] = {
    "timm": {"efficientnet_lite0": "tf_efficientnet_lite0", "efficientnet_lite1": "tf_efficientnet_lite1",
             "efficientnet_lite2": "tf_efficientnet_lite2", "resnet18": "resnet18", "resnet50": "resnet50"},
    "torchvision": {"resnet18": "resnet18", "resnet50": "resnet50", "densenet121": "densenet121",
                    "mobilenet_v2": "mobilenet_v2", "efficientnet_b0": "efficientnet_b0", "alexnet": "alexnet"},
}


def target_model(backbone: str, fmt: ExportFormat) -> str:
    """The library's model name for ``backbone`` (generic ``timm:<name>`` backbones are timm's ``<name>``)."""
    if fmt == "timm" and backbone.startswith("timm:"):
        return backbone.split(":", 1)[1]
    try:
        return TARGETS[fmt][backbone]
    except KeyError:
        raise CheckpointError(f"export: backbone {backbone!r} has no {fmt} counterpart with the same keys "
                              f"(supported for {fmt}: {sorted(TARGETS[fmt])}"
                              f"{' and timm:<name>' if fmt == 'timm' else ''})") from None


def checkpoint_backbone(path: Path) -> tuple[str, int, str]:
    """(backbone name, input channels, channel policy) of a stage-1 ``backbone.pt`` or a stage-2 ``model.pt``."""
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        prov = obj.get("provenance", {})
        return obj["backbone"], prov.get("channels", 3), prov.get("channel_policy", "replicate")
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith(TASK_MODEL_FORMAT_PREFIX):
        bb = obj.get("config", {}).get("backbone", {})
        return bb["name"], bb.get("in_chans", 3), bb.get("channels", "replicate")
    raise CheckpointError(f"{path}: not a medtransfer checkpoint (backbone.pt of pretrain, model.pt of finetune)")


def export_backbone(checkpoint: str | Path, fmt: ExportFormat, out: str | Path) -> dict[str, Any]:
    """Write ``out`` (the library's state dict) and ``out.json`` (how to load it); returns the latter."""
    checkpoint, out = Path(checkpoint), Path(out)
    name, in_chans, policy = checkpoint_backbone(checkpoint)
    model_name = target_model(name, fmt)
    backbone, _ = build_backbone(name, str(checkpoint), in_chans=in_chans, channel_policy=policy)
    state = {k: v.detach().cpu().clone() for k, v in backbone.model.state_dict().items()}
    conv_in = 1 if (in_chans == 1 and policy == "adapt") else 3
    atomic_torch_save(state, out)
    head = _missing_keys(fmt, model_name, state)
    info = {"format": fmt, "model": model_name, "source": str(checkpoint), "backbone": name, "in_chans": conv_in,
            "normalisation": {"mean": backbone.norm.mean, "std": backbone.norm.std},
            "not_in_file": head, "load": _load_line(fmt, model_name, out, conv_in, head)}
    atomic_write_text(out.with_name(out.name + ".json"), json.dumps(info, indent=2) + "\n")
    return info


def _missing_keys(fmt: ExportFormat, model_name: str, state: dict[str, torch.Tensor]) -> list[str]:
    """Keys of the library's full model (with its ImageNet classifier) the exported file does not hold."""
    if fmt == "timm":
        return []  # timm builds the model without a classifier (num_classes=0): nothing is missing
    import torchvision.models as tvm

    return sorted(set(tvm.get_model(model_name, weights=None).state_dict()) - set(state))


def _load_line(fmt: ExportFormat, model_name: str, out: Path, conv_in: int, head: list[str]) -> str:
    if fmt == "timm":
        return f"timm.create_model({model_name!r}, num_classes=0, in_chans={conv_in}, checkpoint_path={str(out)!r})"
    strict = "strict=False" if head else "strict=True"
    return (f"m = torchvision.models.get_model({model_name!r}); m.load_state_dict(torch.load({str(out)!r}), "
            f"{strict})  # not in the file: {head or 'nothing'}")
