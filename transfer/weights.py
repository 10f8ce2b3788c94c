"""Weight sources (imagenet / scratch / checkpoint) and the backbone checkpoint schema.

Checkpoint schema (a ``torch.save``-d dict)::

    {
      "format": "medtransfer-backbone/1",
      "backbone": "efficientnet_lite0",
      "stages": {stage_name: {state_dict_key: tensor}},   # keys as in StagedBackbone.state_dict()
      "provenance": {method, source_weights, data_fingerprint, input_size, channels,
                     channel_policy, normalisation, config, code_version, created}
    }
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transfer.backbones import StagedBackbone, get_entry
from transfer.config import BackboneConfig
from transfer.errors import CheckpointError, UnsafeCheckpointError
from transfer.safe_load import load_weights_only

CHECKPOINT_FORMAT = "medtransfer-backbone/1"
#: a trained stage-2 model (a run directory's ``model.pt``, written by ``transfer.runs.model_io``): its state dict
#: holds the backbone under this prefix, beside the task head
TASK_MODEL_FORMAT_PREFIX = "medtransfer-model/"
_BACKBONE_PREFIX = "backbone."


@dataclass
class LoadReport:
    """What loading weights did: the source, and keys that did not match."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        s = f"weights from {self.source}"
        if self.missing:
            s += f"; {len(self.missing)} missing keys (e.g. {self.missing[:3]})"
        if self.unexpected:
            s += f"; {len(self.unexpected)} unused keys (e.g. {self.unexpected[:3]})"
        return s


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medtransfer")
    except PackageNotFoundError:
        return "unknown"


def init_scratch(module: nn.Module, scheme: str) -> None:
    """Re-initialise every conv/linear/norm layer: ``gaussian`` (N(0, 0.01), Caffe), ``xavier`` or ``kaiming``."""
    if scheme not in ("gaussian", "xavier", "kaiming"):
        raise ValueError(f"unknown scratch init {scheme!r}; valid: gaussian, xavier, kaiming")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            if scheme == "gaussian":
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _load_prefixed(backbone: StagedBackbone, sd: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Load a library state dict (keys without ``model.``) and report mismatches."""
    own = backbone.state_dict()
    mapped = {}
    for k, v in sd.items():
        key = k if k.startswith("model.") else f"model.{k}"
        mapped[key] = v
    usable = {k: v for k, v in mapped.items() if k in own and own[k].shape == v.shape}
    wrong_shape = [k for k, v in mapped.items() if k in own and own[k].shape != v.shape]
    res = backbone.load_state_dict(usable, strict=False)
    unexpected = [k for k in mapped if k not in own] + [f"{k} (shape)" for k in wrong_shape]
    return LoadReport(source, list(res.missing_keys), unexpected)


def backbone_from_config(cfg: BackboneConfig, init: str) -> tuple[StagedBackbone, LoadReport]:
    """The backbone of the ``backbone`` section with weights ``init`` (imagenet | scratch | checkpoint path)."""
    backbone, report = build_backbone(cfg.name, init, cfg.scratch_init, cfg.in_chans, cfg.channels)
    if cfg.stem_stride is not None:
        backbone.set_stem_stride(cfg.stem_stride)
    return backbone, report


def build_backbone(
    name: str,
    init: str = "imagenet",
    scratch_init: str = "kaiming",
    in_chans: int = 3,
    channel_policy: str = "replicate",
) -> tuple[StagedBackbone, LoadReport]:
    """Build backbone ``name`` with weights ``init`` (imagenet | scratch | checkpoint path)."""
    entry = get_entry(name)
    backbone = entry.build()
    if init == "imagenet":
        if entry.imagenet is None:
            raise CheckpointError(f"backbone {name!r} has no ImageNet weights; use init: scratch or a checkpoint")
        src = entry.imagenet()
        report = _load_prefixed(backbone, src.load(), f"imagenet ({src.cache_file()})")
        if report.missing:
            raise CheckpointError(f"ImageNet weights for {name} miss keys {report.missing[:5]}")
        backbone.set_channel_policy(in_chans, channel_policy)
    elif init == "scratch":
        init_scratch(backbone, scratch_init)
        report = LoadReport(f"scratch ({scratch_init})")
        backbone.set_channel_policy(in_chans, channel_policy)
    else:
        path = Path(init)
        if not path.is_file():
            raise CheckpointError(f"init {init!r} is neither imagenet, scratch, nor an existing checkpoint file")
        backbone.set_channel_policy(in_chans, channel_policy)  # before loading: adapted weights are 1-channel
        report = load_checkpoint_into(backbone, path)
    return backbone, report


def _conv_channels(in_chans: int, policy: str) -> int:
    """Input channels of the first convolution under a channel policy."""
    return 1 if (in_chans == 1 and policy == "adapt") else 3


def read_checkpoint(path: Path) -> Any:
    """The object in a PyTorch file on the CPU, read with ``weights_only=True`` (a file whose pickle would build
    other objects, and so could run code, is an :class:`~transfer.errors.UnsafeCheckpointError`); a file torch cannot
    read is one CheckpointError naming it."""
    try:
        return load_weights_only(path)
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # pickle/zip errors vary; all mean the file is not a checkpoint
        first = str(e).splitlines()[0] if str(e) else ""  # one line: torch's messages run over several
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first})") from None


def load_checkpoint_into(backbone: StagedBackbone, path: str | Path) -> LoadReport:
    """Load a medtransfer checkpoint, or a raw torchvision/timm state dict, into ``backbone``."""
    path = Path(path)
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        prov = obj.get("provenance", {})
        if obj["backbone"] != backbone.name:
            raise CheckpointError(f"{path}: checkpoint is for backbone {obj['backbone']!r}, config asks for {backbone.name!r}")
        ck_ch, ck_pol = prov.get("channels", 3), prov.get("channel_policy", "replicate")
        if _conv_channels(ck_ch, ck_pol) != _conv_channels(backbone.in_chans, backbone.channel_policy):
            raise CheckpointError(
                f"{path}: checkpoint has channels={ck_ch}, channel_policy={ck_pol}; the config asks for "
                f"channels={backbone.in_chans}, channel_policy={backbone.channel_policy}"
            )
        sd = {k: v for stage in obj["stages"].values() for k, v in stage.items()}
        report = _load_prefixed(backbone, sd, f"checkpoint {path}")
        report.provenance = prov
        return report
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith(TASK_MODEL_FORMAT_PREFIX):
        return _load_task_model_backbone(backbone, obj, path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: neither a medtransfer checkpoint nor a state dict of tensors")
    report = _load_prefixed(backbone, obj, f"state dict {path}")
    _require_weights_loaded(backbone, report, path, list(obj))
    return report


def _require_weights_loaded(backbone: StagedBackbone, report: LoadReport, path: Path, keys: list[str]) -> None:
    """Refuse a load that set no weight tensor. BatchNorm's ``num_batches_tracked`` does not count: torch fills it
    in when it is absent, so a file matching nothing looked as if it had loaded something and training went on
    from random weights."""
    missing = set(report.missing)
    loaded = [k for k in backbone.state_dict() if k not in missing and not k.endswith("num_batches_tracked")]
    if not loaded:
        raise CheckpointError(f"{path}: no weight matches backbone {backbone.name} ({len(report.missing)} missing, "
                              f"{len(report.unexpected)} unused keys, e.g. {keys[:3]})")


def _load_task_model_backbone(backbone: StagedBackbone, obj: dict[str, Any], path: Path) -> LoadReport:
    """The backbone of a trained stage-2 model (``model.pt``): its ``backbone.`` keys, prefix stripped; the task
    head is left out (the new run builds its own)."""
    cfg = obj.get("config", {}).get("backbone", {})
    if cfg.get("name", backbone.name) != backbone.name:
        raise CheckpointError(f"{path}: task model with backbone {cfg.get('name')!r}, config asks for {backbone.name!r}")
    ch, pol = cfg.get("in_chans", 3), cfg.get("channels", "replicate")
    if _conv_channels(ch, pol) != _conv_channels(backbone.in_chans, backbone.channel_policy):
        raise CheckpointError(f"{path}: task model has backbone.in_chans={ch}, backbone.channels={pol}; the config "
                              f"asks for in_chans={backbone.in_chans}, channels={backbone.channel_policy}")
    sd = obj.get("state_dict", {})
    bb = {k[len(_BACKBONE_PREFIX):]: v for k, v in sd.items() if k.startswith(_BACKBONE_PREFIX)}
    report = _load_prefixed(backbone, bb, f"backbone of task model {path}")
    report.provenance = {"method": "finetune", "task": obj.get("config", {}).get("task", {}).get("name"),
                         "depth": obj.get("depth")}
    _require_weights_loaded(backbone, report, path, list(sd))
    return report


def backbone_checkpoint(backbone: StagedBackbone, provenance: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict for ``backbone``: its state keyed by stage, plus provenance."""
    stages: dict[str, dict[str, torch.Tensor]] = {s: {} for s in backbone.stage_names}
    for k, v in backbone.state_dict().items():
        stages[backbone.stage_of(k)][k] = v.detach().cpu().clone()
    prov = {
        "channels": backbone.in_chans,
        "channel_policy": backbone.channel_policy,
        "normalisation": {"mean": list(backbone.norm.mean), "std": list(backbone.norm.std)},
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **provenance,
    }
    return {"format": CHECKPOINT_FORMAT, "backbone": backbone.name, "stages": stages, "provenance": prov}


def save_backbone_checkpoint(backbone: StagedBackbone, path: str | Path, provenance: dict[str, Any]) -> Path:
    from transfer.tracking import atomic_torch_save

    path = Path(path)
    atomic_torch_save(backbone_checkpoint(backbone, provenance), path)
    return path
