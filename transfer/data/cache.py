"""Decode once: an on-disk cache of images decoded and resized to the working size.

A full-resolution file (a 1935x2400 JPEG cephalogram, a DICOM...) is decoded by
:func:`transfer.data.readers.decode_image_bytes`, resized (stretched, no crop or
pad) to ``size`` with an anti-aliased filter, and stored as one ``.npz`` holding
uint16 pixels (C, H, W) plus ``original_size`` and ``spacing``. Landmark code
maps coordinates with the per-axis scale ``original_size / size``.

The key is a hash of the file's *bytes* (xxh3-128, or blake2b-128 when xxhash is
absent) plus size, gray flag, resampling filter and :data:`CACHE_VERSION`, so an
edited file misses even if its name and mtime are unchanged. A small in-process
LRU maps ``os.stat`` results to content hashes to skip re-hashing; an entry is
only trusted when the file's mtime was older than the hashing by
:data:`RACY_MARGIN_NS` (git's "racily clean" rule: a rewrite within the same
timestamp tick, same size, would otherwise go unseen).

Concurrency: entries are written to a temporary file in the same directory and
moved into place with ``os.replace`` (atomic on POSIX and Windows), so
DataLoader workers and parallel processes can read and write the same cache; the
last writer wins with identical content. An unreadable entry (truncated,
corrupt, wrong shape) is a miss and is rewritten. No fsync: a torn entry after a
crash is just such a miss.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from transfer.data.readers import decode_image_bytes, is_dicom, read_file_bytes

__all__ = ["CACHE_VERSION", "CachedImage", "DecodeCache", "content_hash", "resize_image"]

#: bump when decoding or resizing changes, so old entries are not reused
CACHE_VERSION = 1
#: an LRU stat -> hash entry is trusted only if mtime was this much older than the hashing
RACY_MARGIN_NS = 2_000_000_000

Resample = Literal["bilinear", "nearest"]
#: cache folders already reported unwritable in this process (the warning is said once)
_UNWRITABLE_ROOTS: set[str] = set()
_QMAX = np.float32(65535.0)


def _hasher() -> tuple[str, Callable[[bytes], str]]:
    try:
        import xxhash
    except ImportError:  # xxhash is optional: blake2b is in the standard library
        return "b2", lambda data: hashlib.blake2b(data, digest_size=16).hexdigest()
    return "x3", lambda data: xxhash.xxh3_128_hexdigest(data)


_HASH_NAME, _hash = _hasher()


def content_hash(data: bytes) -> str:
    """128-bit hex digest of a file's bytes, prefixed with the algorithm ("x3" or "b2")."""
    return f"{_HASH_NAME}{_hash(data)}"


@dataclass
class CachedImage:
    """``array``: float32 in [0, 1], (C, H, W) at the working size, C = 1 or 3.

    ``original_size``: (H, W) of the file; ``spacing``: the file's mm per pixel
    (row, col) at original resolution, or None.
    """

    array: np.ndarray
    original_size: tuple[int, int]
    spacing: tuple[float, float] | None


def resize_image(array: np.ndarray, size: tuple[int, int], resample: Resample = "bilinear") -> np.ndarray:
    """(H, W) or (H, W, C) float32 -> (C, h, w) float32 at ``size`` = (h, w), stretched.

    ``bilinear`` is PIL's triangle filter, whose support widens with the
    reduction factor, i.e. anti-aliased (what ``torch.nn.functional.interpolate
    (antialias=True)`` reproduces); ``nearest`` keeps label values (masks).
    """
    from PIL import Image

    a = array[..., None] if array.ndim == 2 else array
    h, w = size
    if a.shape[:2] == (h, w):
        return np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32)
    flt = Image.Resampling.BILINEAR if resample == "bilinear" else Image.Resampling.NEAREST
    out = np.empty((a.shape[2], h, w), np.float32)
    for c in range(a.shape[2]):
        im = Image.fromarray(np.ascontiguousarray(a[..., c], dtype=np.float32))  # mode "F"
        out[c] = np.asarray(im.resize((w, h), flt))
    return out


def _quantize(a: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(a, 0.0, 1.0) * _QMAX).astype(np.uint16)


def _dequantize(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) / _QMAX


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError) as e:
        raise ValueError(f"size must be (H, W), got {size!r}") from e
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive (H, W), got {size!r}")
    return h, w


class DecodeCache:
    """Decode + resize once, then serve from ``root``.

    ``get(path, size, gray=...)`` returns a :class:`CachedImage`; ``hits`` and
    ``misses`` count this instance's (this process's) calls; ``corrupt`` counts
    unreadable entries that were rewritten. With ``enabled=False`` every call
    decodes, with the same output (including the uint16 rounding).
    """

    def __init__(self, root: str | Path, enabled: bool = True, *, stat_lru_size: int = 4096) -> None:
        self.root = Path(root)
        self.enabled = enabled
        self.stat_lru_size = stat_lru_size
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self._stat_lru: OrderedDict[tuple, tuple[str, bool]] = OrderedDict()
        self._lock = threading.Lock()
        self._warned_write = False

    # pickling (DataLoader workers under spawn): locks do not pickle
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DecodeCache(root={str(self.root)!r}, enabled={self.enabled}, hits={self.hits}, misses={self.misses})"

    # ------------------------------------------------------------------ public

    def get(
        self, path: str | Path, size: tuple[int, int], *, gray: bool | None = True, resample: Resample = "bilinear",
        window: tuple[float, float] | None = None,
    ) -> CachedImage:
        """The image at ``path`` as float32 (C, H, W) at ``size`` = (H, W).

        ``gray`` as in :func:`~transfer.data.readers.read_image` (True -> C = 1,
        False -> C = 3, None -> as stored). ``resample="nearest"`` for label masks.
        ``window``: DICOM (center, width), part of the key; other formats ignore it.
        """
        size = _check_size(size)
        if resample not in ("bilinear", "nearest"):
            raise ValueError(f"resample must be 'bilinear' or 'nearest', got {resample!r}")
        window = window if window is not None and is_dicom(path) else None
        if not self.enabled:
            self.misses += 1
            return self._decode(read_file_bytes(path), path, size, gray, resample, window)[0]

        data: bytes | None = None
        digest = self._known_digest(path)
        if digest is None:
            data, digest = self._read_and_hash(path)
        entry = self.entry_path(digest, size, gray, resample, window)
        cached = self._load(entry, size, gray)
        if cached is not None:
            self.hits += 1
            return cached

        if data is None:  # the stat said "unchanged"; decode exactly the bytes we hash
            data, digest = self._read_and_hash(path)
            entry = self.entry_path(digest, size, gray, resample, window)
        self.misses += 1
        image, quantized = self._decode(data, path, size, gray, resample, window)
        self._store(entry, quantized, image)
        return image

    def get_quantized(
        self, path: str | Path, size: tuple[int, int], *, gray: bool | None = True, resample: Resample = "bilinear",
        window: tuple[float, float] | None = None,
    ) -> tuple[np.ndarray, tuple[int, int], tuple[float, float] | None, str]:
        """``(pixels, original_size, spacing, digest)``: the entry's uint16 pixels (C, H, W) as stored (no float
        copy), and the content hash of the file's bytes, for which the file is read once (or not at all, when the
        stat memory knows it): what a packed pool (:mod:`transfer.data.packed`) copies, and fingerprints with."""
        size = _check_size(size)
        window = window if window is not None and is_dicom(path) else None
        data, digest = self._read_and_hash(path)
        return (*self.quantized_from(data, digest, path, size, gray=gray, resample=resample, window=window), digest)

    def quantized_from(
        self, data: bytes, digest: str, path: str | Path, size: tuple[int, int], *, gray: bool | None = True,
        resample: Resample = "bilinear", window: tuple[float, float] | None = None,
    ) -> tuple[np.ndarray, tuple[int, int], tuple[float, float] | None]:
        """The entry of bytes already read and hashed (``data``, ``digest``): loaded, or decoded and stored."""
        window = window if window is not None and is_dicom(path) else None
        if self.enabled:
            raw = self._load_raw(self.entry_path(digest, size, gray, resample, window), size, gray)
            if raw is not None:
                self.hits += 1
                return raw
        self.misses += 1
        image, quantized = self._decode(data, path, size, gray, resample, window)
        if self.enabled:
            self._store(self.entry_path(digest, size, gray, resample, window), quantized, image)
        return quantized, image.original_size, image.spacing

    def read_and_hash(self, path: str | Path) -> tuple[bytes, str]:
        """The file's bytes and their :func:`content_hash` (remembered by stat, as for :meth:`get`)."""
        return self._read_and_hash(path)

    def entry_path(self, digest: str, size: tuple[int, int], gray: bool | None, resample: Resample = "bilinear",
                   window: tuple[float, float] | None = None) -> Path:
        """Where the entry for these bytes and settings lives (sharded by the hash's first byte)."""
        g = {True: "gray", False: "rgb", None: "asis"}[gray]
        # another DICOM window maps the same bytes to other pixels: its own entry
        w = "" if window is None else f"-w{float(window[0]):g}_{float(window[1]):g}"
        name = f"{digest}-{size[0]}x{size[1]}-{g}-{resample}{w}-v{CACHE_VERSION}.npz"
        return self.root / digest[2:4] / name

    def clear(self) -> int:
        """Delete this cache's entries (and stray temporary files) under ``root``; other files stay.

        Returns the number of files removed.
        """
        removed = 0
        if not self.root.is_dir():
            return 0
        for shard in self.root.iterdir():
            if not (shard.is_dir() and len(shard.name) == 2):
                continue
            for f in shard.iterdir():
                if f.is_file() and f.name[:2] in ("x3", "b2") and (f.suffix in (".npz", ".tmp")):
                    f.unlink(missing_ok=True)
                    removed += 1
            try:
                shard.rmdir()
            except OSError:  # not empty: someone else's files
                pass
        with self._lock:
            self._stat_lru.clear()
        return removed

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _stat_key(path: str | Path, st: os.stat_result) -> tuple:
        return (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _known_digest(self, path: str | Path) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None  # _read_and_hash reports it properly
        key = self._stat_key(path, st)
        with self._lock:
            hit = self._stat_lru.get(key)
            if hit is None or not hit[1]:
                return None
            self._stat_lru.move_to_end(key)
            return hit[0]

    def _read_and_hash(self, path: str | Path) -> tuple[bytes, str]:
        started = time.time_ns()
        try:
            with open(path, "rb") as f:
                data = f.read()
                st = os.fstat(f.fileno())
        except OSError:
            data, st = read_file_bytes(path), None  # raises ImageReadError naming the file
        digest = content_hash(data)
        if st is not None:
            trusted = started - st.st_mtime_ns > RACY_MARGIN_NS
            with self._lock:
                self._stat_lru[self._stat_key(path, st)] = (digest, trusted)
                self._stat_lru.move_to_end(self._stat_key(path, st))
                while len(self._stat_lru) > self.stat_lru_size:
                    self._stat_lru.popitem(last=False)
        return data, digest

    @staticmethod
    def _decode(
        data: bytes, path: str | Path, size: tuple[int, int], gray: bool | None, resample: Resample,
        window: tuple[float, float] | None = None,
    ) -> tuple[CachedImage, np.ndarray]:
        # gray=False: decode as stored and replicate gray to 3 channels *after* resizing (the
        # same result, as resizing is per channel; a 3x smaller resize for gray files)
        img = decode_image_bytes(data, path, gray=None if gray is False else gray, window=window)
        resized = resize_image(img.array, size, resample)
        if gray is False and resized.shape[0] == 1:
            resized = np.repeat(resized, 3, axis=0)
        quantized = _quantize(resized)
        return CachedImage(_dequantize(quantized), img.original_size, img.spacing), quantized

    def _load(self, entry: Path, size: tuple[int, int], gray: bool | None) -> CachedImage | None:
        raw = self._load_raw(entry, size, gray)
        return None if raw is None else CachedImage(_dequantize(raw[0]), raw[1], raw[2])

    def _load_raw(self, entry: Path, size: tuple[int, int], gray: bool | None
                  ) -> tuple[np.ndarray, tuple[int, int], tuple[float, float] | None] | None:
        try:
            with np.load(entry, allow_pickle=False) as z:
                q, osz, sp = z["pixels"], z["original_size"], z["spacing"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            self.corrupt += 1
            return None
        channels_ok = q.ndim == 3 and (q.shape[0] == 1 if gray else q.shape[0] == 3 if gray is False else q.shape[0] in (1, 3))
        if q.dtype != np.uint16 or not channels_ok or q.shape[1:] != size or osz.shape != (2,) or sp.shape != (2,):
            self.corrupt += 1
            return None
        spacing = None if np.isnan(sp).any() else (float(sp[0]), float(sp[1]))
        return q, (int(osz[0]), int(osz[1])), spacing

    def _store(self, entry: Path, quantized: np.ndarray, image: CachedImage) -> None:
        spacing = np.array(image.spacing if image.spacing is not None else (np.nan, np.nan), np.float64)
        tmp: str | None = None
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            # unique name in the same directory (so os.replace is a rename); mode 0o666 minus the
            # umask, unlike mkstemp's 0o600, so a cache shared by a team stays readable
            tmp = str(entry.parent / f"{entry.name[:34]}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, pixels=quantized, original_size=np.array(image.original_size, np.int64), spacing=spacing)
            os.replace(tmp, entry)  # atomic: readers see the old entry or the whole new one
            tmp = None
        except OSError as e:
            # a cache that cannot be written must not stop training: warn once per folder and process (each split
            # opens its own DecodeCache, and Python's once-per-place filter forgets whenever any code changes the
            # warning filters), serve the decode
            if not self._warned_write and str(self.root) not in _UNWRITABLE_ROOTS:
                warnings.warn(f"{self.root}: cannot write the decode cache ({e.strerror or type(e).__name__}); "
                              "decoding without caching", stacklevel=3)
                _UNWRITABLE_ROOTS.add(str(self.root))
            self._warned_write = True
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
