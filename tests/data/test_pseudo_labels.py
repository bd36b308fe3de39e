"""Noisy Student's pseudo-labels: filtering, balancing, the file, and the student's split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from auxilia.data.config import DataConfig
from auxilia.data.identity import identity, same
from auxilia.data.pseudo_labels import (
    PSEUDO_FIELD,
    PseudoLabels,
    attach_pseudo_labels,
    pseudo_targets,
    read_pseudo_labels,
    select_and_balance,
    write_pseudo_labels,
)
from auxilia.data.raw import DataError
from auxilia.data.sources import load_dataset


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_images_below_the_confidence_floor_are_dropped() -> None:
    confidence = torch.tensor([0.9, 0.29, 0.3, 0.5, 0.1])
    predicted = torch.tensor([0, 0, 1, 1, 1])
    rows = select_and_balance(confidence, predicted, 2, 0.3, None, _gen())
    assert rows.tolist() == [0, 2, 3]  # class by class, ascending; 0.3 itself is kept


def test_a_small_class_is_duplicated_to_the_count_with_whole_copies() -> None:
    predicted = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1])
    rows = select_and_balance(torch.ones(8), predicted, 2, 0.3, 6, _gen())
    counts = torch.bincount(predicted[rows], minlength=2)
    assert counts.tolist() == [6, 6]
    assert rows[:6].tolist() == [0, 0, 0, 1, 1, 1]  # an image's copies adjacent


def test_duplication_rounds_the_fraction_stochastically_to_the_count_on_average() -> None:
    predicted = torch.zeros(3, dtype=torch.long)  # 3 images, 7 wanted: 2.33 copies each
    sizes = [len(select_and_balance(torch.ones(3), predicted, 1, 0.0, 7, _gen(s)))
             for s in range(400)]
    assert set(sizes) <= {6, 7, 8, 9}  # 2 or 3 copies of each
    assert abs(np.mean(sizes) - 7) < 0.15


def test_a_large_class_is_trimmed_keeping_each_with_probability_count_over_total() -> None:
    predicted = torch.zeros(1000, dtype=torch.long)
    rows = select_and_balance(torch.ones(1000), predicted, 1, 0.0, 250, _gen())
    assert 200 < len(rows) < 300 and len(set(rows.tolist())) == len(rows)  # no repeats
    again = select_and_balance(torch.ones(1000), predicted, 1, 0.0, 250, _gen())
    assert torch.equal(rows, again)  # the same generator state draws the same entries


def test_soft_targets_are_the_probabilities_and_hard_ones_smoothed_one_hot() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert torch.equal(pseudo_targets(probs, soft=True, smoothing=0.1), probs)
    hard = pseudo_targets(probs, soft=False, smoothing=0.1)
    assert torch.allclose(hard[0], torch.tensor([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]))
    assert torch.allclose(hard.sum(1), torch.ones(2))


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(source="digits", labels_per_class=10, test_fraction=0.2),
                        seed=0)


def _labels(data, rows: torch.Tensor, teacher: str = "a" * 64) -> PseudoLabels:
    unl = data.unlabeled
    probs = torch.softmax(torch.randn(len(rows), 10, generator=_gen()), 1)
    return PseudoLabels(unl.keys[rows], unl.names[rows.numpy()], probs, probs.argmax(1),
                        probs.max(1).values,
                        {"classes": list(data.classes), "teacher": {"sha256": teacher}})


def test_the_file_round_trips_and_becomes_the_pseudo_split(tmp_path: Path, digits) -> None:
    rows = torch.tensor([5, 5, 9, 40])
    labels = _labels(digits, rows)
    write_pseudo_labels(tmp_path / "p.npz", labels)
    back = read_pseudo_labels(tmp_path / "p.npz")
    assert torch.equal(back.keys, labels.keys) and torch.equal(back.targets, labels.targets)
    data = attach_pseudo_labels(digits, tmp_path / "p.npz")
    assert data.pseudo is not None and len(data.pseudo) == 4
    assert torch.equal(data.pseudo.images, digits.unlabeled.images[rows])  # by content key
    assert torch.equal(data.pseudo.targets[PSEUDO_FIELD], labels.targets)
    assert torch.equal(data.pseudo.true_labels, digits.unlabeled.true_labels[rows])


def test_the_file_and_its_teacher_are_part_of_the_fingerprint(tmp_path: Path, digits) -> None:
    rows = torch.arange(10)
    write_pseudo_labels(tmp_path / "a.npz", _labels(digits, rows))
    write_pseudo_labels(tmp_path / "b.npz", _labels(digits, rows, teacher="b" * 64))
    first = identity(attach_pseudo_labels(digits, tmp_path / "a.npz"), "digits")
    other = identity(attach_pseudo_labels(digits, tmp_path / "b.npz"), "digits")
    assert first["pseudo_labels"]["teacher"] == "a" * 64
    assert not same(first, other)  # another teacher: other data
    labels = _labels(digits, rows)
    write_pseudo_labels(tmp_path / "c.npz", replace(labels, targets=labels.targets.flip(1)))
    changed = identity(attach_pseudo_labels(digits, tmp_path / "c.npz"), "digits")
    assert changed["splits"]["pseudo"]["digest"] != first["splits"]["pseudo"]["digest"]


def test_an_entry_that_is_not_an_unlabeled_image_is_refused(tmp_path: Path, digits) -> None:
    labels = _labels(digits, torch.arange(3))
    test_key = digits.test.keys[:1]  # a test image can never become a training target
    write_pseudo_labels(tmp_path / "p.npz", replace(labels, keys=torch.cat([labels.keys[:2],
                                                                            test_key])))
    with pytest.raises(DataError, match="1 of its 3 entries label images that are not among"):
        attach_pseudo_labels(digits, tmp_path / "p.npz")


def test_other_classes_a_missing_file_and_a_foreign_file_are_refused(tmp_path: Path,
                                                                       digits) -> None:
    labels = _labels(digits, torch.arange(3))
    write_pseudo_labels(tmp_path / "p.npz", replace(labels, record={
        **labels.record, "classes": [str(c) for c in range(1, 11)]}))
    with pytest.raises(DataError, match="labels the classes"):
        attach_pseudo_labels(digits, tmp_path / "p.npz")
    with pytest.raises(DataError, match="no such file"):
        read_pseudo_labels(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="not a pseudo-label file"):
        read_pseudo_labels(tmp_path / "other.npz")
