"""The file store: image files kept on disk behind the split interface, decoded when read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auxilia.data.config import DataConfig
from auxilia.data.decode import random_resized_box
from auxilia.data.file_images import FileImages, pixel_batches
from auxilia.data.file_index import index_chunk, index_files
from auxilia.data.raw import DataError
from auxilia.data.sources import describe_splits, load_dataset

CLASSES = ("ant", "bee", "cat")


def _image(path: Path, seed: int, size: tuple[int, int] = (12, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _folder(root: Path, per_class: int = 10, size: tuple[int, int] = (12, 12)) -> Path:
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            _image(root / "train" / name / f"{i}.png", 1000 * c + i, size)
            _image(root / "test" / name / f"{i}.png", 5000 + 1000 * c + i, size)
    return root


def _cfg(root: Path, **kw: object) -> DataConfig:
    return DataConfig(source="folder", root=str(root), image_size=kw.pop("image_size", 12),
                      **kw)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("store"))


def test_the_file_store_gives_the_memory_stores_splits_and_pixels(folder: Path) -> None:
    memory = load_dataset(_cfg(folder, storage="memory"))
    files = load_dataset(_cfg(folder, storage="files"))
    assert isinstance(files.train.images, FileImages)
    assert isinstance(memory.train.images, torch.Tensor)
    assert files.identity == memory.identity  # same samples, labels, keys, statistics
    for name in ("train", "val", "test"):
        a, b = getattr(memory, name), getattr(files, name)
        assert list(a.names) == list(b.names)
        assert torch.equal(a.keys, b.keys) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.images, b.images.read())  # the same decoder, the same resize
    assert files.storage.startswith("storage: files (data.storage=files)")
    assert describe_splits(files)[-1] == files.storage


def test_a_split_of_the_file_store_is_an_index_view_not_pixels(folder: Path) -> None:
    files = load_dataset(_cfg(folder, storage="files", labels_per_class=2))
    for split in (files.train, files.val, files.test, files.unlabeled):
        assert isinstance(split.images, FileImages)
    view = files.unlabeled.images[torch.tensor([2, 0])]
    assert isinstance(view, FileImages) and list(view.paths) == [
        files.unlabeled.images.paths[2], files.unlabeled.images.paths[0]]
    assert view.shape == (2, 3, 12, 12) and view.dtype == torch.uint8


def test_hygiene_and_label_hiding_are_the_same_with_either_store(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    copy = root / "test" / "ant" / "0.png"
    (root / "train" / "bee" / "leak.png").write_bytes(copy.read_bytes())  # a test image in train
    (root / "extra").mkdir()
    (root / "extra" / "copy_of_test.png").write_bytes((root / "test" / "cat" / "1.png")
                                                      .read_bytes())
    _image(root / "extra" / "new.png", 99)
    kw = {"labels_per_class": 3, "unlabeled": str(root / "extra"), "val_per_class": 2}
    memory = load_dataset(_cfg(root, storage="memory", **kw), seed=3)
    files = load_dataset(_cfg(root, storage="files", **kw), seed=3)
    assert files.identity == memory.identity
    assert memory.notes == files.notes
    assert list(files.unlabeled.names) == list(memory.unlabeled.names)
    assert torch.equal(files.unlabeled.true_labels, memory.unlabeled.true_labels)
    assert not any("copy_of_test" in n for n in files.unlabeled.names)  # a test copy is dropped
    with pytest.raises(DataError, match="data.unlabeled"):  # a labeled folder is refused
        load_dataset(_cfg(root, storage="files", unlabeled=str(root / "train" / "ant")))


def test_a_folder_over_the_memory_budget_is_streamed_not_loaded(folder: Path) -> None:
    need = 60 * 3 * 12 * 12  # bytes decoded
    over = load_dataset(_cfg(folder, memory_budget=f"{need - 1}"))
    within = load_dataset(_cfg(folder, memory_budget=f"{need}"))
    assert isinstance(over.train.images, FileImages)
    assert "over the memory budget" in over.storage and "data.storage=memory" in over.storage
    assert isinstance(within.train.images, torch.Tensor)
    assert "within the memory budget" in within.storage
    assert over.identity == within.identity


def test_arrays_and_dense_data_refuse_the_file_store(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="array dataset"):
        load_dataset(DataConfig(source="digits", storage="files"))
    with pytest.raises(DataError, match="storage=files"):
        load_dataset(_cfg(_folder(tmp_path / "d", 2), storage="memory", crop="random_resized"))


def test_random_resized_crops_are_seeded_per_sample_and_evaluation_centres(
        tmp_path: Path) -> None:
    root = _folder(tmp_path / "big", per_class=3, size=(64, 48))
    data = load_dataset(_cfg(root, image_size=16, storage="files"))
    images = data.train.images
    assert images.decoding.crop == "random_resized"  # auto: files at least twice the size
    assert "crop random_resized" in data.storage
    rows = torch.arange(4)
    a, b = images.read(rows, [1, 2, 3, 4]), images.read(rows, [1, 2, 3, 4])
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, images.read(rows, [5, 6, 7, 8]))
    centre = images.read(rows)  # evaluation: resize + centre crop
    assert torch.equal(centre, images.read(rows))
    with Image.open(images.paths[0]) as im:
        side = round(48 * 0.875)
        left, top = (64 - side) / 2, (48 - side) / 2
        expected = np.array(im.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR,
                                                       box=(left, top, left + side, top + side)))
    assert torch.equal(centre[0].permute(1, 2, 0), torch.from_numpy(expected))


def test_random_resized_boxes_follow_the_requested_scale_and_ratio() -> None:
    rng = np.random.default_rng(0)
    boxes = np.array([random_resized_box(400, 300, rng, (0.25, 0.5), (0.75, 4 / 3))
                      for _ in range(500)])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 400).all() and (boxes[:, 3] <= 300).all()
    area = w * h / (400 * 300)
    assert area.min() >= 0.24 and area.max() <= 0.51
    assert (w / h).min() >= 0.74 and (w / h).max() <= 1.34
    # a ratio the image cannot hold falls back to the largest centred crop within it
    left, top, right, bottom = random_resized_box(10, 100, rng, (0.9, 1.0), (2.0, 3.0))
    assert (right - left, bottom - top) == (10, 5)


def test_the_index_is_cached_by_path_size_and_mtime(folder: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUXILIA_CACHE_DIR", str(tmp_path / "cache"))
    paths = sorted(str(p) for p in (folder / "train").rglob("*.png"))
    run = lambda chunk: iter([index_chunk(chunk)] if chunk else [])  # noqa: E731
    first = index_files(paths, run)
    second = index_files(paths, run)
    assert first.cached == 0 and second.cached == len(paths)
    assert np.array_equal(first.keys, second.keys) and np.array_equal(first.heights,
                                                                       second.heights)
    changed = tmp_path / "copy"
    changed.mkdir()
    target = changed / "a.png"
    _image(target, 1)
    index_files([str(target)], run)
    _image(target, 2)  # new pixels: a new size or mtime, read again
    os.utime(target, ns=(1, 1))
    again = index_files([str(target)], run)
    assert again.cached == 0


def test_evaluation_reads_the_file_store_through_workers_in_order(folder: Path) -> None:
    files = load_dataset(_cfg(folder, storage="files"))
    test = files.test
    inline = torch.cat([x for _, x in pixel_batches(test.images, 7, workers=0)])
    pooled = torch.cat([x for _, x in pixel_batches(test.images, 7, workers=2)])
    assert torch.equal(inline, pooled) and torch.equal(inline, test.images.read())


def test_an_undecodable_file_read_during_training_names_the_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", per_class=2)
    data = load_dataset(_cfg(root, storage="files"))
    broken = Path(data.train.images.paths[0])
    broken.write_bytes(broken.read_bytes()[:40])  # truncated after indexing
    with pytest.raises(DataError, match=str(broken.name)):
        data.train.images.read(torch.tensor([0]))
