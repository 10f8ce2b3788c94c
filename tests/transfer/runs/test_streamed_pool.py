"""Stage 1's streamed pool: the same pixels, batches, losses and weights as the in-memory pool; memory that does not
grow with the pool; each file read once; a pack rewritten only where the pool changed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfer.cli import main
from transfer.config import Config
from transfer.data.cache import DecodeCache, content_hash
from transfer.data.packed import PackedImageDataset, pack_images
from transfer.runs.pool import load_pool

REPO = Path(__file__).resolve().parents[3]


def _pool(root: Path, n: int = 12, side: int = 40, bad: int = 0) -> Path:
    d = root / "pool"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((side, side)) * 255).astype(np.uint8)).save(d / f"{i:05d}.png")
    for i in range(bad):
        (d / f"bad{i}.png").write_bytes(b"not a png")
    return d


def _cfg(root: Path, in_memory, **data) -> Config:
    from transfer.config.io import from_dict

    return from_dict(Config, {
        "backbone": {"name": "tiny_resnet", "in_chans": 1}, "init": "scratch",
        "data": {"root": str(root), "image_size": [32, 32], "cache_dir": str(root / "cache"), "in_memory": in_memory,
                 **data},
        "pretrain": {"pool": "pool", "batch_size": 4}, "tracking": {"progress": False, "wandb_mode": "disabled"}})


def test_streamed_pool_has_the_in_memory_pixels_ids_fingerprint_and_digests(tmp_path):
    _pool(tmp_path)
    mem, streamed = load_pool(_cfg(tmp_path, True)), load_pool(_cfg(tmp_path, False))
    assert mem.images is not None and streamed.images is None and streamed.streamed and not mem.streamed
    assert mem.ids == streamed.ids and len(streamed) == 12
    assert mem.fingerprint == streamed.fingerprint
    # the fingerprint is the one a pool always had: sorted hashes of the files' bytes
    files = sorted(content_hash(Path(i).read_bytes()) for i in mem.ids)
    import hashlib

    assert mem.fingerprint == hashlib.sha256("".join(files).encode()).hexdigest()[:16]
    assert mem.digests == streamed.digests  # a resume state written by either is accepted by the other
    ds = streamed.dataset()
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].dtype == torch.uint16 and item["index"] == i
        # the engine's conversion on the device: bit for bit the in-memory float pixels
        from transfer.engine import to_device

        got = to_device({"image": item["image"][None]}, torch.device("cpu"))["image"][0]
        assert got.dtype == torch.float32 and torch.equal(got, mem.images[i])
    assert torch.equal(streamed.sample(3), mem.images[:3])


def test_auto_streams_above_the_budget(tmp_path):
    _pool(tmp_path, n=6)
    assert not load_pool(_cfg(tmp_path, "auto")).streamed  # 6 x 32 x 32 x 4 bytes: far below 2 GiB
    assert load_pool(_cfg(tmp_path, "auto", in_memory_max_gib=1e-6)).streamed


def test_each_file_is_read_once_and_an_unchanged_pack_is_reused(tmp_path, monkeypatch):
    d = _pool(tmp_path)
    reads: list[str] = []
    real = DecodeCache._read_and_hash
    monkeypatch.setattr(DecodeCache, "_read_and_hash", lambda self, p: reads.append(str(p)) or real(self, p))
    paths = sorted(d.iterdir())
    a = pack_images(paths, (32, 32), tmp_path / "cache", source=str(d), progress=False)
    assert sorted(reads) == sorted(map(str, paths)) and not a.reused
    reads.clear()
    b = pack_images(paths, (32, 32), tmp_path / "cache", source=str(d), progress=False)
    assert sorted(reads) == sorted(map(str, paths)) and b.reused and b.data == a.data
    # one file changed: a new data file, the unchanged rows copied, the changed one from its new bytes
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(paths[5])
    c = pack_images(paths, (32, 32), tmp_path / "cache", source=str(d), progress=False)
    assert not c.reused and c.data != a.data and not a.data.exists()
    old_rows, new_rows = PackedImageDataset(b), PackedImageDataset(c)  # b's file is gone: compare with a fresh pack
    mem = load_pool(_cfg(tmp_path, True))
    for i in range(len(c)):
        q = new_rows[i]["image"].float() / 65535
        assert torch.equal(q, mem.images[i]), i
    assert len(old_rows) == len(new_rows)
    # a file removed: the pack follows
    paths[0].unlink()
    e = pack_images(paths[1:], (32, 32), tmp_path / "cache", source=str(d), progress=False)
    assert len(e) == 11 and e.ids == [str(p) for p in paths[1:]]
    assert torch.equal(PackedImageDataset(e)[0]["image"], PackedImageDataset(c)[1]["image"]) if c.data.exists() \
        else True


def test_bad_files_are_skipped_and_reported_when_streamed(tmp_path):
    _pool(tmp_path, bad=2)
    cfg = _cfg(tmp_path, False)
    from transfer.errors import MedTransferError

    with pytest.raises(MedTransferError, match="bad0.png"):
        load_pool(cfg)
    import dataclasses

    pool = load_pool(dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, on_bad="skip")))
    assert len(pool) == 12 and sorted(Path(s["path"]).name for s in pool.skipped) == ["bad0.png", "bad1.png"]


def test_the_streamed_dataset_holds_no_pixels(tmp_path):
    _pool(tmp_path, n=8)
    ds = load_pool(_cfg(tmp_path, False)).dataset()
    held = [v for v in vars(ds).values() if isinstance(v, (torch.Tensor, np.ndarray))]
    held += [v for v in vars(ds._rows).values() if isinstance(v, (torch.Tensor, np.ndarray, bytes, bytearray))]
    assert not held
    import pickle

    assert len(pickle.dumps(ds)) < 2000  # what a worker receives: a path, a shape and the ids


_RSS = r"""
import resource, sys, torch
from torch.utils.data import DataLoader
from transfer.config import Config
from transfer.config.io import from_dict
from transfer.runs.pool import load_pool
root = sys.argv[1]
cfg = from_dict(Config, {"backbone": {"name": "tiny_resnet", "in_chans": 1}, "init": "scratch",
    "data": {"root": root, "image_size": [64, 64], "cache_dir": root + "/cache", "in_memory": sys.argv[2] == "mem"},
    "pretrain": {"pool": "pool", "batch_size": 4}, "tracking": {"progress": False}})
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
base = rss()
pool = load_pool(cfg)  # packs (or reuses the pack of) the pool, or decodes it into memory
for epoch in range(2):
    for b in DataLoader(pool.dataset(), batch_size=32, shuffle=True):
        pass
print(rss() - base)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
def test_streamed_memory_does_not_grow_with_the_pool(tmp_path):
    """Loading the pool and two epochs over it, 200 and 2000 images at 64 px: the streamed process's resident
    memory grows by about the same small amount for both, the in-memory one by the pool (1800 x 16 KiB = 28 MiB
    more for 2000 images)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    growth = {}
    for n in (200, 2000):
        root = tmp_path / str(n)
        _pool(root, n=n, side=64)
        for mode in ("mem", "stream"):  # the in-memory run fills the decode cache, the streamed one packs from it
            out = subprocess.run([sys.executable, "-c", _RSS, str(root), mode], env=env, capture_output=True,
                                 text=True, check=True).stdout.split()
            growth[n, mode] = int(out[0])
    print({k: round(v / 2**20, 1) for k, v in growth.items()}, "MiB")
    mib = 2**20
    # what grows is per-id bookkeeping (paths, hashes: ~2 KB an image), never pixels (16 KiB an image here)
    assert growth[2000, "stream"] - growth[200, "stream"] < 8 * mib, growth
    assert growth[2000, "stream"] < 16 * mib, growth
    assert growth[2000, "mem"] - growth[200, "mem"] > 20 * mib, growth  # the measure sees a pool that is held


def _pretrain_args(root: Path, name: str, *extra: str) -> list[str]:
    return ["pretrain", "--name", name, "--set", "backbone.name=tiny_resnet", "--set", "init=scratch",
            "--set", "backbone.in_chans=1", "--set", "pretrain.method=simclr", "--set", "pretrain.epochs=2",
            "--set", "pretrain.warmup_epochs=0", "--set", "pretrain.batch_size=4", "--set", f"data.root={root}",
            "--set", "pretrain.pool=pool", "--set", "data.image_size=[32, 32]",
            "--set", f"data.cache_dir={root / 'cache'}", "--set", f"tracking.out_dir={root / 'runs'}",
            "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false",
            "--set", "tracking.log_media=false", *extra]


def test_streamed_pretrain_with_workers_equals_the_in_memory_run(tmp_path):
    """Same seed: the streamed pool read by 2 workers gives the in-memory run's losses, epoch by epoch, and its
    weights, bit for bit (views are drawn in the main process, on the batch: workers only read rows)."""
    _pool(tmp_path, n=12)
    assert main(_pretrain_args(tmp_path, "mem", "--set", "data.in_memory=true", "--set", "data.num_workers=0")) == 0
    assert main(_pretrain_args(tmp_path, "stream", "--set", "data.in_memory=false",
                               "--set", "data.num_workers=2")) == 0
    runs = tmp_path / "runs"
    timing = ("images_per_s", "data_wait_share", "epoch_seconds", "epoch_cpu_seconds")
    rows = [[{k: v for k, v in json.loads(x).items() if k not in timing}
             for x in (runs / r / "metrics.jsonl").read_text().splitlines()] for r in ("mem", "stream")]
    assert rows[0] == rows[1] and len(rows[0]) == 2
    a, b = (json.loads((runs / r / "summary.json").read_text()) for r in ("mem", "stream"))
    assert a["data_fingerprint"] == b["data_fingerprint"] and not a["streamed"] and b["streamed"]
    wa, wb = (torch.load(runs / r / "backbone.pt", weights_only=True)["stages"] for r in ("mem", "stream"))
    for stage in wa:
        for k in wa[stage]:
            assert torch.equal(wa[stage][k], wb[stage][k]), (stage, k)


def test_torchrun_two_process_streamed_pretrain(tmp_path):
    """Two CPU ranks under torchrun, both packing the same pool at once (atomic renames), each reading its shard
    with 2 workers: one run, a checkpoint, a streamed summary."""
    _pool(tmp_path, n=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    args = _pretrain_args(tmp_path, "ddp", "--set", "data.in_memory=false", "--set", "data.num_workers=2",
                          "--set", "pretrain.method=moco", "--set", "pretrain.contrastive.queue_size=16")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "transfer.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    s = json.loads((run / "summary.json").read_text())
    assert s["streamed"] and s["pool_size"] == 16 and s["epochs"] == 2
    assert (run / "backbone.pt").is_file()
    packs = list((tmp_path / "cache" / "packed").glob("*.u16"))
    assert len(packs) == 1 and not list((tmp_path / "cache" / "packed").glob("*.tmp"))


def test_an_abandoned_temporary_pack_is_removed(tmp_path):
    d = _pool(tmp_path, n=4)
    paths = sorted(d.iterdir())
    a = pack_images(paths, (32, 32), tmp_path / "cache", source=str(d), progress=False)
    slot = a.data.name.split("-")[0]
    old, fresh = (tmp_path / "cache" / "packed" / f"{slot}.{pid}.abcd.tmp" for pid in (111, 222))
    old.write_bytes(b"x" * 100)
    fresh.write_bytes(b"x" * 100)
    os.utime(old, (1, 1))
    Image.fromarray(np.full((40, 40), 3, np.uint8)).save(paths[0])  # a change: the pool is packed again
    pack_images(paths, (32, 32), tmp_path / "cache", source=str(d), progress=False)
    assert not old.exists() and fresh.exists()  # one being written (recent) is left alone
