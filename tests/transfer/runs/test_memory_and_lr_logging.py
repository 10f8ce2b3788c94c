"""summary.json records GPU peak memory beside host memory; metrics.jsonl logs one comparable lr per group role."""
from __future__ import annotations

import json

import pytest
import torch

from transfer.cli import main
from transfer.runs import memory


def _run(tmp_path, four_tasks, name: str, depth: str) -> tuple[dict, list[dict]]:
    sets = [*four_tasks["classification"], "init=scratch", "train.epochs=2", "train.max_steps=1", "train.batch_size=4",
            f"train.depth={depth}", "train.lr=0.01", "train.head_lr_mult=10", "train.gamma=0.5",
            "train.layer_decay=0.5", "train.bias_lr_mult=2", f"tracking.out_dir={tmp_path / 'runs'}",
            "tracking.progress=false", "tracking.log_media=false"]
    assert main(["finetune", "--name", name, *[a for kv in sets for a in ("--set", kv)]]) == 0
    run = tmp_path / "runs" / name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return json.loads((run / "summary.json").read_text()), rows


def test_summary_has_gpu_peak_beside_host_peak_and_lr_is_logged_per_role(tmp_path, four_tasks):
    summary, deep = _run(tmp_path, four_tasks, "all", "all")
    assert "gpu_peak_memory_gib" in summary and summary["gpu_peak_memory_gib"] is None  # the CPU has none
    assert summary["peak_memory_gib"] > 0
    _, shallow = _run(tmp_path, four_tasks, "top", "layer4-head")
    _, head = _run(tmp_path, four_tasks, "head", "head")
    for rows in (deep, shallow, head):
        assert [r["lr_head"] for r in rows] == pytest.approx([0.1, 0.05])  # train.lr x head_lr_mult, x gamma
        assert "lr" not in rows[0]  # the lowest trained stage's rate: not comparable between depths
    # the backbone's base rate, whichever stages are trained (layer decay and the bias multiplier taken out)
    assert [r["lr_backbone"] for r in deep] == [r["lr_backbone"] for r in shallow] == pytest.approx([0.01, 0.005])
    assert "lr_backbone" not in head[0]  # no backbone stage trains at depth head


def test_gpu_peak_memory_reads_the_allocator_high_water_mark(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30 + 2**29)
    assert memory.gpu_peak_memory_gib(torch.device("cuda", 0)) == 3.5
    assert memory.gpu_peak_memory_gib(torch.device("cpu")) is None


def test_a_runs_host_peak_counts_from_its_own_start_not_the_processes(monkeypatch):
    """A study or a cross-validation trains many runs in one process: the second run's peak must not be the first's."""
    import sys

    import numpy as np
    import pytest

    from transfer.runs import memory

    if not sys.platform.startswith("linux"):
        pytest.skip("the resident set's high-water mark is reset through /proc (Linux)")
    monkeypatch.setattr(memory, "_children_peak_kib", lambda: 0)  # earlier tests' subprocesses are not this run
    big = np.ones(600 * 2**20, dtype=np.uint8)  # an earlier run's 600 MiB, freed before this run starts
    del big
    earlier = memory.peak_memory_gib()
    memory.reset_peak_memory(torch.device("cpu"))
    if memory.peak_memory_scope() != "run":
        pytest.skip("this kernel does not reset the high-water mark (/proc/self/clear_refs)")
    before = memory.peak_memory_gib()
    assert before <= earlier - 0.5  # the freed 600 MiB no longer counts (the interpreter and torch stay)
    again = np.ones(300 * 2**20, dtype=np.uint8)
    assert memory.peak_memory_gib() >= before + 0.25  # this run's own allocation does
    del again
