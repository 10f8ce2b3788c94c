"""Resume, in process: the engine's exact continuation, the config fingerprint, unreadable states, finished runs.

(The kill -9 tests through the CLI are in ``test_resume_kill.py``.)
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

import transfer.runs.finetune as finetune_run
from transfer.cli import main
from transfer.engine import (Engine, EpochRandomSampler, ResumeStateError, config_changes, epoch_seed, make_loader,
                             read_resume_state)
from transfer.tracking import UNTRACKED_KEYS, config_fingerprint, training_config


class _Data(Dataset):
    def __init__(self, n: int = 24) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class _Noisy(nn.Module):
    """Draws from every RNG in each step (as augmentations do), so a resume that loses one diverges."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def training_step(self, batch):
        x = batch["x"] + 0.1 * torch.randn_like(batch["x"]) + 0.01 * (random.random() + np.random.rand())
        return {"loss": ((self.lin(x).squeeze(1) - batch["y"]) ** 2).mean()}

    def after_optimizer_step(self, progress: float) -> None:
        pass


def _fit(path, epochs, config=None, on_start=None):
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # as a run does (seed_everything)
    m = _Noisy()
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    eng = Engine(m, opt, scheduler=torch.optim.lr_scheduler.ExponentialLR(opt, 0.9), progress=False)
    val = _Data(8)

    def evaluate(epoch):
        with torch.no_grad():
            return {"mse": float(((m.lin(val.x).squeeze(1) - val.y) ** 2).mean())}

    res = eng.fit(make_loader(_Data(), 4, shuffle=True, seed=5), epochs, evaluate=evaluate, monitor="mse", mode="min",
                  resume_path=path, resume_config=config, on_start=on_start)
    return m, res


def _strip(rows):
    timing = ("images_per_s", "data_wait_share", "epoch_seconds", "epoch_cpu_seconds")
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


def test_engine_resume_equals_uninterrupted_fit(tmp_path):
    m_ref, ref = _fit(tmp_path / "ref.pt", 5)
    _fit(tmp_path / "cut.pt", 2)  # "killed" after epoch 1: its state is saved after every epoch
    random.seed(123), np.random.seed(123), torch.manual_seed(123)  # a new process starts from other RNG states
    starts = []
    m_cut, cut = _fit(tmp_path / "cut.pt", 5, on_start=lambda h: starts.append(len(h)))
    assert starts == [2] and cut.resumed_from == 2 and ref.resumed_from is None
    assert _strip(cut.history) == _strip(ref.history)
    assert torch.equal(m_cut.lin.weight, m_ref.lin.weight) and cut.best_epoch == ref.best_epoch


def test_epoch_shuffle_depends_on_seed_and_epoch_only():
    s = EpochRandomSampler(10, seed=3)
    s.set_epoch(4)
    a = list(s)
    fresh = EpochRandomSampler(10, seed=3)
    fresh.set_epoch(4)
    assert list(fresh) == a and sorted(a) == list(range(10))
    fresh.set_epoch(5)
    assert list(fresh) != a
    assert list(EpochRandomSampler(10, seed=3)) != list(EpochRandomSampler(10, seed=4))
    assert epoch_seed(3, 4) != epoch_seed(4, 3)
    loader = make_loader(_Data(8), 4, shuffle=True, seed=3)
    assert isinstance(loader.sampler, EpochRandomSampler)


def test_engine_refuses_a_state_from_another_config(tmp_path):
    _fit(tmp_path / "s.pt", 1, config={"train.lr": 0.01, "seed": 0})
    with pytest.raises(ResumeStateError, match=r"train\.lr: 0\.01 -> 0\.05.*--restart.*--name"):
        _fit(tmp_path / "s.pt", 2, config={"train.lr": 0.05, "seed": 0})
    _, res = _fit(tmp_path / "s.pt", 2, config={"train.lr": 0.01, "seed": 0})
    assert res.resumed_from == 1


def test_fingerprint_keys_and_changes():
    from transfer.config import Config, to_dict

    flat = training_config(to_dict(Config()), "finetune")
    assert "train.lr" in flat and "seed" in flat and "runtime.amp" in flat and "data.image_size" in flat
    assert not any(k.startswith(("tracking.", "study.", "pretrain.")) for k in flat)
    assert "runtime.device" not in flat and "data.num_workers" not in flat
    pre = training_config(to_dict(Config()), "pretrain")
    assert "pretrain.lr" in pre and not any(k.startswith(("train.", "task.")) for k in pre)
    assert "tracking" in UNTRACKED_KEYS
    assert config_fingerprint({"a": 1, "b": [1, 2]}) == config_fingerprint({"b": [1, 2], "a": 1})
    assert config_changes({"a": 1, "b": "x"}, {"a": 1, "b": "y", "c": 2}) == ['b: "x" -> "y"', "c: <absent> -> 2"]


def _args(tmp_path, npz, *extra):
    return ["finetune", "--name", "r", "--set", "backbone.name=tiny_resnet", "--set", "init=scratch",
            "--set", "backbone.in_chans=1", "--set", "train.epochs=2", "--set", "train.max_steps=2",
            "--set", "train.batch_size=4", "--set", "train.lr=0.01", "--set", "data.format=npz",
            "--set", f"data.root={npz.parent}", "--set", "data.train=tiny.npz#train", "--set", "data.val=tiny.npz#val",
            "--set", "data.test=tiny.npz#test", "--set", "data.image_size=[32, 32]",
            "--set", "task.classification.bootstrap=20", "--set", f"tracking.out_dir={tmp_path / 'runs'}",
            "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false",
            "--set", "tracking.log_media=false", *extra]


@pytest.fixture
def interrupted(tmp_path, tiny_npz, monkeypatch):
    """A run stopped after its last epoch's resume state, before scoring: ``last.pt`` and metrics, no summary."""
    def killed(*a, **k):
        raise RuntimeError("killed")

    with monkeypatch.context() as mp:
        mp.setattr(finetune_run, "_score", killed)
        with pytest.raises(RuntimeError, match="killed"):
            main(_args(tmp_path, tiny_npz))
    run = tmp_path / "runs" / "r"
    assert (run / "last.pt").is_file() and not (run / "summary.json").exists()
    return run


def _all_rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_changed_config_is_refused_naming_the_keys_then_restart(tmp_path, tiny_npz, interrupted, capsys):
    run = interrupted
    config_before = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(_args(tmp_path, tiny_npz, "--set", "train.lr=0.05", "--set", "train.optimizer=adamw")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "last.pt" in err and "train.lr: 0.01 -> 0.05" in err and 'train.optimizer: "sgd" -> "adamw"' in err
    assert "--restart" in err and "--name" in err
    assert (run / "config.yaml").read_text() == config_before  # a refused start writes nothing
    # presentation keys are not part of the fingerprint: the same run resumes (nothing left to train) and scores
    assert main(_args(tmp_path, tiny_npz, "--set", "tracking.log_media=true")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_epoch"] == 2 and [r["epoch"] for r in _rows(run)] == [0, 1]
    # --restart with the new rate: the finished run is discarded and trained again from epoch 0
    assert main(_args(tmp_path, tiny_npz, "--set", "train.lr=0.05", "--restart")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_epoch"] is None and [r["epoch"] for r in _rows(run)] == [0, 1]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.05
    assert not list(run.glob("last*.pt"))


def test_a_resumed_run_counts_the_time_of_the_epochs_it_restored(tmp_path, tiny_npz, interrupted):
    """Seconds and CPU seconds cover the whole run: this process's clocks plus the restored epochs' own."""
    assert main(_args(tmp_path, tiny_npz)) == 0
    s = json.loads((interrupted / "summary.json").read_text())
    rows = _all_rows(interrupted)
    assert s["resumed_from_epoch"] == 2 and s["cost"] == "measured"
    assert all(r["epoch_seconds"] > 0 and r["epoch_cpu_seconds"] >= 0 for r in rows)
    assert s["seconds"] == pytest.approx(s["seconds_this_process"] + sum(r["epoch_seconds"] for r in rows), abs=0.11)
    assert s["cpu_seconds"] == pytest.approx(s["cpu_seconds_this_process"] + sum(r["epoch_cpu_seconds"] for r in rows),
                                             abs=0.11)


def test_run_cost_extrapolates_restored_epochs_that_carry_no_clock():
    from transfer.runs.timing import run_cost

    timed = [{"epoch": e, "epoch_seconds": 10.0, "epoch_cpu_seconds": 8.0} for e in range(4)]
    assert run_cost(timed, None, 50.0, 40.0)["seconds"] == 50.0  # trained here from the start
    c = run_cost(timed, 2, 25.0, 20.0)  # epochs 0-1 restored with their clocks
    assert (c["seconds"], c["cpu_seconds"], c["cost"]) == (45.0, 36.0, "measured")
    old = [{"epoch": e} for e in range(2)] + timed[2:]  # a resume state written before rows were timed
    c = run_cost(old, 2, 25.0, 20.0)
    assert (c["seconds"], c["cpu_seconds"], c["cost"]) == (50.0, 40.0, "extrapolated")
    assert c["seconds_this_process"] == 25.0
    assert run_cost([{"epoch": 0}, {"epoch": 1}], 2, 3.0, 2.0)["cost"] == "this process"  # nothing trained here


def test_truncated_resume_state_is_a_clear_error(tmp_path, tiny_npz, interrupted, capsys):
    last = interrupted / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(ResumeStateError, match="cannot be read"):
        read_resume_state(last)
    capsys.readouterr()
    assert main(_args(tmp_path, tiny_npz)) == 2
    err = capsys.readouterr().err
    assert str(last) in err and "--restart" in err and "Traceback" not in err and "PytorchStreamReader" not in err
    assert main(_args(tmp_path, tiny_npz, "--restart")) == 0
    assert [r["epoch"] for r in _rows(interrupted)] == [0, 1]


def test_rerun_of_a_finished_run_trains_nothing(tmp_path, tiny_npz, capsys):
    assert main(_args(tmp_path, tiny_npz)) == 0
    run = tmp_path / "runs" / "r"
    files = {f: (run / f).read_bytes() for f in ("metrics.jsonl", "summary.json", "config.yaml", "model.pt")}
    capsys.readouterr()
    assert main(_args(tmp_path, tiny_npz)) == 0
    out = capsys.readouterr().out
    assert "already complete" in out and "--restart" in out
    assert {f: (run / f).read_bytes() for f in files} == files  # no second epoch 0, nothing rewritten
    assert [r["epoch"] for r in _rows(run)] == [0, 1]
    # the finished run's results are not those of another training config: refused, naming the key
    assert main(_args(tmp_path, tiny_npz, "--set", "train.lr=0.05")) == 2
    err = capsys.readouterr().err
    assert "finished run of another config" in err and "train.lr: 0.01 -> 0.05" in err and "--restart" in err
    assert main(_args(tmp_path, tiny_npz, "--set", "tracking.progress=true")) == 0  # presentation only: complete
    assert {f: (run / f).read_bytes() for f in files} == files


def test_pretrain_rerun_and_config_change(tmp_path, capsys):
    from tests.transfer.test_pretrain_cli import _args as pre_args
    from tests.transfer.test_pretrain_cli import _pool

    _pool(tmp_path)
    assert main(pre_args(tmp_path, "cae")) == 0
    run = tmp_path / "runs" / "cae"
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(pre_args(tmp_path, "cae")) == 0
    assert "already complete" in capsys.readouterr().out and (run / "metrics.jsonl").read_text() == before
    # a leftover state written with another rate is refused before anything is written
    state = {"history": [], "epoch": 0, "config": {"pretrain.lr": 0.5}, "config_fingerprint": "x"}
    torch.save(state, run / "last.pt")
    (run / "summary.json").unlink()
    assert main(pre_args(tmp_path, "cae")) == 2
    err = capsys.readouterr().err
    assert "pretrain.lr: 0.5 -> 0.001" in err and "--restart" in err
    assert main([*pre_args(tmp_path, "cae"), "--restart"]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["resumed_from_epoch"] is None and len(_rows(run)) == 2 and not (run / "last.pt").exists()


def test_moco_queue_is_extra_state_not_in_the_encoder():
    from ssl_pretrain.config import ContrastiveConfig
    from ssl_pretrain.moco import MoCo
    from transfer.weights import build_backbone

    def make():
        torch.manual_seed(0)
        bb, _ = build_backbone("tiny_resnet", "scratch", in_chans=1)
        return MoCo(bb, ContrastiveConfig(queue_size=8, proj_dim=16), (32, 32))

    m = make()
    m.criterion.memory_bank.bank.normal_()
    m.criterion.memory_bank.bank_ptr.fill_(4)
    m.current_momentum = 0.97
    sd = m.state_dict()
    assert "_extra_state" in sd and not any("extra_state" in k for k in m.encoder.state_dict())
    m2 = make()
    m2.load_state_dict(sd)
    assert torch.equal(m2.criterion.memory_bank.bank, m.criterion.memory_bank.bank)
    assert int(m2.criterion.memory_bank.bank_ptr) == 4 and m2.current_momentum == 0.97


def test_auto_depth_interrupted_mid_search_resumes_to_the_same_result(tmp_path, tiny_npz, monkeypatch):
    """``depth: auto`` keeps one resume state per depth; stopped right after the 3rd saved epoch (in the second
    depth) and started again, it ends with the rows, curve and scores of an uninterrupted search."""
    from transfer.engine import Engine as _Engine

    # patience 1 of 3 epochs: a depth that stopped early must not train on after the restart
    extra = ["--set", "train.depth=auto", "--set", "train.auto_epochs=3", "--set", "train.patience=1",
             "--set", "data.augment.hflip=true"]
    ref_args = [*_args(tmp_path / "ref", tiny_npz, *extra)]
    assert main(ref_args) == 0
    save = _Engine._save_resume
    calls = []

    def save_then_die(self, *a, **k):
        save(self, *a, **k)
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")

    cut_args = _args(tmp_path / "cut", tiny_npz, *extra)
    with monkeypatch.context() as mp:
        mp.setattr(_Engine, "_save_resume", save_then_die)
        with pytest.raises(RuntimeError, match="killed"):
            main(cut_args)
    cut = tmp_path / "cut" / "runs" / "r"
    assert len(list(cut.glob("last*.pt"))) >= 1 and not (cut / "summary.json").exists()
    assert main(cut_args) == 0
    ref = tmp_path / "ref" / "runs" / "r"
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, cut))
    assert b["resumed_from_epoch"] is not None and b["resumed_at_depth"] and a["resumed_from_epoch"] is None
    assert _strip(_rows(cut)) == _strip(_rows(ref))
    assert a["depth_curve"] == b["depth_curve"] and a["test"]["roc_auc"] == b["test"]["roc_auc"]


def test_grad_scaler_state_is_restored(tmp_path):
    """The fp16 gradient scaler (CUDA in real runs; torch's CPU scaler here) continues with its scale and counters."""
    def engine():
        torch.manual_seed(0)
        m = _Noisy()
        eng = Engine(m, torch.optim.SGD(m.parameters(), lr=0.01), progress=False)
        eng.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
        return eng

    a = engine()
    a.fit(make_loader(_Data(), 4, shuffle=True), 2, resume_path=tmp_path / "s.pt")
    b = engine()
    b.fit(make_loader(_Data(), 4, shuffle=True), 2, resume_path=tmp_path / "s.pt")  # restored, nothing to train
    assert b.scaler.state_dict() == a.scaler.state_dict() and a.scaler.get_scale() != 2.0**8
