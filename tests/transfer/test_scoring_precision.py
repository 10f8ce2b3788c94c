"""Validation, test, evaluate and predict run under the autocast and channels_last the model trained with.

AMP and channels_last are CUDA-only in a real run; here the run's resolved precision is set to bf16 + channels_last
on the CPU (CPU autocast supports bf16), and every pass through the backbone records what it ran under.
"""
from __future__ import annotations

import json

import pytest
import torch

from transfer.backbones.staged import StagedBackbone
from transfer.cli import main
from transfer.precision import Precision

_BF16_CL = Precision(torch.bfloat16, channels_last=True)


@pytest.fixture
def passes(monkeypatch):
    """Every backbone pass: (training?, autocast dtype or None, input channels_last?, input (H, W)), in order."""
    seen: list[tuple[bool, torch.dtype | None, bool, tuple[int, int]]] = []
    prepare = StagedBackbone.prepare

    def spy(self, x):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        # channels_last: the channel stride is 1 (a contiguous (B, C, H, W) tensor's is H * W)
        seen.append((self.training, dtype, x.dim() == 4 and x.stride(1) == 1, tuple(x.shape[-2:])))
        return prepare(self, x)

    monkeypatch.setattr(StagedBackbone, "prepare", spy)
    monkeypatch.setattr(Precision, "resolve", classmethod(lambda cls, *a, **k: _BF16_CL))
    return seen


@pytest.mark.parametrize("task", ["classification", "landmarks", "segmentation", "detection"])
def test_validation_and_test_scoring_use_the_training_autocast(task, four_tasks, passes, tmp_path):
    # 3 channels: a 1-channel tensor's strides are the same in either memory format, so they would show nothing
    sets = [*four_tasks[task], "backbone.in_chans=3", "init=scratch", "train.epochs=1", "train.max_steps=1", "train.batch_size=4",
            f"tracking.out_dir={tmp_path / 'runs'}", "tracking.progress=false", "tracking.log_media=false"]
    assert main(["finetune", "--name", "r", *[a for kv in sets for a in ("--set", kv)]]) == 0
    first = next(i for i, p in enumerate(passes) if p[0])  # before it: the backbones' construction probes
    train = [p for p in passes[first:] if p[0]]
    scoring = [p for p in passes[first:] if not p[0]]
    assert train and all(dtype == torch.bfloat16 for _, dtype, _, _ in train)
    assert scoring and all(dtype == torch.bfloat16 for _, dtype, _, _ in scoring), "a scoring pass ran in fp32"
    size = tuple(json.loads(next(kv for kv in four_tasks[task] if kv.startswith("data.image_size=")).split("=")[1]))
    # what the scoring loop hands the model: not the refinement's crops, cut inside the model (in training too), nor
    # the detector's input, which torchvision batches into a new tensor of its own
    given = [cl for _, _, cl, hw in scoring if task != "landmarks" or hw == size]
    if task != "detection":
        assert given and all(given), "a scoring pass ran without channels_last"
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert summary["val"] and summary["test"]
