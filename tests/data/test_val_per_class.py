"""``data.val_per_class``: a val split as scarce as the labels, and the header's count of the
labeled images a run trains and selects on together."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from auxilia.data.config import DataConfig
from auxilia.data.sources import DataError, describe_splits, load_dataset


def _counts(labels: torch.Tensor) -> list[int]:
    return torch.bincount(labels, minlength=10).tolist()


def test_val_holds_exactly_that_many_per_class_seeded_by_split_seed() -> None:
    data = load_dataset(DataConfig(val_per_class=7), seed=0)
    assert _counts(data.val.labels) == [7] * 10
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert data.origins["val"] == "carved from train (val_per_class=7, split_seed=0)"
    # the run seed does not move val; split_seed does
    again = load_dataset(DataConfig(val_per_class=7), seed=5)
    assert list(again.val.names) == list(data.val.names)
    other = load_dataset(DataConfig(val_per_class=7, split_seed=1), seed=0)
    assert list(other.val.names) != list(data.val.names)


def test_val_never_overlaps_train_test_or_the_unlabeled_pool() -> None:
    data = load_dataset(DataConfig(val_per_class=10, labels_per_class=10), seed=3)
    assert data.unlabeled is not None
    val = set(data.val.names)
    for split in (data.train, data.test, data.unlabeled):
        assert not val & set(split.names)
    keys = set(data.val.keys.tolist())
    for split in (data.train, data.test, data.unlabeled):
        assert not keys & set(split.keys.tolist())
    # every training image is labeled train, hidden in the unlabeled pool, or val / test
    total = len(data.train) + len(data.unlabeled) + len(data.val) + len(data.test)
    assert total == 1797


def test_header_counts_train_and_val_labels_together() -> None:
    data = load_dataset(DataConfig(labels_per_class=10, val_per_class=10), seed=0)
    lines = describe_splits(data)
    assert lines[-1] == ("labeled images: 100 to train (10 per class) + 100 to select on "
                         "(val, 10 per class) = 200")
    # labels limited, val carved by fraction: its 180 labels are counted too
    frac = describe_splits(load_dataset(DataConfig(labels_per_class=10), seed=0))
    assert frac[-1] == ("labeled images: 100 to train (10 per class) + 180 to select on "
                        "(val, 18 per class) = 280")
    # a supervised run on every label keeps the header as it was
    full = describe_splits(load_dataset(DataConfig(), seed=0))
    assert not any(line.startswith("labeled images") for line in full)
    assert len(full) == 3


def test_labels_fraction_line_gives_the_range_per_class() -> None:
    data = load_dataset(DataConfig(labels_fraction=0.055, val_per_class=3), seed=0)
    n = len(data.train)
    per = _counts(data.train.labels)
    assert min(per) < max(per)  # 5.5 % of about 140 images per class: 7 or 8
    line = describe_splits(data)[-1]
    assert line == (f"labeled images: {n} to train ({min(per)} to {max(per)} per class) + 30 "
                    f"to select on (val, 3 per class) = {n + 30}")


def test_val_per_class_with_another_val_fraction_is_refused() -> None:
    with pytest.raises(DataError, match=r"^data\.val_per_class=10 and data\.val_fraction=0\.2 "
                                        r"both size the val split; keep one of them$"):
        load_dataset(DataConfig(val_per_class=10, val_fraction=0.2))


def test_a_class_too_small_for_train_and_val_is_named_with_its_counts() -> None:
    data = load_dataset(DataConfig(), seed=0)
    pool = _counts(torch.cat([data.train.labels, data.val.labels]))  # train before the carve
    ask = min(pool)
    short = next(c for c in range(10) if pool[c] < ask + 5)  # the first class named
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(val_per_class=ask, labels_per_class=5))
    message = str(info.value)
    assert message.startswith(f"data.val_per_class={ask} with data.labels_per_class=5 needs "
                              f"{ask + 5} images of every class ({ask} to val, 5 to train) but "
                              f"class '{short}' (label {short}) has only {pool[short]} training "
                              "samples")
    assert message.endswith(f"lower data.val_per_class to at most {ask - 5}")
    # without labels_per_class a class must keep one training image
    with pytest.raises(DataError, match=r"\(\d+ to val, at least 1 to train\) but class"):
        load_dataset(DataConfig(val_per_class=ask))
    assert _counts(load_dataset(DataConfig(val_per_class=ask - 1)).val.labels) == [ask - 1] * 10


def test_small_val_note_suggests_val_per_class() -> None:
    data = load_dataset(DataConfig(val_per_class=4), seed=0)
    assert any("raise data.val_per_class to 10" in note for note in data.notes)
    assert not any("val_fraction" in note for note in data.notes)


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("file", str(path))  # unique bytes: identical files would be dropped
    Image.new("RGB", (6, 6), (value, 0, 0)).save(path, pnginfo=info)


def test_refused_when_the_data_has_its_own_val_split(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        for c, name in enumerate(("ant", "bee")):
            for i in range(4):
                _png(tmp_path / split / name / f"{i}.png", 40 * c + i)
    cfg = DataConfig(source="folder", root=str(tmp_path), val_per_class=2)
    with pytest.raises(DataError, match=r"data\.val_per_class=2 carves val from train, but the "
                                        r"data has its own val split \(folder val/\); unset"):
        load_dataset(cfg)
    # the same folder without val/: val_per_class carves it
    (tmp_path / "val").rename(tmp_path.parent / f"{tmp_path.name}-val")
    data = load_dataset(cfg)
    assert torch.bincount(data.val.labels).tolist() == [2, 2]
    assert data.origins["val"] == "carved from train (val_per_class=2, split_seed=0)"
