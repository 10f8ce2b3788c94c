"""Only stages that get a gradient are trained: the refinement backbone's stages above its decoder stay frozen.

A trainable parameter without a gradient stops DistributedDataParallel (find_unused_parameters=False) with
"Expected to have finished reduction"; on one process it silently trains nothing.
"""
from __future__ import annotations

import copy

import torch

from tasks.landmarks.refine import RefinementStage
from tasks.landmarks.task import LandmarkModel
from transfer.config import Config
from transfer.runs.depth import setup_depth
from transfer.weights import build_backbone


def _batch(b: int = 2, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(b, 3, size, size, generator=g),
            "landmarks": torch.rand(b, 2, 2, generator=g) * 0.6 + 0.2,
            "orig_size": torch.full((b, 2), float(size)), "spacing": torch.full((b, 2), 0.5),
            "refine_image": (torch.rand(b, 3, 96, 96, generator=g) * 255).to(torch.uint8)}


def test_every_trainable_parameter_of_a_refined_landmark_model_gets_a_gradient():
    torch.manual_seed(0)
    backbone, _ = build_backbone("tiny_alexnet", "scratch")  # fc6, fc7: no feature map, no decoder reads them
    refine = RefinementStage(copy.deepcopy(backbone), 2, crop=32, width=8)
    model = LandmarkModel(backbone, 2, head="decoder", hidden=8, dropout=0.0, heatmap_stage=None, heatmap_weight=1.0,
                          heatmap_sigma=1.0, augment=None, decoder_width=8, refine=refine)
    _, opt, train_mode = setup_depth(model, Config(), "all")
    train_mode()
    model.training_step(_batch())["loss"].backward()
    without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without == []
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("refine_stage.backbone.model.fc"))
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) not in trained for p in refine.backbone.stages()["fc6"].parameters())
