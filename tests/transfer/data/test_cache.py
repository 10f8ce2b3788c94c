"""transfer.data.cache: decode once, key by content, atomic writes, corrupt entries rewritten."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfer.bench.data import bench_data, main_bench_data
from transfer.data.cache import DecodeCache, content_hash, resize_image
from transfer.data.readers import read_image
from transfer.errors import DatasetError, ImageReadError

SIZE = (16, 12)


def _write(p: Path, seed: int = 0, shape: tuple[int, ...] = (40, 30)) -> Path:
    a = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    Image.fromarray(a).save(p)
    return p


def _age(p: Path, seconds: float = 3600) -> None:
    """Backdate the mtime so the stat -> hash memory trusts the file."""
    t = time.time() - seconds
    os.utime(p, (t, t))


def test_second_get_is_a_hit_and_equal(tmp_path: Path) -> None:
    img = _write(tmp_path / "a.png")
    cache = DecodeCache(tmp_path / "cache")
    first = cache.get(img, SIZE)
    second = cache.get(img, SIZE)
    assert (cache.hits, cache.misses) == (1, 1)
    assert first.array.dtype == np.float32 and first.array.shape == (1, *SIZE)
    np.testing.assert_array_equal(first.array, second.array)
    assert first.original_size == second.original_size == (40, 30)
    assert second.spacing is None
    # the cached pixels are the anti-aliased resize of the decode, up to uint16 rounding
    direct = resize_image(read_image(img, gray=True).array, SIZE)
    np.testing.assert_allclose(first.array, direct, atol=0.5 / 65535 + 1e-7)
    # a fresh instance (another process) hits the same entry
    other = DecodeCache(tmp_path / "cache")
    np.testing.assert_array_equal(other.get(img, SIZE).array, first.array)
    assert (other.hits, other.misses) == (1, 0)


def test_content_is_the_key(tmp_path: Path) -> None:
    img = _write(tmp_path / "a.png")
    cache = DecodeCache(tmp_path / "cache")
    first = cache.get(img, SIZE)
    copy = tmp_path / "copy.png"
    copy.write_bytes(img.read_bytes())
    np.testing.assert_array_equal(cache.get(copy, SIZE).array, first.array)
    assert (cache.hits, cache.misses) == (1, 1)


def test_modified_file_misses(tmp_path: Path) -> None:
    # BMP: same dimensions -> same byte count, so only the content tells the versions apart
    img = _write(tmp_path / "a.bmp", seed=1)
    cache = DecodeCache(tmp_path / "cache")
    first = cache.get(img, SIZE)
    before = os.stat(img)
    _write(img, seed=2)
    os.utime(img, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime as before
    second = cache.get(img, SIZE)
    assert cache.misses == 2 and cache.hits == 0
    assert not np.array_equal(first.array, second.array)


def test_stat_memory_skips_rehash_only_for_old_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = _write(tmp_path / "old.png", 3), _write(tmp_path / "new.png", 4)
    _age(old)
    cache = DecodeCache(tmp_path / "cache")
    cache.get(old, SIZE)
    cache.get(new, SIZE)
    calls: list[Path] = []
    real = cache._read_and_hash
    monkeypatch.setattr(cache, "_read_and_hash", lambda p: calls.append(Path(p)) or real(p))
    cache.get(old, SIZE)
    cache.get(new, SIZE)  # modified just now: could change again within the same mtime tick
    assert calls == [new]
    assert cache.hits == 2


def test_size_and_channels_are_part_of_the_key(tmp_path: Path) -> None:
    img = _write(tmp_path / "a.png")
    cache = DecodeCache(tmp_path / "cache")
    cache.get(img, SIZE)
    small = cache.get(img, (8, 8))
    rgb = cache.get(img, SIZE, gray=False)
    nearest = cache.get(img, SIZE, resample="nearest")
    assert cache.misses == 4 and cache.hits == 0
    assert small.array.shape == (1, 8, 8) and rgb.array.shape == (3, *SIZE)
    # gray replicated after resizing == resizing the replicated image
    direct = resize_image(read_image(img, gray=False).array, SIZE)
    np.testing.assert_allclose(rgb.array, direct, atol=0.5 / 65535 + 1e-7)
    colour = tmp_path / "colour.png"
    _write(colour, seed=5, shape=(20, 10, 3))
    np.testing.assert_allclose(
        cache.get(colour, SIZE, gray=False).array, resize_image(read_image(colour).array, SIZE), atol=0.5 / 65535 + 1e-7
    )
    assert set(np.unique(nearest.array)) <= set(np.arange(256, dtype=np.float32) / 255)


def test_corrupt_entry_is_a_miss_and_rewritten(tmp_path: Path) -> None:
    img = _write(tmp_path / "a.png")
    root = tmp_path / "cache"
    good = DecodeCache(root).get(img, SIZE)
    entry = DecodeCache(root).entry_path(content_hash(img.read_bytes()), SIZE, True)
    assert entry.is_file()
    data = entry.read_bytes()
    flipped = bytearray(data)
    pixels = np.rint(good.array * 65535).astype(np.uint16).tobytes()
    at = data.find(pixels)
    assert at > 0
    flipped[at + len(pixels) // 2] ^= 0xFF  # a bit flip inside the pixels: the zip CRC catches it
    for broken in (data[: len(data) // 2], b"", data[:-40] + bytes(40), bytes(flipped)):
        entry.write_bytes(broken)
        cache = DecodeCache(root)
        again = cache.get(img, SIZE)
        assert (cache.misses, cache.corrupt) == (1, 1)
        np.testing.assert_array_equal(again.array, good.array)
        assert cache.get(img, SIZE) is not None and cache.hits == 1  # rewritten, readable


def test_disabled_decodes_every_time_with_same_output(tmp_path: Path) -> None:
    img = _write(tmp_path / "a.png")
    cached = DecodeCache(tmp_path / "cache").get(img, SIZE)
    off = DecodeCache(tmp_path / "off", enabled=False)
    for _ in range(2):
        np.testing.assert_array_equal(off.get(img, SIZE).array, cached.array)
    assert (off.hits, off.misses) == (0, 2)
    assert not (tmp_path / "off").exists()


def test_errors_name_the_file(tmp_path: Path) -> None:
    cache = DecodeCache(tmp_path / "cache")
    with pytest.raises(ImageReadError, match="missing.png"):
        cache.get(tmp_path / "missing.png", SIZE)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="bad.png"):
        cache.get(bad, SIZE)
    with pytest.raises(ValueError, match="size"):
        cache.get(bad, (0, 4))


def test_dicom_spacing_is_cached(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("CT_small.dcm not available offline")
    cache = DecodeCache(tmp_path / "cache")
    cache.get(path, SIZE)
    hit = cache.get(path, SIZE)
    assert cache.hits == 1
    assert hit.spacing == pytest.approx((0.661468, 0.661468)) and hit.original_size == (128, 128)


def test_clear_removes_only_cache_entries(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    (root / "ab").mkdir()
    (root / "ab" / "notes.md").write_text("also mine")
    cache = DecodeCache(root)
    cache.get(_write(tmp_path / "a.png"), SIZE)
    assert cache.clear() == 1
    assert (root / "keep.txt").exists() and (root / "ab" / "notes.md").exists()
    assert not list(root.glob("??/*.npz"))


def test_pickles_for_dataloader_workers(tmp_path: Path) -> None:
    import pickle

    cache = DecodeCache(tmp_path / "cache")
    cache.get(_write(tmp_path / "a.png"), SIZE)
    clone = pickle.loads(pickle.dumps(cache))
    clone.get(tmp_path / "a.png", SIZE)
    assert clone.hits == 1


def _hammer(args: tuple[str, str, int]) -> list[float]:
    """One process: repeatedly delete and re-create the same entry, and read it."""
    root, img, rounds = args
    out = []
    for _ in range(rounds):
        cache = DecodeCache(root)
        entry = cache.entry_path(content_hash(Path(img).read_bytes()), SIZE, True)
        entry.unlink(missing_ok=True)
        out.append(float(cache.get(img, SIZE).array.sum()))
        out.append(float(DecodeCache(root).get(img, SIZE).array.sum()))
    return out


def test_two_processes_writing_the_same_entry(tmp_path: Path) -> None:
    img = _write(tmp_path / "a.png", shape=(200, 150))
    root = tmp_path / "cache"
    expected = float(DecodeCache(root, enabled=False).get(img, SIZE).array.sum())
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with mp.get_context(method).Pool(2) as pool:
        results = pool.map(_hammer, [(str(root), str(img), 15)] * 2)
    assert all(v == expected for r in results for v in r)
    entries = list(root.glob("??/*"))
    assert len(entries) == 1 and entries[0].suffix == ".npz"  # no temporary files left behind
    check = DecodeCache(root)
    assert float(check.get(img, SIZE).array.sum()) == expected and check.hits == 1


def test_bench_data_small(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        _write(imgs / f"{i}.png", seed=i)
    res = main_bench_data(imgs, "*.png", SIZE, tmp_path / "cache")
    assert res["n"] == 3 and res["size"] == SIZE
    assert res["cold_misses"] == 3 and res["warm_hits"] == 6
    assert res["cold_ms_per_image"] > 0 and res["warm_ms_per_image"] > 0
    assert res["speedup"] == pytest.approx(res["cold_s"] / res["warm_s"])
    with pytest.raises(DatasetError, match="no files match"):
        main_bench_data(imgs, "*.jpg", SIZE, tmp_path / "cache")
    again = bench_data(sorted(imgs.glob("*.png")), SIZE, tmp_path / "cache", repeats=2)
    assert again["cold_misses"] == 3  # the cache was cleared first
