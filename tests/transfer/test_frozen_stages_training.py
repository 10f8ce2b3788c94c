"""A real fine-tune at a shallow depth leaves every frozen stage bit-identical: weights and BatchNorm buffers.

Unit tests of ``set_train_mode`` alone did not notice when the engine called ``model.train()`` instead of the
depth's train-mode hook: frozen stages' BatchNorm running statistics then move with every training batch.
"""
from __future__ import annotations

import torch

from transfer.cli import main
from transfer.weights import build_backbone, save_backbone_checkpoint


def test_finetune_at_layer4_head_keeps_frozen_stages_bit_identical(tmp_path, tiny_npz):
    torch.manual_seed(3)
    backbone, _ = build_backbone("tiny_resnet", "scratch", in_chans=1)
    init = save_backbone_checkpoint(backbone, tmp_path / "init.pt", {"method": "test"})
    before = {f"backbone.{k}": v.clone() for k, v in backbone.state_dict().items()}
    stage_of = {f"backbone.{k}": backbone.stage_of(k) for k in backbone.state_dict()}
    args = ["finetune", "--name", "shallow", "--set", "backbone.name=tiny_resnet", "--set", f"init={init}",
            "--set", "backbone.in_chans=1", "--set", "train.depth=layer4-head", "--set", "train.epochs=2",
            "--set", "train.batch_size=4", "--set", "train.lr=0.05", "--set", "data.format=npz",
            "--set", f"data.root={tiny_npz.parent}", "--set", "data.train=tiny.npz#train",
            "--set", "data.val=tiny.npz#val", "--set", "data.image_size=[32, 32]",
            "--set", "task.classification.bootstrap=20", "--set", f"tracking.out_dir={tmp_path / 'runs'}",
            "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false",
            "--set", "tracking.log_media=false"]
    assert main(args) == 0
    after = torch.load(tmp_path / "runs" / "shallow" / "model.pt", weights_only=True)["state_dict"]
    frozen = [k for k in before if stage_of[k] != "layer4"]
    assert any("running_mean" in k for k in frozen)  # the test needs BatchNorm in frozen stages
    moved = [k for k in frozen if not torch.equal(after[k], before[k])]
    assert moved == [], f"frozen stages changed during training: {moved[:5]}"
    # and training did happen: layer4's weights and its BatchNorm statistics moved
    top = [k for k in before if stage_of[k] == "layer4" and not k.endswith("num_batches_tracked")]
    assert any(not torch.equal(after[k], before[k]) for k in top if "running_mean" in k)
    assert any(not torch.equal(after[k], before[k]) for k in top if k.endswith("weight"))
