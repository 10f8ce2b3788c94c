"""Stage 1 from the CLI: 2-step runs, the checkpoint round trip into finetune, bad pools."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from transfer.cli import main


def _pool(tmp_path, n=10, bad=0):
    d = tmp_path / "pool" / "sub"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(d / f"{i}.png")
    for i in range(bad):
        (d / f"bad{i}.png").write_bytes(b"not a png")
    return tmp_path / "pool"


def _args(tmp_path, method, *extra):
    return ["pretrain", "--name", method, "--set", "backbone.name=tiny_resnet", "--set", "init=scratch",
            "--set", "backbone.in_chans=1", "--set", f"pretrain.method={method}", "--set", "pretrain.epochs=2",
            "--set", "pretrain.warmup_epochs=0", "--set", "pretrain.batch_size=4", "--set", "pretrain.max_steps=2",
            "--set", f"data.root={tmp_path}", "--set", "pretrain.pool=pool", "--set", "data.image_size=[32, 32]",
            "--set", f"tracking.out_dir={tmp_path / 'runs'}", "--set", "tracking.wandb_mode=disabled",
            "--set", "tracking.progress=false", "--set", "pretrain.contrastive.queue_size=16", *extra]


@pytest.mark.parametrize("method", ["cae", "augpred", "simclr", "moco", "byol"])
def test_pretrain_two_steps_and_checkpoint_round_trip(tmp_path, method):
    _pool(tmp_path)
    assert main(_args(tmp_path, method)) == 0
    run = tmp_path / "runs" / method
    ck = torch.load(run / "backbone.pt", weights_only=True)
    prov = ck["provenance"]
    assert prov["method"] == method and prov["pool_size"] == 10 and prov["channels"] == 1
    assert prov["input_size"] == [32, 32] and len(prov["data_fingerprint"]) == 16
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) for r in rows)
    # the checkpoint loads into stage 2 with the same stage weights
    from transfer.weights import build_backbone

    bb, rep = build_backbone("tiny_resnet", str(run / "backbone.pt"), in_chans=1)
    assert not rep.missing and not rep.unexpected
    for stage, sd in ck["stages"].items():
        for k, v in sd.items():
            assert torch.equal(bb.state_dict()[k], v), (stage, k)


def test_pool_with_bad_files_skip_or_error(tmp_path, capsys):
    _pool(tmp_path, bad=2)
    assert main(_args(tmp_path, "simclr")) == 2
    assert "bad0.png" in capsys.readouterr().err
    assert main(_args(tmp_path, "simclr", "--set", "pretrain.on_bad=skip")) == 0
    s = json.loads((tmp_path / "runs" / "simclr" / "summary.json").read_text())
    assert len(s["skipped"]) == 2 and s["pool_size"] == 10


def test_empty_pool_and_wrong_checkpoint(tmp_path, capsys):
    (tmp_path / "pool").mkdir()
    assert main(_args(tmp_path, "simclr")) == 2
    assert "holds no image" in capsys.readouterr().err
    _pool(tmp_path / "x")
    assert main(_args(tmp_path / "x", "cae")) == 0
    ckpt = tmp_path / "x" / "runs" / "cae" / "backbone.pt"
    assert main(["config", "show"]) == 0
    capsys.readouterr()
    assert main(_args(tmp_path / "x", "simclr", "--set", f"init={ckpt}", "--set", "backbone.name=tiny_efficientnet")) == 2
    err = capsys.readouterr().err
    assert "tiny_resnet" in err and "tiny_efficientnet" in err


def test_labelled_pool_with_representation_monitor(tmp_path, tiny_npz):
    args = ["pretrain", "--name", "mon", "--set", "backbone.name=tiny_resnet", "--set", "init=scratch",
            "--set", "backbone.in_chans=1", "--set", "pretrain.method=simclr", "--set", "pretrain.epochs=2",
            "--set", "pretrain.warmup_epochs=0", "--set", "pretrain.batch_size=8", "--set", "pretrain.max_steps=2",
            "--set", "data.format=npz", "--set", f"data.root={tiny_npz.parent}", "--set", "data.train=tiny.npz#train",
            "--set", "pretrain.pool_format=labelled", "--set", "pretrain.monitor_every=1",
            "--set", "pretrain.monitor_data=tiny.npz#val", "--set", "data.image_size=[32, 32]",
            "--set", f"tracking.out_dir={tmp_path / 'runs'}", "--set", "tracking.wandb_mode=disabled",
            "--set", "tracking.progress=false"]
    assert main(args) == 0
    run = tmp_path / "runs" / "mon"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["val_knn_acc"] <= 1 and 0 <= r["val_linear_probe_acc"] <= 1 for r in rows)
    s = json.loads((run / "summary.json").read_text())
    assert s["pool_size"] == 40 and "labels ignored" in s["pool"]
