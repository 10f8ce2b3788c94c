"""``medtransfer doctor [--gpu]``: the environment, and with ``--gpu`` the checks only a CUDA machine can run."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="the environment; --gpu: AMP / channels_last / compile checks of every task "
                                      "and stage-1 method, the quickstart study and 224-px benchmarks on CUDA")
    p.add_argument("--gpu", action="store_true", help="run the GPU check (every CUDA part is skipped without CUDA)")
    p.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="folder of report.md and the runs")
    p.add_argument("--steps", type=int, default=4, help="optimiser steps per task / method and precision mode")
    p.add_argument("--size", type=int, default=128, help="image size (px) of the per-task checks")
    p.add_argument("--no-study", action="store_true", help="leave out the quickstart study")
    p.add_argument("--no-bench", action="store_true", help="leave out the 224-px benchmarks")
    p.set_defaults(fn=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from transfer.bench.gpu_check import environment, gpu_check

    if not args.gpu:
        print(json.dumps(environment(), indent=2))
        return 0
    checks, report = gpu_check(args.out, steps=args.steps, size=args.size, study=not args.no_study,
                               bench=not args.no_bench)
    failed = [c for c in checks if c.status == "failed"]
    print(f"report: {report} ({sum(c.status == 'ok' for c in checks)} ok, {len(failed)} failed, "
          f"{sum(c.status == 'skipped' for c in checks)} skipped)")
    return 1 if failed else 0
