"""The study directory: manifest, restart after a kill, a changed config, shards, dry run, report rebuilt from disk."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from transfer.cli import main

REPO = Path(__file__).resolve().parents[3]
#: result columns that are wall-clock measurements, not results
TIMING = ("seconds", "test_seconds_per_image", "train_minutes", "peak_memory_gib")


def _ckpt(tmp_path: Path) -> Path:
    import torch

    from transfer.weights import backbone_checkpoint, build_backbone

    bb, _ = build_backbone("tiny_resnet", "scratch", in_chans=1)
    path = tmp_path / "ssl" / "backbone.pt"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        torch.save(backbone_checkpoint(bb, {"method": "test"}), path)
    return path


def study_args(tmp_path: Path, tiny_npz: Path, out: Path, *extra: str) -> list[str]:
    """A tiny 8-cell study: two inits x one depth x two label fractions x two seeds."""
    sets = ["backbone.name=tiny_resnet", "backbone.in_chans=1", "data.format=npz", f"data.root={tiny_npz.parent}",
            "data.train=tiny.npz#train", "data.val=tiny.npz#val", "data.test=tiny.npz#test",
            "data.image_size=[32, 32]", "train.epochs=2", "train.max_steps=2", "train.batch_size=4",
            "tracking.wandb_mode=disabled", "tracking.progress=false", "runtime.device=cpu",
            "task.classification.bootstrap=10", f"study.out_dir={out}", "study.name=t",
            f"study.inits=[scratch, {_ckpt(tmp_path)}]", "study.depths=[all]", "study.label_fractions=[0.5, 1.0]",
            "study.seeds=[0, 1]", *extra]
    return ["study", *[x for s in sets for x in ("--set", s)]]


def tables(root: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for name in ("results", "aggregate", "comparisons", "label_efficiency", "comparisons_within_seeds"):
        df = pd.read_csv(root / f"{name}.csv")
        out[name] = df.drop(columns=[c for c in TIMING if c in df.columns])
    return out


def assert_same_tables(a: Path, b: Path) -> None:
    ta, tb = tables(a), tables(b)
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=False, rtol=1e-6, obj=name)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "MEDTRANSFER_CACHE": str(tmp_path / "cache"),
           "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_killed_study_restarts_without_redoing_cells_and_equals_an_uninterrupted_one(tmp_path, tiny_npz, capsys):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main(study_args(tmp_path, tiny_npz, ref)) == 0
    log = open(tmp_path / "cut.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "transfer.cli", *study_args(tmp_path, tiny_npz, cut)], cwd=REPO,
                            env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    runs = cut / "t" / "runs"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(runs.glob("*/model.pt"))) < 2:
        assert proc.poll() is None, (tmp_path / "cut.log").read_text()[-2000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/summary.json") if (p.parent / "model.pt").is_file()}
    assert 2 <= len(finished) < 8
    capsys.readouterr()
    assert main(study_args(tmp_path, tiny_npz, cut)) == 0
    out = capsys.readouterr().out
    assert out.count("done earlier") == len(finished)
    assert {n: (runs / n / "summary.json").stat().st_mtime_ns for n in finished} == finished  # never redone
    assert_same_tables(ref / "t", cut / "t")


def test_changed_config_is_explained_with_the_cells_it_touches(tmp_path, tiny_npz, capsys):
    out = tmp_path / "s"
    base = study_args(tmp_path, tiny_npz, out, "study.label_fractions=[1.0]")
    args = base + ["--set", "study.seeds=[0]"]
    assert main(args) == 0
    manifest = (out / "t" / "manifest.json").read_text()
    assert '"fingerprint"' in manifest and '"cells"' in manifest
    capsys.readouterr()
    assert main(args + ["--set", "train.lr=0.05"]) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "train.lr" in err and "2 finished cell(s)" in err
    assert "scratch-all-frac1-seed0" in err and "Traceback" not in err
    # where and how it runs is not the config: more seeds (a bigger grid) run beside the finished cells
    assert main(base + ["--set", "tracking.progress=true"]) == 0
    assert len(pd.read_csv(out / "t" / "results.csv")) == 4


def test_shards_merge_into_the_tables_of_one_process(tmp_path, tiny_npz, capsys):
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    assert main(study_args(tmp_path, tiny_npz, one)) == 0
    assert main(study_args(tmp_path, tiny_npz, sharded) + ["--shard", "1/3"]) == 0
    assert "not finished yet" in capsys.readouterr().out
    assert "Incomplete study" in (sharded / "t" / "report.md").read_text()
    for i in (2, 3):
        assert main(study_args(tmp_path, tiny_npz, sharded) + ["--shard", f"{i}/3"]) == 0
    assert_same_tables(one / "t", sharded / "t")
    assert main(["study", "--shard", "4/3"]) == 2


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, tiny_npz, capsys):
    out = tmp_path / "s"
    args = study_args(tmp_path, tiny_npz, out, "study.seeds=[0]", "study.label_fractions=[1.0]")
    assert main(args + ["--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.count(": run") == 2 and "timing probe" in text and "estimated compute" in text
    assert not (out / "t" / "runs").exists() and not (out / "t" / "manifest.json").exists()
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--set", "study.seeds=[0, 1]", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.count(": reuse") == 2 and text.count(": run") == 2 and "median of 2 finished cells" in text


def test_report_rebuilds_tables_and_html_from_run_directories(tmp_path, tiny_npz, capsys):
    out = tmp_path / "s"
    assert main(study_args(tmp_path, tiny_npz, out)) == 0
    root = out / "t"
    before = tables(root)
    for f in [*root.glob("*.csv"), *root.glob("report*")]:
        f.unlink()
    assert main(["report", str(root)]) == 0
    for name, df in tables(root).items():
        pd.testing.assert_frame_equal(df, before[name], obj=name)
    html = (root / "report.html").read_text()
    md = (root / "report.md").read_text()
    # every table and plot the report promises is in the page, plots embedded (no file or network reference)
    for heading in ("Results on the test split", "95% interval over seeds", "Paired comparisons", "Label efficiency",
                    "Within each seed, on the test images", "Plots", "Per-class recall on the test split", "Runs"):
        assert heading in md and heading in html
    assert html.count("<h2>") == md.count("\n## ") and html.count("<h3>") == md.count("\n### ")
    assert md.count("\n|---") == html.count("<table>")
    plots = [line for line in md.splitlines() if line.startswith("![")]
    assert len(plots) >= 5 and html.count('src="data:image/png;base64,') == len(plots)
    assert "report_convergence" in html and "report_roc" in html and "report_fraction" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "Wilcoxon signed-rank, exact" in md and "cannot give a two-sided p below 0.5 (2/2^2), so no comparison here can reach p < 0.05" in md
    with pytest.raises(SystemExit):
        main(["report"])
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no study manifest" in capsys.readouterr().err


def test_a_stage1_init_names_its_method_and_its_starting_point():
    from transfer.errors import MedTransferError
    from transfer.studies.cells import StageOne, init_label, stage_one

    assert stage_one("pretrain:simclr") == StageOne("simclr") and init_label("pretrain:simclr") == "simclr"
    assert stage_one("pretrain:simclr@scratch") == StageOne("simclr", "scratch")
    assert init_label("pretrain:simclr@scratch") == "simclr-from-scratch"
    assert init_label("pretrain:byol@imagenet") == "byol-from-imagenet"
    assert stage_one("imagenet") is None and stage_one("runs/x/backbone.pt") is None
    for bad in ("pretrain:", "pretrain:simclr@", "pretrain:@scratch"):
        with pytest.raises(MedTransferError, match="pretrain:<method>@<source>"):
            stage_one(bad)


def test_a_study_pretrains_a_method_from_the_starting_point_its_init_names(tmp_path, tiny_npz, tiny_cae_study):
    """``pretrain:cae@scratch`` in a study whose ``init`` is another starting point: stage 1 starts from scratch
    (its own folder, its own arm), whatever the config's ``init`` says."""
    settings = tiny_cae_study(tiny_npz, tmp_path / "studies", "src", steps=1)
    settings = [s for s in settings if not s.startswith("study.inits=")] + [
        "study.inits=[scratch, 'pretrain:cae@scratch']", "init=imagenet"]
    args = ["study"] + [x for s in settings for x in ("--set", s)]
    assert main(args) == 0
    root = tmp_path / "studies" / "src"
    pre = json.loads((root / "pretrain" / "cae-from-scratch" / "summary.json").read_text())
    assert pre["init"] == "scratch" and pre["method"] == "cae"
    run = json.loads((root / "runs" / "cae-from-scratch-all-frac1-seed0" / "summary.json").read_text())
    assert run["init"].endswith("pretrain/cae-from-scratch/backbone.pt")


def test_a_study_refuses_a_stage1_checkpoint_of_another_pretrain_config(tmp_path, tiny_npz, tiny_cae_study, capsys):
    """A study whose pretrain section changed must not fine-tune from the old stage-1 checkpoint. With finished
    cells made from it, the manifest names them; with those cells deleted, the checkpoint itself is refused before
    any cell runs, naming the changed key and what to delete. The same config reads it back, untrained."""
    settings = tiny_cae_study(tiny_npz, tmp_path / "studies", "s", steps=1)
    args = ["study"] + [x for s in settings for x in ("--set", s)]
    root = tmp_path / "studies" / "s"
    assert main(args + ["--dry-run"]) == 0
    assert f"stage 1 cae: train ({root / 'pretrain' / 'cae'})" in capsys.readouterr().out
    assert main(args) == 0
    ckpt = root / "pretrain" / "cae" / "backbone.pt"
    trained = ckpt.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0 and ckpt.stat().st_mtime_ns == trained
    assert "pretraining cae" not in capsys.readouterr().out
    assert main(args + ["--dry-run"]) == 0 and "stage 1 cae: reuse" in capsys.readouterr().out
    changed = args + ["--set", "pretrain.lr=0.05"]
    assert main(changed) != 0
    err = capsys.readouterr().err
    assert "pretrain.lr" in err and "cae-all-frac1-seed0" in err and "Traceback" not in err
    shutil.rmtree(root / "runs" / "cae-all-frac1-seed0")
    assert main(changed) != 0
    err = capsys.readouterr().err
    assert "pretrain.lr" in err and "another config" in err and str(root / "pretrain" / "cae") in err
    assert "--restart" not in err and "Traceback" not in err
    assert main(changed + ["--dry-run"]) == 2 and "pretrain.lr" in capsys.readouterr().err  # the plan says so too
    assert ckpt.stat().st_mtime_ns == trained and not (root / "runs" / "cae-all-frac1-seed0").exists()
