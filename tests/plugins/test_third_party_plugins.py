"""A task and a stage-1 method from a separate package are found through entry points and run end to end."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

ENTRY_POINTS = """\
[medtransfer.tasks]
brightness = toy_plugin:BrightnessTask

[medtransfer.pretrain_methods]
denoise_mean = toy_plugin:DenoiseMean
"""


def _install_toy_plugin(site: Path) -> None:
    """What ``pip install`` leaves behind: the module and a dist-info with METADATA and entry_points.txt."""
    shutil.copy(HERE / "toy_plugin.py", site / "toy_plugin.py")
    info = site / "toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)


def _medtransfer(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "transfer.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _common(tmp_path: Path, tiny_npz: Path) -> list[str]:
    return ["--set", "backbone.name=tiny_resnet", "--set", "backbone.in_chans=1", "--set", "init=scratch",
            "--set", "data.format=npz", "--set", f"data.root={tiny_npz.parent}", "--set", "data.image_size=[32, 32]",
            "--set", f"tracking.out_dir={tmp_path / 'runs'}", "--set", "tracking.wandb_mode=disabled",
            "--set", "tracking.progress=false", "--set", "train.max_steps=2", "--set", "train.batch_size=4"]


def test_third_party_task_and_method_run_through_the_cli(tmp_path, tiny_npz):
    site = tmp_path / "site"
    site.mkdir()
    _install_toy_plugin(site)

    listed = _medtransfer(site, "plugins", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "brightness" in listed.stdout and "toy_plugin.BrightnessTask" in listed.stdout
    assert "denoise_mean" in listed.stdout and "pretrain.toy" in listed.stdout

    # stage 1 with the plug-in's method and its own option section
    pre = _medtransfer(site, "pretrain", *_common(tmp_path, tiny_npz), "--name", "toy-pre",
                       "--set", "pretrain.method=denoise_mean", "--set", "pretrain.toy.noise=0.2",
                       "--set", "task.name=brightness", "--set", "pretrain.pool_format=labelled",
                       "--set", "data.train=tiny.npz#train", "--set", "pretrain.epochs=2",
                       "--set", "pretrain.warmup_epochs=0", "--set", "pretrain.batch_size=4",
                       "--set", "pretrain.max_steps=2", cwd=tmp_path)
    assert pre.returncode == 0, pre.stderr
    ckpt = tmp_path / "runs" / "toy-pre" / "backbone.pt"
    assert ckpt.is_file()
    assert "noise: 0.2" in (tmp_path / "runs" / "toy-pre" / "config.yaml").read_text()

    # stage 2 with the plug-in's task, from the plug-in method's checkpoint
    ft = _medtransfer(site, "finetune", *_common(tmp_path, tiny_npz), "--name", "toy-ft", "--set", f"init={ckpt}",
                      "--set", "task.name=brightness", "--set", "task.brightness.target_scale=2.0",
                      "--set", "data.train=tiny.npz#train", "--set", "data.val=tiny.npz#val",
                      "--set", "data.test=tiny.npz#test", "--set", "train.epochs=2", "--set", "train.depth=layer4-head",
                      cwd=tmp_path)
    assert ft.returncode == 0, ft.stderr
    summary = json.loads((tmp_path / "runs" / "toy-ft" / "summary.json").read_text())
    assert summary["task"] == "brightness" and summary["monitor"] == "mae"
    assert summary["missing_keys"] == [] and summary["trainable_stages"] == ["layer4"]
    assert summary["test"]["mae"] >= 0


def test_unknown_task_lists_the_registered_ones(capsys):
    from transfer.cli import main

    # in-process: the registered tasks come from the installed entry points either way (a subprocess cost 7 s)
    assert main(["config", "show", "--set", "task.nonsense.x=1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "unknown key 'task.nonsense'" in err and "classification" in err and "landmarks" in err
