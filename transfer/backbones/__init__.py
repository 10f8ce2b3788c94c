"""Staged backbones: registry, torchvision and timm adapters, tiny test variants."""
from transfer.backbones.registry import BackboneEntry, backbone_names, get_entry, register
from transfer.backbones.staged import FeatureInfo, NormConfig, StagedBackbone, StageSpec

__all__ = ["BackboneEntry", "FeatureInfo", "NormConfig", "StagedBackbone", "StageSpec", "backbone_names",
           "get_entry", "register"]
