"""What every command shares: the config arguments and loading."""
from __future__ import annotations

import argparse

from transfer.config import Config, load_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config (omit for the defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set train.depth=conv3-head (repeatable)")


def load(args: argparse.Namespace) -> Config:
    return load_config(Config, args.config, args.overrides)


def human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)
