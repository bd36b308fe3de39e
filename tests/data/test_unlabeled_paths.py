"""``data.unlabeled`` never takes a split or a class: a folder or CSV of the labeled data's
files (test, val, train, a class, data.root, or files reached through links) is refused before
anything is decoded, however its path is spelled; a folder beside the split folders is fine."""

from __future__ import annotations

import os
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from auxilia.cli import main
from auxilia.data.config import CsvFiles, DataConfig
from auxilia.data.folders import split_of
from auxilia.data.sources import DataError, load_dataset
from auxilia.data.types import DatasetSplits

CLASSES = ("ant", "bee", "cat")
COUNTS = {"train": 4, "val": 2, "test": 2}


def _png(path: Path, seed: int) -> Path:
    """A random 8x8 PNG: different seeds, different bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _splits(root: Path, names: tuple[str, ...] = ("train", "val", "test")) -> Path:
    """``root/<split>/<class>/<i>.png`` (4 train, 2 val, 2 test per class)."""
    for s, split in enumerate(names):
        for c, name in enumerate(CLASSES):
            for i in range(COUNTS[split_of(split) or split]):
                _png(root / split / name / f"{i}.png", 1000 * s + 100 * c + i)
    return root


def _classes(root: Path) -> Path:
    """``root/<class>/<i>.png``: val and test are carved from them."""
    for c, name in enumerate(CLASSES):
        for i in range(10):
            _png(root / name / f"{i}.png", 100 * c + i)
    return root


def _unlabeled(folder: Path, n: int = 3) -> Path:
    for i in range(n):
        _png(folder / f"u{i}.png", 9000 + i)
    return folder


def _load(root: Path, unlabeled: str | Path, **kw: Any) -> DatasetSplits:
    return load_dataset(DataConfig(source="folder", root=str(root), unlabeled=str(unlabeled),
                                   **kw))


# ----------------------------------------------------------------------------- split folders


TEST_SPELLINGS = ["relative", "relative-slash", "absolute", "absolute-slash", "dot-dot",
                  "symlink", "symlinked-parent", "from-cwd"]


def _spell(spelling: str, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``root/test`` spelled another way."""
    if spelling == "symlink":
        (tmp_path / "link").symlink_to(root / "test", target_is_directory=True)
        return str(tmp_path / "link")
    if spelling == "symlinked-parent":
        (tmp_path / "alias").symlink_to(root, target_is_directory=True)
        return str(tmp_path / "alias" / "test")
    if spelling == "from-cwd":  # relative to data.root, which is itself relative
        monkeypatch.chdir(tmp_path)
        return "test"
    return {"relative": "test", "relative-slash": "test/", "absolute": str(root / "test"),
            "absolute-slash": f"{root / 'test'}/", "dot-dot": "train/../test"}[spelling]


@pytest.mark.parametrize("spelling", TEST_SPELLINGS)
def test_the_test_folder_is_refused_however_it_is_spelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str) -> None:
    root = _splits(tmp_path / "pets")
    unlabeled = _spell(spelling, root, tmp_path, monkeypatch)
    data_root = "pets" if spelling == "from-cwd" else str(root)
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(source="folder", root=data_root, unlabeled=unlabeled))
    message = str(err.value)
    assert message.startswith(f"data.unlabeled={unlabeled}")
    assert " is the test folder test/ of data.root: it holds labeled images (6 test; " in message
    assert "val and test images never enter training" in message and "\n" not in message


def test_the_val_folder_is_refused(tmp_path: Path) -> None:
    root = _splits(tmp_path / "pets")
    with pytest.raises(DataError, match=r"^data.unlabeled=val \(.*pets/val\) is the val folder "
                                        r"val/ of data.root: it holds labeled images \(6 val; "
                                        r".*val and test images never enter training"):
        _load(root, "val")


def test_a_split_folder_in_another_case_is_refused(tmp_path: Path) -> None:
    """The folder source reads ``Test/`` as the test split; named in data.unlabeled it is
    still the test split, not a folder beside the splits."""
    root = _splits(tmp_path / "pets", ("Train", "Valid", "Test"))
    with pytest.raises(DataError, match=r"is the test folder Test/ of data.root: it holds "
                                        r"labeled images \(6 test;"):
        _load(root, "Test")


def test_the_train_folder_is_refused_with_the_includes_labeled_fix(tmp_path: Path) -> None:
    root = _splits(tmp_path / "pets")
    with pytest.raises(DataError) as err:
        _load(root, root / "train")
    message = str(err.value)
    assert "is the train folder train/ of data.root: it holds labeled images (12 train;" in message
    assert "set data.unlabeled_includes_labeled=true" in message and "\n" not in message
    data = load_dataset(DataConfig(source="folder", root=str(root),
                                   unlabeled_includes_labeled=True))
    assert data.unlabeled is not None and len(data.unlabeled) == len(data.train) == 12


def test_the_root_is_refused(tmp_path: Path) -> None:
    root = _splits(tmp_path / "pets")
    for unlabeled in (".", str(root), str(tmp_path / "pets" / ".." / "pets")):
        with pytest.raises(DataError, match=r"is data.root: it holds labeled images \(6 test, "
                                            r"6 val, 12 train; .*never enter training.*"
                                            r"unlabeled_includes_labeled=true"):
            _load(root, unlabeled)


# ----------------------------------------------------------------------------- class folders


def test_a_class_folder_of_a_split_is_refused(tmp_path: Path) -> None:
    root = _splits(tmp_path / "pets")
    with pytest.raises(DataError, match=r"is the folder of class 'bee' \(test/bee/\) of "
                                        r"data.root: it holds labeled images \(2 test;"):
        _load(root, "test/bee")
    with pytest.raises(DataError, match=r"is the folder of class 'cat' \(train/cat/\) of "
                                        r"data.root: it holds labeled images \(4 train;.*"
                                        r"unlabeled_includes_labeled=true"):
        _load(root, "train/cat")


def test_a_class_folder_never_leaves_the_classes(tmp_path: Path) -> None:
    """In a root of class folders every folder is a class, also the one named in
    data.unlabeled: it is refused (it used to disappear from the classes silently)."""
    root = _classes(tmp_path / "pets")
    for unlabeled in ("cat", str(root / "cat"), "ant/../cat/"):
        with pytest.raises(DataError, match=r"is the folder of class 'cat' \(cat/\) of "
                                            r"data.root: it holds labeled images \(10 train;.*"
                                            r"every folder is a class"):
            _load(root, unlabeled)
    _unlabeled(root / "unlabeled")  # meant as unlabeled images: still a class folder here
    with pytest.raises(DataError, match=r"class 'unlabeled' .*keep unlabeled images outside "
                                        r"data.root, or put the class folders in "
                                        r"data.root/train/"):
        _load(root, "unlabeled")


def test_automatic_sizing_keeps_every_class(tmp_path: Path) -> None:
    from auxilia.engine.auto import _train_files

    root = _classes(tmp_path / "pets")
    files = _train_files(DataConfig(source="folder", root=str(root), unlabeled="cat"))
    assert len(files) == 30 and any("/cat/" in str(f) for f in files)


# ----------------------------------------------------------------------------- the files


def test_a_folder_holding_the_actual_test_files_is_refused(tmp_path: Path) -> None:
    """Links to test files (symbolic or hard) are the test files; a parent of data.root holds
    all of them. A copy is another file: the content check drops it instead."""
    root = _splits(tmp_path / "data" / "pets")
    links = _unlabeled(tmp_path / "links")
    (links / "sym.png").symlink_to(root / "test" / "ant" / "0.png")
    with pytest.raises(DataError, match=r"data.unlabeled=.*links: it holds labeled images "
                                        r"\(1 test; e.g. the test image .*links/sym.png, which "
                                        r"is .*pets/test/ant/0.png\)"):
        _load(root, links)
    hard = _unlabeled(tmp_path / "hard")
    os.link(root / "val" / "bee" / "1.png", hard / "hard.png")
    with pytest.raises(DataError, match=r"hard: it holds labeled images \(1 val;"):
        _load(root, hard)
    with pytest.raises(DataError, match=r"data: it holds labeled images \(6 test, 6 val, 12 "
                                        r"train;"):
        _load(root, tmp_path / "data")
    copies = _unlabeled(tmp_path / "copies")
    shutil.copy(root / "test" / "ant" / "0.png", copies / "copy.png")
    data = _load(root, copies)
    assert data.unlabeled is not None and len(data.unlabeled) == 3  # the copy dropped
    assert any("also occur in test" in n for n in data.notes)


def test_a_csv_listing_test_files_is_refused(tmp_path: Path) -> None:
    root = _splits(tmp_path / "pets")
    _unlabeled(tmp_path / "lists" / "img", 2)
    listing = tmp_path / "lists" / "unl.csv"
    listing.write_text("filename\nimg/u0.png\n../pets/test/cat/1.png\nimg/u1.png\n")
    with pytest.raises(DataError, match=r"unl.csv: the CSV lists labeled images \(1 test; e.g. "
                                        r"the test image .*lists/../pets/test/cat/1.png, "
                                        r"which is .*pets/test/cat/1.png\); val and test"):
        _load(root, listing)


def test_the_image_folder_of_a_csv_source_is_refused(tmp_path: Path) -> None:
    images = _classes(tmp_path / "images")
    rows = "\n".join(f"{c}/{i}.png,{c}" for c in CLASSES for i in range(10))
    (tmp_path / "train.csv").write_text(f"filename,class\n{rows}\n")
    cfg = DataConfig(source="csv", csv=CsvFiles(train=str(tmp_path / "train.csv"),
                                                image_dir=str(images)),
                     unlabeled=str(images / "bee"))
    with pytest.raises(DataError, match=r"bee: it holds labeled images \(10 train;.*"
                                        r"unlabeled_includes_labeled=true"):
        load_dataset(cfg)


# ----------------------------------------------------------------------------- what is allowed


@pytest.mark.parametrize("spelling", ["relative", "absolute", "symlink"])
def test_a_folder_beside_the_split_folders_is_unlabeled_data(tmp_path: Path,
                                                             spelling: str) -> None:
    root = _splits(tmp_path / "pets")
    extra = _unlabeled(root / "extra_unlabeled", 4)
    (tmp_path / "link").symlink_to(extra, target_is_directory=True)
    unlabeled = {"relative": "extra_unlabeled", "absolute": str(extra),
                 "symlink": str(tmp_path / "link")}[spelling]
    data = _load(root, unlabeled)
    assert data.classes == list(CLASSES)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 6, 6)
    assert data.unlabeled is not None and len(data.unlabeled) == 4


def test_another_folder_beside_the_splits_is_still_refused(tmp_path: Path) -> None:
    root = _splits(tmp_path / "pets")
    _unlabeled(root / "extra_unlabeled")
    _unlabeled(root / "stray")
    with pytest.raises(DataError, match=r"other folders beside them \(stray\)"):
        _load(root, "extra_unlabeled")


# ----------------------------------------------------------------------------- unreadable


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_no_readable_image_names_the_setting_and_the_path(tmp_path: Path, policy: str) -> None:
    root = _splits(tmp_path / "pets")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    (broken / "b.jpg").write_bytes(b"")
    warns = pytest.warns(UserWarning, match="skipped 2") if policy == "skip" else nullcontext()
    with warns, pytest.raises(DataError) as err:
        _load(root, broken, on_bad_image=policy)
    message = str(err.value)
    assert message.startswith(f"data.unlabeled={broken}: no readable image (2 files, all "
                              f"undecodable: {broken / 'a.png'} (")
    assert "unset data.unlabeled" in message and "\n" not in message
    listing = tmp_path / "unl.csv"
    listing.write_text("filename\nbroken/a.png\nmissing.png\n")
    with pytest.raises(DataError, match=r"^data.unlabeled=.*unl.csv: no readable image \(2 "
                                        r"files, all undecodable: .*missing.png "
                                        r"\(FileNotFoundError"):
        _load(root, listing)


# ----------------------------------------------------------------------------- the CLI


def test_cli_refuses_the_test_folder_in_one_line_before_any_run_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _splits(tmp_path / "pets")
    runs = tmp_path / "runs"
    code = main(["train", "data.source=folder", f"data.root={root}", "data.unlabeled=test",
                 f"run.dir={runs}", "run.progress=off", "train.steps=1", "model.name=small_cnn"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: data.unlabeled=test ({root / 'test'}) is the test folder ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not runs.exists()
