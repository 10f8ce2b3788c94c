"""Test-time averaging of the global stage over shifted copies: copies move the right way and back exactly, a
shift-equivariant stage is left as it is, and an estimate that depends on where the grid falls is averaged towards
the truth; the option reaches the model from the config and is checked there."""
from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from tasks.landmarks.decoding import decode_heatmaps
from tasks.landmarks.shift_averaging import shift_averaged_logits, shift_offsets, translate
from transfer.config.io import ConfigError


def test_translate_moves_the_content_and_fills_the_uncovered_border() -> None:
    x = torch.zeros(1, 1, 6, 7)
    x[0, 0, 2, 3] = 1.0
    x[0, 0, :, 0] = 0.5  # the left edge column
    moved = translate(x, 2, -1, fill="edge")
    assert moved.shape == x.shape
    assert moved[0, 0, 1, 5] == 1.0 and moved[0, 0, 2, 3] == 0.0  # 2 right, 1 up
    assert (moved[0, 0, :, :3] == 0.5).all()  # the uncovered left border repeats the edge column
    zero = translate(x, -3, 2, fill="zero")
    assert zero[0, 0, 4, 0] == 1.0 and (zero[0, 0, :2] == 0).all()  # 3 left, 2 down; the top rows hold nothing
    assert torch.equal(translate(translate(x, 2, 1, fill="zero"), -2, -1, fill="zero")[0, 0, 1:5, 2:5],
                       x[0, 0, 1:5, 2:5])  # there and back, away from the border
    assert shift_offsets(0) == [(0, 0)] and len(shift_offsets(2)) == 5
    with pytest.raises(ValueError, match="global_tta_shift"):
        shift_offsets(-1)


def _blob(size: tuple[int, int], centre: tuple[float, float], sigma: float = 2.0) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size[0]) + 0.5, torch.arange(size[1]) + 0.5, indexing="ij")
    return torch.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma ** 2))[None, None]


def test_a_shift_equivariant_stage_decodes_the_same_with_and_without_averaging() -> None:
    # an exactly equivariant stage for shifts of whole cells: average-pooling at the heatmap stride, sharpened
    stride = 2

    def stage(x: torch.Tensor) -> torch.Tensor:
        return 8 * F.avg_pool2d(x, stride)

    image = _blob((64, 48), (21.3, 30.8))
    one = decode_heatmaps(stage(image), 3)[0]
    averaged = decode_heatmaps(shift_averaged_logits(stage, image, 2, stride), 3)[0]
    # copies moved back the wrong way would spread the averaged map over 2 x 2 cells and move the estimate
    assert torch.allclose(one, averaged, atol=1e-5)


def test_an_estimate_that_depends_on_where_the_grid_falls_is_averaged_towards_the_truth() -> None:
    # a stage that can only put its peak on a 4-pixel grid (the aliasing of a stride-32 backbone, in small): the
    # brightest pixel at 9 comes out at 8 alone; the copies shifted by 2 come out at 10 once moved back
    size, truth = 32, 9

    def grid_stage(x: torch.Tensor) -> torch.Tensor:
        flat = int(x[0, 0].flatten().argmax())
        px, py = flat % size, flat // size
        snap = [4 * int(v / 4 + 0.5) for v in (px, py)]
        return 3 * _blob((size, size), (snap[0] + 0.5, snap[1] + 0.5), sigma=1.0).log()

    image = torch.zeros(1, 1, size, size)
    image[0, 0, truth, truth] = 1.0
    to_px = torch.tensor([size, size])

    def error(logits: torch.Tensor) -> float:
        return float((decode_heatmaps(logits, 3)[0][0, 0] * to_px - 0.5 - truth).norm())

    alone, averaged = error(grid_stage(image)), error(shift_averaged_logits(grid_stage, image, 2, 1))
    assert alone > 1.3 and averaged < 0.5 * alone


def test_global_tta_shift_reaches_the_model_and_is_checked(tmp_path, tiny_landmarks) -> None:
    from transfer.api import TASKS
    from transfer.backbones import get_entry
    from transfer.cli import main
    from transfer.config import Config, load_config

    base = ["task.name=landmarks", "data.format=landmark_csv", "init=scratch", "tracking.progress=false"]
    with pytest.raises(ConfigError, match="task.landmarks.global_tta_shift: needs head: decoder"):
        load_config(Config, None, [*base, "task.landmarks.global_tta_shift=1"])
    with pytest.raises(ConfigError, match="task.landmarks.global_tta_shift: must be >= 0"):
        load_config(Config, None, [*base, "task.landmarks.head=decoder", "task.landmarks.global_tta_shift=-1"])
    cfg = load_config(Config, None, [*base, "task.landmarks.head=decoder", "task.landmarks.global_tta_shift=2"])
    task = TASKS.get("landmarks")(cfg)
    task.info["num_landmarks"] = 2
    model = task.build_model(get_entry("tiny_efficientnet").build())
    calls = []
    forward_global = model._forward_global
    model._forward_global = lambda x: calls.append(x.shape) or forward_global(x)
    images = torch.rand(2, 3, 32, 24)
    model.eval()
    out = model.forward_all(images)
    assert len(calls) == 5 and out["coords"].shape == (2, 2, 2)  # the image and four copies
    model.train()
    model.forward_all(images)
    assert len(calls) == 6  # training never averages: the losses are on one pass
    # prediction-time: a model trained without it is evaluated with it through --set
    runs = tmp_path / "runs"
    fixed = ["backbone.name=tiny_efficientnet", "init=scratch", "backbone.in_chans=1", "train.max_steps=2",
             "train.epochs=1", "train.batch_size=4", f"tracking.out_dir={runs}", "tracking.wandb_mode=disabled",
             "tracking.progress=false", "data.format=landmark_csv", f"data.root={tiny_landmarks}",
             "data.train=train.csv", "data.test=test.csv", "data.image_dir=images", "task.name=landmarks",
             "task.landmarks.head=decoder", "data.image_size=[32, 24]"]
    assert main(["finetune", "--name", "g", *(a for kv in fixed for a in ("--set", kv))]) == 0
    out_csv = tmp_path / "val.csv"
    assert main(["evaluate", str(runs / "g"), "--split", "val", "--out", str(out_csv),
                 "--set", "task.landmarks.global_tta_shift=1"]) == 0
    assert json.loads(out_csv.with_suffix(".metrics.json").read_text())["mre_mm"] > 0


def test_the_test_time_report_compares_each_variant_with_the_model_as_trained_on_validation(tmp_path, tiny_landmarks,
                                                                                            load_script):
    runs = tmp_path / "runs"
    _tiny_runs(runs, tiny_landmarks, {"s0": ["seed=0"], "s1": ["seed=1"]})
    module = load_script("landmark_test_time")
    out = tmp_path / "report.md"
    assert module.main([str(runs / "s0"), str(runs / "s1"), "--out", str(out), "--jobs", "2",
                        "--variant", "shift1=task.landmarks.global_tta_shift=1"]) == 0
    text = out.read_text()
    assert "| as trained |" in text and "| shift1 |" in text and "of 2" in text
    scores, _ = module._score([runs / "s0"], {"same": ["task.landmarks.global_tta_shift=0"]})
    # a variant that changes nothing scores exactly as the model as trained
    assert scores["mre_mm"].nunique() == 1


def test_the_ensemble_report_combines_runs_of_one_split_and_refuses_runs_of_others(tmp_path, tiny_landmarks,
                                                                                   load_script):
    import numpy as np

    runs = tmp_path / "runs"
    _tiny_runs(runs, tiny_landmarks, {"a": ["seed=1", "data.split_seed=0"], "b": ["seed=2", "data.split_seed=0"],
                                      "other": ["seed=3"]})
    module = load_script("landmark_test_time")
    models, comparisons = module._ensemble([runs / "a", runs / "b"])
    mre = models.set_index("model")["val MRE (mm)"]
    # two members: the median is the mean, and the mean of two points is no farther than the farther of them
    assert np.isclose(mre["ensemble (mean)"], mre["ensemble (median)"])
    assert mre["ensemble (mean)"] <= max(mre["a"], mre["b"]) + 1e-9
    assert len(comparisons) == 4 and comparisons["p_holm"].between(0, 1).all()
    out = tmp_path / "ens.md"
    assert module.main([str(runs / "a"), str(runs / "b"), "--ensemble", "--out", str(out)]) == 0
    assert "| ensemble (mean) |" in out.read_text()
    with pytest.raises(SystemExit, match="other: its validation part is not the other runs' images"):
        module._ensemble([runs / "a", runs / "other"])


def _tiny_runs(runs, data_root, named: dict[str, list[str]]) -> None:
    """Decoder-head landmark runs of two steps on the tiny set, one per name, each with its own settings."""
    from transfer.cli import main

    fixed = ["backbone.name=tiny_efficientnet", "init=scratch", "backbone.in_chans=1", "train.max_steps=2",
             "train.epochs=1", "train.batch_size=4", f"tracking.out_dir={runs}", "tracking.wandb_mode=disabled",
             "tracking.progress=false", "data.format=landmark_csv", f"data.root={data_root}",
             "data.train=train.csv", "data.test=test.csv", "data.image_dir=images", "task.name=landmarks",
             "task.landmarks.head=decoder", "data.image_size=[32, 24]", "data.val_fraction=0.34"]
    for name, more in named.items():
        assert main(["finetune", "--name", name, *(a for kv in (*fixed, *more) for a in ("--set", kv))]) == 0

