"""A tiny study end to end through submitit's local executor: stage 1 once, before the cells that need it."""
from __future__ import annotations

import json

import pandas as pd

from transfer.cli import main


def test_submitit_local_executor_runs_pretrain_then_cells(tmp_path, tiny_npz, tiny_cae_study, capsys):
    out = tmp_path / "s"
    sets = [*tiny_cae_study(tiny_npz, out, "t", steps=2),
            "study.seeds=[0, 1]", "study.submitit.cluster=local", "study.submitit.cells_per_job=2",
            "study.submitit.timeout_min=10"]
    args = ["study", "--executor", "submitit", *[x for s in sets for x in ("--set", s)]]
    assert main(args) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    root = out / "t"
    # one pretrain job, then two jobs of two cells each (one job array per stage)
    assert "submitted 1 pretrain job(s) to submitit's local executor" in text
    assert "submitted 2 finetune job(s) to submitit's local executor" in text
    ckpt = root / "pretrain" / "cae" / "backbone.pt"
    cells = sorted((root / "runs").glob("*/summary.json"))
    assert len(cells) == 4 and ckpt.is_file()
    for f in cells:  # every cell started after the checkpoint existed; the cae cells read it
        assert f.stat().st_mtime > ckpt.stat().st_mtime
    assert json.loads((root / "runs" / "cae-all-frac1-seed0" / "summary.json").read_text())["init"] == str(ckpt)
    assert len(pd.read_csv(root / "results.csv")) == 4 and (root / "report.html").is_file()
    assert any((root / "submitit").rglob("*_log.out"))
    # a second submission finds everything done: no job is submitted
    capsys.readouterr()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "submitted" not in text and text.count("done earlier") == 4


def test_slurm_parameters_reach_the_sbatch_script(tmp_path, monkeypatch):
    """The ``study.submitit`` keys become submitit's Slurm parameters (a fake ``srun`` stands for a cluster; nothing
    is submitted: the sbatch script is only written out)."""
    from transfer.config import Config
    from transfer.config.io import load_config
    from transfer.studies.executors import make_executor

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    cfg = load_config(Config, None, [
        "study.name=grid", "study.executor=submitit", "study.submitit.cluster=slurm", "study.submitit.timeout_min=90",
        "study.submitit.cpus_per_task=4", "study.submitit.gpus_per_node=1", "study.submitit.mem_gb=32",
        "study.submitit.slurm_partition=gpu", "study.submitit.slurm_account=lab", "study.submitit.slurm_qos=short",
        "study.submitit.slurm_additional_parameters={constraint: a100}",
        "study.submitit.slurm_setup=['module load cuda']"])
    executor, folder = make_executor(cfg, tmp_path, "finetune")
    assert executor.cluster == "slurm" and folder == tmp_path / "submitit"
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in ("--job-name=grid-finetune", "--partition=gpu", "--account=lab", "--qos=short", "--time=90",
                 "--cpus-per-task=4", "--gpus-per-node=1", "--mem=32GB", "--constraint=a100", "module load cuda"):
        assert line in script, line
