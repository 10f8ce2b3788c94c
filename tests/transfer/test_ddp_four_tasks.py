"""Two CPU processes under torchrun (gloo) fine-tune each task through the CLI, as one process at twice the batch.

For classification, landmarks with the refinement stage, segmentation and detection: one run directory; the
metrics of one process at batch 4 within tolerance (the same images step by step, ``train.steps_per_epoch`` sharded
per rank; each rank draws other augmentations and BatchNorm sees per-rank batches, so not bit-equal); and the two
ranks' training steps draw from different RNG streams (different flips, crops, jitter), rank 0 from the one-process
run's. Tiny backbones at 32-64 px, one epoch of 2 steps at batch 4 per rank (8 in the one-process run).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import transfer.engine as engine
from transfer.cli import main

PROBE = Path(__file__).resolve().parent / "ddp_probe"
#: scores compared, with (relative, absolute) tolerance. Two steps of a scratch model: the landmark errors differ by up
#: to 13% and a 12-image AUC by 0.06 (each rank's brightness and refinement jitter, BatchNorm over 4 images instead of 8); segmentation and
#: detection score about 0 either way, so for them the training loss carries the comparison
SCORES = {"classification": {"roc_auc": (0.0, 0.1), "accuracy": (0.0, 0.1)},  # 12 images: 0.1 is 4 of 36 pairs
          "landmarks": {"mre_mm": (0.25, 0.0)},
          "segmentation": {"dice": (0.0, 0.05), "auc": (0.0, 0.1)},
          "detection": {"map_50": (0.0, 0.05), "froc_mean": (0.0, 0.1)}}
#: per task, over the fixture's settings: classification trains its head on frozen random stages (the bright centre
#: of tiny_npz survives a flip, so the two runs' scores are comparable on 12 images; trained BatchNorm at depth all
#: is tests/transfer/test_ddp_cli.py's case)
EXTRA = {"classification": ["train.depth=head"]}


def _medtransfer() -> str:
    exe = shutil.which("medtransfer") or str(Path(sys.executable).parent / "medtransfer")
    if not Path(exe).is_file():
        pytest.skip("the medtransfer console script is not installed (pip install -e .)")
    return exe


def _config(path: Path, settings: list[str], out: Path, name: str, batch: int) -> Path:
    sets = [*settings, "init=scratch", "seed=0", "train.epochs=1", "train.steps_per_epoch=2", "train.patience=100",
            f"train.batch_size={batch}", f"tracking.out_dir={out}", f"tracking.name={name}",
            "tracking.wandb_mode=disabled", "tracking.progress=false", "tracking.log_media=false"]
    cfg: dict = {}
    for kv in sets:  # dotted keys -> nested YAML
        key, value = kv.split("=", 1)
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _one_process(config: Path, monkeypatch) -> list[str]:
    """The run in this process; returns its steps' RNG fingerprints (as the probe takes them under torchrun)."""
    seen: list[str] = []
    forward = engine._StepForward.forward

    def probed(self, batch):
        seen.append(hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16])
        return forward(self, batch)

    monkeypatch.setattr(engine._StepForward, "forward", probed)
    assert main(["finetune", str(config)]) == 0
    return seen


def _close(a: float, b: float, rel: float, abs_: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


@pytest.mark.parametrize("task", ["classification", "landmarks", "segmentation", "detection"])
def test_two_process_finetune_equals_one_process_at_twice_the_batch(task, four_tasks, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    settings = [*four_tasks[task], *EXTRA.get(task, [])]
    single = _one_process(_config(tmp_path / "one.yaml", settings, out, "one", 8), monkeypatch)
    probe = tmp_path / "probe"
    probe.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "",
           "MEDTRANSFER_CACHE": str(tmp_path / "cache"), "MEDTRANSFER_TEST_RNG_PROBE": str(probe),
           "PYTHONPATH": os.pathsep.join([str(PROBE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           _medtransfer(), "finetune", str(_config(tmp_path / "two.yaml", settings, out, "ddp", 4))],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["ddp", "one"]  # one run directory for the two processes
    run, ref = out / "ddp", out / "one"
    assert not list(run.glob("last*.pt")) and not (run / "failed.json").exists() and (run / "model.pt").is_file()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0] and all(r["steps"] == 2 for r in rows)  # steps_per_epoch under DDP
    s, r = json.loads((run / "summary.json").read_text()), json.loads((ref / "summary.json").read_text())
    assert s["world_size"] == 2 and len(set(s["rank_seeds"])) == 2 and s["rank_seeds"][0] == 0
    # the same images step by step: the loss of the first epoch (before any update differs much) and the scores
    # the same images step by step: the training loss (measured: within 2.2%) and the scores of the selected model
    assert _close(rows[0]["train_loss"], ref_rows[0]["train_loss"], 0.05, 0.0), (rows[0], ref_rows[0])
    for split in ("val", "test"):
        for m, (rel, tol) in SCORES[task].items():
            assert _close(s[split][m], r[split][m], rel, tol), (split, m, s[split][m], r[split][m])
    # every rank drew from its own stream at every step; rank 0 from the one-process run's
    r0 = (probe / "rank0.txt").read_text().split()
    r1 = (probe / "rank1.txt").read_text().split()
    assert len(r0) == len(r1) == 2 and all(x != y for x, y in zip(r0, r1))
    assert r0[0] == single[0]
