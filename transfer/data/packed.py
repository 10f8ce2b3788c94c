"""A pool that streams: one packed uint16 file per pool and working size, read item by item.

Stage 1 must take pools of 100k-1M images on one machine. Held as one float32 (N, C, H, W) tensor, 100k gray
images at 224 px are 20 GB; here the process holds only the batches in flight, and the operating system's page
cache holds what fits of the file (pages it can drop at any time, so resident memory does not grow with the pool).
Items are read with positional reads (``os.pread``) of the packed file rather than through an ``mmap``: the pages a
mapping touches count as the process's resident memory (``RssFile``, and ``ru_maxrss``) until it is unmapped, so
an epoch over a mapped 10 GB pack would show a 10 GB process; a ``pread`` copies one row out of the same page cache
with one system call and leaves nothing mapped.

Why one packed file rather than the decode cache's per-image ``.npz`` entries: an item of the packed file is one
read at a computed offset of one open file (no open/close, no zip header parsing, no ``np.load`` per image, ~100x fewer syscalls),
which is what a 2-core machine needs to feed thousands of images per second; the whole pool is one sequential file
(readahead works, and a cold start reads it at disk speed instead of seeking through 100k small files in 256 shard
folders); and DataLoader workers share the file's cached pages rather than each re-reading and unzipping entries. The decode cache
stays the source of truth: the pack is written once from its entries (a derived, disposable file), and rebuilt
when the pool's files change.

Layout, under ``<cache_dir>/packed/``: ``<slot>.json`` (the index: ids, the content hash of each file's bytes, each
file's original size, the digest of each item's pixels for resume checks, the shape and dtype, and the data file's
name) and ``<slot>-<content>.u16`` (the raw C-order uint16 array (N, C, H, W), the cache's own quantisation, so
the pixels are exactly those of the in-memory path). ``slot`` hashes what the pack is *of* (the pool's source,
size, channel policy, DICOM window, cache version); ``content`` hashes the ordered (id, file hash) list. Data files
are written to a temporary name and renamed into place, then the index is replaced (both atomic), so a reader sees
either the old pack or the new one; a data file is never modified after its rename.

Every file is read and hashed exactly once per run (the hash is the decode cache's key and the pool fingerprint's
input); when every (id, hash) matches the index, nothing else is read. Changed or new files are taken from their
cache entries (or decoded once from the bytes already in hand); unchanged rows are copied from the old pack.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from transfer.data.cache import CACHE_VERSION, DecodeCache, content_hash
from transfer.data.datasets import ImageTooSmallError, Skipped, check_min_size
from transfer.errors import MedTransferError

__all__ = ["PackedImages", "PackedImageDataset", "pack_images", "QMAX"]

#: the stored integer dtype and the value that maps to 1.0 (the decode cache's quantisation)
QMAX = 65535.0
_DTYPE = np.uint16
_INDEX_VERSION = 1


@dataclass
class PackedImages:
    """A packed pool on disk: ``data`` (raw uint16 (N, C, H, W)) and what each row is."""

    data: Path
    shape: tuple[int, int, int, int]
    ids: list[str]
    file_digests: list[str]  #: content hash of each file's bytes (the decode cache's key)
    pixel_digests: list[str]  #: content hash of each row's float32 pixels (what resume checks compare)
    original_sizes: list[tuple[int, int]]
    skipped: list[Skipped] = field(default_factory=list)
    reused: bool = False  #: the pack on disk matched: no row was rewritten

    def __len__(self) -> int:
        return self.shape[0]

    def reader(self) -> "_Rows":
        return _Rows(self.data, self.shape)

    def floats(self, idx: Sequence[int]) -> torch.Tensor:
        """Rows ``idx`` as float32 in [0, 1] (a few images: media, samples)."""
        r = self.reader()
        try:
            return torch.from_numpy(np.stack([r.row(int(i)) for i in idx])).float().div_(QMAX)
        finally:
            r.close()


class _Rows:
    """Positional reads of rows of a raw (N, C, H, W) uint16 file; the descriptor is opened lazily per process
    (a DataLoader worker opens its own: a pickled reader carries no descriptor)."""

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path, self.shape = Path(path), tuple(int(v) for v in shape)
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape)) * np.dtype(_DTYPE).itemsize
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def _open(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own (own file offset)
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._pid = os.getpid()
        return self._fd

    def rows(self, start: int, count: int) -> np.ndarray:
        if not 0 <= start and start + count <= self.shape[0]:
            raise IndexError(f"rows {start}:{start + count} of {self.shape[0]}")
        fd, n = self._open(), count * self.row_bytes
        offset = start * self.row_bytes
        out = np.empty((count, *self.row_shape), dtype=_DTYPE)
        if hasattr(os, "preadv"):  # straight into the array: no intermediate bytes object
            got = os.preadv(fd, [memoryview(out).cast("B")], offset)
        else:  # Windows: seek + read on this process's own descriptor
            os.lseek(fd, offset, os.SEEK_SET)
            buf = os.read(fd, n)
            got = len(buf)
            out.reshape(-1).view(np.uint8)[:got] = np.frombuffer(buf, np.uint8)
        if got != n:
            raise MedTransferError(f"{self.path}: packed pool file is truncated (delete it to rebuild it)")
        return out

    def row(self, i: int) -> np.ndarray:
        return self.rows(i, 1)[0]

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


def _row_digest(q: np.ndarray) -> str:
    """The digest :func:`transfer.data.fingerprint.item_digests` gives the row's float32 pixels (no targets)."""
    return content_hash(b"\0".join([(q.astype(np.float32) / np.float32(QMAX)).tobytes()]))


def _slot(source: str, size: tuple[int, int], gray: bool | None, window: tuple[float, float] | None,
          min_size: int) -> str:
    key = json.dumps([os.path.abspath(source), list(size), gray, window, min_size, CACHE_VERSION, _INDEX_VERSION])
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def _read_index(path: Path) -> dict[str, Any] | None:
    try:
        idx = json.loads(path.read_text())
        data = path.parent / idx["data"]
        shape = tuple(idx["shape"])
        if idx.get("version") != _INDEX_VERSION or data.stat().st_size != int(np.prod(shape)) * 2:
            return None
        return idx
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, torn or stale: rebuilt


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


#: a temporary pack file untouched this long was abandoned (its writer killed): removed by the next packing
ABANDONED_S = 3600.0


def _remove_abandoned(root: Path, slot: str) -> None:
    """Temporary files of ``slot`` left by a writer killed mid-pack (they can be as large as the pack); one still
    being written is touched every few milliseconds, so age alone tells them apart, whichever host wrote them."""
    now = time.time()
    for f in root.glob(f"{slot}.*.tmp"):
        try:
            if now - f.stat().st_mtime > ABANDONED_S:
                f.unlink()
        except OSError:
            pass


def _copy_rows(src: _Rows, n: int, out: Any, chunk: int = 256) -> None:
    """The first ``n`` rows of ``src`` into the file ``out``, a chunk at a time (bounded memory)."""
    for start in range(0, n, chunk):
        out.write(src.rows(start, min(chunk, n - start)).tobytes())


def pack_images(paths: Sequence[str | Path], size: tuple[int, int], cache_dir: str | Path, *, source: str,
                gray: bool | None = True, on_bad: str = "error", progress: bool = True, desc: str = "packing pool",
                min_size: int = 1, window: tuple[float, float] | None = None) -> PackedImages:
    """The packed pool of ``paths`` at ``size`` (written, updated, or reused as it is); bad files raise or are
    skipped (``on_bad``) as in :func:`transfer.data.datasets.load_images`. ``source``: the pool's folder or CSV,
    which names the pack's slot."""
    cache = DecodeCache(cache_dir)
    root = Path(cache_dir) / "packed"
    root.mkdir(parents=True, exist_ok=True)
    slot = _slot(source, size, gray, window, min_size)
    index_path = root / f"{slot}.json"
    _remove_abandoned(root, slot)
    old = _read_index(index_path)
    old_rows: dict[tuple[str, str], int] = {}
    old_map: _Rows | None = None
    if old is not None:
        old_rows = {(i, d): r for r, (i, d) in enumerate(zip(old["ids"], old["file_digests"]))}
        old_map = _Rows(root / old["data"], tuple(old["shape"]))

    ids: list[str] = []
    file_digests: list[str] = []
    pixel_digests: list[str] = []
    sizes: list[tuple[int, int]] = []
    skipped: list[Skipped] = []
    row_shape: tuple[int, ...] | None = tuple(old["shape"][1:]) if old is not None else None
    tmp: Path | None = None
    out = None  # the new data file, opened at the first row that differs from the old pack
    it: Any = paths
    if progress and len(paths) > 20:
        from tqdm.auto import tqdm

        it = tqdm(paths, desc=desc, leave=False)
    try:
        for p in it:
            try:
                data, digest = cache.read_and_hash(p)
                n = len(ids)
                r = old_rows.get((str(p), digest))
                if r is not None:
                    osz = tuple(old["original_sizes"][r])  # type: ignore[index]
                    check_min_size(p, osz, min_size)
                    q, pix = None, old["pixel_digests"][r]  # type: ignore[index]
                else:
                    q, osz, _ = cache.quantized_from(data, digest, p, size, gray=gray, window=window)
                    check_min_size(p, osz, min_size)
                    if row_shape is not None and q.shape != row_shape:
                        raise MedTransferError(f"{p}: {q.shape[0]} channel(s), the pool's other images "
                                               f"{row_shape[0]}")
                    row_shape = q.shape
                    pix = _row_digest(q)
            except MedTransferError as e:
                if on_bad == "skip":
                    kind = "too small" if isinstance(e, ImageTooSmallError) else "unreadable"
                    skipped.append(Skipped(str(p), str(e), kind))
                    continue
                raise
            del data
            if out is None and (r is None or r != n):  # the first row not already in place in the old pack
                tmp = root / f"{slot}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
                out = open(tmp, "wb")
                if n:  # the rows so far are the old pack's first n rows, in order
                    assert old_map is not None
                    _copy_rows(old_map, n, out)
            if out is not None:
                out.write(np.ascontiguousarray(old_map.row(r) if q is None else q, dtype=_DTYPE).tobytes())  # type: ignore[union-attr]
            ids.append(str(p))
            file_digests.append(digest)
            pixel_digests.append(pix)
            sizes.append((int(osz[0]), int(osz[1])))
        if not ids:
            example = f"e.g. {skipped[0].reason}" if skipped else "no path given"
            raise MedTransferError(f"no image could be read ({len(skipped)} skipped, {example})")
        assert row_shape is not None
        shape = (len(ids), *row_shape)
        if out is None and old is not None and len(ids) == old["shape"][0]:
            return PackedImages(root / old["data"], tuple(old["shape"]), ids, file_digests, pixel_digests, sizes,
                                skipped, reused=True)
        if out is None:  # a prefix of the old pack (files removed from the end)
            tmp = root / f"{slot}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            out = open(tmp, "wb")
            assert old_map is not None
            _copy_rows(old_map, len(ids), out)
        out.close()
        content = hashlib.sha256("".join(i + "\0" + d + "\n" for i, d in zip(ids, file_digests)).encode())
        data_name = f"{slot}-{content.hexdigest()[:16]}.u16"
        os.replace(tmp, root / data_name)  # type: ignore[arg-type]
        tmp = None
        _atomic_write(index_path, json.dumps({
            "version": _INDEX_VERSION, "data": data_name, "shape": list(shape), "dtype": "uint16",
            "ids": ids, "file_digests": file_digests, "pixel_digests": pixel_digests,
            "original_sizes": [list(s) for s in sizes], "size": list(size), "gray": gray, "source": source}))
        if old is not None and old["data"] != data_name:
            # superseded: a process still reading it keeps its open file (POSIX), new readers take the new index
            try:
                (root / old["data"]).unlink()
            except OSError:
                pass
        return PackedImages(root / data_name, shape, ids, file_digests, pixel_digests, sizes, skipped)
    finally:
        if old_map is not None:
            old_map.close()
        if out is not None and not out.closed:
            out.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)


class PackedImageDataset(Dataset):
    """Items ``{"image": (C, H, W) uint16, "index": int}`` read on demand from a packed pool.

    The dataset holds the file's path and shape, never its pixels: the file is opened lazily in each process that
    reads (each DataLoader worker opens its own; a descriptor is not pickled), and each item is one ``pread``. The engine converts the batch to
    float32 in [0, 1] on the device (:func:`transfer.engine.to_device`), the same values as the in-memory path.
    """

    def __init__(self, packed: PackedImages) -> None:
        self.ids = packed.ids
        self._rows = packed.reader()

    def __len__(self) -> int:
        return self._rows.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": torch.from_numpy(self._rows.row(int(i))), "index": int(i)}
