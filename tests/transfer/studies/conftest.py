"""Settings of a tiny two-init study (scratch and a CAE stage 1) on the tiny npz, shared by the study tests."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest


def _settings(npz: Path, out: Path, name: str, *, steps: int, wandb_mode: str = "disabled") -> list[str]:
    """``--set`` values: tiny_resnet on ``npz``, ``steps`` steps per stage, inits scratch and pretrain:cae."""
    return ["backbone.name=tiny_resnet", "backbone.in_chans=1", "init=scratch", "data.format=npz",
            f"data.root={npz.parent}", "data.train=tiny.npz#train", "data.val=tiny.npz#val",
            "data.test=tiny.npz#test", "data.image_size=[32, 32]", "train.epochs=1", f"train.max_steps={steps}",
            "train.batch_size=4", f"tracking.wandb_mode={wandb_mode}", "tracking.progress=false", "runtime.device=cpu",
            "task.classification.bootstrap=10", "pretrain.pool_format=labelled", "pretrain.epochs=1",
            "pretrain.warmup_epochs=0", "pretrain.batch_size=8", f"pretrain.max_steps={steps}", "pretrain.method=cae",
            f"study.out_dir={out}", f"study.name={name}", "study.inits=[scratch, 'pretrain:cae']", "study.depths=[all]"]


@pytest.fixture
def tiny_cae_study() -> Callable[..., list[str]]:
    return _settings
