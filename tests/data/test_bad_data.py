"""Bad data: damaged files, odd image modes, broken CSVs, empty classes, a dying decoder.

Every case either raises a :class:`DataError` naming the file, row or class, or (with
``data.on_bad_image=skip``) drops the file with a warning and a note. Each decoding case runs
in-process and through the process pool (``_SERIAL_DECODE_BELOW`` lowered).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from auxilia.data import decode, files
from auxilia.data.config import CsvFiles, DataConfig
from auxilia.data.sources import DataError, load_dataset

GREY = {"L": 10, "RGBA": 40, "P": 70, "I16": 100, "LA": 130, "RGB": 160, "bilevel": 255}


@pytest.fixture(params=[False, True], ids=["serial", "pool"])
def pool(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Decode in-process, or in a two-process pool (several files per worker)."""
    if request.param:
        monkeypatch.setattr(files, "_SERIAL_DECODE_BELOW", 1)
    return request.param


def _image(kind: str, g: int, size: int = 6) -> Image.Image:
    """A uniform image of grey level ``g`` stored in mode ``kind``."""
    if kind == "I16":
        return Image.fromarray(np.full((size, size), g * 257, dtype=np.uint16))  # mode I;16
    if kind == "P":
        im = Image.new("P", (size, size), 3)
        im.putpalette([0, 0, 0] * 3 + [g, g, g] + [9, 9, 9] * 252)
        return im
    if kind == "bilevel":
        return Image.new("1", (size, size), 1)
    fill = {"L": g, "LA": (g, 99), "RGBA": (g, g, g, 7), "RGB": (g, g, g)}[kind]
    return Image.new(kind, (size, size), fill)


def _unique(text: str) -> PngInfo:
    """A PNG text chunk that makes a file's bytes unique: identical files count as copies."""
    info = PngInfo()
    info.add_text("file", text)
    return info


def _modes_tree(root: Path, n: int = 5) -> Path:
    for kind, g in GREY.items():
        (root / kind).mkdir(parents=True)
        for i in range(n):
            _image(kind, g).save(root / kind / f"{i}.png", pnginfo=_unique(f"{kind}/{i}"))
    return root


def _write(path: Path, color: tuple[int, int, int] = (1, 2, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), color).save(path, pnginfo=_unique(str(path)))
    return path


def _tree(root: Path, classes: tuple[str, ...] = ("ant", "bee", "cat"), n: int = 6) -> Path:
    for c, name in enumerate(classes):
        for i in range(n):
            _write(root / name / f"{i}.png", (c * 80, 0, 0))
    return root


# ----------------------------------------------------------------------------- image modes


@pytest.mark.parametrize("grayscale", [False, True], ids=["rgb", "grey"])
def test_every_image_mode_decodes_to_the_configured_mode(tmp_path: Path, pool: bool,
                                                         grayscale: bool) -> None:
    root = _modes_tree(tmp_path)
    with Image.open(root / "I16" / "0.png") as im:
        assert im.mode.startswith("I;16")  # really a 16-bit file
    data = load_dataset(DataConfig(source="folder", root=str(root), grayscale=grayscale,
                                   num_workers=2))
    assert data.image_shape == ((1 if grayscale else 3), 6, 6)
    seen = 0
    for split in (data.train, data.val, data.test):
        for image, label in zip(split.images, split.labels, strict=True):
            g = GREY[data.classes[int(label)]]
            assert image.dtype == torch.uint8
            assert torch.equal(image, torch.full_like(image, g)), (data.classes[int(label)], image)
            seen += 1
    assert seen == 5 * len(GREY)


def test_sixteen_bit_greys_are_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.arange(0, 65536, 257, dtype=np.uint16)[:256].reshape(16, 16)  # 0 .. 65535
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(tmp_path / "white.png")
    images, errors, *_ = files._decode_chunk([str(tmp_path / "ramp.png"),
                                          str(tmp_path / "white.png")], "L", None)
    assert errors == ["", ""]
    assert np.array_equal(images[0], np.arange(256, dtype=np.uint8).reshape(16, 16))
    assert (images[1] == 255).all()
    rgb, *_ = files._decode_chunk([str(tmp_path / "ramp.png")], "RGB", None)
    assert np.array_equal(rgb[0][..., 1], images[0])


# ----------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("damage", ["truncated", "header_only", "zero_bytes", "text"])
def test_damaged_image_is_named_or_skipped(tmp_path: Path, pool: bool, damage: str) -> None:
    root = _tree(tmp_path / "data")
    good = _write(tmp_path / "noise.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(good)
    content = good.read_bytes()
    bad = root / "bee" / "damaged.png"
    bad.write_bytes({"truncated": content[: len(content) // 2], "header_only": content[:60],
                     "zero_bytes": b"", "text": b"GIF89a? no"}[damage])
    cfg = DataConfig(source="folder", root=str(root), num_workers=2)
    with pytest.raises(DataError, match=r"cannot decode 1 image file\(s\): .*damaged\.png \("):
        load_dataset(cfg)
    with pytest.warns(UserWarning, match=r"skipped 1 undecodable images: .*damaged\.png"):
        data = load_dataset(cfg.model_copy(update={"on_bad_image": "skip"}))
    assert len(data.train) + len(data.val) + len(data.test) == 18


def test_a_class_left_empty_by_skipping_is_named(tmp_path: Path, pool: bool) -> None:
    root = _tree(tmp_path)
    for path in (root / "bee").iterdir():
        path.write_bytes(b"")
    cfg = DataConfig(source="folder", root=str(root), num_workers=2, on_bad_image="skip")
    with pytest.warns(UserWarning, match="skipped 6"), \
            pytest.raises(DataError, match=r"\['bee'\] have no decodable training image"):
        load_dataset(cfg)


def test_a_split_left_empty_by_skipping_is_named(tmp_path: Path) -> None:
    _tree(tmp_path / "train")
    val = _tree(tmp_path / "val", n=2)
    for path in val.rglob("*.png"):
        path.write_bytes(b"not a png")
    cfg = DataConfig(source="folder", root=str(tmp_path), on_bad_image="skip")
    with pytest.warns(UserWarning, match="skipped 6"), \
            pytest.raises(DataError, match="no val image could be decoded"):
        load_dataset(cfg)


@pytest.mark.skipif(sys.platform != "linux", reason="the pool inherits the patch through fork")
def test_a_dying_decoder_process_is_reported(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path)
    poison = _write(root / "cat" / "poison.png")

    poison_bytes = poison.read_bytes()

    def open_(data: Any, *args: object, **kwargs: object) -> Image.Image:
        if data.getvalue() == poison_bytes:
            os._exit(1)  # a crash inside a decoder (segfault, out of memory): the worker dies
        return Image.open(data, *args, **kwargs)

    monkeypatch.setattr(decode, "Image", SimpleNamespace(open=open_, Resampling=Image.Resampling))
    monkeypatch.setattr(files, "_SERIAL_DECODE_BELOW", 1)
    with pytest.raises(DataError, match=r"process reading the 19 image files .*died.*"
                                        r"data\.num_workers=1"):
        load_dataset(DataConfig(source="folder", root=str(root), num_workers=2))


# ----------------------------------------------------------------------------- CSV files


def _csv_root(tmp_path: Path, train: str, val: str | None = None) -> DataConfig:
    for name, color in (("ant", (255, 0, 0)), ("bee", (0, 255, 0))):
        for i in range(4):
            _write(tmp_path / "img" / f"{name}{i}.png", color)
    (tmp_path / "train.csv").write_text(train)
    if val is not None:
        (tmp_path / "val.csv").write_text(val)
    return DataConfig(source="csv", root=str(tmp_path), csv=CsvFiles(
        train="train.csv", val="val.csv" if val is not None else None, image_dir="img",
        filename_column="file", label_column="label"))


GOOD_ROWS = "file,label\n" + "".join(f"{c}{i}.png,{c}\n" for c in ("ant", "bee") for i in range(4))


@pytest.mark.parametrize(("train", "message"), [
    ("", r"train CSV .*train\.csv has no column 'file'; columns found: \[\]"),
    ("file,label\n", r"train CSV .*train\.csv lists no images"),
    ("\n\n\n", r"train CSV .*train\.csv has no column 'file'"),
    (GOOD_ROWS + "ant3.png\n", r"train CSV .*train\.csv line 10: empty file name or label"),
    (GOOD_ROWS + ",bee\n", r"train CSV .*train\.csv line 10: empty file name or label"),
    (GOOD_ROWS + "ant3.png,  \n", r"train CSV .*train\.csv line 10: empty file name or label"),
    ("name,class\na.png,ant\n", r"has no column 'file'; columns found: \['name', 'class'\]"),
])
def test_broken_csv_rows_are_named(tmp_path: Path, train: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(_csv_root(tmp_path, train))


@pytest.mark.parametrize("split", ["val", "test"])
def test_csv_label_outside_the_class_list_is_named(tmp_path: Path, split: str) -> None:
    cfg = _csv_root(tmp_path, GOOD_ROWS, "file,label\nant0.png,ant\nbee0.png,wasp\n")
    if split == "test":
        (tmp_path / "val.csv").rename(tmp_path / "test.csv")
        cfg = cfg.model_copy(update={"csv": cfg.csv.model_copy(update={"val": None,
                                                                       "test": "test.csv"})})
    with pytest.raises(DataError, match=rf"{split} CSV .*{split}\.csv line 3: label 'wasp' does "
                                        r"not occur in the training CSV \(classes: \['ant', "
                                        r"'bee'\]\)"):
        load_dataset(cfg)


def test_csv_class_whose_images_are_all_missing_is_named(tmp_path: Path, pool: bool) -> None:
    rows = GOOD_ROWS + "".join(f"gone{i}.png,cat\n" for i in range(3))
    cfg = _csv_root(tmp_path, rows).model_copy(update={"on_bad_image": "skip", "num_workers": 2})
    with pytest.warns(UserWarning, match=r"skipped 3 undecodable images: .*gone0\.png"), \
            pytest.raises(DataError, match=r"\['cat'\] have no decodable training image"):
        load_dataset(cfg)
    with pytest.raises(DataError, match=r"gone0\.png \(FileNotFoundError"):
        load_dataset(cfg.model_copy(update={"on_bad_image": "fail"}))
