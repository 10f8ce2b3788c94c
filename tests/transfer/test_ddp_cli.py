"""Two CPU processes under torchrun fine-tune one model through the CLI and write one run directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _medtransfer() -> str:
    exe = shutil.which("medtransfer") or str(Path(sys.executable).parent / "medtransfer")
    if not Path(exe).is_file():
        pytest.skip("the medtransfer console script is not installed (pip install -e .)")
    return exe


def test_torchrun_two_process_finetune_writes_one_consistent_run(tmp_path, tiny_npz):
    out = tmp_path / "runs"
    cfg = {
        "seed": 0, "init": "scratch", "backbone": {"name": "tiny_resnet", "in_chans": 1},
        "data": {"format": "npz", "root": str(tiny_npz.parent), "train": "tiny.npz#train", "val": "tiny.npz#val",
                 "test": "tiny.npz#test", "image_size": [32, 32]},
        "train": {"epochs": 2, "batch_size": 4, "depth": "layer3-head", "patience": 100},
        "task": {"classification": {"bootstrap": 20}},
        "tracking": {"out_dir": str(out), "name": "ddp", "wandb_mode": "disabled", "progress": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "",
           "MEDTRANSFER_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           _medtransfer(), "finetune", str(path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == ["ddp"]  # one run directory, named once
    run = out / "ddp"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # each epoch once, not once per rank
    # 40 training images, 2 ranks, batch 4: each rank steps through its own half (one process: 10 steps)
    assert all(r["steps"] == 5 for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["n_train"] == 40
    assert (run / "model.pt").is_file() and (run / "predictions_test.csv").is_file()
    assert not list(run.glob("last*.pt")) and not (run / "failed.json").exists()
    assert proc.stdout.count("run directory:") == 1  # rank 0 reports, rank 1 is silent
