from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from transfer.engine import Engine, Selection, make_loader


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
        dist.barrier()  # no rank tears gloo down while the other still talks to it (an abort on a loaded machine)
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_keeps_replicas_in_sync(tmp_path):
    # fork, not spawn: the children need no fresh interpreter importing torch and this module (18 s -> 2 s on a
    # loaded 2-core machine); gloo and the model are created after the fork
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
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


def _engine(scheduler_gamma: float | None = None) -> tuple[_Model, Engine]:
    torch.manual_seed(0)
    m = _Model()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=scheduler_gamma) if scheduler_gamma else None
    return m, Engine(m, opt, scheduler=sched, progress=False)


def test_all_nan_monitor_selects_nothing_and_trains_every_epoch():
    m, eng = _engine()
    res = eng.fit(make_loader(_Data(), 8, shuffle=True), 3, evaluate=lambda e: {"auc": float("nan")},
                  monitor="auc", mode="max")
    assert res.best_metric is None and res.best_state is None and res.best_epoch == -1
    assert res.epochs_run == 3 and not res.stopped_early
    assert [r["epoch"] for r in res.history] == [0, 1, 2]
    assert all(math.isnan(r["val_auc"]) and r["best_epoch"] == -1 for r in res.history)


def test_all_nan_monitor_with_patience_stops_without_selection():
    _, eng = _engine()
    res = eng.fit(make_loader(_Data(), 8, shuffle=True), 5, evaluate=lambda e: {"mse": float("nan")},
                  monitor="mse", mode="min", patience=2)
    assert res.stopped_early and res.epochs_run == 2
    assert res.best_metric is None and res.best_state is None


def test_nan_epochs_are_never_selected():
    m, eng = _engine()
    values = [float("nan"), 0.5, float("nan"), 0.7, 0.6]
    weights = []

    def evaluate(epoch):
        weights.append(m.lin.weight.detach().clone())
        return {"auc": values[epoch]}

    res = eng.fit(make_loader(_Data(), 8, shuffle=True), 5, evaluate=evaluate, monitor="auc", mode="max")
    assert res.best_metric == pytest.approx(0.7) and res.best_epoch == 3
    assert [r["best_epoch"] for r in res.history] == [-1, 1, 1, 3, 3]
    assert torch.equal(res.best_state["lin.weight"], weights[3])  # a copy, not the live (later) weights


def test_without_monitor_the_last_epoch_is_kept():
    m, eng = _engine()
    res = eng.fit(make_loader(_Data(), 8, shuffle=True), 2)
    assert res.best_metric is None and res.best_epoch == 1
    assert torch.equal(res.best_state["lin.weight"], m.lin.weight.detach())


def test_scheduler_steps_once_per_epoch_in_fit_only():
    _, eng = _engine(scheduler_gamma=0.5)
    loader = make_loader(_Data(), 8, shuffle=True)
    eng.train_epoch(loader, 0)  # benchmarks and stage-1 loops call this directly: no schedule step
    assert eng.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    res = eng.fit(loader, 3)
    # each row's lr is the one its epoch trained with; the scheduler steps after the epoch (4 batches)
    assert [r["lr"] for r in res.history] == pytest.approx([0.05, 0.025, 0.0125])
    assert all(r["steps"] == 4 for r in res.history)
    assert eng.optimizer.param_groups[0]["lr"] == pytest.approx(0.00625)


def test_resume_restores_scheduler_and_selection(tmp_path):
    path = tmp_path / "last.pt"
    vals = iter([0.3, 0.9, 0.1, 0.2])
    _, eng = _engine(scheduler_gamma=0.5)
    eng.fit(make_loader(_Data(), 8, shuffle=True), 2, evaluate=lambda e: {"auc": next(vals)}, monitor="auc",
            resume_path=path)
    _, eng2 = _engine(scheduler_gamma=0.5)
    res = eng2.fit(make_loader(_Data(), 8, shuffle=True), 4, evaluate=lambda e: {"auc": next(vals)}, monitor="auc",
                   resume_path=path, patience=2)
    assert [r["lr"] for r in res.history] == pytest.approx([0.05, 0.025, 0.0125, 0.00625])
    assert res.best_epoch == 1 and res.best_metric == pytest.approx(0.9)
    assert res.stopped_early and res.epochs_run == 4  # epochs 2 and 3 do not beat the restored best: patience 2


def test_selection_modes_and_patience():
    state = {"w": torch.zeros(1)}
    s = Selection("min")
    assert [s.update(e, v, lambda: state) for e, v in enumerate([3.0, 2.0, 2.0, float("nan"), 1.0])] == \
        [True, True, False, False, True]
    assert s.best == 1.0 and s.best_epoch == 4 and s.bad_epochs == 0
    s.update(5, 4.0, lambda: state)
    assert s.bad_epochs == 1 and s.exhausted(1) and not s.exhausted(2) and not s.exhausted(None)
    with pytest.raises(ValueError, match="min or max"):
        Selection("best")


def test_fit_rejects_bad_mode_and_unknown_monitor():
    _, eng = _engine()
    loader = make_loader(_Data(), 8, shuffle=True)
    with pytest.raises(ValueError, match="min or max"):
        eng.fit(loader, 1, mode="lowest")
    with pytest.raises(KeyError, match="'auc'"):
        eng.fit(loader, 1, evaluate=lambda e: {"mse": 1.0}, monitor="auc")


def _steps_worker(rank: int, world: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world)
    try:
        loader = make_loader(_Data(6), 2, shuffle=True, seed=3, drop_last=True, num_samples=5 * 2)
        loader.sampler.set_epoch(1)
        torch.save([b["y"] for b in loader], f"{out}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_fixed_steps_per_epoch_under_ddp_shares_every_steps_batch(tmp_path):
    # train.steps_per_epoch under DDP: no error; rank r takes its half of each step's global batch, so 2 ranks at
    # batch 2 see, step by step, what one process sees at batch 4
    mp.start_processes(_steps_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    one = make_loader(_Data(6), 4, shuffle=True, seed=3, drop_last=True, num_samples=5 * 4)
    one.sampler.set_epoch(1)
    single = [b["y"] for b in one]
    assert len(r0) == len(r1) == len(single) == 5
    for a, b, s in zip(r0, r1, single):
        assert torch.equal(torch.cat([a, b]), s)
