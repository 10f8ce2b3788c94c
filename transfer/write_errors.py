"""Writes that fail for want of space or permission: one line naming the folder and the cause.

A full disk shows up first as ``OSError: [Errno 28]`` and then, while torch's zip writer unwinds, as a
``RuntimeError`` from ``inline_container.cc`` ("unexpected pos") that hides it; a read-only filesystem as
``OSError: [Errno 30]``. Both are about the folder, not about the run, so the message says which folder and why,
and :func:`writing` turns any exception whose chain holds such an ``OSError`` into an :class:`OutputWriteError`.
"""
from __future__ import annotations

import errno
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from transfer.errors import MedTransferError

__all__ = ["OutputWriteError", "write_error", "writing"]

#: the causes a user can act on, in their words
_CAUSES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


class OutputWriteError(MedTransferError):
    """A file could not be written (full disk, read-only filesystem, no permission)."""


def _os_error(e: BaseException | None) -> OSError | None:
    """The first ``OSError`` with an errno in ``e``'s chain (``raise ... from``, or raised while handling)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e
        e = e.__cause__ or e.__context__
    return None


def write_error(path: str | Path, e: BaseException, what: str | None = None) -> OutputWriteError | None:
    """The one-line error for a failed write of ``path`` (``what`` names it, default its file name), or None when
    ``e`` is no filesystem error."""
    if isinstance(e, OutputWriteError):
        return e
    os_err = _os_error(e)
    if os_err is None:
        return None
    path = Path(path)
    cause = _CAUSES.get(os_err.errno) or os_err.strerror or type(os_err).__name__
    return OutputWriteError(f"'{path.parent}': cannot write {what or path.name} ({cause}, errno {os_err.errno})")


@contextmanager
def writing(path: str | Path, what: str | None = None) -> Iterator[None]:
    """Run a write of ``path``; a filesystem failure leaves as an :class:`OutputWriteError` naming it."""
    try:
        yield
    except Exception as e:
        err = write_error(path, e, what)
        if err is None:
            raise
        raise err from None
