"""One resolved run context: a run works out its device, precision and seeds once, and every step uses that one.

Spies record every context a run resolves, every engine it builds and every device a scoring pass is given; a run
that resolved the device again somewhere below (the old code did it four times in a fine-tune), or scored under
another precision than it trained with, fails here. Tasks get a :class:`TaskSetup`, never the whole config.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from transfer.api import TASKS, Task, TaskSetup, make_task
from transfer.cli import main
from transfer.config import Config
from transfer.engine import Engine
from transfer.precision import Precision
from transfer.runs.context import RunContext
from transfer.runs.seeding import rank_seed


@pytest.fixture
def spies(monkeypatch):
    """Every RunContext resolved, every engine's (device, precision), every device a task scores on."""
    seen: dict[str, list] = {"contexts": [], "engines": [], "scored_on": []}
    resolve = RunContext.resolve.__func__

    def spy_resolve(cls, *a, **k):
        ctx = resolve(cls, *a, **k)
        seen["contexts"].append(ctx)
        return ctx

    monkeypatch.setattr(RunContext, "resolve", classmethod(spy_resolve))
    init = Engine.__init__

    def spy_init(self, *a, **k):
        init(self, *a, **k)
        seen["engines"].append((self.device, self.precision))

    monkeypatch.setattr(Engine, "__init__", spy_init)
    cls = TASKS.get("classification")
    evaluate = cls.evaluate

    def spy_evaluate(self, model, dataset, device, *a, **k):
        seen["scored_on"].append((device, self.precision))
        return evaluate(self, model, dataset, device, *a, **k)

    monkeypatch.setattr(cls, "evaluate", spy_evaluate)
    return seen


def _finetune_args(tmp_path, tiny_npz, depth="head"):
    return ["finetune", "--name", "ctx", "--set", "backbone.name=tiny_resnet", "--set", "init=scratch",
            "--set", "backbone.in_chans=1", "--set", f"train.depth={depth}", "--set", "train.epochs=2",
            "--set", "train.auto_epochs=1", "--set", "train.batch_size=4", "--set", "train.max_steps=2",
            "--set", "data.format=npz", "--set", f"data.root={tiny_npz.parent}", "--set", "data.train=tiny.npz#train",
            "--set", "data.val=tiny.npz#val", "--set", "data.test=tiny.npz#test", "--set", "data.image_size=[32, 32]",
            "--set", "task.classification.bootstrap=20", "--set", f"tracking.out_dir={tmp_path / 'runs'}",
            "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false",
            "--set", "tracking.log_media=false", "--set", "seed=3"]


@pytest.mark.parametrize("depth", ["head", "auto"])
def test_a_finetune_resolves_one_context_and_trains_and_scores_under_it(tmp_path, tiny_npz, spies, depth):
    assert main(_finetune_args(tmp_path, tiny_npz, depth)) == 0
    assert len(spies["contexts"]) == 1  # once per run, whatever the number of fits (auto: one per depth)
    ctx = spies["contexts"][0]
    assert len(spies["engines"]) >= (2 if depth == "auto" else 1)
    assert all(dev == ctx.device and prec is ctx.precision for dev, prec in spies["engines"])
    # every validation of every epoch, the final validation and the test: on the context's device and precision
    assert len(spies["scored_on"]) >= 3
    assert all(dev == ctx.device and prec is ctx.precision for dev, prec in spies["scored_on"])
    s = json.loads((tmp_path / "runs" / "ctx" / "summary.json").read_text())
    assert s["device"] == str(ctx.device) and s["world_size"] == ctx.world_size == 1
    assert s["rank_seeds"] == ctx.rank_seeds == [3]


def test_the_summary_lists_the_stages_the_fit_trained(tmp_path, tiny_npz):
    assert main(_finetune_args(tmp_path, tiny_npz, "layer4-head")) == 0
    s = json.loads((tmp_path / "runs" / "ctx" / "summary.json").read_text())
    assert s["trainable_stages"] == ["layer4"]


def test_a_pretrain_resolves_one_context_and_trains_under_it(tmp_path, spies):
    d = tmp_path / "pool"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(d / f"{i}.png")
    args = ["pretrain", "--name", "p", "--set", "backbone.name=tiny_resnet", "--set", "init=scratch",
            "--set", "backbone.in_chans=1", "--set", "pretrain.method=simclr", "--set", "pretrain.epochs=1",
            "--set", "pretrain.warmup_epochs=0", "--set", "pretrain.batch_size=4", "--set", "pretrain.max_steps=1",
            "--set", f"data.root={tmp_path}", "--set", "pretrain.pool=pool", "--set", "data.image_size=[32, 32]",
            "--set", f"tracking.out_dir={tmp_path / 'runs'}", "--set", "tracking.wandb_mode=disabled",
            "--set", "tracking.progress=false"]
    assert main(args) == 0
    assert len(spies["contexts"]) == 1
    ctx = spies["contexts"][0]
    assert spies["engines"] == [(ctx.device, ctx.precision)]


def test_context_on_one_cpu_process():
    ctx = RunContext.resolve(Config().runtime, 5)
    assert ctx.device == torch.device("cpu") and ctx.precision == Precision()  # AMP and channels_last: CUDA only
    assert (ctx.rank, ctx.world_size, ctx.rank_seed, ctx.rank_seeds) == (0, 1, 5, [5])
    two = RunContext(ctx.device, ctx.precision, rank=1, world_size=2, seed=5)
    assert two.rank_seeds == [5, rank_seed(5, 1)] and two.rank_seed == rank_seed(5, 1) != 5


def test_a_task_gets_its_setup_not_the_config():
    cfg = Config()
    task = make_task(cfg)
    assert not hasattr(task, "cfg")
    assert task.setup == TaskSetup.from_config(cfg)
    assert task.options is task.setup.options and task.data is cfg.data and task.seed == cfg.seed
    # a plug-in that still hands a whole Config gets it reduced at the door
    legacy = TASKS.get(cfg.task.name)(cfg)
    assert isinstance(legacy, Task) and legacy.setup == task.setup and not hasattr(legacy, "cfg")
