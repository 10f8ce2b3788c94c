"""The shape step: a landmark whose heatmap's stronger mode is on the wrong structure goes back to the mode the other
landmarks agree with; single-mode heatmaps change nothing; the shape model travels with the saved model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.transform import SimilarityTransform

from tasks.landmarks.decoding import decode_heatmaps, heatmap_modes
from tasks.landmarks.heads import gaussian_heatmaps
from tasks.landmarks.shape_model import ShapeModel, apply_similarity, similarity_fit
from tasks.landmarks.shape_prior import ShapePrior
from transfer.config.io import ConfigError

#: (W, H) mm of the synthetic field of view; the heatmaps are 1 mm per cell (100 x 120 cells)
FRAME = np.array([100.0, 120.0])
BASE_MM = np.array([[30.0, 30.0], [70.0, 35.0], [50.0, 60.0], [35.0, 90.0], [70.0, 95.0], [55.0, 20.0]])
H, W = 120, 100


def _similar(points: np.ndarray, angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    centre = points.mean(0)
    return (points - centre) @ rot.T * scale + centre + np.asarray(shift)


def _training_shapes(n: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([_similar(BASE_MM, rng.uniform(-5, 5), rng.uniform(0.95, 1.05), rng.uniform(-5, 5, 2))
                     + rng.normal(0, 1.5, BASE_MM.shape) for _ in range(n)])


def _prior(**options) -> ShapePrior:
    prior = ShapePrior(len(BASE_MM), radius=3, **options)
    prior.shape.fit(_training_shapes(), FRAME, variance=0.95)
    return prior


def _norm(mm: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(mm / FRAME, dtype=torch.float32)[None]  # (1, L, 2); 1 mm = 1 heatmap cell


def _logits(modes: list[list[tuple[np.ndarray, float]]]) -> torch.Tensor:
    """Heatmap logits (1, L, H, W): per landmark a mixture of Gaussians (SD 1.5 cells) at (mm, weight) plus a 5%
    uniform floor, as the log of the probabilities."""
    maps = []
    for landmark in modes:
        p = torch.full((H, W), 0.05 / (H * W), dtype=torch.float64)
        for mm, weight in landmark:
            p += weight * gaussian_heatmaps(_norm(mm[None]).double(), (H, W), 1.5)[0, 0]
        maps.append(p.log())
    return torch.stack(maps)[None].float()


def _truth() -> np.ndarray:
    return _similar(BASE_MM, 3.0, 1.02, (2.0, -1.0)) + np.random.default_rng(9).normal(0, 0.8, BASE_MM.shape)


def test_a_stronger_mode_on_the_wrong_structure_is_replaced_by_the_true_one():
    truth = _truth()
    wrong = truth[2] + np.array([3.0, 22.0])  # 22 mm below, e.g. the next vertebra-like edge
    modes = [[(p, 0.95)] for p in truth]
    modes[2] = [(truth[2], 0.35), (wrong, 0.6)]  # the wrong mode is the stronger one: the arg-max picks it
    logits = _logits(modes)
    coords, confidence = decode_heatmaps(logits, 3)
    px = coords[0].numpy() * FRAME - 0.5  # normalised -> cell indices (1 cell = 1 mm here)
    assert np.abs(px[2] - (wrong - 0.5)).max() < 1.0  # the arg-max decoding is on the wrong mode
    corrected, moved = _prior()(logits, coords, confidence)
    out = corrected[0].numpy() * FRAME - 0.5
    assert np.abs(out[2] - (truth[2] - 0.5)).max() < 1.0, (out[2], truth[2])  # back on the true mode, within 1 px
    assert moved[0].tolist() == [False, False, True, False, False, False]
    others = [0, 1, 3, 4, 5]
    assert torch.equal(corrected[0, others], coords[0, others])  # nothing else moved, to the last bit


def test_single_mode_heatmaps_change_nothing():
    truth = _truth()
    logits = _logits([[(p, 0.95)] for p in truth])
    coords, confidence = decode_heatmaps(logits, 3)
    corrected, moved = _prior()(logits, coords, confidence)
    assert torch.equal(corrected, coords) and not moved.any()


def test_a_landmark_the_shape_agrees_with_keeps_its_arg_max_despite_a_second_mode():
    truth = _truth()
    modes = [[(p, 0.95)] for p in truth]
    modes[4] = [(truth[4], 0.55), (truth[4] + np.array([-20.0, 0.0]), 0.4)]  # arg-max right, a weaker wrong mode
    logits = _logits(modes)
    coords, confidence = decode_heatmaps(logits, 3)
    corrected, moved = _prior()(logits, coords, confidence)
    assert torch.equal(corrected, coords) and not moved.any()


def test_a_wrong_arg_max_without_another_mode_cannot_move():
    truth = _truth()
    modes = [[(p, 0.95)] for p in truth]
    modes[2] = [(truth[2] + np.array([3.0, 22.0]), 0.95)]  # wrong, and the map knows no better place
    logits = _logits(modes)
    coords, confidence = decode_heatmaps(logits, 3)
    corrected, moved = _prior()(logits, coords, confidence)
    assert torch.equal(corrected, coords) and not moved.any()


def test_heatmap_modes_finds_the_other_modes_strongest_first_and_no_more():
    truth = _truth()
    logits = _logits([[(truth[0], 0.5), (truth[0] + [0, 30.0], 0.3), (truth[0] + [30.0, 0], 0.1)]])
    coords, mass, found = heatmap_modes(logits, 3, radius=3)
    px = coords[0, 0].numpy() * FRAME - 0.5
    assert np.abs(px[0] - (truth[0] + [0, 30.0] - 0.5)).max() < 1.0  # the second strongest first
    assert np.abs(px[1] - (truth[0] + [30.0, 0] - 0.5)).max() < 1.0
    assert mass[0, 0, 0] > mass[0, 0, 1] > 0.05
    assert found[0, 0, :2].all()
    assert mass[0, 0, 2] < 0.01  # beyond the three modes only the flat floor's local maxima: no mass


@pytest.mark.filterwarnings("ignore::FutureWarning")  # estimate(): from_estimate() is scikit-image >= 0.26 only
def test_similarity_fit_is_the_least_squares_similarity():
    """The closed form agrees with scikit-image's Umeyama estimate on noisy points (the same objective)."""
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 100, (12, 2))
    dst = _similar(src, 25.0, 1.3, (7.0, -4.0)) + rng.normal(0, 2.0, src.shape)
    reference = SimilarityTransform()
    reference.estimate(src, dst)
    ours = apply_similarity(torch.as_tensor(src), *similarity_fit(torch.as_tensor(src), torch.as_tensor(dst)))
    np.testing.assert_allclose(ours.numpy(), reference(src), atol=1e-9)


def test_the_shape_distance_ignores_pose_and_sees_a_displaced_landmark():
    model = _prior().shape
    truth = _truth()
    d2 = model.mahalanobis2(_norm(truth), _norm(truth)[:, :, None])[0, :, 0]
    posed = _similar(truth, -8.0, 0.9, (6.0, 4.0))  # the same anatomy, placed otherwise in the image
    d2_posed = model.mahalanobis2(_norm(posed), _norm(posed)[:, :, None])[0, :, 0]
    torch.testing.assert_close(d2_posed, d2, rtol=1e-3, atol=1e-3)
    assert d2.max() < 9.0  # a plausible shape: every landmark within 3 SD
    displaced = truth.copy()
    displaced[3] += [0.0, 15.0]
    far = model.mahalanobis2(_norm(displaced), _norm(displaced)[:, :, None])[0, :, 0]
    assert far.argmax() == 3 and far[3] > 9.0


def test_an_unfitted_shape_model_is_a_clear_error():
    logits = _logits([[(p, 0.95)] for p in BASE_MM])
    coords, confidence = decode_heatmaps(logits, 3)
    with pytest.raises(ConfigError, match="task.landmarks.shape_prior: this model has no fitted shape model"):
        ShapePrior(len(BASE_MM), radius=3)(logits, coords, confidence)
    assert not ShapeModel(3).fitted


# -- in the model: fitted when built, used in inference only, saved with model.pt --------------------------------


def _task(tmp_path, *overrides: str):
    from transfer.api import TASKS
    from transfer.config import Config
    from transfer.config.io import load_config

    cfg = load_config(Config, None, [
        "task.name=landmarks", "data.format=landmark_csv", "backbone.name=tiny_efficientnet", "backbone.in_chans=1",
        "init=scratch", "task.landmarks.head=decoder", "task.landmarks.decoder_width=8", "data.image_size=[32, 32]",
        f"tracking.out_dir={tmp_path}", *overrides])
    task = TASKS.get("landmarks")(cfg)
    task.info.update(num_landmarks=len(BASE_MM), landmark_names=[str(k) for k in range(1, len(BASE_MM) + 1)])
    return cfg, task


def _backbone():
    from transfer.config import BackboneConfig
    from transfer.weights import backbone_from_config

    return backbone_from_config(BackboneConfig(name="tiny_efficientnet", in_chans=1), "scratch")[0]


def _train_split(shapes_mm: np.ndarray):
    from transfer.data.datasets import ImageDataset

    n = len(shapes_mm)
    return ImageDataset(torch.zeros(n, 1, 32, 32), {
        "landmarks": torch.as_tensor((shapes_mm + 0.5) / FRAME, dtype=torch.float32),  # 1 mm per original pixel
        "orig_size": torch.tensor([[H, W]] * n, dtype=torch.float32),
        "spacing": torch.ones(n, 2)}, [f"{i}.png" for i in range(n)])


class _FixedHeatmaps(torch.nn.Module):
    """A decoder head that answers the same logits for every image (whatever the backbone saw)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.top_stage = "conv_head"

    def forward(self, features, image_size):
        logits = self.logits.expand(next(iter(features.values())).shape[0], -1, -1, -1)
        coords, confidence = decode_heatmaps(logits, 3)
        return {"heatmaps": logits, "coords": coords, "confidence": confidence}


def _planted_logits() -> tuple[torch.Tensor, np.ndarray]:
    truth = _truth()
    modes = [[(p, 0.95)] for p in truth]
    modes[2] = [(truth[2], 0.35), (truth[2] + np.array([3.0, 22.0]), 0.6)]
    return _logits(modes), truth


def test_the_model_fits_its_shape_model_when_built_and_uses_it_in_inference_only(tmp_path):
    _, task = _task(tmp_path, "task.landmarks.shape_prior=true")
    model = task.build_model(_backbone(), _train_split(_training_shapes()))
    assert model.shape_prior.shape.fitted and task.info["shape_model"]["shapes"] == 60
    # the training shapes have 1.5 mm of noise per coordinate: each landmark's spread about its leave-one-out
    # prediction is about that, in mm
    assert all(1.2 < sd < 2.5 for sd in task.info["shape_model"]["residual_sd_mm"]), task.info["shape_model"]
    logits, truth = _planted_logits()
    model.head = _FixedHeatmaps(logits)
    images = torch.zeros(2, 1, 32, 32)
    model.eval()
    out = model.forward_all(images)
    assert out["shape_moved"][:, 2].all() and out["shape_moved"].sum() == 2
    assert np.abs(out["coords"][0, 2].numpy() * FRAME - truth[2]).max() < 1.0
    model.train()
    trained = model.forward_all(images)  # the losses see the arg-max decoding
    assert "shape_moved" not in trained
    assert torch.equal(trained["coords"], decode_heatmaps(logits, 3)[0].expand(2, -1, -1))


def test_predict_and_evaluate_count_the_moved_landmarks(tmp_path):
    _, task = _task(tmp_path, "task.landmarks.shape_prior=true")
    model = task.build_model(_backbone(), _train_split(_training_shapes()))
    logits, truth = _planted_logits()
    model.head = _FixedHeatmaps(logits)
    test = _train_split(truth[None].repeat(3, 0))
    result = task.evaluate(model, test, torch.device("cpu"), batch_size=2)
    assert result.predictions["shape_moved"].tolist() == [1, 1, 1] and result.metrics["shape_moved"] == 3
    assert result.metrics["mre_mm"] < 1.0  # landmark 3 is back on its structure
    assert task.predict(model, test, torch.device("cpu"), batch_size=2)["shape_moved"].tolist() == [1, 1, 1]
    _, off = _task(tmp_path)  # the default: no step, no column, the arg-max decoding
    plain = off.build_model(_backbone(), _train_split(_training_shapes()))
    plain.head = _FixedHeatmaps(logits)
    result = off.evaluate(plain, test, torch.device("cpu"), batch_size=2)
    assert "shape_moved" not in result.predictions and "shape_moved" not in result.metrics
    assert result.metrics["mre_mm"] > 3.0


def test_the_shape_model_survives_save_and_load(tmp_path):
    """model.pt carries the fitted shape model; a model trained with the step off can switch it on in predict."""
    from transfer.runs.model_io import load_model, model_checkpoint

    cfg, task = _task(tmp_path)  # shape_prior off in training
    model = task.build_model(_backbone(), _train_split(_training_shapes()))
    path = tmp_path / "model.pt"
    torch.save(model_checkpoint(model, cfg, task, "all"), path)
    _, loaded_task, loaded = load_model(path, overrides=["task.landmarks.shape_prior=true"])
    assert loaded.use_shape_prior and not model.use_shape_prior
    for name, buffer in model.shape_prior.shape.named_buffers():
        assert torch.equal(dict(loaded.shape_prior.shape.named_buffers())[name], buffer), name
    assert loaded_task.info["shape_model"] == task.info["shape_model"]
    logits, truth = _planted_logits()
    coords, confidence = decode_heatmaps(logits, 3)
    torch.testing.assert_close(loaded.shape_prior(logits, coords, confidence)[0],
                               model.shape_prior(logits, coords, confidence)[0], rtol=0, atol=0)


def test_a_model_saved_before_the_shape_model_existed_still_loads(tmp_path):
    from transfer.runs.model_io import load_model, model_checkpoint

    cfg, task = _task(tmp_path)
    model = task.build_model(_backbone(), _train_split(_training_shapes()))
    ck = model_checkpoint(model, cfg, task, "all")
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items() if not k.startswith("shape_prior.")}
    path = tmp_path / "old.pt"
    torch.save(ck, path)
    _, _, loaded = load_model(path)  # the step off: loads, unfitted, and predicts as before
    assert not loaded.shape_prior.shape.fitted
    _, _, switched = load_model(path, overrides=["task.landmarks.shape_prior=true"])
    switched.head = _FixedHeatmaps(_planted_logits()[0])
    with pytest.raises(ConfigError, match="this model has no fitted shape model"):
        switched.forward_all(torch.zeros(1, 1, 32, 32))


def test_shape_prior_options_are_checked(tmp_path):
    from transfer.config import Config
    from transfer.config.io import load_config

    for override, message in (("task.landmarks.shape_modes=1", "task.landmarks.shape_modes: must be >= 2"),
                              ("task.landmarks.shape_threshold=0", "task.landmarks.shape_threshold: must be > 0"),
                              ("task.landmarks.shape_min_mass=1", "task.landmarks.shape_min_mass: must be in"),
                              ("task.landmarks.shape_variance=1.0", "task.landmarks.shape_variance: must be in")):
        with pytest.raises(ConfigError, match=message):
            load_config(Config, None, ["task.name=landmarks", "task.landmarks.head=decoder", override])
    with pytest.raises(ConfigError, match="task.landmarks.shape_prior: needs head: decoder"):
        load_config(Config, None, ["task.name=landmarks", "task.landmarks.shape_prior=true"])
    from transfer.errors import DatasetError

    _, task = _task(tmp_path, "task.landmarks.shape_prior=true")
    with pytest.raises(DatasetError, match="task.landmarks.shape_prior: the training split has 3 complete shapes"):
        task.build_model(_backbone(), _train_split(_training_shapes()[:3]))


def test_the_step_does_its_algebra_in_float32_under_autocast():
    """Under bf16 autocast (the GPU runs' inference) the shape algebra is not done in bf16: the same landmark moves to
    the same mode."""
    logits, truth = _planted_logits()
    prior = _prior()
    coords, confidence = decode_heatmaps(logits, 3)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        corrected, moved = prior(logits.bfloat16(), coords, confidence)
    assert moved[0].tolist() == [False, False, True, False, False, False]
    assert corrected.dtype == coords.dtype
    assert np.abs(corrected[0, 2].numpy() * FRAME - truth[2]).max() < 1.0
