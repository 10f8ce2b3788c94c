"""A stage-1 run is keyed by the options its method reads: another method's option (MoCo's queue for a SimCLR run) is
not a change to it, its own options are; and MoCo warns when its queue holds much of the pool."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from transfer.cli import main
from transfer.config import Config, from_dict, to_dict
from transfer.config.pretrain import method_options_only
from transfer.tracking import training_config


def _key(method: str, **contrastive) -> dict:
    """The training key of a stage-1 config with every method's section (as a loaded config has them)."""
    cfg = from_dict(Config, {"pretrain": {"method": method, "contrastive": contrastive, "cae": {"decoder_width": 8}}})
    return training_config(to_dict(cfg), "pretrain")


def test_a_run_is_keyed_by_its_own_methods_options_only():
    simclr = _key("simclr")
    assert "pretrain.contrastive.temperature" in simclr and "pretrain.lr" in simclr
    assert not any(k.startswith(("pretrain.cae.", "pretrain.augpred.")) for k in simclr)  # other methods' sections
    assert "pretrain.contrastive.queue_size" not in simclr  # in its section, but MoCo's option
    assert _key("simclr", queue_size=128) == simclr and _key("simclr", temperature=0.2) != simclr
    assert _key("moco", queue_size=128) != _key("moco")  # MoCo's own option
    assert "pretrain.contrastive.temperature" not in _key("byol")  # BYOL has no negatives
    assert "pretrain.cae.decoder_width" in _key("cae")
    unknown = {"pretrain.method": "not_installed", "pretrain.cae.loss": "mse"}
    assert method_options_only(unknown) == unknown  # a plug-in not installed here: kept whole


def _pool(tmp_path, n=10):
    d = tmp_path / "pool"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(d / f"{i}.png")


def _args(tmp_path, method, *extra):
    return ["pretrain", "--name", method, "--set", "backbone.name=tiny_resnet", "--set", "init=scratch",
            "--set", "backbone.in_chans=1", "--set", f"pretrain.method={method}", "--set", "pretrain.epochs=1",
            "--set", "pretrain.warmup_epochs=0", "--set", "pretrain.batch_size=4", "--set", "pretrain.max_steps=1",
            "--set", f"data.root={tmp_path}", "--set", "pretrain.pool=pool", "--set", "data.image_size=[32, 32]",
            "--set", f"tracking.out_dir={tmp_path / 'runs'}", "--set", "tracking.wandb_mode=disabled",
            "--set", "tracking.progress=false", *extra]


def test_a_finished_simclr_run_is_read_back_after_a_moco_option_changed(tmp_path, capsys):
    _pool(tmp_path)
    assert main(_args(tmp_path, "simclr", "--set", "pretrain.contrastive.queue_size=2")) == 0
    summary = tmp_path / "runs" / "simclr" / "summary.json"
    before = summary.stat().st_mtime_ns
    assert main(_args(tmp_path, "simclr", "--set", "pretrain.contrastive.queue_size=4")) == 0
    assert summary.stat().st_mtime_ns == before  # read back, not trained again
    capsys.readouterr()
    assert main(_args(tmp_path, "simclr", "--set", "pretrain.contrastive.temperature=0.3")) != 0
    assert "pretrain.contrastive.temperature" in capsys.readouterr().err


@pytest.mark.parametrize("queue, warned", [(4, True), (2, False)])
def test_moco_warns_when_its_queue_holds_much_of_the_pool(tmp_path, queue, warned):
    _pool(tmp_path)
    assert main(_args(tmp_path, "moco", "--set", f"pretrain.contrastive.queue_size={queue}")) == 0
    warnings = json.loads((tmp_path / "runs" / "moco" / "summary.json").read_text()).get("warnings", [])
    hit = [w for w in warnings if "queue_size" in w]
    assert bool(hit) == warned
    if warned:
        assert f"queue_size={queue} holds 40% of the pool's 10 images" in hit[0]
