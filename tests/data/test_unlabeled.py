"""The unlabeled split: labels_fraction, unlabeled_includes_labeled, the hidden truth, the
user's unlabeled folder or CSV, and val/test images kept out of it whichever way it is made."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from auxilia.data.config import DataConfig
from auxilia.data.sources import DataError, load_dataset, read_source
from auxilia.data.splits import labeled_fraction, labeled_unlabeled
from auxilia.data.types import Split

CLASSES = ("ant", "bee", "cat")
_SHUFFLE = torch.randperm(1000, generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)[_SHUFFLE]


def _png(path: Path, seed: int, size: int = 12, mode: str = "RGB") -> Path:
    """A random PNG: different seeds, different images (and bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _labeled(root: Path, with_test: bool = True) -> Path:
    """``root/train/<class>/`` (8 each) and, when asked, ``root/test/<class>/`` (3 each)."""
    for c, name in enumerate(CLASSES):
        for i in range(8):
            _png(root / ("train" if with_test else "") / name / f"{i}.png", 100 * c + i)
        for i in range(3 if with_test else 0):
            _png(root / "test" / name / f"{i}.png", 5000 + 100 * c + i)
    return root


def _unlabeled(folder: Path, n: int = 5) -> Path:
    """``n`` unlabeled PNGs, some in a nested subfolder (found recursively)."""
    for i in range(n):
        _png(folder / ("deep/er" if i % 2 else "") / f"u{i}.png", 9000 + i)
    return folder


def _keys(split: Split | None) -> set[int]:
    assert split is not None and split.keys is not None
    return set(split.keys.tolist())


def _by_key(split: Split) -> dict[int, int]:
    assert split.keys is not None
    return dict(zip(split.keys.tolist(), split.labels.tolist(), strict=True))


# ----------------------------------------------------------------------------- labels_fraction


def test_labeled_fraction_is_stratified_seeded_and_disjoint() -> None:
    lab, unl = labeled_fraction(LABELS, 0.1, seed=2)
    assert torch.equal(torch.sort(torch.cat([lab, unl])).values, torch.arange(1000))
    assert torch.bincount(LABELS[lab]).tolist() == [60, 30, 10]
    again = labeled_fraction(LABELS, 0.1, seed=2)
    assert torch.equal(lab, again[0]) and torch.equal(unl, again[1])
    assert not torch.equal(lab, labeled_fraction(LABELS, 0.1, seed=3)[0])


def test_labeled_fraction_keeps_one_per_class_and_draws_like_labels_per_class() -> None:
    lab, _ = labeled_fraction(LABELS, 0.001, seed=0)  # round(1) sample: one per class instead
    assert torch.bincount(LABELS[lab]).tolist() == [1, 1, 1]
    # the same seed ranks the samples of a class the same way: 10 % of class 2 (10 samples)
    # are the 10 that labels_per_class=10 keeps
    frac = labeled_fraction(LABELS, 0.1, seed=5)[0]
    per_class = labeled_unlabeled(LABELS, 10, seed=5)[0]
    assert torch.equal(frac[LABELS[frac] == 2], per_class[LABELS[per_class] == 2])


def test_labels_fraction_through_load_dataset_hides_the_rest() -> None:
    pool = load_dataset(DataConfig()).train
    data = load_dataset(DataConfig(labels_fraction=0.1), seed=7)
    counts = torch.bincount(pool.labels, minlength=10)
    got = torch.bincount(data.train.labels, minlength=10)
    assert int(got.sum()) == round(0.1 * len(pool))
    assert bool(((got - counts * 0.1).abs() <= 1).all()) and bool((got >= 1).all())
    assert data.unlabeled is not None and (data.unlabeled.labels == -1).all()
    assert _keys(data.train).isdisjoint(_keys(data.unlabeled))
    assert _keys(data.train) | _keys(data.unlabeled) == _keys(pool)
    assert "labels_fraction=0.1" in data.origins["train"] and "seed 7" in data.origins["train"]
    assert data.origins["unlabeled"] == "the rest of train, labels hidden"
    same = load_dataset(DataConfig(labels_fraction=0.1), seed=7)
    assert torch.equal(same.train.keys, data.train.keys)
    other = load_dataset(DataConfig(labels_fraction=0.1), seed=8)
    assert not torch.equal(other.train.keys, data.train.keys)
    assert torch.equal(other.test.keys, data.test.keys)  # val/test do not move with the seed


def test_labels_fraction_and_labels_per_class_together_are_refused() -> None:
    with pytest.raises(DataError, match="labels_per_class=5 and data.labels_fraction=0.2 are "
                                        "both set.*keep one"):
        load_dataset(DataConfig(labels_per_class=5, labels_fraction=0.2))


# ----------------------------------------------------------------------------- hidden truth


def test_true_labels_are_the_original_labels_of_carved_samples() -> None:
    pool = _by_key(load_dataset(DataConfig()).train)
    data = load_dataset(DataConfig(labels_per_class=5), seed=1)
    unl = data.unlabeled
    assert unl is not None and unl.true_labels is not None and unl.keys is not None
    assert (unl.labels == -1).all() and (unl.true_labels >= 0).all()
    assert [pool[k] for k in unl.keys.tolist()] == unl.true_labels.tolist()
    assert data.train.true_labels is None


def test_includes_labeled_puts_exactly_the_labeled_images_in_unlabeled_too() -> None:
    pool = load_dataset(DataConfig()).train
    rest = load_dataset(DataConfig(labels_per_class=5), seed=1)
    data = load_dataset(DataConfig(labels_per_class=5, unlabeled_includes_labeled=True), seed=1)
    unl = data.unlabeled
    assert unl is not None and unl.true_labels is not None and unl.keys is not None
    assert len(unl) == len(pool) and (unl.labels == -1).all()
    assert _keys(unl) - _keys(rest.unlabeled) == _keys(data.train)  # the labeled ones, exactly
    truth = dict(zip(unl.keys.tolist(), unl.true_labels.tolist(), strict=True))
    assert {k: truth[k] for k in _keys(data.train)} == _by_key(data.train)
    assert "all of train" in data.origins["unlabeled"]


def test_includes_labeled_without_hiding_copies_all_of_train() -> None:
    data = load_dataset(DataConfig(unlabeled_includes_labeled=True))
    unl = data.unlabeled
    assert unl is not None and unl.true_labels is not None
    assert torch.equal(unl.keys, data.train.keys) and torch.equal(unl.images, data.train.images)
    assert torch.equal(unl.true_labels, data.train.labels) and (unl.labels == -1).all()


def test_split_carries_true_labels_and_validates_them() -> None:
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    a = Split(images, torch.tensor([0, 1, 0, 1])).hidden()
    b = Split(images[:2], torch.full((2,), -1))
    assert a.true_labels is not None and a.true_labels.tolist() == [0, 1, 0, 1]
    assert a.take(torch.tensor([3, 0])).true_labels.tolist() == [1, 0]
    assert Split.cat(b, a).true_labels.tolist() == [-1, -1, 0, 1, 0, 1]
    assert a.with_images(images + 1).true_labels.tolist() == [0, 1, 0, 1]
    assert a.with_labels(torch.zeros(4, dtype=torch.int64)).true_labels.tolist() == [0, 1, 0, 1]
    assert Split.cat(b, b).true_labels is None
    with pytest.raises(ValueError, match="true_labels has 3 entries for 4"):
        Split(images, torch.zeros(4, dtype=torch.int64), true_labels=torch.zeros(3).long())
    with pytest.raises(ValueError, match="true_labels must be int64"):
        Split(images, torch.zeros(4, dtype=torch.int64), true_labels=torch.zeros(4))


# ----------------------------------------------------------------------------- data.unlabeled


def test_a_folder_of_unlabeled_pngs_loads_beside_a_folder_source(tmp_path: Path) -> None:
    root, folder = _labeled(tmp_path / "pets"), _unlabeled(tmp_path / "unl")
    data = load_dataset(DataConfig(source="folder", root=str(root), unlabeled=str(folder)))
    unl = data.unlabeled
    assert unl is not None and len(unl) == 5 and (unl.labels == -1).all()
    assert unl.images.shape[1:] == data.train.images.shape[1:] == (3, 12, 12)
    assert sorted(unl.names) == ["unl/deep/er/u1.png", "unl/deep/er/u3.png", "unl/u0.png",
                                 "unl/u2.png", "unl/u4.png"]
    pixels = np.array(Image.open(folder / "u0.png"))
    row = list(unl.names).index("unl/u0.png")
    assert torch.equal(unl.images[row].permute(1, 2, 0), torch.from_numpy(pixels))
    assert unl.true_labels is None or (unl.true_labels == -1).all()
    assert len(data.train) + len(data.val) == 24 and len(data.test) == 9
    assert data.identity is not None and data.identity["splits"]["unlabeled"]["count"] == 5
    assert "data.unlabeled" in data.origins["unlabeled"]


def test_unlabeled_folder_adds_to_hidden_labels_and_resolves_against_root(tmp_path: Path
                                                                          ) -> None:
    root = _labeled(tmp_path)
    _unlabeled(root / "unlabeled", 4)  # inside data.root: neither a split nor a class folder
    data = load_dataset(DataConfig(source="folder", root=str(root), unlabeled="unlabeled",
                                   labels_per_class=2, val_fraction=0.0), seed=0)
    unl = data.unlabeled
    assert data.classes == list(CLASSES) and len(data.train) == 6
    assert unl is not None and len(unl) == (24 - 6) + 4
    assert unl.true_labels is not None
    assert unl.true_labels.tolist()[-4:] == [-1] * 4 and (unl.true_labels[:-4] >= 0).all()
    assert "the rest of train" in data.origins["unlabeled"]


def test_a_csv_of_unlabeled_file_names_loads(tmp_path: Path) -> None:
    root, folder = _labeled(tmp_path / "pets"), _unlabeled(tmp_path / "lists" / "img", 3)
    listing = tmp_path / "lists" / "unl.csv"
    listing.write_text("filename,comment\nimg/u0.png,a\nimg/deep/er/u1.png,b\nimg/u0.png,c\n")
    data = load_dataset(DataConfig(source="folder", root=str(root), unlabeled=str(listing)))
    assert data.unlabeled is not None and sorted(data.unlabeled.names) == [
        "img/deep/er/u1.png", "img/u0.png"]
    assert any("more than once" in n for n in data.notes)
    assert folder.is_dir()


@pytest.mark.parametrize("size", ["native", 16])
def test_unlabeled_pngs_beside_an_array_source_recognise_its_test_images(tmp_path: Path,
                                                                        size: str | int) -> None:
    base = load_dataset(DataConfig())  # digits: val and test carved from train at load time
    folder = tmp_path / "unl"
    for i in range(3):
        _png(folder / f"u{i}.png", i, size=8, mode="L")
    leaked = base.test.images[0, 0].numpy()
    Image.fromarray(leaked).save(folder / "leaked.png")
    data = load_dataset(DataConfig(unlabeled=str(folder), grayscale=True, image_size=size))
    assert torch.equal(data.test.keys, base.test.keys)  # test stays fixed
    assert data.unlabeled is not None and data.unlabeled.images.shape[1:] == (
        data.test.images.shape[1:])
    assert data.unlabeled is not None and len(data.unlabeled) == 3
    assert "leaked.png" not in set(data.unlabeled.names)
    assert _keys(data.unlabeled).isdisjoint(_keys(data.test) | _keys(data.val))
    assert any("1 unlabeled image(s) also occur in test" in n and "dropped from unlabeled" in n
               for n in data.notes)


# ----------------------------------------------------------------------------- val/test kept out


def test_a_test_image_copied_into_the_unlabeled_folder_is_dropped_or_refused(tmp_path: Path
                                                                            ) -> None:
    root, folder = _labeled(tmp_path / "pets"), _unlabeled(tmp_path / "unl")
    shutil.copy(root / "test" / "bee" / "1.png", folder / "from_test.png")
    shutil.copy(root / "train" / "ant" / "0.png", folder / "from_train.png")
    shutil.copy(folder / "u0.png", folder / "deep" / "u0_again.png")
    base = load_dataset(DataConfig(source="folder", root=str(root)))
    cfg = DataConfig(source="folder", root=str(root), unlabeled=str(folder))
    data = load_dataset(cfg)
    unl = data.unlabeled
    assert unl is not None and "unl/from_test.png" not in set(unl.names)
    assert _keys(unl).isdisjoint(_keys(data.test) | _keys(data.val))
    assert torch.equal(data.test.keys, base.test.keys) and torch.equal(data.val.keys,
                                                                       base.val.keys)
    assert "unl/from_train.png" in set(unl.names)  # a labeled training image: allowed
    assert len(unl) == 5 + 1  # the copy of u0 dropped too
    notes = " | ".join(data.notes)
    assert "also occur in test" in notes and "dropped from unlabeled" in notes
    assert "also labeled training images" in notes and "unlabeled: dropped 1 copies" in notes
    with pytest.raises(DataError, match=r"unlabeled image\(s\) also occur in test.*from_test"):
        load_dataset(cfg.model_copy(update={"duplicates": "error"}))
    kept = load_dataset(cfg.model_copy(update={"duplicates": "keep"}))
    assert kept.unlabeled is not None and "unl/from_test.png" in set(kept.unlabeled.names)
    assert any("kept (data.duplicates=keep)" in n for n in kept.notes)


def test_a_copy_of_an_image_carved_into_test_is_dropped_from_unlabeled(tmp_path: Path) -> None:
    root = _labeled(tmp_path / "pets", with_test=False)  # test and val carved at load time
    base = load_dataset(DataConfig(source="folder", root=str(root)))
    folder = _unlabeled(tmp_path / "unl", 2)
    shutil.copy(root / base.test.names[0], folder / "carved_test.png")
    shutil.copy(root / base.val.names[0], folder / "carved_val.png")
    data = load_dataset(DataConfig(source="folder", root=str(root), unlabeled=str(folder),
                                   labels_per_class=3), seed=4)
    assert torch.equal(data.test.keys, base.test.keys)
    assert data.unlabeled is not None
    assert _keys(data.unlabeled).isdisjoint(_keys(data.test) | _keys(data.val))
    assert {"unl/u0.png", "unl/deep/er/u1.png"} <= set(data.unlabeled.names)
    assert not {"unl/carved_test.png", "unl/carved_val.png"} & set(data.unlabeled.names)


class _FakeSTL10:
    """STL-10 in its layout, whose unlabeled split holds a copy of test image 0."""

    n: ClassVar[dict[str, int]] = {"train": 40, "test": 20, "unlabeled": 30}

    def __init__(self, root: str, download: bool, split: str) -> None:
        n = self.n[split]
        pixels = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
        pixels[:, 0, 7, 7] = torch.arange(n) + {"train": 0, "test": 100, "unlabeled": 200}[split]
        if split == "unlabeled":
            pixels[5, 0, 7, 7] = 100  # test image 0
        self.data = pixels.numpy()
        self.labels = np.array([-1] * n if split == "unlabeled" else list(range(10)) * (n // 10))


def test_stl10_unlabeled_never_holds_a_test_image(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "STL10", _FakeSTL10)
    data = load_dataset(DataConfig(source="stl10", root=str(tmp_path), stl10_unlabeled=True))
    assert len(data.test) == 20  # the test copy stays in test
    assert data.unlabeled is not None and len(data.unlabeled) == 29
    assert _keys(data.unlabeled).isdisjoint(_keys(data.test))


# ----------------------------------------------------------------------------- bad inputs


def test_a_missing_unlabeled_folder_says_where_it_looked(tmp_path: Path) -> None:
    root = _labeled(tmp_path / "pets")
    with pytest.raises(DataError, match=r"data.unlabeled='nope'.*pets/nope does not exist.*"
                                        r"relative to data.root"):
        load_dataset(DataConfig(source="folder", root=str(root), unlabeled="nope"))


def test_an_empty_unlabeled_folder_is_an_error(tmp_path: Path) -> None:
    root = _labeled(tmp_path / "pets")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"data.unlabeled folder .*empty holds no image files"):
        load_dataset(DataConfig(source="folder", root=str(root),
                                unlabeled=str(tmp_path / "empty")))


def test_unlabeled_images_with_other_channels_or_size_are_refused(tmp_path: Path) -> None:
    rgb = _unlabeled(tmp_path / "rgb", 2)
    with pytest.raises(DataError, match=r"rgb .*decode to 3 channel\(s\) but the digits images "
                                        r"have 1; set data.grayscale=true"):
        load_dataset(DataConfig(unlabeled=str(rgb)))
    root, big = _labeled(tmp_path / "pets"), tmp_path / "big"
    _png(big / "b.png", 1, size=16)
    with pytest.raises(DataError, match=r"big .*are 16x16 but the folder images are 12x12; "
                                        r"set data.image_size"):
        load_dataset(DataConfig(source="folder", root=str(root), unlabeled=str(big),
                                image_size="native"))
    data = load_dataset(DataConfig(source="folder", root=str(root), unlabeled=str(big),
                                   image_size=12))
    assert data.unlabeled is not None and data.unlabeled.images.shape[1:] == (3, 12, 12)


def test_a_csv_without_a_filename_column_is_an_error(tmp_path: Path) -> None:
    root = _labeled(tmp_path / "pets")
    listing = tmp_path / "unl.csv"
    listing.write_text("path\nu0.png\n")
    with pytest.raises(DataError, match=r"unl.csv has no column 'filename' \(columns found: "
                                        r"\['path'\]\)"):
        load_dataset(DataConfig(source="folder", root=str(root), unlabeled=str(listing)))


# ----------------------------------------------------------------------------- real data


def test_mnist_with_ten_labels_per_class(shared_data: Path) -> None:
    if not (shared_data / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found under {shared_data}")
    cfg = DataConfig(source="mnist", root=str(shared_data))
    raw = read_source(cfg)
    base = load_dataset(cfg, seed=0, source=raw)
    data = load_dataset(cfg.model_copy(update={"labels_per_class": 10}), seed=0, source=raw)
    assert len(data.train) == 100 and torch.bincount(data.train.labels).tolist() == [10] * 10
    assert torch.equal(data.test.keys, base.test.keys) and len(data.test) == 10000
    unl = data.unlabeled
    assert unl is not None and (unl.labels == -1).all() and len(unl) == len(base.train) - 100
    assert _keys(unl) == _keys(base.train) - _keys(data.train)
    assert _keys(unl).isdisjoint(_keys(data.test) | _keys(data.val))
    assert unl.true_labels is not None
    truth = _by_key(base.train)
    assert [truth[k] for k in unl.keys.tolist()] == unl.true_labels.tolist()


def test_auto_sizing_reads_the_training_files_beside_an_unlabeled_folder_inside_root(
        tmp_path: Path) -> None:
    """``model.name=auto`` sizes the run from the training files; an unlabeled folder inside
    the root is not a class or split folder there either."""
    from auxilia.engine.auto import _train_files

    root = _labeled(tmp_path / "pets")
    _unlabeled(root / "unlabeled")
    files = _train_files(DataConfig(source="folder", root=str(root), unlabeled="unlabeled"))
    assert len(files) == 24 and not any("unlabeled" in str(f) for f in files)
