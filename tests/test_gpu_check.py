"""scripts/gpu_check.sh: on a machine without CUDA it runs, skips every CUDA part with a clear message, and writes
its report; its checks' plumbing runs on the CPU with a tiny backbone."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from transfer.bench.gpu_check import gpu_check

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_script_without_cuda_skips_the_cuda_parts_and_reports(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "check")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "CUDA is not available: the CUDA checks were skipped" in proc.stdout
    report = (tmp_path / "check" / "report.md").read_text()
    assert "all 39 CUDA checks were skipped" in report  # 4 tasks x 4 modes, 5 methods x 4 modes, study, 2 benches
    for section in ("## finetune", "## pretrain", "## study", "## bench"):
        assert section in report
    assert "landmarks / fp16+scaler" in report and "byol / compile" in report
    checks = json.loads((tmp_path / "check" / "report.json").read_text())["checks"]
    assert {c["status"] for c in checks} == {"skipped"} and not list((tmp_path / "check").glob("runs"))


def test_gpu_check_plumbing_runs_every_task_and_a_method_on_the_cpu(tmp_path):
    torch.manual_seed(0)
    checks, report = gpu_check(tmp_path / "check", steps=1, size=64, study=False, bench=False, modes=("bf16",),
                               methods=("simclr",), device="cpu", backbone="tiny_resnet", init="scratch")
    assert [(c.name, c.status, c.error) for c in checks if c.status != "ok"] == []
    assert len(checks) == 5
    text = report.read_text()
    assert "| classification / bf16 | ok |" in text and "val_mre_mm" in text and "final_loss" in text
