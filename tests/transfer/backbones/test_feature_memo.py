"""FrozenFeatureMemo: the backbone's own features, computed once per (weights, image), and only while frozen."""
from __future__ import annotations

import torch

from transfer.backbones.feature_memo import FrozenFeatureMemo
from transfer.finetune import freeze_stages, set_train_mode
from transfer.weights import build_backbone


def _frozen(seed: int = 0):
    torch.manual_seed(seed)
    bb, _ = build_backbone("tiny_efficientnet", "scratch", in_chans=1)
    freeze_stages(bb, [])
    set_train_mode(bb, [])  # what a head-only run does: containers in train mode, every stage's module in eval
    return bb


def test_remembered_features_equal_the_backbone_and_are_computed_once():
    bb, memo = _frozen(), FrozenFeatureMemo()
    x = torch.rand(6, 1, 32, 32)
    first = memo(bb, x)
    assert torch.allclose(first, bb(x), atol=1e-6) and memo.misses == 6 and memo.hits == 0
    again = memo(bb, torch.cat([x[3:], torch.rand(2, 1, 32, 32)]))  # 3 seen, 2 new
    assert torch.allclose(again[:3], first[3:], atol=1e-6) and memo.misses == 8 and memo.hits == 3


def test_other_weights_never_read_another_backbones_features():
    memo, x = FrozenFeatureMemo(), torch.rand(4, 1, 32, 32)
    a, b = _frozen(0), _frozen(1)
    fa, fb = memo(a, x), memo(b, x)
    assert memo.misses == 8 and not torch.allclose(fa, fb)
    assert torch.allclose(fb, b(x), atol=1e-6)


def test_memo_steps_aside_while_any_stage_trains():
    bb, memo = _frozen(), FrozenFeatureMemo()
    freeze_stages(bb, [bb.stage_names[-1]])
    set_train_mode(bb, [bb.stage_names[-1]])
    x = torch.rand(4, 1, 32, 32)
    out = memo(bb, x)
    assert len(memo) == 0 and out.requires_grad  # the backbone itself ran, with its graph
    bb2 = _frozen()
    bb2.stages()[bb2.stage_names[0]].train()  # BatchNorm in training mode: batch statistics, not a pure function
    memo(bb2, x)
    assert len(memo) == 0


def test_least_recently_used_features_are_dropped_above_the_budget():
    bb = _frozen()
    one = memo_bytes = FrozenFeatureMemo()(bb, torch.rand(1, 1, 32, 32)).numel() * 4
    memo = FrozenFeatureMemo(max_bytes=3 * one)
    memo(bb, torch.rand(5, 1, 32, 32))
    assert len(memo) == 3 and memo_bytes == one


def test_features_under_autocast_are_not_served_to_a_full_precision_call():
    bb, memo, x = _frozen(), FrozenFeatureMemo(), torch.rand(3, 1, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = memo(bb, x)
    full = memo(bb, x)
    assert memo.misses == 6 and low.dtype == torch.bfloat16 and full.dtype == torch.float32
