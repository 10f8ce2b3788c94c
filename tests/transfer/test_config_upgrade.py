"""A run made before an option existed is the same run as one with the option at its default: finished runs and
resume states survive an upgrade that adds options, and a real change is still refused."""
from __future__ import annotations

import yaml

from transfer.cli import main
from transfer.tracking import config_changes


def test_an_option_the_old_config_lacks_counts_at_its_default():
    old = {"train.lr": 0.01}
    assert config_changes(old, {"train.lr": 0.01, "data.augment.gamma": 0.0}) == []
    assert config_changes(old, {"train.lr": 0.01, "data.augment.gamma": 0.2}) == ["data.augment.gamma: 0.0 -> 0.2"]
    assert config_changes({"train.lr": 0.01, "x.removed": 1}, {"train.lr": 0.01}) == ["x.removed: 1 -> <absent>"]
    assert config_changes(old, {"train.lr": 0.01, "not.an.option": 1}) == ["not.an.option: <absent> -> 1"]


def _args(tmp_path, tiny_npz, *extra):
    sets = ["backbone.name=tiny_resnet", "init=scratch", "backbone.in_chans=1", "train.epochs=1", "train.max_steps=1",
            "train.batch_size=4", "data.format=npz", f"data.root={tiny_npz.parent}", "data.train=tiny.npz#train",
            "data.val=tiny.npz#val", "data.image_size=[32, 32]", "task.classification.bootstrap=10",
            f"tracking.out_dir={tmp_path / 'runs'}", "tracking.wandb_mode=disabled", "tracking.progress=false",
            "tracking.log_media=false", *extra]
    return ["finetune", "--name", "r", *[x for s in sets for x in ("--set", s)]]


def test_a_finished_run_from_before_an_option_existed_is_read_back(tmp_path, tiny_npz, capsys):
    assert main(_args(tmp_path, tiny_npz)) == 0
    run = tmp_path / "runs" / "r"
    stored = yaml.safe_load((run / "config.yaml").read_text())
    del stored["data"]["augment"]["gamma"]  # as written by a medtransfer without the gamma option
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    summary = run / "summary.json"
    before = summary.stat().st_mtime_ns
    assert main(_args(tmp_path, tiny_npz)) == 0
    assert summary.stat().st_mtime_ns == before  # the same run: read back
    capsys.readouterr()
    assert main(_args(tmp_path, tiny_npz, "data.augment.gamma=0.2")) != 0  # a real change is still refused
    assert "data.augment.gamma: 0.0 -> 0.2" in capsys.readouterr().err
