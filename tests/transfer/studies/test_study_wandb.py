"""A study's W&B mirror, offline: runs grouped by study, typed pretrain / finetune / study, tagged with every factor,
the results tables logged, the stage-1 checkpoint referenced by the cells that start from it."""
from __future__ import annotations

import time
from pathlib import Path

import yaml

from transfer.cli import main


def _wandb_text(run_dir: Path, expect: bytes = b"", timeout: float = 60.0) -> bytes:
    """The offline W&B records of a run. W&B's own service process writes them and may still be flushing when
    ``finish()`` returns on a loaded machine (the file then holds only its header): wait up to ``timeout`` s for
    ``expect`` to appear before reading."""
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        text = b"".join(f.read_bytes() for f in files)
        if (files and expect in text) or time.monotonic() > deadline:
            assert files, f"no offline W&B run under {run_dir}"
            return text
        time.sleep(0.5)


def test_study_writes_offline_wandb_runs_with_group_types_tags_tables(tmp_path, tiny_npz, tiny_cae_study, monkeypatch,
                                                                     capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "s"
    sets = tiny_cae_study(tiny_npz, out, "wb", steps=1, wandb_mode="offline")
    assert main(["study", *[x for s in sets for x in ("--set", s)]]) == 0
    text = capsys.readouterr()
    for banner in ("Tracking run with wandb", "Run summary", "Run history", "wandb sync"):  # W&B's own lines
        assert banner not in text.out + text.err, banner
    root = out / "wb"
    cell = _wandb_text(root / "runs" / "cae-all-frac1-seed0", b"backbone.pt")
    for token in (b"finetune", b"wb", b"init:cae", b"depth:all", b"labels:1", b"seed:0", b"study:wb"):
        assert token in cell, token
    # lineage: the cell's config names the stage-1 checkpoint (an input artifact too when online)
    assert b"init_checkpoint" in cell and b"backbone.pt" in cell
    assert b"pretrain" in _wandb_text(root / "pretrain" / "cae", b"pretrain")
    study = _wandb_text(root / "wandb-study", b"study/comparisons")
    assert b"study/results" in study and b"study/comparisons" in study
    cfg = yaml.safe_load((root / "runs" / "scratch-all-frac1-seed0" / "config.yaml").read_text())
    assert "init:scratch" in cfg["tracking"]["tags"]
