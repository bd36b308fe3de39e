"""Seeded stratified splits: determinism, proportions, disjointness, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auxilia.data.splits import (
    SplitError,
    labeled_unlabeled,
    stratified_split,
    stratified_subset,
)

# imbalanced: 600 / 300 / 100 samples, shuffled
_SHUFFLE = torch.randperm(1000, generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)[_SHUFFLE]


def _assert_partition(a: torch.Tensor, b: torch.Tensor, n: int) -> None:
    both = torch.cat([a, b])
    assert both.dtype == torch.int64
    assert torch.equal(torch.sort(both).values, torch.arange(n)), "not disjoint / not covering"
    assert torch.equal(a, torch.sort(a).values) and torch.equal(b, torch.sort(b).values)


def test_stratified_split_is_deterministic_and_independent_of_global_rng() -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    keep1, take1 = stratified_split(LABELS, 0.2, seed=7)
    torch.manual_seed(999)
    np.random.seed(999)
    keep2, take2 = stratified_split(LABELS, 0.2, seed=7)
    assert torch.equal(keep1, keep2) and torch.equal(take1, take2)
    _, take3 = stratified_split(LABELS, 0.2, seed=8)
    assert not torch.equal(take1, take3)


def test_stratified_split_proportions_and_partition() -> None:
    keep, take = stratified_split(LABELS, 0.1, seed=0)
    _assert_partition(keep, take, 1000)
    assert torch.bincount(LABELS[take]).tolist() == [60, 30, 10]
    keep, take = stratified_split(LABELS.numpy(), 0.25, seed=3)  # numpy input too
    assert len(take) == 250
    assert torch.bincount(LABELS[take]).tolist() == [150, 75, 25]


def test_stratified_split_rounding_keeps_total() -> None:
    labels = torch.tensor([0] * 7 + [1] * 5 + [2] * 3)
    for fraction in (0.0, 0.1, 0.33, 0.5, 0.9):
        keep, take = stratified_split(labels, fraction, seed=1)
        _assert_partition(keep, take, 15)
        assert len(take) == round(fraction * 15)
        counts = torch.bincount(labels[take], minlength=3)
        expected = torch.tensor([7, 5, 3]) * fraction
        assert (counts - expected).abs().max() < 1.0


def test_stratified_split_rejects_bad_fraction() -> None:
    with pytest.raises(SplitError, match="fraction"):
        stratified_split(LABELS, 1.0, seed=0)


def test_stratified_subset() -> None:
    idx = stratified_subset(LABELS, 100, seed=4)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    assert torch.bincount(LABELS[idx]).tolist() == [60, 30, 10]
    assert torch.equal(idx, stratified_subset(LABELS, 100, seed=4))
    assert torch.equal(stratified_subset(LABELS, 5000, seed=4), torch.arange(1000))


def test_labeled_unlabeled_exact_per_class() -> None:
    lab, unl = labeled_unlabeled(LABELS, 40, seed=2)
    _assert_partition(lab, unl, 1000)
    assert torch.bincount(LABELS[lab]).tolist() == [40, 40, 40]
    lab2, unl2 = labeled_unlabeled(LABELS, 40, seed=2)
    assert torch.equal(lab, lab2) and torch.equal(unl, unl2)
    lab3, _ = labeled_unlabeled(LABELS, 40, seed=3)
    assert not torch.equal(lab, lab3)


def test_labeled_unlabeled_all_of_smallest_class() -> None:
    lab, _ = labeled_unlabeled(LABELS, 100, seed=0)
    assert (LABELS[lab] == 2).sum() == 100


def test_labels_per_class_too_large_names_the_class() -> None:
    with pytest.raises(SplitError, match=r"class 'bird' \(label 2\) has only 100"):
        labeled_unlabeled(LABELS, 250, seed=0, class_names=["cat", "dog", "bird"])
    with pytest.raises(SplitError, match="class 2 has only 100"):
        labeled_unlabeled(LABELS, 101, seed=0)


def test_labels_per_class_missing_class_is_an_error() -> None:
    with pytest.raises(SplitError, match=r"'d' \(label 3\) has only 0"):
        labeled_unlabeled(LABELS, 1, seed=0, class_names=["a", "b", "c", "d"])
