"""A run killed with SIGKILL mid-way and started again with the same command equals an uninterrupted run (CPU).

Each test starts the uninterrupted reference and the run to be killed as subprocesses side by side (the same
command line and environment, one torch thread each, so the arithmetic is the same), kills the second as soon as
its second epoch is logged (waiting on files, never on the clock), restarts it with the same command, and compares
every metrics row and the final outputs with the reference.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
#: wall-clock figures that legitimately differ between two runs
TIMING = ("images_per_s", "data_wait_share", "epoch_seconds", "epoch_cpu_seconds")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "MEDTRANSFER_CACHE": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _start(args: list[str], tmp_path: Path, log: str) -> subprocess.Popen:
    out = open(tmp_path / f"{log}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "transfer.cli", *args], cwd=REPO, env=_env(tmp_path),
                            stdout=out, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, tmp_path: Path, log: str, timeout: float = 240) -> None:
    rc = proc.wait(timeout=timeout)
    assert rc == 0, (tmp_path / f"{log}.log").read_text()[-3000:]


def _rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def _kill_after_second_epoch(proc: subprocess.Popen, run: Path, tmp_path: Path, log: str) -> None:
    """SIGKILL ``proc`` once its epoch-1 row is logged and a resume state exists (epochs take many steps, so the
    run is still far from done); fails if it ends first."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if len(_rows(run)) >= 2 and (run / "last.pt").is_file():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            assert not (run / "summary.json").exists(), "the run finished before it could be killed"
            return
        if proc.poll() is not None:
            raise AssertionError("the run ended before it could be killed:\n"
                                 + (tmp_path / f"{log}.log").read_text()[-3000:])
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("no second epoch within 240 s")


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _kill_and_resume(args_for: callable, tmp_path: Path) -> tuple[Path, Path]:
    """Runs the reference and the killed-then-resumed run; returns their run directories."""
    ref_args, cut_args = args_for(tmp_path / "ref"), args_for(tmp_path / "cut")
    ref = _start(ref_args, tmp_path, "ref")
    cut = _start(cut_args, tmp_path, "cut1")
    cut_run = tmp_path / "cut" / "r"
    try:
        _kill_after_second_epoch(cut, cut_run, tmp_path, "cut1")
        n_saved = len(torch.load(cut_run / "last.pt", weights_only=True)["history"])
        # a row logged after the last saved state (killed between logging and saving) must not survive the resume
        with open(cut_run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"epoch": 99, "train_loss": 0.0}) + "\n")
        _finish(_start(cut_args, tmp_path, "cut2"), tmp_path, "cut2")
    finally:
        if ref.poll() is None:
            _finish(ref, tmp_path, "ref")
    assert ref.returncode == 0, (tmp_path / "ref.log").read_text()[-3000:]
    summary = json.loads((cut_run / "summary.json").read_text())
    assert summary["resumed_from_epoch"] == n_saved >= 1
    assert json.loads((tmp_path / "ref" / "r" / "summary.json").read_text())["resumed_from_epoch"] is None
    assert not list(cut_run.glob("last*.pt"))
    return tmp_path / "ref" / "r", cut_run


def _finetune_args(npz: Path):
    def args(out: Path) -> list[str]:
        return ["finetune", "--name", "r", "--set", "backbone.name=tiny_resnet", "--set", "init=scratch",
                "--set", "backbone.in_chans=1", "--set", "train.epochs=4", "--set", "train.batch_size=4",
                "--set", "train.patience=100", "--set", "train.lr=0.01", "--set", "train.depth=all",
                "--set", "data.format=npz", "--set", f"data.root={npz.parent}", "--set", "data.train=tiny.npz#train",
                "--set", "data.val=tiny.npz#val", "--set", "data.test=tiny.npz#test",
                "--set", "data.image_size=[32, 32]", "--set", "data.augment.hflip=true",
                "--set", "data.augment.rotation=10", "--set", "task.classification.bootstrap=20",
                "--set", f"tracking.out_dir={out}", "--set", "tracking.wandb_mode=disabled",
                "--set", "tracking.progress=false", "--set", "tracking.log_media=false"]
    return args


def test_killed_finetune_resumes_to_the_uninterrupted_result(tmp_path, tiny_npz):
    ref, cut = _kill_and_resume(_finetune_args(tiny_npz), tmp_path)
    ref_rows, cut_rows = _rows(ref), _rows(cut)
    assert [r["epoch"] for r in cut_rows] == [0, 1, 2, 3]  # each epoch exactly once
    assert _without_timing(cut_rows) == _without_timing(ref_rows)  # losses, lr, val metrics, best epoch: exact
    pd.testing.assert_frame_equal(pd.read_csv(cut / "predictions_test.csv"), pd.read_csv(ref / "predictions_test.csv"),
                                  check_exact=False, rtol=0, atol=1e-6)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, cut))
    assert a["test"]["roc_auc"] == b["test"]["roc_auc"] and a["best_epoch"] == b["best_epoch"]


def _pool(root: Path, n: int = 40) -> None:
    d = root / "pool"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(d / f"{i}.png")


def _moco_args(root: Path):
    def args(out: Path) -> list[str]:
        return ["pretrain", "--name", "r", "--set", "backbone.name=tiny_resnet", "--set", "init=scratch",
                "--set", "backbone.in_chans=1", "--set", "pretrain.method=moco", "--set", "pretrain.epochs=4",
                "--set", "pretrain.warmup_epochs=1", "--set", "pretrain.batch_size=4",
                "--set", "pretrain.contrastive.queue_size=16", "--set", f"data.root={root}",
                "--set", "pretrain.pool=pool", "--set", "data.image_size=[32, 32]", "--set", f"tracking.out_dir={out}",
                "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false"]
    return args


def test_killed_moco_pretrain_resumes_with_its_queue(tmp_path):
    _pool(tmp_path)
    ref, cut = _kill_and_resume(_moco_args(tmp_path), tmp_path)
    ref_rows, cut_rows = _rows(ref), _rows(cut)
    assert [r["epoch"] for r in cut_rows] == [0, 1, 2, 3]
    # the loss over the queue's negatives, the momentum and the pair accuracy: exact, epoch by epoch
    assert _without_timing(cut_rows) == _without_timing(ref_rows)
    a = torch.load(ref / "backbone.pt", weights_only=True)["stages"]
    b = torch.load(cut / "backbone.pt", weights_only=True)["stages"]
    assert a.keys() == b.keys()
    for stage in a:
        assert a[stage].keys() == b[stage].keys()
        for k in a[stage]:
            assert torch.equal(a[stage][k], b[stage][k]), (stage, k)


def test_killed_streamed_pretrain_with_two_workers_resumes_to_the_uninterrupted_weights(tmp_path):
    """The pool streamed from its packed file by 2 DataLoader workers (persistent, reseeded per epoch): SIGKILL
    mid-run, the same command again, and the weights equal the uninterrupted run's bit for bit."""
    _pool(tmp_path)

    def args(out: Path) -> list[str]:
        return [*_moco_args(tmp_path)(out), "--set", "data.in_memory=false", "--set", "data.num_workers=2"]

    ref, cut = _kill_and_resume(args, tmp_path)
    cut_rows = _rows(cut)
    assert [r["epoch"] for r in cut_rows] == [0, 1, 2, 3]
    assert _without_timing(cut_rows) == _without_timing(_rows(ref))
    assert json.loads((cut / "summary.json").read_text())["streamed"]
    a = torch.load(ref / "backbone.pt", weights_only=True)["stages"]
    b = torch.load(cut / "backbone.pt", weights_only=True)["stages"]
    for stage in a:
        for k in a[stage]:
            assert torch.equal(a[stage][k], b[stage][k]), (stage, k)
