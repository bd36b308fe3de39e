"""Data sources: digits, torchvision layouts, image folders, CSV files, errors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from auxilia.data import files, sources
from auxilia.data.config import CsvFiles, DataConfig
from auxilia.data.sources import SOURCES, DataError, channel_stats, load_dataset

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
COLORS = {"ant": (255, 0, 0), "bee": (0, 255, 0), "cat": (0, 0, 255)}


def _unique(path: Path) -> PngInfo:
    info = PngInfo()
    info.add_text("file", str(path))
    return info


def _write_images(folder: Path, n: int, color: tuple[int, int, int], size: int = 12,
                  ext: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.{ext}"
        # one colour per class; the PNG text chunk makes every file's bytes unique (identical
        # files would be dropped as duplicates)
        Image.new("RGB", (size, size), color).save(path, pnginfo=_unique(path))
        paths.append(path)
    return paths


def _tree(root: Path, n: int = 6) -> Path:
    for name, color in COLORS.items():
        _write_images(root / name, n, color)
    return root


def _check_colors(split: sources.Split, classes: list[str]) -> None:
    """Every decoded image has the colour of its class: labels and pixels line up."""
    for image, label in zip(split.images, split.labels, strict=True):
        expected = torch.tensor(COLORS[classes[int(label)]], dtype=torch.uint8)
        assert torch.equal(image[:, 0, 0], expected)


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_family_stats() -> None:
    data = load_dataset(DataConfig(source="digits"))
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert (len(data.test), len(data.val)) == (359, 180)  # 20 % and 10 % of all samples
    assert data.image_shape == (1, 8, 8) and data.num_classes == 10
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert int(data.train.images.max()) == 255
    assert data.family == "digits" and data.unlabeled is None
    assert (data.mean, data.std) == channel_stats(data.train.images)
    x = data.train.images.double() / 255
    assert abs(data.mean[0] - x.mean().item()) < 1e-4 and abs(data.std[0] - x.std().item()) < 1e-3


def test_digits_split_is_deterministic() -> None:
    a, b = load_dataset(DataConfig()), load_dataset(DataConfig())
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.test.labels, b.test.labels)
    c = load_dataset(DataConfig(split_seed=1))
    assert not torch.equal(a.val.images, c.val.images)


def test_digits_labels_per_class_and_subset() -> None:
    data = load_dataset(DataConfig(labels_per_class=5), seed=3)
    assert torch.bincount(data.train.labels).tolist() == [5] * 10
    assert data.unlabeled is not None and (data.unlabeled.labels == -1).all()
    assert len(data.train) + len(data.unlabeled) == 1797 - 359 - 180
    other = load_dataset(DataConfig(labels_per_class=5), seed=4)
    assert not torch.equal(data.train.images, other.train.images)
    assert torch.equal(data.val.images, other.val.images)  # val depends on split_seed only
    small = load_dataset(DataConfig(train_subset=100))
    assert len(small.train) == 100 and torch.bincount(small.train.labels).min() >= 9
    with pytest.raises(DataError, match=r"class '0' \(label 0\) has only"):
        load_dataset(DataConfig(labels_per_class=500))


def test_digits_resize() -> None:
    data = load_dataset(DataConfig(image_size=16))
    assert data.image_shape == (1, 16, 16) and data.test.images.shape[-1] == 16


# ----------------------------------------------------------------------------- registry / errors


def test_unknown_source_suggests_closest() -> None:
    with pytest.raises(DataError, match="Did you mean 'fashion_mnist'") as info:
        load_dataset(DataConfig(source="fashion-mnist"))
    for name in SOURCES:
        assert name in str(info.value)


@pytest.mark.parametrize("root", [None, "missing"])
def test_missing_files_error_names_expected_files(tmp_path: Path, root: str | None) -> None:
    cfg = DataConfig(source="mnist", root=None if root is None else str(tmp_path / root))
    with pytest.raises(DataError) as info:
        load_dataset(cfg)
    message = str(info.value)
    assert "MNIST/raw/train-images-idx3-ubyte" in message and "data.download=true" in message


def test_torchvision_not_found_is_reraised(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py/data_batch_1"):
        load_dataset(DataConfig(source="cifar10", root=str(tmp_path)))  # exists, but empty


class _FakeTorchvision:
    """Stands in for a torchvision dataset class: ``.data`` in the class's own layout."""

    layout = "NHWC"
    n: ClassVar[dict[str, int]] = {"train": 40, "test": 20, "unlabeled": 30}

    def __init__(self, root: str, download: bool, train: bool | None = None,
                 split: str | None = None) -> None:
        assert Path(root).is_dir() and download is False
        split = split or ("train" if train else "test")
        n = self.n[split]
        pixels = torch.arange(3, dtype=torch.uint8).view(1, 3, 1, 1).expand(n, 3, 8, 8).clone()
        offset = {"train": 0, "test": 100, "unlabeled": 200}[split]
        pixels[:, 0, 7, 7] = torch.arange(n) + offset  # every image unique: no duplicates
        self.data = (pixels.permute(0, 2, 3, 1) if self.layout == "NHWC" else pixels).numpy()
        labels = (torch.arange(n) % 10).tolist() if split != "unlabeled" else [-1] * n
        if self.layout == "NHWC":
            self.targets, self.classes = labels, list("abcdefghij")
        else:
            self.labels = torch.tensor(labels).numpy()


class _FakeNCHW(_FakeTorchvision):
    layout = "NCHW"


@pytest.mark.parametrize(("name", "cls_name", "fake"), [
    ("cifar10", "CIFAR10", _FakeTorchvision), ("svhn", "SVHN", _FakeNCHW),
    ("stl10", "STL10", _FakeNCHW)])
def test_torchvision_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                             cls_name: str, fake: type) -> None:
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, cls_name, fake)
    cfg = DataConfig(source=name, root=str(tmp_path), val_fraction=0.25, labels_per_class=2,
                     stl10_unlabeled=name == "stl10")
    data = load_dataset(cfg)
    assert (len(data.train), len(data.val), len(data.test)) == (20, 10, 20)
    assert torch.equal(data.test.images[:, :, 0, 0], torch.tensor([[0, 1, 2]] * 20,
                                                                  dtype=torch.uint8))
    assert data.unlabeled is not None and (data.unlabeled.labels == -1).all()
    assert len(data.unlabeled) == 10 + (30 if name == "stl10" else 0)
    assert data.family == ("natural_noflip" if name == "svhn" else "natural")
    assert data.mean == sources._TORCHVISION[name].mean
    assert data.classes == (list("abcdefghij") if name == "cifar10" else
                            [str(i) for i in range(10)])


# ----------------------------------------------------------------------------- folder


def test_folder_with_split_subfolders(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        _tree(tmp_path / split, n)
    data = load_dataset(DataConfig(source="folder", root=str(tmp_path)))
    assert data.classes == ["ant", "bee", "cat"]
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 9)
    assert data.image_shape == (3, 12, 12) and data.family == "natural"
    for split in (data.train, data.val, data.test):
        _check_colors(split, data.classes)
    assert abs(data.mean[0] - 1 / 3) < 1e-3 and data.std[0] > 0.4


def test_folder_without_val_carves_it(tmp_path: Path) -> None:
    _tree(tmp_path / "train", 10)
    _tree(tmp_path / "test", 2)
    data = load_dataset(DataConfig(source="folder", root=str(tmp_path), val_fraction=0.2))
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 6)


def test_flat_folder_split_by_fractions(tmp_path: Path) -> None:
    _tree(tmp_path, 10)
    data = load_dataset(DataConfig(source="folder", root=str(tmp_path), grayscale=True))
    assert (len(data.train), len(data.val), len(data.test)) == (21, 3, 6)
    assert data.image_shape == (1, 12, 12) and data.family == "natural"
    assert torch.bincount(data.test.labels).tolist() == [2, 2, 2]


def test_folder_unknown_and_empty_classes(tmp_path: Path) -> None:
    _tree(tmp_path / "train", 3)
    _write_images(tmp_path / "test" / "dog", 2, (1, 2, 3))
    with pytest.raises(DataError, match=r"\['dog'\].*not exist in the training"):
        load_dataset(DataConfig(source="folder", root=str(tmp_path)))
    empty = tmp_path / "flat"
    _tree(empty, 3)
    (empty / "zebra").mkdir()
    with pytest.raises(DataError, match=r"class folder .*zebra holds no image"):
        load_dataset(DataConfig(source="folder", root=str(empty)))


def test_folder_sizes_differ(tmp_path: Path) -> None:
    _tree(tmp_path, 4)
    _write_images(tmp_path / "ant" / "big", 1, (255, 0, 0), size=20)
    with pytest.raises(DataError, match=r"differ in size.*data\.image_size"):
        load_dataset(DataConfig(source="folder", root=str(tmp_path)))
    data = load_dataset(DataConfig(source="folder", root=str(tmp_path), image_size=8))
    assert data.image_shape == (3, 8, 8)
    _check_colors(data.train, data.classes)


@pytest.mark.parametrize("content", [b"", b"this is not an image at all"])
@pytest.mark.parametrize("pool", [False, True])
def test_folder_bad_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes,
                          pool: bool) -> None:
    if pool:  # decode through the process pool, several chunks
        monkeypatch.setattr(files, "_SERIAL_DECODE_BELOW", 1)
    _tree(tmp_path, 30)
    bad = tmp_path / "bee" / "broken.png"
    bad.write_bytes(content)
    cfg = DataConfig(source="folder", root=str(tmp_path), num_workers=2)
    with pytest.raises(DataError, match=r"broken\.png.*on_bad_image=skip"):
        load_dataset(cfg)
    with pytest.warns(UserWarning, match="skipped 1 undecodable"):
        data = load_dataset(cfg.model_copy(update={"on_bad_image": "skip"}))
    assert len(data.train) + len(data.val) + len(data.test) == 90
    assert any("skipped 1 undecodable images" in n and "broken.png" in n for n in data.notes)
    for split in (data.train, data.val, data.test):
        _check_colors(split, data.classes)


def test_folder_needs_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.root"):
        load_dataset(DataConfig(source="folder"))
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(DataConfig(source="folder", root=str(tmp_path / "nope")))


# ----------------------------------------------------------------------------- csv


def _csv_dataset(tmp_path: Path, n: int = 6) -> Path:
    rows = ["file,species"]
    for name, color in COLORS.items():
        for path in _write_images(tmp_path / "img" / name, n, color):
            rows.append(f"{path.relative_to(tmp_path / 'img').as_posix()},{name}")
    (tmp_path / "train.csv").write_text("\n".join(rows[:1] + rows[1:][::2]) + "\n")
    (tmp_path / "val.csv").write_text("\n".join(rows[:1] + rows[2::2]) + "\n")
    return tmp_path


def _csv_cfg(root: Path, **csv_args: object) -> DataConfig:
    files = CsvFiles(**{"train": "train.csv", "val": "val.csv", "filename_column": "file",
                        "label_column": "species", "image_dir": "img", **csv_args})
    return DataConfig(source="csv", root=str(root), csv=files)


def test_csv_source(tmp_path: Path) -> None:
    data = load_dataset(_csv_cfg(_csv_dataset(tmp_path)))
    assert data.classes == ["ant", "bee", "cat"]
    # train and val CSVs, no test CSV: no test split (nothing carved behind the user's back)
    assert (len(data.train), len(data.val), len(data.test)) == (9, 9, 0)
    assert data.origins["test"] == "none"
    assert any(n.startswith("no test split: the data has train and val but no test")
               for n in data.notes)
    _check_colors(data.train, data.classes)
    _check_colors(data.val, data.classes)
    # asking for one carves it from train (test_fraction 0.2 of 9 -> 2)
    carved = load_dataset(_csv_cfg(_csv_dataset(tmp_path / "again")).model_copy(
        update={"test_fraction": 0.2}))
    assert (len(carved.train), len(carved.val), len(carved.test)) == (7, 9, 2)
    assert carved.origins["test"] == "carved from train (test_fraction=0.2, split_seed=0)"
    _check_colors(carved.test, carved.classes)


def test_csv_missing_column(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no column 'label'.*columns found: \['file', 'species'\]"):
        load_dataset(_csv_cfg(_csv_dataset(tmp_path), label_column="label"))


def test_csv_unknown_label(tmp_path: Path) -> None:
    root = _csv_dataset(tmp_path)
    with (root / "val.csv").open("a") as f:
        f.write("ant/000.png,dog\n")
    with pytest.raises(DataError, match=r"val CSV .*val\.csv line 11: label 'dog'"):
        load_dataset(_csv_cfg(root))


def test_csv_missing_image(tmp_path: Path) -> None:
    root = _csv_dataset(tmp_path)
    with (root / "train.csv").open("a") as f:
        f.write("bee/ghost.png,bee\n")
    with pytest.raises(DataError, match=r"ghost\.png"):
        load_dataset(_csv_cfg(root))
    with pytest.warns(UserWarning, match="ghost.png"):
        load_dataset(_csv_cfg(root).model_copy(update={"on_bad_image": "skip"}))


# ----------------------------------------------------------------------------- shared real data


def _shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path}")
    return path


def test_mnist_from_shared_data() -> None:
    _shared("MNIST", "raw", "train-images-idx3-ubyte")
    data = load_dataset(DataConfig(source="mnist", root=str(SHARED)))
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert data.train.images.shape[1:] == (1, 28, 28) and data.test.images.dtype == torch.uint8
    assert data.train.labels.dtype == torch.int64 and data.num_classes == 10
    assert (data.mean, data.std, data.family) == ((0.1307,), (0.3081,), "digits")
    assert torch.bincount(data.val.labels).min() > 500  # stratified


def test_cifar10_test_jpegs_through_folder() -> None:
    root = _shared("cifar10-jpg", "test")
    start = time.perf_counter()
    data = load_dataset(DataConfig(source="folder", root=str(root), val_fraction=0.1,
                                   test_fraction=0.2))
    elapsed = time.perf_counter() - start
    assert (len(data.train), len(data.val), len(data.test)) == (7000, 1000, 2000)
    assert data.image_shape == (3, 32, 32) and data.classes[0] == "airplane"
    assert data.num_classes == 10 and torch.bincount(data.test.labels).tolist() == [200] * 10
    assert all(abs(m - r) < 0.02 for m, r in zip(data.mean, (0.4914, 0.4822, 0.4465), strict=True))
    assert elapsed < 30, f"decoding 10,000 JPEGs took {elapsed:.1f} s"
