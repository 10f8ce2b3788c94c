"""What a folder holds: the images a run reads, and every other file with the reason it is not used.

Nothing is dropped silently (DESIGN, Data): a ``.nii`` or ``.txt`` in a class
folder is not an image the readers know, so it is left out, but it is counted
and named in the run's warning line and ``summary.json``.
"""
from __future__ import annotations

import errno
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from transfer.data.datasets import Skipped
from transfer.data.readers import IMAGE_DECODERS

__all__ = ["FolderScan", "scan_folder", "describe_skipped", "not_a_file"]


@dataclass
class FolderScan:
    images: list[Path]  #: sorted, readable by a registered decoder
    unused: list[Skipped]  #: every other file, with why it is left out


def _why_unused(path: Path, folder: Path) -> str | None:
    """None for an image file; else the reason it is left out (path-free, so reasons group)."""
    # .DS_Store, ._x.png (macOS resource forks), anything under .thumbnails/ or .ipynb_checkpoints/
    if any(part.startswith(".") for part in path.relative_to(folder).parts):
        return "hidden file"
    if (why := not_a_file(path)) is not None:
        return why
    suffix = path.suffix.lower()
    if suffix not in IMAGE_DECODERS:
        return f"unsupported file type {suffix or '(no suffix)'!r}"
    return None


def not_a_file(path: Path) -> str | None:
    """None for a regular file (or a link to one); else why the entry is no file to read. A dangling link, a link
    to itself and a link to a folder (never followed: it could loop, or pull in another tree) are easy to miss in
    a listing, so they are named like every other unused entry."""
    try:
        st = path.stat()  # follows links
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        if path.is_symlink():
            return "broken symbolic link"
        return f"cannot be read ({e.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "symbolic link to a folder (not followed)" if path.is_symlink() else None
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def scan_folder(folder: Path) -> FolderScan:
    """Every file under ``folder`` (recursive): images to read, and the rest with the reason."""
    images, unused = [], []
    for p in sorted(folder.rglob("*")):
        if p.is_dir() and not p.is_symlink():
            continue  # a real sub-folder: rglob lists its files
        why = _why_unused(p, folder)
        if why is None:
            images.append(p)
        else:
            unused.append(Skipped(str(p), why, kind="not used"))
    return FolderScan(images, unused)


def describe_skipped(skipped: Sequence[Skipped], where: str = "summary.json") -> str:
    """One warning line: how many items were left out, counted by reason, with an example of each."""
    # files left out by a scan share path-free reasons; an unreadable file's reason names it already
    def key(s: Skipped) -> str:
        return s.reason if s.kind == "not used" else s.kind

    by_reason = Counter(key(s) for s in skipped)
    examples: dict[str, str] = {}
    for s in skipped:
        examples.setdefault(key(s), s.path if s.kind == "not used" else s.reason)
    parts = [f"{n} {reason} (e.g. {examples[reason]})" for reason, n in by_reason.most_common()]
    return f"warning: {len(skipped)} files or rows not used (listed in {where}): " + "; ".join(parts)
