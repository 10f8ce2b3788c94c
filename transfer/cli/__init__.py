"""``medtransfer`` command line: one module per command group, assembled here."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from contextlib import contextmanager

from PIL.Image import DecompressionBombWarning
from typing import Iterator, Sequence

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
#: the exit status of a command stopped by SIGTERM (``kill``, a batch scheduler, torchrun stopping the other ranks)
EXIT_TERMINATED = 143


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a run stops as on Ctrl-C (see :func:`_sigterm_as_ctrl_c`)."""


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[list[int]]:
    """Within the command, SIGTERM stops it as Ctrl-C does: the run saves nothing more, records ``failed.json``
    (status "interrupted", the epochs saved) and finishes its W&B mirror, and the command prints what the rerun will
    do. Python's default for SIGTERM ends the process on the spot: a run directory then held a resume state and no
    word of what happened. Yields a list that gets the signal's number once it arrives. Left alone where SIGTERM is
    ignored (a parent's choice) or off the main thread (no handler can be set there)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield received
        return

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        raise _Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 (warnings' hook)
    """Warnings as one line, like every other message (the default adds the file, line and source of the
    warning's origin, e.g. PIL's DecompressionBombWarning)."""
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    terminated: list[int] = []
    try:
        with warnings.catch_warnings(), _sigterm_as_ctrl_c() as terminated, process_group_from_env():
            # process_group_from_env: torchrun's process group; a no-op otherwise. The readers say what PIL's
            # warning says, naming the file (PIL's names none)
            warnings.filterwarnings("ignore", category=DecompressionBombWarning)
            return int(args.fn(args) or 0)
    except (ConfigError, MedTransferError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"medtransfer: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: what was saved and how to go on, not a traceback
        if isinstance(e, RunInterrupted):
            what = str(e)
        else:
            what = "terminated (SIGTERM)" if terminated else "interrupted"
        print(f"medtransfer: {what}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        warnings.formatwarning = formatwarning  # a caller's own format (main() in a test, a notebook) comes back
