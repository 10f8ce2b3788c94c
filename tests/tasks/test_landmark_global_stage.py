"""The global landmark stage end to end: stride-4 decoder heatmaps, local soft-argmax, confidence in predict."""
from __future__ import annotations

import json

import numpy as np
import pytest
import pandas as pd

from transfer.cli import main


def _finetune(name: str, runs, data_root, *settings: str) -> list[str]:
    """``medtransfer finetune`` of a decoder-head landmark model on the tiny landmark set, plus ``settings``."""
    fixed = ["backbone.name=tiny_efficientnet", "init=scratch", "backbone.in_chans=1", "train.max_steps=2",
             "train.batch_size=4", f"tracking.out_dir={runs}", "tracking.wandb_mode=disabled", "tracking.progress=false",
             "data.format=landmark_csv", f"data.root={data_root}", "data.train=train.csv", "data.test=test.csv",
             "data.image_dir=images", "task.name=landmarks", "task.landmarks.head=decoder",
             "task.landmarks.heatmap_weight=1.0", "task.landmarks.sigma_mm=0.5", "train.optimizer=adamw"]
    return ["finetune", "--name", name, *(a for kv in (*fixed, *settings) for a in ("--set", kv))]


def test_decoder_head_finetunes_and_predicts_with_confidence(tmp_path, tiny_landmarks, capsys):
    runs = tmp_path / "runs"
    args = _finetune("global", runs, tiny_landmarks, "train.epochs=2", "data.image_size=[64, 48]")
    assert main(args) == 0
    run = runs / "global"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["mre_mm"] > 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_heatmap"]) and r["train_heatmap"] > 0 for r in rows)  # the heatmap term trained
    test_imgs = [tiny_landmarks / "images" / f"{i:03d}.png" for i in (9, 10, 11)]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), *map(str, test_imgs), "--out", str(out)]) == 0
    pred = pd.read_csv(out)
    for col in ("1_x", "2_y", "1_confidence", "2_confidence", "mean_confidence", "flipped_confidence", "flag"):
        assert col in pred.columns, col
    conf = pred[["1_confidence", "2_confidence"]].to_numpy()
    assert ((conf > 0) & (conf <= 1)).all()
    test_pred = pd.read_csv(run / "predictions_test.csv")
    cols = ["1_x", "1_y", "2_x", "2_y"]
    assert np.allclose(pred[cols].to_numpy(), test_pred[cols].to_numpy(), atol=1e-3)


def test_global_plus_refinement_trains_both_stages_and_predicts_refined_coordinates(tmp_path, tiny_landmarks):
    runs = tmp_path / "runs"
    args = _finetune("two", runs, tiny_landmarks, "train.epochs=1", "data.image_size=[32, 24]",
                     "task.landmarks.refine=true", "task.landmarks.refine_image_size=[60, 48]",
                     "task.landmarks.refine_crop=16", "task.landmarks.refine_sigma_mm=0.2")
    assert main(args) == 0
    run = tmp_path / "runs" / "two"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_refine_euclidean"] > 0 and rows[0]["train_refine_heatmap"] > 0
    summary = json.loads((run / "summary.json").read_text())
    import torch

    state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("refine_stage.backbone.") for k in state)
    assert summary["test"]["mre_mm"] > 0 and summary["test"]["global_mre_mm"] > 0  # both stages scored
    # the refinement's own error, from crops centred on the truth: in the final scorings, not in every epoch's
    assert summary["test"]["refine_from_truth_mre_mm"] >= 0 and summary["val"]["refine_from_truth_mre_mm"] >= 0
    assert not any("refine_from_truth" in k for row in rows for k in row)
    out = tmp_path / "pred.csv"
    imgs = [tiny_landmarks / "images" / f"{i:03d}.png" for i in (9, 10, 11)]
    assert main(["predict", str(run), *map(str, imgs), "--out", str(out)]) == 0
    pred, test_pred = pd.read_csv(out), pd.read_csv(run / "predictions_test.csv")
    cols = ["1_x", "1_y", "2_x", "2_y"]
    assert np.allclose(pred[cols].to_numpy(), test_pred[cols].to_numpy(), atol=1e-3)


def test_the_depth_freezes_the_same_stages_of_both_stages_backbones():
    import copy

    import torch

    from tasks.landmarks.refine import RefinementStage
    from tasks.landmarks.task import LandmarkModel
    from transfer.backbones import get_entry
    from transfer.config import Config
    from transfer.runs.depth import setup_depth

    backbone = get_entry("tiny_efficientnet").build()
    refine = RefinementStage(copy.deepcopy(backbone), 2, crop=16, width=8)
    model = LandmarkModel(backbone, 2, head="decoder", hidden=8, dropout=0.0, heatmap_stage=None, heatmap_weight=1.0,
                          heatmap_sigma=1.0, augment=None, decoder_width=8, refine=refine)
    stages, opt, train_mode = setup_depth(model, Config(), "blocks5-head")
    assert stages == ["blocks5", "blocks6", "conv_head"]
    for bb in (model.backbone, refine.backbone):
        for stage, params in bb.stage_parameters().items():
            assert all(p.requires_grad == (stage in stages) for _, p in params), stage
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in optimised for p in refine.head.parameters())
    assert any(g["name"].startswith("refine.blocks5/") for g in opt.param_groups)
    train_mode()

    def bn_training(stage: str) -> set[bool]:
        view = refine.backbone.stages()[stage]
        return {m.training for m in view.modules() if isinstance(m, torch.nn.BatchNorm2d)}

    assert bn_training("blocks0") == {False} and bn_training("blocks6") == {True}


def test_refine_depth_trains_the_refinement_backbone_at_its_own_depth_beside_a_frozen_global_one():
    import copy

    import torch

    from tasks.landmarks.refine import RefinementStage
    from tasks.landmarks.task import LandmarkModel
    from transfer.backbones import get_entry
    from transfer.config import Config
    from transfer.runs.depth import setup_depth_stages

    backbone = get_entry("tiny_efficientnet").build()
    refine = RefinementStage(copy.deepcopy(backbone), 2, crop=16, width=8)
    model = LandmarkModel(backbone, 2, head="decoder", hidden=8, dropout=0.0, heatmap_stage=None, heatmap_weight=1.0,
                          heatmap_sigma=1.0, augment=None, decoder_width=8, refine=refine, refine_depth="all")
    stages, opt, train_mode, extra = setup_depth_stages(model, Config(), "head")
    assert stages == []
    assert extra["refine"] and extra["refine"][0] == "stem"  # from the bottom: every stage the decoder reads
    assert not any(p.requires_grad for p in model.backbone.parameters())
    trained = {stage for stage, params in refine.backbone.stage_parameters().items()
               if all(p.requires_grad for _, p in params)}
    assert trained == set(extra["refine"])
    train_mode()
    assert {m.training for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {False}
    assert {m.training for m in refine.backbone.stages()["stem"].modules()
            if isinstance(m, torch.nn.BatchNorm2d)} == {True}


def test_refine_depth_is_checked_and_reported(tmp_path, tiny_landmarks, capsys):
    import pytest

    from transfer.config import Config, load_config
    from transfer.config.io import ConfigError

    with pytest.raises(ConfigError, match="refine_depth: needs refine: true"):
        load_config(Config, None, ["task.name=landmarks", "task.landmarks.refine_depth=all"])
    runs = tmp_path / "runs"
    refine = ["task.landmarks.refine=true", "task.landmarks.refine_image_size=[60, 48]", "task.landmarks.refine_crop=16"]
    assert main(_finetune("bad", runs, tiny_landmarks, *refine, "task.landmarks.refine_depth=blocks9-head")) == 2
    assert "task.landmarks.refine_depth: unknown fine-tuning depth 'blocks9-head'" in capsys.readouterr().err
    # from scratch a frozen refinement backbone has no BatchNorm statistics: refused, naming the option to set
    assert main(_finetune("frozen", runs, tiny_landmarks, *refine, "train.depth=all",
                          "task.landmarks.refine_depth=head")) == 2
    assert "task.landmarks.refine_depth: all" in capsys.readouterr().err
    assert main(_finetune("own", runs, tiny_landmarks, *refine, "train.depth=blocks6-head",
                          "task.landmarks.refine_depth=all")) == 0
    summary = json.loads((runs / "own" / "summary.json").read_text())
    assert summary["trainable_stages"] == ["blocks6", "conv_head"]
    assert summary["extra_trainable_stages"]["refine"] == ["stem", *(f"blocks{i}" for i in range(7)), "conv_head"]


def test_refine_from_truth_crops_around_the_true_landmarks_and_the_refined_error_around_the_global_ones(
        tiny_landmarks):
    """A refinement stage that answers the centre of every crop: from the truth it is exact (0 mm), from the global
    estimates it returns them (the refined error is the global one)."""
    import torch

    from tasks.landmarks.refine import RefinementStage
    from transfer.api import TASKS
    from transfer.config import Config, load_config
    from transfer.weights import backbone_from_config

    class CropCentre(RefinementStage):
        def forward(self, crops, landmark):
            return {"coords": torch.full((len(crops), 2), 0.5), "confidence": torch.ones(len(crops)),
                    "heatmaps": crops[:, 0]}

    cfg = load_config(Config, None, ["task.name=landmarks", "data.format=landmark_csv", "init=scratch",
                                     "backbone.name=tiny_efficientnet", f"data.root={tiny_landmarks}",
                                     "data.image_dir=images", "backbone.in_chans=1", "data.image_size=[32, 24]",
                                     "task.landmarks.head=decoder", "task.landmarks.refine=true",
                                     "task.landmarks.refine_image_size=[60, 48]", "task.landmarks.refine_crop=16",
                                     "tracking.progress=false"])
    task = TASKS.get("landmarks")(cfg)
    ds = task.load_split("train.csv", "test")
    torch.manual_seed(0)
    model = task.build_model(backbone_from_config(cfg.backbone, cfg.init)[0])
    model.refine_stage = CropCentre(backbone_from_config(cfg.backbone, cfg.init)[0], 2, crop=16)
    m = task.evaluate(model, ds, torch.device("cpu"), with_ci=True).metrics
    assert m["global_mre_mm"] > 0.5  # 0.1 mm pixels: the untrained global stage is several pixels off
    assert m["mre_mm"] == pytest.approx(m["global_mre_mm"], abs=1e-4)
    assert m["refine_from_truth_mre_mm"] == pytest.approx(0.0, abs=1e-4)
    for entry in m["per_landmark"]:  # and landmark by landmark
        assert entry["mean_mm"] == pytest.approx(entry["global_mean_mm"], abs=1e-4)
        assert entry["refine_from_truth_mean_mm"] == pytest.approx(0.0, abs=1e-4)
    assert "refine_from_truth_mre_mm" not in task.evaluate(model, ds, torch.device("cpu")).metrics  # epoch scoring


def test_a_coarse_refinement_stage_trains_scores_and_predicts_end_to_end(tmp_path, tiny_landmarks):
    runs = tmp_path / "runs"
    refine = ["task.landmarks.refine=true", "task.landmarks.refine_image_size=[60, 48]",
              "task.landmarks.refine_crop=16", "task.landmarks.refine_coarse_zoom=2.5", "train.epochs=1"]
    assert main(_finetune("coarse", runs, tiny_landmarks, *refine)) == 0
    summary = json.loads((runs / "coarse" / "summary.json").read_text())
    test = summary["test"]
    assert all(np.isfinite(test[k]) for k in ("mre_mm", "global_mre_mm", "coarse_mre_mm", "refine_from_truth_mre_mm"))
    assert all("coarse_mean_mm" in row for row in test["per_landmark"])
    assert set(summary["extra_trainable_stages"]) == {"refine", "refine_coarse"}
    rows = [json.loads(x) for x in (runs / "coarse" / "metrics.jsonl").read_text().splitlines()]
    assert any("train_coarse_euclidean" in r and "train_refine_euclidean" in r for r in rows)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(runs / "coarse"), str(tiny_landmarks / "images"), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) > 0
