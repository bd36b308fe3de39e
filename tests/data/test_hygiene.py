"""Data hygiene: copies across and inside splits, contradicting CSV rows, split folder names,
impossible class sets, file encodings and special files."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auxilia.data.config import CsvFiles, DataConfig
from auxilia.data.hygiene import array_keys
from auxilia.data.sources import DataError, load_dataset
from auxilia.data.types import DatasetSplits

CLASSES = ("ant", "bee", "cat")


def _write(path: Path, seed: int) -> Path:
    """A random 8x8 RGB PNG: different seeds, different images."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _tree(root: Path, n: int = 6, start: int = 0) -> Path:
    for c, name in enumerate(CLASSES):
        for i in range(n):
            _write(root / name / f"{i}.png", start + 100 * c + i)
    return root


def _splits_tree(root: Path) -> Path:
    _tree(root / "train", 6, 0)
    _tree(root / "val", 2, 1000)
    _tree(root / "test", 3, 2000)
    return root


def _keys(data: DatasetSplits) -> dict[str, set[int]]:
    return {name: set(getattr(data, name).keys.tolist()) for name in ("train", "val", "test")}


@pytest.fixture(autouse=True)
def _never_hang() -> Iterator[None]:
    """A FIFO that is opened for reading blocks forever: fail the test instead."""
    signal.alarm(60)
    yield
    signal.alarm(0)


# ----------------------------------------------------------------------------- across splits


def test_a_test_image_that_is_also_in_train_is_dropped_from_test(tmp_path: Path) -> None:
    root = _splits_tree(tmp_path)
    shutil.copy(root / "train" / "ant" / "0.png", root / "test" / "ant" / "copy.png")
    shutil.copy(root / "train" / "bee" / "1.png", root / "test" / "cat" / "relabelled.png")
    data = load_dataset(DataConfig(source="folder", root=str(root)))
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 9)  # 11 - 2 copies
    assert not set(data.test.names) & {"test/ant/copy.png", "test/cat/relabelled.png"}
    keys = _keys(data)
    assert not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    note = next(n for n in data.notes if "also occur in" in n)
    assert "2 test image(s) also occur in train" in note
    assert "1 of them under a different class" in note
    assert "dropped from test" in note


def test_copies_across_splits_can_be_refused_or_kept(tmp_path: Path) -> None:
    root = _splits_tree(tmp_path)
    shutil.copy(root / "train" / "ant" / "0.png", root / "val" / "ant" / "copy.png")
    with pytest.raises(DataError,
                       match=r"1 val image\(s\) also occur in train .*val/ant/copy\.png"):
        load_dataset(DataConfig(source="folder", root=str(root), duplicates="error"))
    kept = load_dataset(DataConfig(source="folder", root=str(root), duplicates="keep"))
    assert len(kept.val) == 7 and any("kept (data.duplicates=keep)" in n for n in kept.notes)
    dropped = load_dataset(DataConfig(source="folder", root=str(root)))
    assert len(dropped.val) == 6


def test_a_test_image_that_is_also_in_val_is_dropped_from_test(tmp_path: Path) -> None:
    root = _splits_tree(tmp_path)
    shutil.copy(root / "val" / "bee" / "0.png", root / "test" / "bee" / "copy.png")
    data = load_dataset(DataConfig(source="folder", root=str(root)))
    assert (len(data.val), len(data.test)) == (6, 9)
    assert any("1 test image(s) also occur in train/val" in n for n in data.notes)


def test_copies_in_one_pool_never_straddle_the_carved_splits(tmp_path: Path) -> None:
    root = _tree(tmp_path, 10)
    for i in range(4):  # four copies of one image, and another one filed under two classes
        shutil.copy(root / "ant" / "0.png", root / "ant" / f"dup{i}.png")
    shutil.copy(root / "bee" / "3.png", root / "cat" / "also-bee.png")
    data = load_dataset(DataConfig(source="folder", root=str(root), val_fraction=0.2,
                                   test_fraction=0.3))
    keys = _keys(data)
    assert not (keys["train"] & keys["val"] or keys["train"] & keys["test"]
                or keys["val"] & keys["test"])
    assert len(data.train) + len(data.val) + len(data.test) == 30 - 1  # bee/3 and its copy gone
    notes = " | ".join(data.notes)
    assert "train: dropped 4 copies of images that occur more than once" in notes
    assert ("train: dropped 2 images whose identical copies are filed under different "
            "classes") in notes


# ----------------------------------------------------------------------------- CSV rows


def _csv(path: Path, rows: list[tuple[str, str]], encoding: str = "utf-8") -> Path:
    path.write_bytes(("filename,class\n" + "".join(f"{f},{c}\n" for f, c in rows))
                     .encode(encoding))
    return path


def _csv_images(root: Path, n: int = 4) -> list[tuple[str, str]]:
    rows = []
    for c, name in enumerate(CLASSES):
        for i in range(n):
            _write(root / "img" / f"{name}{i}.png", 10 * c + i)
            rows.append((f"img/{name}{i}.png", name))
    return rows


def test_a_csv_row_contradicting_another_is_an_error_and_a_repeat_is_used_once(
        tmp_path: Path) -> None:
    rows = _csv_images(tmp_path)
    bad = _csv(tmp_path / "train.csv", [*rows, ("img/ant0.png", "bee")])
    with pytest.raises(DataError, match=r"'img/ant0\.png' is labelled 'ant' on line 2 and 'bee' "
                                        r"on line 14"):
        load_dataset(DataConfig(source="csv", csv=CsvFiles(train=str(bad))))
    repeated = _csv(tmp_path / "train.csv", [*rows, ("img/ant0.png", "ant")])
    data = load_dataset(DataConfig(source="csv", csv=CsvFiles(train=str(repeated))))
    assert len(data.train) + len(data.val) + len(data.test) == 12
    assert any("lists 1 file(s) twice with the same label" in n for n in data.notes)


def test_the_same_file_in_the_train_and_test_csv_is_dropped_from_test(tmp_path: Path) -> None:
    rows = _csv_images(tmp_path)
    train = _csv(tmp_path / "train.csv", rows[:-1])
    test = _csv(tmp_path / "test.csv", [rows[-1], rows[0]])
    data = load_dataset(DataConfig(source="csv", csv=CsvFiles(train=str(train), test=str(test))))
    assert list(data.test.names) == [rows[-1][0]]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_csv_files_in_utf8_with_bom_or_utf16_are_read(tmp_path: Path, encoding: str) -> None:
    rows = _csv_images(tmp_path)
    path = _csv(tmp_path / "train.csv", rows, encoding)
    data = load_dataset(DataConfig(source="csv", csv=CsvFiles(train=str(path))))
    assert data.classes == list(CLASSES)


def test_a_csv_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    rows = _csv_images(tmp_path)
    path = tmp_path / "train.csv"
    path.write_bytes(b"filename,class\n" + b"".join(f"{f},{c}\n".encode() for f, c in rows)
                     + "img/caf\u00e9.png,ant\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"train CSV .*train\.csv is not UTF-8 text \(byte 0xe9 "
                                        r"at position \d+\); save it as UTF-8"):
        load_dataset(DataConfig(source="csv", csv=CsvFiles(train=str(path))))


# ----------------------------------------------------------------------------- special files


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_among_the_images_is_refused_not_read(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    os.mkfifo(root / "ant" / "pipe.png")
    with pytest.raises(DataError, match=r"pipe\.png \(OSError: a FIFO, not a regular file"):
        load_dataset(DataConfig(source="folder", root=str(root)))
    data = load_dataset(DataConfig(source="folder", root=str(root), on_bad_image="skip"))
    assert len(data.train) + len(data.val) + len(data.test) == 18


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_csv_that_is_a_fifo_or_a_folder_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "train.csv")
    with pytest.raises(DataError, match=r"train CSV .*train\.csv is a FIFO \(named pipe\), not "
                                        r"a regular file"):
        load_dataset(DataConfig(source="csv", csv=CsvFiles(train=str(tmp_path / "train.csv"))))
    with pytest.raises(DataError, match=r"train CSV .* is a directory, not a file"):
        load_dataset(DataConfig(source="csv", csv=CsvFiles(train=str(tmp_path))))


# ----------------------------------------------------------------------------- split folders


@pytest.mark.parametrize("names", [("Train", "Validation", "TEST"), ("training", "valid", "Test"),
                                   ("TRAIN", "dev", "testing")])
def test_split_folders_are_recognised_whatever_their_case(tmp_path: Path,
                                                          names: tuple[str, str, str]) -> None:
    for name, n, start in zip(names, (6, 2, 3), (0, 1000, 2000), strict=True):
        _tree(tmp_path / name, n, start)
    data = load_dataset(DataConfig(source="folder", root=str(tmp_path)))
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 9)
    assert data.classes == list(CLASSES)
    assert data.origins == {"train": f"folder {names[0]}/", "val": f"folder {names[1]}/",
                            "test": f"folder {names[2]}/"}


@pytest.mark.parametrize(("names", "message"), [
    (("seg_train", "seg_test"), r"looks like split folders .*seg_test/, seg_train/.*rename them "
                                r"to train/, val/, test/"),
    (("train", "Training"), r"2 folders for the train split \(Training, train\)"),
    (("val", "test"), r"split folders but no training folder: found test/, val/"),
])
def test_unrecognised_split_folders_are_named(tmp_path: Path, names: tuple[str, ...],
                                              message: str) -> None:
    for i, name in enumerate(names):
        _tree(tmp_path / name, 3, 1000 * i)
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(source="folder", root=str(tmp_path)))


# ----------------------------------------------------------------------------- classes


def test_a_dataset_with_one_class_is_refused(tmp_path: Path) -> None:
    for i in range(6):
        _write(tmp_path / "only" / f"{i}.png", i)
    with pytest.raises(DataError, match=r"1 class \(only\): a classifier needs at least two"):
        load_dataset(DataConfig(source="folder", root=str(tmp_path)))


def test_a_train_subset_that_leaves_a_class_empty_is_refused() -> None:
    with pytest.raises(DataError, match=r"no training sample .*data\.train_subset=5 is too small "
                                        r"for 10 classes: use at least 10"):
        load_dataset(DataConfig(source="digits", train_subset=5))
    assert len(load_dataset(DataConfig(source="digits", train_subset=10)).train) == 10


# ----------------------------------------------------------------------------- array keys


def test_array_keys_are_equal_exactly_for_identical_images() -> None:
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    images[7] = images[3]
    keys = array_keys(images)
    assert keys.dtype == torch.int64 and keys.shape == (50,)
    assert keys[7] == keys[3] and len(set(keys.tolist())) == 49
    images[7, 0, 0, 0] ^= 1
    assert array_keys(images)[7] != keys[3]
