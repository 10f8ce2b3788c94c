"""How much the decode cache saves: time a cold pass (decode + resize + write) and a warm pass.

``bench_data(paths, size, cache_dir)`` clears the cache's entries in
``cache_dir``, runs one cold pass and one warm pass over ``paths``, and returns
seconds and milliseconds per image. The warm pass uses a fresh
:class:`~transfer.data.cache.DecodeCache` (as a new process or DataLoader worker
would: read + hash each file, load the entry); ``lru_ms_per_image`` is a third
pass on that same instance, whose stat -> hash memory skips re-hashing files
that have not changed for a while (see the cache's racy-mtime rule).
"""
from __future__ import annotations

import time
from pathlib import Path
from statistics import median
from typing import Any

from transfer.data.cache import DecodeCache
from transfer.errors import DatasetError

__all__ = ["bench_data", "main_bench_data"]


def _one_pass(cache: DecodeCache, paths: list[Path], size: tuple[int, int], gray: bool | None) -> float:
    start = time.perf_counter()
    for p in paths:
        cache.get(p, size, gray=gray)
    return time.perf_counter() - start


def bench_data(
    paths: list[Path], size: tuple[int, int], cache_dir: Path, repeats: int = 1, *, gray: bool | None = True
) -> dict[str, Any]:
    """Cold vs warm decode-cache timings over ``paths`` at ``size`` = (H, W).

    With ``repeats`` > 1 the clear / cold / warm cycle is repeated and the
    median of each timing is reported. Only the cache's own entries in
    ``cache_dir`` are deleted, never other files.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DatasetError("bench_data: no image paths given")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    n = len(paths)
    cold, warm, lru = [], [], []
    for _ in range(repeats):
        DecodeCache(cache_dir).clear()
        c = DecodeCache(cache_dir)
        cold.append(_one_pass(c, paths, size, gray))
        w = DecodeCache(cache_dir)  # fresh instance: nothing remembered in memory
        warm.append(_one_pass(w, paths, size, gray))
        lru.append(_one_pass(w, paths, size, gray))
        counts = {"cold_misses": c.misses, "cold_hits": c.hits, "warm_hits": w.hits, "warm_misses": w.misses}
    cold_s, warm_s, lru_s = median(cold), median(warm), median(lru)
    entries = list(Path(cache_dir).glob("??/*.npz"))
    return {
        "n": n,
        "size": tuple(int(v) for v in size),
        "gray": gray,
        "repeats": repeats,
        "cold_s": cold_s,
        "warm_s": warm_s,
        "cold_ms_per_image": 1000.0 * cold_s / n,
        "warm_ms_per_image": 1000.0 * warm_s / n,
        "lru_ms_per_image": 1000.0 * lru_s / n,
        "speedup": cold_s / warm_s if warm_s > 0 else float("inf"),
        "cache_mb": sum(f.stat().st_size for f in entries) / 1e6,
        "source_mb": sum(p.stat().st_size for p in paths) / 1e6,
        **counts,  # of the last cycle; warm counts cover the warm and the LRU pass
    }


def main_bench_data(
    image_dir: str | Path, pattern: str, size: tuple[int, int], cache_dir: str | Path, repeats: int = 1
) -> dict[str, Any]:
    """The CLI entry: bench every file in ``image_dir`` matching the glob ``pattern`` (sorted)."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: not a directory")
    paths = sorted(p for p in image_dir.glob(pattern) if p.is_file())
    if not paths:
        raise DatasetError(f"{image_dir}: no files match {pattern!r}")
    return bench_data(paths, size, Path(cache_dir), repeats=repeats)
