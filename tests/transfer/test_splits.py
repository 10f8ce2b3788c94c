from __future__ import annotations

import numpy as np
import pytest

from transfer.data.splits import nested_fraction, validation_split
from transfer.errors import DatasetError


def test_nested_and_stratified():
    labels = np.array([0] * 300 + [1] * 700)
    f1 = set(nested_fraction(1000, 0.01, 3, labels))
    f10 = set(nested_fraction(1000, 0.1, 3, labels))
    f50 = set(nested_fraction(1000, 0.5, 3, labels))
    assert f1 <= f10 <= f50
    assert len(f10) == 100 and sum(labels[list(f10)] == 0) == 30
    assert set(nested_fraction(1000, 0.1, 4, labels)) != f10  # seed matters
    assert list(nested_fraction(1000, 1.0, 3, labels)) == list(range(1000))


def test_fraction_that_empties_a_class_is_an_error():
    labels = np.array([0] * 3 + [1] * 200)
    with pytest.raises(DatasetError, match="class 'normal'.*no example"):
        nested_fraction(203, 0.1, 0, labels, ["normal", "pneumonia"])


def test_validation_split_stratified_and_reproducible():
    labels = np.array([0] * 50 + [1] * 150)
    tr, va = validation_split(200, 0.2, 0, labels)
    assert len(va) == 40 and not set(tr) & set(va) and sum(labels[va] == 0) == 10
    tr2, va2 = validation_split(200, 0.2, 0, labels)
    assert np.array_equal(va, va2)


def test_group_aware_split_keeps_patients_together():
    groups = np.repeat(np.arange(20), 3)
    tr, va = validation_split(60, 0.25, 0, None, groups)
    assert not set(groups[tr]) & set(groups[va])
