"""``medtransfer study``: the grid and its report."""
from __future__ import annotations

import argparse
import json

from transfer.cli.common import add_config_args, load
from transfer.studies.grid import run_study


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("study", help="run the grid init x depth x label fraction x seed; write tables and a report")
    add_config_args(s)
    s.set_defaults(fn=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    print(json.dumps(run_study(load(args)), indent=2))
    return 0
