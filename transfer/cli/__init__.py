"""``medtransfer`` command line: one module per command group, assembled here."""
from __future__ import annotations

import argparse
import sys
import warnings

from PIL.Image import DecompressionBombWarning
from typing import Sequence

from transfer.cli import (bench, config_cmd, cv_cmd, doctor, export_cmd, folds_cmd, registry_cmds, stage1, stage2,
                          study)
from transfer.config import ConfigError
from transfer.distributed import process_group_from_env
from transfer.errors import MedTransferError, RunInterrupted

#: command groups in the order ``--help`` lists them
GROUPS = (registry_cmds, config_cmd, stage2, stage1, study, folds_cmd, cv_cmd, export_cmd, bench, doctor)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medtransfer", description="Adapt ImageNet CNN weights to unlabelled medical "
                                "images, then fine-tune them layer by layer.")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


#: the exit status of a command stopped by Ctrl-C: 128 + SIGINT, what shells report for it
EXIT_INTERRUPTED = 130


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 (warnings' hook)
    """Warnings as one line, like every other message (the default adds the file, line and source of the
    warning's origin, e.g. PIL's DecompressionBombWarning)."""
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        with warnings.catch_warnings(), process_group_from_env():  # torchrun's process group; a no-op otherwise
            # the readers say the same, naming the file (PIL's warning names none)
            warnings.filterwarnings("ignore", category=DecompressionBombWarning)
            return int(args.fn(args) or 0)
    except (ConfigError, MedTransferError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"medtransfer: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: what was saved and how to go on, not a traceback
        print(f"medtransfer: {e if isinstance(e, RunInterrupted) else 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        warnings.formatwarning = formatwarning  # a caller's own format (main() in a test, a notebook) comes back
