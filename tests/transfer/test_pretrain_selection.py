"""Stage 1 stops where its probe has plateaued and keeps the encoder of the best probe, recorded in its provenance."""
from __future__ import annotations

import json

import pytest
import torch

import transfer.runs.pretrain as pretrain_run
from transfer.cli import main
from transfer.weights import build_backbone


def _args(tiny_npz, tmp_path, *extra: str) -> list[str]:
    return ["pretrain", "--name", "sel", "--set", "backbone.name=tiny_resnet", "--set", "init=scratch",
            "--set", "backbone.in_chans=1", "--set", "pretrain.method=simclr", "--set", "pretrain.epochs=8",
            "--set", "pretrain.warmup_epochs=0", "--set", "pretrain.batch_size=8", "--set", "pretrain.max_steps=1",
            "--set", "data.format=npz", "--set", f"data.root={tiny_npz.parent}", "--set", "data.train=tiny.npz#train",
            "--set", "pretrain.pool_format=labelled", "--set", "pretrain.monitor_data=tiny.npz#val",
            "--set", "data.image_size=[32, 32]", "--set", f"tracking.out_dir={tmp_path / 'runs'}",
            "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false", *extra]


@pytest.fixture
def scripted_probe(monkeypatch):
    """The probe returns the scores of a script, one per call, and keeps a copy of the encoder it was shown."""
    calls: list[dict] = []

    def install(scores: list[float]):
        def probe(backbone, images, labels, device, folds=5):
            calls.append({k: v.detach().clone() for k, v in backbone.state_dict().items()})
            acc = scores[len(calls) - 1]
            return {"linear_probe_acc": acc, "knn_acc": acc, "embedding_std": 1.0, "effective_rank": 10.0}

        monkeypatch.setattr(pretrain_run, "representation_probe", probe)
        return calls

    return install


def test_plateau_stops_training_and_the_best_probe_is_kept(tiny_npz, tmp_path, scripted_probe):
    # best at the 2nd check (0.80); 0.801 is below min_delta 0.002, 0.7 worse: patience 2 stops after the 4th epoch
    calls = scripted_probe([0.60, 0.80, 0.801, 0.70, 0.95, 0.95, 0.95, 0.95])
    assert main(_args(tiny_npz, tmp_path, "--set", "pretrain.monitor_every=1", "--set", "pretrain.monitor_patience=2")) == 0
    run = tmp_path / "runs" / "sel"
    s = json.loads((run / "summary.json").read_text())
    assert s["epochs"] == 4 and len(calls) == 4
    sel = s["selection"]
    assert sel["kept"] == "best" and sel["epoch"] == 1 and sel["value"] == pytest.approx(0.80)
    assert sel["stopped_on_plateau"] is True and sel["by"] == "val_linear_probe_acc"
    ckpt = torch.load(run / "backbone.pt", weights_only=False)
    assert ckpt["provenance"]["selection"]["epoch"] == 1
    kept, _ = build_backbone("tiny_resnet", str(run / "backbone.pt"), in_chans=1)
    for k, v in kept.state_dict().items():
        assert torch.equal(v, calls[1][k]), k  # the encoder the 2nd probe saw, not the last epoch's


def test_epochs_without_a_check_neither_improve_nor_use_up_patience(tiny_npz, tmp_path, scripted_probe):
    # checks after epochs 2, 4, 6 and 8 (every 2nd); patience 1: the 3rd check (0.5) ends it after epoch 6
    calls = scripted_probe([0.6, 0.7, 0.5, 0.9])
    assert main(_args(tiny_npz, tmp_path, "--set", "pretrain.monitor_every=2", "--set", "pretrain.monitor_patience=1")) == 0
    s = json.loads((tmp_path / "runs" / "sel" / "summary.json").read_text())
    assert len(calls) == 3 and s["epochs"] == 6 and s["selection"]["epoch"] == 3


def test_keep_last_saves_the_last_epoch_and_says_so(tiny_npz, tmp_path, scripted_probe):
    calls = scripted_probe([0.9, 0.5, 0.4])
    assert main(_args(tiny_npz, tmp_path, "--set", "pretrain.monitor_every=1", "--set", "pretrain.epochs=3",
                      "--set", "pretrain.keep=last")) == 0
    run = tmp_path / "runs" / "sel"
    sel = json.loads((run / "summary.json").read_text())["selection"]
    assert sel["kept"] == "last" and sel["epoch"] == 2 and sel["best_epoch"] == 0
    kept, _ = build_backbone("tiny_resnet", str(run / "backbone.pt"), in_chans=1)
    assert all(torch.equal(v, calls[2][k]) for k, v in kept.state_dict().items())


def test_patience_without_a_probe_is_a_config_error(tiny_npz, tmp_path, capsys):
    assert main(_args(tiny_npz, tmp_path, "--set", "pretrain.monitor_patience=2")) != 0
    assert "pretrain.monitor_patience" in capsys.readouterr().err


@pytest.mark.parametrize("frozen", [True, False])
def test_freeze_bn_stats_keeps_the_running_statistics_the_encoder_started_with(tiny_npz, tmp_path, frozen):
    """``pretrain.freeze_bn_stats``: every BatchNorm of the saved encoder holds its starting statistics (a random
    init's mean 0 / var 1, no batch counted) while its weights (affine ones included) trained; without it they moved."""
    assert main(_args(tiny_npz, tmp_path, "--set", "pretrain.epochs=2", "--set", "pretrain.max_steps=2",
                      "--set", "pretrain.monitor_every=1", "--set", f"pretrain.freeze_bn_stats={str(frozen).lower()}")) == 0
    start, _ = build_backbone("tiny_resnet", "scratch", in_chans=1)
    kept, _ = build_backbone("tiny_resnet", str(tmp_path / "runs" / "sel" / "backbone.pt"), in_chans=1)
    norms = [n for n, m in kept.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    before, after = start.state_dict(), kept.state_dict()
    for n in norms:
        for stat in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(after[f"{n}.{stat}"], before[f"{n}.{stat}"]) == frozen, (n, stat)
    assert any(not torch.equal(after[f"{n}.weight"], before[f"{n}.weight"]) for n in norms)  # BN's affine trained
