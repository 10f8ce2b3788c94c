"""Stage 1 command: ``pretrain``."""
from __future__ import annotations

import argparse
from pathlib import Path

from transfer.api import PRETRAIN_METHODS
from transfer.cli.common import add_config_args, load
from transfer.distributed import is_main_process


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="stage 1: adapt a backbone on unlabelled images; writes backbone.pt",
                       description=f"Methods (pretrain.method): {', '.join(PRETRAIN_METHODS.names())}.")
    add_config_args(p)
    p.add_argument("--name", help="run directory name")
    p.add_argument("--restart", action="store_true",
                   help="discard what an earlier run left in the run directory and start over; without it an "
                        "interrupted run resumes and a finished one is kept")
    p.set_defaults(fn=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from transfer.runs.pretrain import run_pretrain  # here, not at the top: it imports lightly (start-up of every command)

    s = run_pretrain(load(args), name=args.name, restart=args.restart)
    if not is_main_process():  # under torchrun: rank 0 reports
        return 0
    if s.get("already_complete"):
        print(f"{Path(s['checkpoint']).parent}: already complete (summary.json, backbone.pt); nothing trained. "
              f"--restart trains it again")
    final = {k: round(v, 4) for k, v in s["final"].items() if isinstance(v, float)}
    print(f"run directory: {Path(s['checkpoint']).parent}")
    print(f"checkpoint: {s['checkpoint']}  (fine-tune from it with --set init={s['checkpoint']})")
    print(f"pool: {s['pool_size']} images, {len(s['skipped'])} skipped; last epoch: {final}")
    return 0
