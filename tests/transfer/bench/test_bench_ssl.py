"""``medtransfer bench ssl`` end to end on a tiny labelled pool: starting points probed, each (method, init) trained
as a resumable pretrain run, the table rebuilt from the run directories, a rerun reading everything back."""
from __future__ import annotations

import json

from transfer.bench.ssl import probe_noise
from transfer.cli import main


def _args(tiny_npz, tmp_path, *extra: str) -> list[str]:
    return ["bench", "ssl", "--out", str(tmp_path / "bench"), "--methods", "simclr", "byol", "--inits", "scratch",
            "--set", "backbone.name=tiny_resnet", "--set", "backbone.in_chans=1", "--set", "pretrain.epochs=2",
            "--set", "pretrain.warmup_epochs=0", "--set", "pretrain.batch_size=8", "--set", "pretrain.max_steps=2",
            "--set", "data.format=npz", "--set", f"data.root={tiny_npz.parent}", "--set", "data.train=tiny.npz#train",
            "--set", "pretrain.pool=tiny.npz#train", "--set", "pretrain.pool_format=labelled",
            "--set", "pretrain.monitor_every=1", "--set", "pretrain.monitor_data=tiny.npz#val",
            "--set", "data.image_size=[32, 32]", "--set", "tracking.wandb_mode=disabled",
            "--set", "tracking.progress=false", *extra]


def test_bench_ssl_probes_starts_trains_methods_and_reads_back(tiny_npz, tmp_path, capsys):
    report = tmp_path / "reports" / "ssl.md"
    assert main(_args(tiny_npz, tmp_path, "--report", str(report))) == 0
    out = capsys.readouterr().out
    assert "scratch weights, before stage 1: linear_probe_acc" in out
    assert "  simclr from scratch : linear probe" in out and "    byol from scratch : linear probe" in out
    res = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert set(res["baselines"]) == {"scratch"}
    rows = {r["method"]: r for r in res["results"]}
    assert set(rows) == {"simclr", "byol"}
    for r in rows.values():
        assert r["epochs"] == 2 and 0 <= r["linear_probe_acc"] <= 1 and r["cpu_minutes"] > 0
        assert r["linear_gain"] == r["linear_probe_acc"] - res["baselines"]["scratch"]["linear_probe_acc"]
        assert r["embedding_std"] >= 0 and r["effective_rank"] >= 1
    assert len(res["curves"]) == 4  # 2 methods x 2 probes
    assert res["pending"] == []
    text = report.read_text()
    assert "## Starting points (no stage 1)" in text and "## After stage 1" in text and "| byol | scratch |" in text
    assert "## The known answer" in text and "![ssl_curves](ssl_curves.png)" in text
    assert res["baselines"]["scratch"]["n_images"] == 12  # the probe's images: tiny.npz#val
    chosen = sorted(rows, key=lambda m: (rows[m]["linear_probe_acc"], rows[m]["knn_acc"]), reverse=True)
    assert f"- from scratch: `pretrain:{chosen[0]}@scratch`, `pretrain:{chosen[1]}@scratch`" in text
    assert (report.parent / "ssl_curves.png").stat().st_size > 0
    assert all(isinstance(r["meets_target"], bool) for r in rows.values())
    summary = tmp_path / "bench" / "runs" / "simclr-scratch" / "summary.json"
    before = summary.stat().st_mtime_ns
    assert main(_args(tiny_npz, tmp_path)) == 0  # finished runs and baselines are read back, not trained again
    assert summary.stat().st_mtime_ns == before
    assert "scratch weights, before stage 1" not in capsys.readouterr().out


def test_bench_ssl_without_a_probe_is_one_line(tiny_npz, tmp_path, capsys):
    assert main(_args(tiny_npz, tmp_path, "--set", "pretrain.monitor_every=0")) != 0
    err = capsys.readouterr().err
    assert "bench ssl needs the probe" in err and "Traceback" not in err


def test_the_report_reads_the_target_against_the_probes_sampling_error():
    """524 validation images at 0.912: binomial SE sqrt(0.912 * 0.088 / 524) = 0.0124, a 3-point gain 2.4 SE; the
    mean of the starting points' accuracies is the one read, and a perfect probe has no spread to state."""
    two = {"scratch": {"n_images": 524, "linear_probe_acc": 0.902}, "imagenet": {"n_images": 524, "linear_probe_acc": 0.922}}
    text = probe_noise({"baselines": two})
    assert "524 images at accuracy 0.912 give a binomial standard error of 0.012, so a 3-point gain is 2.4 SE" in text
    assert probe_noise({"baselines": {"scratch": {"n_images": 12, "linear_probe_acc": 1.0}}}) == ""
    assert probe_noise({"baselines": {"scratch": {"linear_probe_acc": 0.9}}}) == ""  # probed before counts were kept


def test_the_known_answer_test_per_starting_point():
    from transfer.bench.ssl import meets_target

    def row(init, gain, minutes=10.0):
        return {"init": init, "linear_gain": gain, "cpu_minutes_to_kept": minutes}

    assert meets_target(row("scratch", 0.031)) and meets_target(row("scratch", 0.03))
    assert not meets_target(row("scratch", 0.029))  # a gain, but less than the 3 points asked
    assert not meets_target(row("scratch", 0.05, minutes=61))  # the gain came after the CPU budget
    assert meets_target(row("imagenet", -0.009)) and meets_target(row("imagenet", 0.02))
    assert not meets_target(row("imagenet", -0.011))  # more than a point below ImageNet
    assert meets_target(row("runs/x/backbone.pt", 0.1)) is None and meets_target(row("scratch", None)) is None


def test_the_verdict_takes_the_two_best_validation_probes_per_start_once_every_method_finished():
    from transfer.bench.ssl import best_methods

    def row(method, init, linear, knn=0.5):
        return {"method": method, "init": init, "linear_probe_acc": linear, "knn_acc": knn}

    result = {"results": [row("simclr", "scratch", 0.93), row("moco", "scratch", 0.95), row("byol", "scratch", 0.93, 0.9),
                          row("cae", "imagenet", 0.91), row("moco", "imagenet", 0.96)],
              "pending": ["augpred from imagenet"]}
    # byol beats simclr on the kNN tie-break; imagenet waits for its pending run
    assert best_methods(result) == {"scratch": ["moco", "byol"]}
    assert best_methods({**result, "pending": []}) == {"scratch": ["moco", "byol"], "imagenet": ["moco", "cae"]}


def test_bench_ssl_lists_the_runs_not_finished_yet(tiny_npz, tmp_path):
    assert main(_args(tiny_npz, tmp_path, "--methods", "simclr")) == 0
    from transfer.bench.ssl import collect

    res = collect(tmp_path / "bench", ("simclr", "byol"), ("scratch",), {})
    assert res["pending"] == ["byol from scratch"] and [r["method"] for r in res["results"]] == ["simclr"]


def test_bench_ssl_report_only_trains_nothing(tiny_npz, tmp_path, capsys):
    assert main(_args(tiny_npz, tmp_path, "--methods", "simclr")) == 0
    report = tmp_path / "only.md"
    assert main(_args(tiny_npz, tmp_path, "--report-only", "--report", str(report))) == 0
    assert not (tmp_path / "bench" / "runs" / "byol-scratch").exists()  # listed, not trained
    text = report.read_text()
    assert "| simclr | scratch |" in text and "**Not finished yet**" in text and "byol from scratch" in text
