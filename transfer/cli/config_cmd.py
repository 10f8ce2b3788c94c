"""``medtransfer config show``: the fully resolved config."""
from __future__ import annotations

import argparse

import yaml

from transfer.cli.common import add_config_args, load
from transfer.config import to_dict


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("config", help="config tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    cs = csub.add_parser("show", help="print the fully resolved config")
    add_config_args(cs)
    cs.set_defaults(fn=cmd_config_show)


def cmd_config_show(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(to_dict(load(args)), sort_keys=False), end="")
    return 0
