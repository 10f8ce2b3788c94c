"""task.landmarks.missing=mask: a landmark with no annotation counts in neither the loss nor any metric."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.landmarks.metrics import landmark_metrics, radial_errors_mm
from transfer.api import TASKS
from transfer.backbones import get_entry
from transfer.config import Config
from transfer.config.io import load_config


def test_metrics_ignore_masked_landmarks():
    rng = np.random.default_rng(0)
    pred, true = rng.uniform(0, 100, (5, 3, 2)), rng.uniform(0, 100, (5, 3, 2))
    visible = np.ones((5, 3), bool)
    visible[1, 2] = visible[4, 0] = False
    true_nan = true.copy()
    true_nan[~visible] = np.nan  # what a masked landmark is after reading
    m = landmark_metrics(pred, true_nan, 0.1, visible=visible, radii=(2.0, 5.0))
    err = radial_errors_mm(pred, true, 0.1)
    assert m["mre_mm"] == pytest.approx(err[visible].mean()) and m["n_masked"] == 2
    assert m["sd_mm"] == pytest.approx(err[visible].std(ddof=1))
    assert m["sdr"]["5.0"] == pytest.approx(100 * (err[visible] <= 5.0).mean())
    assert m["per_landmark"][2]["mean_mm"] == pytest.approx(err[[0, 2, 3, 4], 2].mean())
    assert np.isnan(radial_errors_mm(pred, true_nan, 0.1, visible)[1, 2])
    with pytest.raises(ValueError, match="non-finite"):  # unmasked NaN is still an error
        landmark_metrics(pred, true_nan, 0.1)


def test_masked_landmark_gets_no_gradient():
    cfg = load_config(Config, None, ["task.name=landmarks", "data.format=landmark_csv", "data.image_size=[32, 32]"])
    task = TASKS.get("landmarks")(cfg)
    task.info = {"num_landmarks": 2, "landmark_names": ["1", "2"]}
    model = task.build_model(get_entry("tiny_resnet").build())
    pred = torch.full((2, 2, 2), 0.3, requires_grad=True)
    model.forward_all = lambda images: {"coords": pred}  # the loss, not the network, is under test
    target = torch.tensor([[[0.5, 0.5], [float("nan"), float("nan")]], [[0.6, 0.2], [0.1, 0.9]]])
    batch = {"image": torch.zeros(2, 1, 32, 32), "landmarks": target, "orig_size": torch.tensor([[32.0, 32.0]] * 2),
             "spacing": torch.full((2, 2), 0.1)}
    out = model.training_step(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(pred.grad).all()
    assert torch.equal(pred.grad[0, 1], torch.zeros(2))  # the masked landmark
    assert (pred.grad[0, 0].abs() > 0).all() and (pred.grad[1].abs() > 0).all()
    # the loss is the mean over the three annotated landmarks
    d = (pred.detach() - target).norm(dim=-1)
    assert out["loss"].item() == pytest.approx(float(d[torch.isfinite(d)].mean()), rel=1e-5)
