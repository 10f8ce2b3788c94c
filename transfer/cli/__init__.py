"""``medtransfer`` command line: one module per command group, assembled here."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from transfer.cli import bench, config_cmd, doctor, export_cmd, registry_cmds, stage1, stage2, study
from transfer.config import ConfigError
from transfer.distributed import process_group_from_env
from transfer.errors import MedTransferError

#: command groups in the order ``--help`` lists them
GROUPS = (registry_cmds, config_cmd, stage2, stage1, study, export_cmd, bench, doctor)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medtransfer", description="Adapt ImageNet CNN weights to unlabelled medical "
                                "images, then fine-tune them layer by layer.")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with process_group_from_env():  # a no-op unless started by torchrun with more than one process
            return int(args.fn(args) or 0)
    except (ConfigError, MedTransferError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"medtransfer: error: {msg}", file=sys.stderr)
        return 2
