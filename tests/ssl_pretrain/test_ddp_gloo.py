"""Two gloo processes train SimCLR, MoCo and BYOL as the engine does under torchrun (DDP over the method's step).

The views are made deterministic (the image and its mirror) and BatchNorm uses its running statistics (eval mode),
so two ranks at batch 4 must compute exactly what one process computes at batch 8: the mean of the ranks' losses is
the one-process loss (SimCLR's negatives are every rank's views), and one SGD step leaves the one-process weights.
MoCo's queue is filled with the keys of both ranks, in rank order, and is the same on both ranks (so DDP's
broadcast of rank 0's buffers before each forward overwrites nothing), as one process's queue at batch 8.
"""
from __future__ import annotations

import multiprocessing as mp
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork start method")

B, STEPS = 4, 3


class _Mirror(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x.flip(-1)


def _method(name: str):
    from transfer.api import PRETRAIN_METHODS
    from transfer.config import PretrainConfig
    from transfer.config.io import from_dict
    from transfer.weights import build_backbone

    torch.manual_seed(0)
    backbone, _ = build_backbone("tiny_resnet", "scratch", in_chans=1)
    cls = PRETRAIN_METHODS.get(name)
    opts = from_dict(PretrainConfig, {"method": name, "contrastive": {"queue_size": 64}}).section(cls.config_section)
    m = cls.from_config(backbone, opts, (32, 32))
    m.augment = _Mirror()  # deterministic views: the same in one process and split over two
    m.eval()  # BatchNorm from running statistics: a sample's features do not depend on its batch
    return m


def _images() -> torch.Tensor:
    return torch.rand(STEPS, 2 * B, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def _train(name: str, rank: int, world: int, out: Path, store: Path | None) -> None:
    torch.set_num_threads(1)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    from transfer.engine import _StepForward

    m = _method(name)
    enqueued: list[torch.Tensor] = []
    if name == "moco":
        bank = m.criterion.memory_bank
        real = bank._dequeue_and_enqueue
        bank._dequeue_and_enqueue = lambda batch: (enqueued.append(batch.detach().clone()), real(batch))[1]
    step = _StepForward(m)
    if world > 1:
        step = torch.nn.parallel.DistributedDataParallel(step)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for s, x in enumerate(_images()):
        local = x[rank * B:(rank + 1) * B] if world > 1 else x
        loss = step({"image": local})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_optimizer_step(0.5)
        losses.append(loss.item())
    state = {"losses": losses, "weights": {k: v.clone() for k, v in m.encoder.state_dict().items()},
             "enqueued": enqueued}
    if name == "moco":
        state["queue"], state["ptr"] = m.criterion.memory_bank.bank.clone(), int(m.criterion.memory_bank.bank_ptr)
    torch.save(state, out / f"{name}-{world}-{rank}.pt")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["simclr", "moco", "byol"])
def test_two_gloo_ranks_train_as_one_process_at_the_global_batch(tmp_path, name):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_train, args=(name, r, 2, tmp_path, tmp_path / "store")) for r in range(2)]
    for p in procs:
        p.start()
    _train(name, 0, 1, tmp_path, None)  # the one-process reference, meanwhile
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0, f"rank exited with {p.exitcode}"
    one = torch.load(tmp_path / f"{name}-1-0.pt", weights_only=True)
    r0, r1 = (torch.load(tmp_path / f"{name}-2-{r}.pt", weights_only=True) for r in range(2))
    for k, v in r0["weights"].items():
        assert torch.equal(v, r1["weights"][k]), k  # DDP: the ranks agree
    for s in range(STEPS):
        assert (r0["losses"][s] + r1["losses"][s]) / 2 == pytest.approx(one["losses"][s], rel=1e-5, abs=1e-6), s
    for k, v in one["weights"].items():
        assert torch.allclose(v, r0["weights"][k], rtol=1e-4, atol=1e-6), k
    if name != "moco":
        return
    # the queue: 2 ranks x B keys a step, rank 0's then rank 1's, the same on both ranks
    assert r0["ptr"] == r1["ptr"] == STEPS * 2 * B and one["ptr"] == STEPS * 2 * B
    assert torch.equal(r0["queue"], r1["queue"])
    for s in range(STEPS):
        for r, mine in enumerate((r0, r1)):
            rows = r0["queue"][s * 2 * B + r * B: s * 2 * B + (r + 1) * B]
            assert torch.equal(rows, mine["enqueued"][s]), (s, r)
    # step 0's keys are the one-process keys (the same weights, the same images)
    assert torch.allclose(torch.cat([r0["enqueued"][0], r1["enqueued"][0]]), one["enqueued"][0], atol=1e-6)
