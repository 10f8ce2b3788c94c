from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from transfer.engine import Engine, make_loader


class _Data(Dataset):
    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.steps_seen: list[float] = []

    def training_step(self, batch):
        return {"loss": ((self.lin(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean()}

    def after_optimizer_step(self, progress: float) -> None:
        self.steps_seen.append(progress)


def test_fit_learns_selects_and_calls_hooks():
    torch.manual_seed(0)
    m = _Model()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    eng = Engine(m, opt, progress=False)
    loader = make_loader(_Data(), 8, shuffle=True)
    val = []

    def evaluate(epoch):
        with torch.no_grad():
            d = _Data()
            v = float(((m.lin(d.x).squeeze(1) - d.y) ** 2).mean())
        val.append(v)
        return {"mse": v}

    res = eng.fit(loader, 5, evaluate=evaluate, monitor="mse", mode="min")
    assert val[-1] < val[0] / 4
    assert res.best_epoch == int(torch.tensor(val).argmin())
    assert len(m.steps_seen) == 20 and m.steps_seen[-1] == pytest.approx(1.0)


def test_resume_continues_from_last_epoch(tmp_path):
    torch.manual_seed(0)
    m = _Model()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    eng = Engine(m, opt, progress=False)
    path = tmp_path / "last.pt"
    eng.fit(make_loader(_Data(), 8, shuffle=True), 2, resume_path=path)
    m2 = _Model()
    eng2 = Engine(m2, torch.optim.SGD(m2.parameters(), lr=0.05), progress=False)
    res = eng2.fit(make_loader(_Data(), 8, shuffle=True), 3, resume_path=path)
    assert [r["epoch"] for r in res.history] == [0, 1, 2]  # epochs 0-1 restored, only epoch 2 trained
    assert len(m2.steps_seen) == 4


def _ddp_worker(rank: int, world: int, out: str) -> None:
    # a file store, not a TCP port: no race for a free port between tests
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same init on every rank, as torchrun users do
        m = _Model()
        eng = Engine(m, torch.optim.SGD(m.parameters(), lr=0.05), progress=False)
        loader = make_loader(_Data(), 4, shuffle=True, seed=1)
        eng.fit(loader, 2)
        torch.save({"w": m.lin.weight.detach().clone(), "n": len(loader)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_keeps_replicas_in_sync(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0["w"], r1["w"])  # gradients were all-reduced
    assert r0["n"] == 4  # 32 samples / 2 ranks / batch 4: the sampler shards the data


def test_fixed_steps_per_epoch_cycles_small_datasets():
    loader = make_loader(_Data(6), 4, shuffle=True, drop_last=True, num_samples=5 * 4)
    batches = list(loader)
    assert len(batches) == 5 and all(len(b["x"]) == 4 for b in batches)
    seen = torch.cat([b["x"] for b in batches])
    # consecutive passes without replacement: each of the 6 items appears 3 or 4 times in 20 draws
    counts = [(seen == x).all(1).sum().item() for x in _Data(6).x]
    assert sorted(counts) == [3, 3, 3, 3, 4, 4]
    # with num_samples = len(dataset) it is the same permutation as shuffle=True
    a = [b["y"] for b in make_loader(_Data(8), 4, shuffle=True, seed=3)]
    b = [b["y"] for b in make_loader(_Data(8), 4, shuffle=True, seed=3, num_samples=8)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_non_finite_loss_stops_training():
    class _Nan(_Model):
        def training_step(self, batch):
            return {"loss": self.lin(batch["x"]).sum() * float("nan")}

    m = _Nan()
    eng = Engine(m, torch.optim.SGD(m.parameters(), lr=0.05), progress=False)
    with pytest.raises(FloatingPointError, match="epoch 0"):
        eng.train_epoch(make_loader(_Data(), 8, shuffle=False), 0)
