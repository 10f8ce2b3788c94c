"""One process per run directory: a lock file holding the holder's pid, host and start time.

Two starts of the same run at once (the same ``--name``, a study launched twice) would both train and append every
epoch to one ``metrics.jsonl``. The first start takes the lock; a second one is refused in one line naming the
holder. The lock is an exclusive ``flock`` on ``<run dir>/.lock``: the kernel releases it when its process ends,
however it ends (SIGKILL, a crash), so a lock file left behind is stale by construction and the next start takes
it over. Where a filesystem has no ``flock`` (some network filesystems, Windows), the file's own record decides:
held while its pid runs on this host; a pid of another host cannot be checked, so the message says how to clear
it by hand.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator

from transfer.distributed import is_main_process
from transfer.errors import MedTransferError
from transfer.write_errors import writing

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class RunLockedError(MedTransferError):
    """Another process holds the run directory."""


#: descriptors of the run locks this process holds. A flock belongs to the open file, which a fork shares: a
#: DataLoader worker forked while the lock is held would hold it too, and after a kill -9 of the run it would keep
#: the run locked until it noticed its parent was gone. Every forked child closes its copies at once.
_HELD_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_FDS):
        with suppress(OSError):
            os.close(fd)
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def _holder(text: str) -> dict[str, Any]:
    try:
        d = json.loads(text)
        return d if isinstance(d, dict) else {}
    except ValueError:
        return {}


def _describe(h: dict[str, Any]) -> str:
    if not h:
        return "another process"
    return f"pid {h.get('pid')} on {h.get('host')}, started {h.get('started')}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _record_held(lock: Path) -> dict[str, Any] | None:
    """Without flock: the holder the lock file names, if it still runs (or runs elsewhere); None when stale."""
    h = _holder(lock.read_text()) if lock.is_file() else {}
    if not h:
        return None
    if h.get("host") != socket.gethostname():
        return h  # cannot be checked from here
    return h if isinstance(h.get("pid"), int) and h["pid"] != os.getpid() and _pid_alive(h["pid"]) else None


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process (rank 0 under torchrun; the other ranks write nothing) while the block
    runs; a :class:`RunLockedError` when another start holds it."""
    if not is_main_process():
        yield
        return
    lock = Path(run_dir) / LOCK_FILE
    with writing(lock, "the run directory"):
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        state = _flock(fd)
        if state == "held":
            raise _locked(run_dir, lock, _holder(lock.read_text()))
        if state == "no flock" and (holder := _record_held(lock)) is not None:
            raise _locked(run_dir, lock, holder)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with writing(lock, "the run directory"):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(me).encode())
        _HELD_FDS.add(fd)
        try:
            yield
        finally:
            with suppress(OSError):  # released: the file no longer names a holder (it stays: see _flock)
                os.ftruncate(fd, 0)
    finally:
        _HELD_FDS.discard(fd)
        os.close(fd)  # closing releases the flock


def _flock(fd: int) -> str:
    """Take the exclusive flock on ``fd``: ``taken``, ``held`` (by another process) or ``no flock`` (the
    filesystem has none).

    The lock file is never deleted: a process that opened the old file would lock an inode no one else sees.
    """
    if fcntl is None:
        return "no flock"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "taken"
    except BlockingIOError:
        return "held"
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return "no flock"
        raise


def _locked(run_dir: Path, lock: Path, holder: dict[str, Any]) -> RunLockedError:
    remote = holder.get("host") not in (None, socket.gethostname())
    fix = (f"if that run is gone, delete '{lock}'" if remote else "wait for it to end")
    return RunLockedError(f"'{run_dir}': this run is already running ({_describe(holder)}; lock file {LOCK_FILE}); "
                          f"{fix}, or use another run name (--name)")
