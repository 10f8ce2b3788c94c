"""The staged backbone: an ordered set of named stages covering every parameter.

A backbone wraps an ordinary torchvision or timm model (kept under ``.model``
so its state-dict keys stay the library's keys, prefixed by ``model.``) and
declares, by submodule path, which modules form each stage. Freezing,
learning-rate groups, checkpoints and reports all use this one definition.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    """A convolutional stage's output: channels and stride w.r.t. the input."""

    stage: str
    channels: int
    stride: int


@dataclass(frozen=True)
class NormConfig:
    """How the backbone's weights expect input images to be normalised."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class StageSpec:
    """One stage: submodule paths of ``model`` run in order, then an optional glue op.

    ``pre`` is a parameter-free callable applied to the stage input (e.g. a
    flatten before the first fully connected stage). ``spatial`` marks stages
    whose output is a feature map (B, C, H, W).
    """

    name: str
    modules: list[str]
    pre: Callable[[torch.Tensor], torch.Tensor] | None = None
    spatial: bool = True
    extra_params: list[str] = field(default_factory=list)  #: parameter paths owned by this stage


class StagedBackbone(nn.Module):
    """A model split into named stages, from input to output.

    ``forward(x)`` returns the pooled feature vector (B, num_features) the task
    heads consume; ``forward_features(x)`` returns the spatial stage outputs by
    name for dense heads.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        specs: list[StageSpec],
        norm: NormConfig = NormConfig(),
        first_conv: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self._specs = specs
        self.norm = norm
        self.first_conv = first_conv  #: submodule path of the first convolution (channel policy)
        self.in_chans = 3  #: channels of the images given to forward (see set_channel_policy)
        self.channel_policy = "replicate"
        self.register_buffer("_mean", torch.tensor(norm.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(norm.std).view(1, 3, 1, 1), persistent=False)
        self._check_partition()
        self.feature_info = self._probe_feature_info()
        self.num_features = self._probe_num_features()

    def set_stem_stride(self, stride: int) -> None:
        """The first convolution's stride (1: a small-image stem); stage strides in ``feature_info`` follow."""
        if self.first_conv is None:
            raise ValueError(f"{self.name}: no first convolution declared, its stride cannot be set")
        conv = self.model.get_submodule(self.first_conv)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"{self.name}: {self.first_conv} is a {type(conv).__name__}, not a Conv2d")
        conv.stride = (stride, stride)
        self.feature_info = self._probe_feature_info()

    # -- the protocol -----------------------------------------------------
    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._specs)

    def stages(self) -> "OrderedDict[str, nn.Module]":
        """Ordered stage name -> module holding exactly that stage's parameters."""
        out: OrderedDict[str, nn.Module] = OrderedDict()
        for spec in self._specs:
            out[spec.name] = _StageView(self.model, spec)
        return out

    def stage_parameters(self) -> "OrderedDict[str, list[tuple[str, nn.Parameter]]]":
        """Stage name -> list of (state-dict name, parameter)."""
        owner = self._param_owner()
        params: OrderedDict[str, list[tuple[str, nn.Parameter]]] = OrderedDict((s, []) for s in self.stage_names)
        for pname, p in self.named_parameters():
            params[owner[pname]].append((pname, p))
        return params

    def stage_of(self, key: str) -> str:
        """The stage a state-dict key (parameter or buffer) belongs to."""
        for spec in self._specs:
            for m in spec.modules + spec.extra_params:
                if key.startswith(f"model.{m}."):
                    return spec.name
                if key == f"model.{m}":
                    return spec.name
        raise KeyError(f"{key} belongs to no stage of {self.name}")

    def set_channel_policy(self, in_chans: int, policy: str) -> None:
        """Accept ``in_chans``-channel images.

        ``replicate`` copies a gray channel to RGB at the input; ``adapt`` sums
        the first convolution's RGB filters (timm's ``adapt_input_conv``), so a
        1-channel image sees the same filters as its 3-channel copy would.
        """
        from timm.models import adapt_input_conv

        if in_chans not in (1, 3) or policy not in ("replicate", "adapt"):
            raise ValueError(f"unsupported channel policy {policy!r} for {in_chans} channels")
        self.in_chans, self.channel_policy = in_chans, policy
        if policy == "adapt" and in_chans == 1:
            if self.first_conv is None:
                raise ValueError(f"{self.name} does not declare its first convolution; use channels: replicate")
            conv = self.model.get_submodule(self.first_conv)
            with torch.no_grad():
                w = adapt_input_conv(1, conv.weight.detach())
            conv.weight = nn.Parameter(w)
            conv.in_channels = 1
            # gray is normalised with the mean of the channel statistics
            self._mean = self._mean.mean(dim=1, keepdim=True)
            self._std = self._std.mean(dim=1, keepdim=True)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, in_chans, H, W) -> normalised network input."""
        if x.shape[1] != self.in_chans:
            raise ValueError(f"{self.name}: expected {self.in_chans}-channel input, got shape {tuple(x.shape)}")
        if self.in_chans == 1 and self.channel_policy == "replicate":
            x = x.expand(-1, 3, -1, -1)
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def forward_stages(self, x: torch.Tensor, upto: str | None = None) -> "OrderedDict[str, torch.Tensor]":
        """Images in [0, 1] -> every stage's output, up to and including ``upto``."""
        x = self.prepare(x)
        outs: OrderedDict[str, torch.Tensor] = OrderedDict()
        for spec in self._specs:
            x = _run_spec(self.model, spec, x)
            outs[spec.name] = x
            if spec.name == upto:
                break
        return outs

    def forward_features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Spatial stage outputs by name: stage -> (B, C_s, H / stride_s, W / stride_s)."""
        last_spatial = [s.name for s in self._specs if s.spatial][-1]
        outs = self.forward_stages(x, upto=last_spatial)
        return OrderedDict((k, v) for k, v in outs.items() if v.dim() == 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, in_chans, H, W) -> pooled features (B, num_features)."""
        x = self.prepare(x)
        for spec in self._specs:
            x = _run_spec(self.model, spec, x)
        if x.dim() == 4:
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return x

    def unused_by_stage_outputs(self) -> frozenset[str]:
        """Parameter names (as in ``named_parameters``) that no output of :meth:`forward_stages` depends on, though
        their stage is one a dense head reads: they get no gradient when the head reads stage outputs only, so such a
        head keeps them frozen. None here: every module of a stage runs in it (a generic timm model's final norm or
        EfficientNet's ``conv_head`` sit in its last stage but come after its last feature map)."""
        return frozenset()

    # -- internals ----------------------------------------------------------
    def _param_owner(self) -> dict[str, str]:
        return {pname: self.stage_of(pname) for pname, _ in self.named_parameters()}

    def _check_partition(self) -> None:
        """Every parameter in exactly one stage (raises otherwise)."""
        for pname, _ in self.named_parameters():
            owners = [
                s.name
                for s in self._specs
                for m in s.modules + s.extra_params
                if pname.startswith(f"model.{m}.") or pname == f"model.{m}"
            ]
            if len(owners) != 1:
                raise RuntimeError(f"{self.name}: parameter {pname} is in stages {owners}, expected exactly one")

    @torch.no_grad()
    def _probe(self, size: int = 64) -> "OrderedDict[str, torch.Tensor]":
        was_training = self.training
        self.eval()
        try:
            outs = self.forward_stages(torch.zeros(1, self.in_chans, size, size))
        finally:
            self.train(was_training)
        return outs

    def _probe_feature_info(self) -> list[FeatureInfo]:
        size = 224 if any(not s.spatial for s in self._specs) else 64
        outs = self._probe(size)
        info = []
        for spec in self._specs:
            y = outs[spec.name]
            if spec.spatial and y.dim() == 4:
                info.append(FeatureInfo(spec.name, int(y.shape[1]), 2 ** round(math.log2(size / int(y.shape[-1])))))
        return info

    def _probe_num_features(self) -> int:
        size = 224 if any(not s.spatial for s in self._specs) else 64
        was_training = self.training
        self.eval()
        with torch.no_grad():
            n = int(self.forward(torch.zeros(1, self.in_chans, size, size)).shape[1])
        self.train(was_training)
        return n


def _run_spec(model: nn.Module, spec: StageSpec, x: torch.Tensor) -> torch.Tensor:
    if spec.pre is not None:
        x = spec.pre(x)
    for path in spec.modules:
        x = model.get_submodule(path)(x)
    return x


class _StageView(nn.Module):
    """A non-owning view of one stage's modules (built on demand, never registered).

    Its ``parameters()`` are exactly the stage's parameters, so it can be
    frozen, put in eval mode or given to an optimiser group.
    """

    def __init__(self, model: nn.Module, spec: StageSpec) -> None:
        super().__init__()
        self._spec_name = spec.name
        self.parts = nn.ModuleList([model.get_submodule(p) for p in spec.modules])
        self._extra = [model.get_parameter(p) for p in spec.extra_params]
        self._model = [model]  # list: do not register the parent
        self._spec = spec

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        yield from super().parameters(recurse)
        yield from self._extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_spec(self._model[0], self._spec, x)
