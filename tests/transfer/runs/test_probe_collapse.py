"""The collapse indicators of the representation probe, on embeddings whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from transfer.runs.probe import effective_rank, normalized_std


def test_isotropic_embeddings_are_not_collapsed():
    z = np.random.default_rng(0).normal(size=(2000, 64))
    assert normalized_std(z) == pytest.approx(1.0, abs=0.05)
    assert effective_rank(z) > 55


def test_complete_collapse_is_zero_std_and_rank_one():
    z = np.tile(np.random.default_rng(1).normal(size=(1, 64)), (500, 1))
    assert normalized_std(z) == pytest.approx(0.0, abs=1e-9)
    assert effective_rank(z) == 1.0


def test_dimensional_collapse_shows_in_the_effective_rank():
    rng = np.random.default_rng(2)
    basis = rng.normal(size=(2, 64))
    z = rng.normal(size=(1000, 2)) @ basis  # every embedding in one 2-D plane of a 64-D space
    assert effective_rank(z) <= 2.0 + 1e-6
    assert normalized_std(z) < normalized_std(rng.normal(size=(1000, 64)))


def test_scale_does_not_move_either_indicator():
    z = np.random.default_rng(3).normal(size=(300, 32))
    assert normalized_std(1000 * z) == pytest.approx(normalized_std(z))
    assert effective_rank(1000 * z) == pytest.approx(effective_rank(z))
