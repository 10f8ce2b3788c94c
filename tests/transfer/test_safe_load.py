"""Every file a user names is read with ``weights_only=True``: a pickle that would run code is refused in one line."""
from __future__ import annotations

import os

import pytest
import torch

from transfer.cli import main
from transfer.engine import read_resume_state
from transfer.errors import UnsafeCheckpointError
from transfer.runs.model_io import load_model
from transfer.weights import build_backbone


class _RunsCommand:
    """Unpickling this calls ``os.system``: what a hostile ``.pt`` does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _hostile(path, marker, **extra):
    torch.save({"state_dict": {"model.fc.weight": torch.zeros(1)}, "x": _RunsCommand(f"touch {marker}"), **extra},
               path)
    return path


def test_hostile_init_is_refused_by_finetune_in_one_line(tmp_path, tiny_npz, capsys):
    marker = tmp_path / "pwned"
    ck = _hostile(tmp_path / "evil.pt", marker)
    code = main(["finetune", "--set", f"init={ck}", "--set", "backbone.name=tiny_resnet", "--set", "backbone.in_chans=1",
                 "--set", "data.format=npz", "--set", f"data.root={tiny_npz.parent}",
                 "--set", "data.train=tiny.npz#train", "--set", "data.val=tiny.npz#val",
                 "--set", "data.image_size=[32, 32]", "--set", "train.epochs=1", "--set", "train.max_steps=1",
                 "--set", f"tracking.out_dir={tmp_path / 'runs'}", "--set", "tracking.progress=false"])
    err = capsys.readouterr().err
    assert code == 2
    assert not marker.exists()  # the command in the pickle never ran
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert str(ck) in lines[0] and "refused" in lines[0] and "posix.system" in lines[0]


def test_hostile_files_are_refused_everywhere(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeCheckpointError):
        build_backbone("tiny_resnet", str(_hostile(tmp_path / "init.pt", marker)))
    run = tmp_path / "run"
    run.mkdir()
    _hostile(run / "model.pt", marker, format="medtransfer-model/1")
    with pytest.raises(UnsafeCheckpointError):
        load_model(run)
    with pytest.raises(UnsafeCheckpointError):
        read_resume_state(_hostile(tmp_path / "last.pt", marker, history=[], epoch=0))
    assert not marker.exists()


def test_our_own_files_load_weights_only(tmp_path):
    from transfer.engine import rng_state, set_rng_state
    from transfer.weights import backbone_checkpoint

    bb, _ = build_backbone("tiny_resnet", "scratch")
    torch.save(backbone_checkpoint(bb, {"method": "test", "config": {"a": [1, 2], "b": None}}), tmp_path / "b.pt")
    torch.load(tmp_path / "b.pt", weights_only=True)
    import numpy as np

    state = rng_state()
    torch.save({"rng": state}, tmp_path / "rng.pt")
    a = np.random.rand(3)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert np.array_equal(np.random.rand(3), a)
