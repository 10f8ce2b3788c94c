"""User-facing errors: each message names the file (and key or row) and what is wrong."""
from __future__ import annotations


class MedTransferError(Exception):
    """Base of every error the CLI reports as a one-line message instead of a traceback."""


class WeightsUnavailableError(MedTransferError):
    """Pretrained weights are not in the cache and cannot be downloaded."""


class CheckpointError(MedTransferError):
    """A checkpoint does not fit the backbone (wrong architecture, channel policy, keys)."""


class ImageReadError(MedTransferError):
    """An image file cannot be decoded; the message names the path and the reason."""


class DatasetError(MedTransferError):
    """A dataset description is invalid (missing column, bad value, absent file...)."""


class UnknownNameError(MedTransferError, KeyError):
    """A name (backbone, task, method, depth...) that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnsafeCheckpointError(CheckpointError):
    """A file named as weights, model or resume state that only loads by unpickling arbitrary Python objects
    (which can run code); it is refused, never unpickled."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was saved and how to go on. Still a KeyboardInterrupt for any
    caller; the command line prints the message and exits 130 (128 + SIGINT), as shells expect."""
