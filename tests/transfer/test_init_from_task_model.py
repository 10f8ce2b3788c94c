"""``init`` may name a trained model (a run directory's ``model.pt``): its backbone is used; a file whose keys
match no weight of the backbone is refused instead of training from random weights."""
from __future__ import annotations

import json

import pytest
import torch

from transfer.cli import main
from transfer.errors import CheckpointError
from transfer.weights import build_backbone


def _finetune(tmp_path, npz, name: str, *extra: str) -> list[str]:
    return ["finetune", "--name", name, "--set", "backbone.name=tiny_resnet", "--set", "backbone.in_chans=1",
            "--set", "train.depth=all", "--set", "train.epochs=1", "--set", "train.max_steps=2",
            "--set", "train.batch_size=4", "--set", "data.format=npz", "--set", f"data.root={npz.parent}",
            "--set", "data.train=tiny.npz#train", "--set", "data.val=tiny.npz#val", "--set", "data.image_size=[32, 32]",
            "--set", "task.classification.bootstrap=20", "--set", f"tracking.out_dir={tmp_path / 'runs'}",
            "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false",
            "--set", "tracking.log_media=false", *extra]


@pytest.fixture
def task_model(tmp_path, tiny_npz):
    assert main(_finetune(tmp_path, tiny_npz, "first", "--set", "init=scratch")) == 0
    return tmp_path / "runs" / "first" / "model.pt"


def test_task_model_backbone_is_loaded_whole(task_model):
    trained = torch.load(task_model, weights_only=False)["state_dict"]
    bb, rep = build_backbone("tiny_resnet", str(task_model), in_chans=1)
    assert rep.missing == [] and rep.unexpected == [] and "task model" in rep.source
    for k, v in bb.state_dict().items():
        assert torch.equal(v, trained[f"backbone.{k}"]), k  # every backbone tensor, BatchNorm buffers included
    with pytest.raises(CheckpointError, match="tiny_resnet.*tiny_efficientnet"):
        build_backbone("tiny_efficientnet", str(task_model), in_chans=1)


def test_finetune_from_a_task_model_through_the_cli(tmp_path, tiny_npz, task_model):
    assert main(_finetune(tmp_path, tiny_npz, "second", "--set", f"init={task_model}")) == 0
    s = json.loads((tmp_path / "runs" / "second" / "summary.json").read_text())
    assert "task model" in s["weights"] and s["missing_keys"] == [] and s["unused_keys"] == []


def test_a_file_matching_no_weight_is_refused(tmp_path, task_model, tiny_npz, capsys):
    # the task model's state dict alone, without its format marker: its keys (backbone.model.*) match nothing;
    # only BatchNorm's num_batches_tracked was "loaded" (torch fills it in), which used to pass as a match
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": torch.load(task_model, weights_only=False)["state_dict"]}, bare)
    with pytest.raises(CheckpointError, match="no weight matches backbone tiny_resnet"):
        build_backbone("tiny_resnet", str(bare), in_chans=1)
    assert main(_finetune(tmp_path, tiny_npz, "third", "--set", f"init={bare}")) == 2
    assert "no weight matches" in capsys.readouterr().err
