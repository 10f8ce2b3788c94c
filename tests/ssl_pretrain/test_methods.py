"""Stage-1 methods: smoke steps, overfitting a fixed batch, pretext labels, momentum updates, CAE shapes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_pretrain.augment import AUGPRED_TRANSFORMS
from ssl_pretrain.augpred import balanced_labels
from ssl_pretrain.config import AugPredConfig, CAEConfig, ContrastiveConfig, ViewAugConfig
from transfer.api import PRETRAIN_METHODS, PretrainMethod, StepModel
from transfer.config import ConfigError, PretrainConfig, from_dict
from transfer.weights import build_backbone

METHODS = ["cae", "augpred", "simclr", "moco", "byol"]
SMALL_HEADS = dict(proj_hidden=32, proj_dim=16, pred_hidden=32, queue_size=64)
MILD_VIEWS = ViewAugConfig(crop_scale=(0.7, 1.0), rotation=5.0, blur_p=0.0, noise_std=0.01)


def smooth_images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, max(2, h // 4), max(2, w // 4), generator=g)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def make(method: str, backbone: str = "tiny_resnet", size=(32, 32), **sections):
    """The method built from its option section: ``sections[config_section]`` or that section's defaults."""
    bb, _ = build_backbone(backbone, "scratch", in_chans=1)
    sections.setdefault("contrastive", ContrastiveConfig(**SMALL_HEADS))
    cls = PRETRAIN_METHODS.get(method)
    options = sections.get(cls.config_section) or cls.config_class()
    return cls.from_config(bb, options, size)


def run_steps(model, x: torch.Tensor, steps: int, lr: float = 1e-3) -> list[dict[str, float]]:
    """A plain torch loop, as the engine drives it."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    logs = []
    for i in range(steps):
        out = model.training_step({"image": x})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.after_optimizer_step((i + 1) / steps)
        logs.append({k: float(v.detach()) for k, v in out.items()})
    return logs


# -- registration and smoke ----------------------------------------------------------------------
def test_all_methods_registered():
    assert set(METHODS) <= set(PRETRAIN_METHODS.names())
    assert all(issubclass(PRETRAIN_METHODS.get(m), PretrainMethod) for m in METHODS)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", ["tiny_resnet", "tiny_alexnet"])
def test_two_steps(method, backbone):
    torch.manual_seed(0)
    model = make(method, backbone)
    assert isinstance(model, StepModel)
    assert isinstance(model.encoder, torch.nn.Module) and model.encoder.name == backbone
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    x = smooth_images(4, 36, 36) if method in ("simclr", "moco", "byol") else smooth_images(4, 32, 32)
    logs = run_steps(model, x, steps=2)
    for log in logs:
        assert all(math.isfinite(v) for v in log.values()), log
    assert "loss" in logs[-1]
    changed = [k for k, v in model.encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the encoder must be trained"
    media = model.media({"image": x})
    for img in media.values():
        assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def test_cae_on_alexnet_with_fc6_trains_fc6():
    torch.manual_seed(0)
    model = make("cae", "tiny_alexnet", cae=CAEConfig(encoder_upto="fc6", decoder_width=8))
    x = smooth_images(4, 32, 32)
    out = model.training_step({"image": x})
    out["loss"].backward()
    grads = {name for name, ps in model.encoder.stage_parameters().items() if any(p.grad is not None for _, p in ps)}
    assert "fc6" in grads and "conv1" in grads
    assert "fc7" not in grads  # above the encoder: unused


# -- overfitting one fixed batch ------------------------------------------------------------------
OVERFIT = {
    # method: (steps, lr, config overrides)
    "cae": (30, 1e-3, {}),
    "augpred": (30, 1e-3, {}),
    "simclr": (25, 1e-3, dict(contrastive=ContrastiveConfig(**{**SMALL_HEADS, "proj_hidden": 64, "proj_dim": 32},
                                                            views=MILD_VIEWS))),
    # a queue over one fixed batch is full of the positives' own past keys (false negatives), so the
    # overfit check uses in-batch negatives; a lower momentum lets the key encoder keep up in 40 steps
    "moco": (40, 3e-3, dict(contrastive=ContrastiveConfig(proj_hidden=64, proj_dim=32, queue_size=0,
                                                          momentum_start=0.5, views=MILD_VIEWS))),
    "byol": (30, 1e-3, dict(contrastive=ContrastiveConfig(proj_hidden=64, proj_dim=32, pred_hidden=64))),
}


@pytest.mark.parametrize("method", METHODS)
def test_loss_falls_on_a_fixed_batch(method):
    steps, lr, overrides = OVERFIT[method]
    torch.manual_seed(0)
    model = make(method, **overrides)
    x = smooth_images(8, 32, 32, seed=3)
    losses = [log["loss"] for log in run_steps(model, x, steps, lr)]
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < first - 0.2 * abs(first), f"{method}: loss {first:.3f} -> {last:.3f}"


# -- augmentation prediction ---------------------------------------------------------------------
def test_balanced_labels():
    torch.manual_seed(0)
    for b, k in [(8, 4), (10, 4), (3, 4), (12, 12)]:
        labels = balanced_labels(b, k)
        counts = torch.bincount(labels, minlength=k)
        assert labels.shape == (b,) and counts.sum() == b
        assert int(counts.max()) - int(counts.min()) <= 1


def test_augpred_labels_match_the_transform_applied():
    names = [n for n in AUGPRED_TRANSFORMS.names() if n not in ("noise", "elastic")]
    torch.manual_seed(0)
    model = make("augpred", augpred=AugPredConfig(transforms=names))
    x = smooth_images(24, 32, 32, seed=5)
    x_aug, labels = model.make_pretext_batch(x)
    assert labels.shape == (24,) and set(labels.tolist()) <= set(range(len(names)))
    for i in range(x.shape[0]):
        candidates = torch.cat([AUGPRED_TRANSFORMS.get(n)(x[i:i + 1]) for n in names])
        dist = (candidates - x_aug[i:i + 1]).abs().flatten(1).amax(1)
        # the labelled transform reproduces the image, and no other transform does
        assert float(dist[labels[i]]) < 1e-5, (i, names[labels[i]])
        assert int(dist.argmin()) == int(labels[i])
        assert float(torch.sort(dist).values[1]) > 1e-2


def test_augpred_random_transforms_applied_where_labelled():
    torch.manual_seed(0)
    names = ["rot0", "noise", "elastic"]
    model = make("augpred", augpred=AugPredConfig(transforms=names))
    x = smooth_images(9, 32, 32, seed=6)
    x_aug, labels = model.make_pretext_batch(x)
    diff = (x_aug - x).abs().flatten(1).mean(1)
    assert torch.all(diff[labels == 0] == 0)
    assert torch.all(diff[labels != 0] > 1e-3)
    noise_residual = (x_aug - x)[labels == 1]
    assert 0.02 < float(noise_residual.std()) < 0.08


def test_augpred_rejects_rotations_for_non_square_images():
    with pytest.raises(ConfigError, match="square"):
        make("augpred", size=(48, 40))
    make("augpred", size=(48, 40), augpred=AugPredConfig(transforms=["rot0", "rot180", "hflip"]))


# -- momentum encoders ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["moco", "byol"])
def test_momentum_update_is_the_scheduled_ema(method):
    torch.manual_seed(0)
    model = make(method)
    online = model.encoder.model.get_parameter("conv1.0.weight")
    target = model.backbone_momentum.model.get_parameter("conv1.0.weight")
    head_online = next(model.projection_head.parameters())
    head_target = next(model.projection_head_momentum.parameters())
    assert torch.equal(online, target)  # starts as a copy
    # the copies: never trained, not sharing storage with the encoder
    momentum_params = list(model.backbone_momentum.parameters()) + list(model.projection_head_momentum.parameters())
    assert all(not p.requires_grad for p in momentum_params)
    enc_ptrs = {p.data_ptr() for p in model.encoder.parameters()}
    assert not enc_ptrs & {p.data_ptr() for p in model.backbone_momentum.parameters()}
    assert not any("momentum" in k for k in model.encoder.state_dict())

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = model.training_step({"image": smooth_images(4, 36, 36)})
    opt.zero_grad()
    out["loss"].backward()
    assert all(p.grad is None for p in momentum_params)
    opt.step()
    old_t, new_o = target.detach().clone(), online.detach().clone()
    old_ht, new_ho = head_target.detach().clone(), head_online.detach().clone()
    assert not torch.equal(old_t, new_o)

    progress = 0.3
    m = model.momentum_at(progress)
    # lightly's cosine schedule from 0.99 to 1.0, checked against the closed form
    assert m == pytest.approx(1.0 - (1.0 - 0.99) * (math.cos(math.pi * progress) + 1) / 2, abs=1e-9)
    model.after_optimizer_step(progress)
    torch.testing.assert_close(target.detach(), m * old_t + (1 - m) * new_o, rtol=0, atol=1e-7)
    torch.testing.assert_close(head_target.detach(), m * old_ht + (1 - m) * new_ho, rtol=0, atol=1e-7)
    assert torch.equal(online.detach(), new_o)  # the online encoder is untouched by the EMA
    assert all(not p.requires_grad for p in momentum_params)
    assert model.momentum_at(0.0) == pytest.approx(0.99) and model.momentum_at(1.0) == pytest.approx(1.0)


def test_moco_enqueues_keys():
    torch.manual_seed(0)
    model = make("moco")
    bank = model.criterion.memory_bank
    assert int(bank.bank_ptr) == 0
    run_steps(model, smooth_images(4, 36, 36), steps=1)
    assert int(bank.bank_ptr) == 4
    torch.testing.assert_close(bank.bank[:4].norm(dim=1), torch.ones(4))


def test_moco_uses_batch_negatives_until_its_queue_holds_real_keys():
    """lightly's queue starts as random unit vectors, against which a constant embedding wins (MoCo collapsed on
    PneumoniaMNIST); the first queue_size keys are trained against the batch's own negatives while they fill it."""
    torch.manual_seed(0)
    model = make("moco", contrastive=ContrastiveConfig(**{**SMALL_HEADS, "queue_size": 8}))
    random_init = model.criterion.memory_bank.bank.clone()
    used: list[str] = []
    for name, loss in (("batch", model.batch_criterion), ("queue", model.criterion)):
        loss.register_forward_hook(lambda *_, name=name: used.append(name))
    run_steps(model, smooth_images(4, 36, 36), steps=2)
    assert used == ["batch", "batch"] and model.keys_enqueued == 8
    bank = model.criterion.memory_bank.bank
    assert not any(torch.allclose(row, old) for row in bank for old in random_init)  # every row a real key
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(8))
    run_steps(model, smooth_images(4, 36, 36, seed=1), steps=1)
    assert used == ["batch", "batch", "queue"]
    assert model.get_extra_state()["keys_enqueued"] == 12  # carried into the resume state


# -- CAE geometry ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone,upto", [("tiny_resnet", None), ("tiny_efficientnet", None),
                                           ("tiny_alexnet", None), ("tiny_alexnet", "fc6"), ("tiny_resnet", "layer2")])
@pytest.mark.parametrize("size", [(48, 40), (33, 47), (64, 64)])
def test_cae_output_matches_input(backbone, upto, size):
    torch.manual_seed(0)
    model = make("cae", backbone, size=size, cae=CAEConfig(encoder_upto=upto, decoder_width=8))
    x = smooth_images(2, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    # every decoder block is at most a x2.5 upsampling of the previous size
    sizes = [b.size for b in model.decoder.blocks]
    for a, b in zip(sizes, sizes[1:]):
        assert b[0] <= 2.5 * a[0] and b[1] <= 2.5 * a[1]
    assert sizes[-1] == size


def test_cae_alexnet_fc6_maps_back_through_a_linear():
    model = make("cae", "tiny_alexnet", cae=CAEConfig(encoder_upto="fc6", decoder_width=8))
    assert model.decoder.fc is not None
    z = model.encode(smooth_images(2, 32, 32))
    assert z.dim() == 2  # the fc6 vector


def test_cae_psnr_and_l1():
    torch.manual_seed(0)
    model = make("cae", cae=CAEConfig(loss="l1", decoder_width=8))
    x = smooth_images(4, 32, 32)
    out = model.training_step({"image": x})
    with torch.no_grad():
        recon = model(x)
    assert float(out["loss"].detach()) == pytest.approx(float((recon - x).abs().mean()), rel=1e-4)
    assert 0 < float(out["psnr"]) < 60


def test_cae_rejects_unknown_stage():
    with pytest.raises(ConfigError, match="conv9"):
        make("cae", "tiny_alexnet", cae=CAEConfig(encoder_upto="conv9"))


# -- config ---------------------------------------------------------------------------------------
def test_config_defaults_and_yaml_choices():
    cfg = PretrainConfig()
    views = cfg.section("contrastive").views
    assert views.crop_scale == (0.4, 1.0) and views.hflip is False
    assert cfg.section("augpred").transforms == ["rot0", "rot90", "rot180", "rot270"]
    cfg = from_dict(PretrainConfig, {"method": "augpred", "augpred": {"transforms": ["rot0", "blur", "elastic"]}})
    assert cfg.section("augpred").transforms == ["rot0", "blur", "elastic"]
    with pytest.raises(ConfigError, match="augpred.transforms"):
        from_dict(PretrainConfig, {"augpred": {"transforms": ["rot0", "hue"]}})
    with pytest.raises(ConfigError, match="optimizer"):
        from_dict(PretrainConfig, {"optimizer": "lars"})


@pytest.mark.parametrize("bad,key", [
    (lambda: ViewAugConfig(crop_scale=(0.9, 0.4)), "crop_scale"),
    (lambda: ViewAugConfig(crop_scale=(0.0, 1.0)), "crop_scale"),
    (lambda: ViewAugConfig(blur_p=1.5), "blur_p"),
    (lambda: ViewAugConfig(gamma=(1.2, 0.8)), "gamma"),
    (lambda: ViewAugConfig(brightness=-0.1), "brightness"),
    (lambda: CAEConfig(decoder_width=0), "decoder_width"),
    (lambda: AugPredConfig(transforms=["rot0"]), "augpred.transforms"),
    (lambda: AugPredConfig(transforms=["rot0", "rot0"]), "augpred.transforms"),
    (lambda: ContrastiveConfig(temperature=0.0), "temperature"),
    (lambda: ContrastiveConfig(momentum_start=1.0, momentum_end=0.99), "momentum"),
    (lambda: ContrastiveConfig(queue_size=-1), "queue_size"),
    (lambda: PretrainConfig(batch_size=1), "batch_size"),
    (lambda: PretrainConfig(epochs=5, warmup_epochs=5), "warmup_epochs"),
    (lambda: PretrainConfig(lr=0.0), "lr"),
])
def test_config_rejects_impossible_values(bad, key):
    with pytest.raises(ConfigError, match=key):
        bad()


# -- benchmark smoke ------------------------------------------------------------------------------
def test_bench_pretrain_smoke():
    from transfer.bench.pretrain import bench_pretrain

    r = bench_pretrain("simclr", "tiny_resnet", 4, (32, 32), steps=1, warmup=1)
    for k in ("ours_img_s", "lightly_img_s", "bare_img_s", "ours_vs_lightly", "ours_vs_bare"):
        assert r[k] > 0 and math.isfinite(r[k]), k
    assert r["init"] == "scratch"
