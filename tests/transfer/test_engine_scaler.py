"""The fp16 gradient scaler: valid for the declared torch range; a step it skips moves no schedule or momentum."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from transfer.engine import Engine

REPO = Path(__file__).resolve().parents[2]


def test_declared_torch_floor_has_the_amp_gradscaler_the_engine_builds():
    # Engine builds torch.amp.GradScaler("cuda") for fp16, which torch added in 2.3 (2.1 and 2.2 have only
    # torch.cuda.amp.GradScaler): a floor below 2.3 installs a torch on which every fp16 run fails at start
    text = (REPO / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=(\d+)\.(\d+)', text)
    assert floor is not None and (int(floor.group(1)), int(floor.group(2))) >= (2, 3)
    vision = re.search(r'"torchvision>=0\.(\d+)', text)
    assert vision is not None and int(vision.group(1)) >= 18  # torchvision 0.18 pairs with torch 2.3
    assert "any torch >= 2.3" in (REPO / "README.md").read_text()


class _OverflowingGradient(torch.autograd.Function):
    """Identity forward; backward multiplies by ``factor`` (inf: the overflow fp16 gradients meet)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = float(factor)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class _Momentum(nn.Module):
    """A finite loss whose gradient overflows on the batches with ``factor`` inf; counts the optimiser-step hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.hooks: list[float] = []

    def training_step(self, batch):
        y = _OverflowingGradient.apply(self.lin(batch["x"]), batch["factor"][0])
        return {"loss": y.pow(2).mean()}

    def after_optimizer_step(self, progress: float) -> None:
        self.hooks.append(progress)


def _batches(factors):
    return [{"x": torch.ones(2, 2), "factor": torch.full((2,), f)} for f in factors]


def _engine():
    torch.manual_seed(0)
    m = _Momentum()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    eng = Engine(m, opt, scheduler=torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5), progress=False)
    eng.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)  # what fp16 on CUDA gets, here on the CPU
    return m, opt, eng


def test_a_step_the_scaler_skips_moves_no_momentum_hook():
    m, _, eng = _engine()
    before = m.lin.weight.detach().clone()
    stats = eng.train_epoch(_batches([float("inf")]), 0, total_steps=3)
    assert stats.skipped_steps == 1 and m.hooks == [] and torch.equal(before, m.lin.weight)
    stats = eng.train_epoch(_batches([1.0, 1.0]), 1, total_steps=3, global_step=1)
    assert stats.skipped_steps == 0 and m.hooks == [2 / 3, 1.0] and not torch.equal(before, m.lin.weight)


def test_an_epoch_whose_every_step_was_skipped_does_not_advance_the_schedule():
    m, opt, eng = _engine()
    res = eng.fit(_batches([float("inf")]), 1)
    assert res.history[0]["skipped_steps"] == 1 and m.hooks == []
    assert opt.param_groups[0]["lr"] == 0.1  # it trained nothing: the per-epoch schedule stays
    eng.fit(_batches([1.0]), 1)  # one epoch that trained: one decay
    assert opt.param_groups[0]["lr"] == 0.05
