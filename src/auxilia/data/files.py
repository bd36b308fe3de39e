"""Image-file sources: ``folder`` (``<class>/<image>`` trees) and ``csv`` (filename, class rows).

Files are decoded with PIL, in a process pool when there are many of them
(:func:`decode_images`); the loaders return :class:`~auxilia.data.raw.RawData`.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from auxilia.data.config import DataConfig
from auxilia.data.raw import DataError, RawData
from auxilia.data.types import Split

__all__ = ["IMAGE_EXTENSIONS", "decode_images"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm"})
_SERIAL_DECODE_BELOW = 2048  # fewer files than this decode in-process: a pool costs more


def _decode_chunk(paths: Sequence[str], mode: str, size: int | None
                  ) -> tuple[np.ndarray | list[np.ndarray], list[str]]:
    """Decodes image files (runs in worker processes).

    Returns:
        ``(images, errors)``: the decoded images in order, stacked ``[k, H, W(, C)]`` when they
        share one shape (a list otherwise), and one error string per path (``""`` = decoded).
    """
    images: list[np.ndarray] = []
    errors: list[str] = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im = _to_8bit(im).convert(mode)
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                images.append(np.asarray(im))
            errors.append("")
        except Exception as exc:  # PIL raises many types on unreadable files
            errors.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if images and len({a.shape for a in images}) == 1:
        return np.stack(images), errors
    return images, errors


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scales 16-bit greyscale to ``L`` (``v / 257``, so 65535 becomes 255).

    16-bit means mode ``I;16*``, or mode ``I`` read from a PNG (older Pillow). PIL's own
    conversion of these modes clips every value above 255; other ``I`` files (32-bit TIFF)
    are left to it.
    """
    if not (im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG")):
        return im
    values = np.asarray(im).astype(np.float64)
    scaled = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


def _num_workers(cfg: DataConfig) -> int:
    if cfg.num_workers > 0:
        return cfg.num_workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _map_chunks(paths: list[str], mode: str, size: int | None, workers: int
                ) -> list[tuple[np.ndarray | list[np.ndarray], list[str]]]:
    """Decodes ``paths`` in chunks, in a process pool when there are enough of them."""
    decode = partial(_decode_chunk, mode=mode, size=size)
    if workers <= 1 or len(paths) < _SERIAL_DECODE_BELOW:
        return [decode(paths)]
    step = max(64, min(1024, -(-len(paths) // (workers * 8))))
    chunks = [paths[i : i + step] for i in range(0, len(paths), step)]
    fork = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if fork else None)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            return list(pool.map(decode, chunks))
    except BrokenProcessPool:
        raise DataError(
            f"a process decoding the {len(paths)} image files (from {paths[0]} on) died, e.g. "
            "out of memory or a crash in an image decoder; set data.num_workers=1 to decode "
            "in-process and find the file") from None


def _stack(results: list[tuple[np.ndarray | list[np.ndarray], list[str]]], paths: list[str]
           ) -> torch.Tensor:
    """Stacks decoded chunks into ``uint8`` ``[N, C, H, W]``; differing sizes are an error."""
    arrays = [r[0] for r in results if len(r[0])]
    if all(isinstance(a, np.ndarray) for a in arrays) and len({a.shape[1:] for a in arrays}) == 1:
        stacked = np.concatenate(arrays)
    else:
        flat = [a for chunk in arrays for a in chunk]
        ok_paths = [p for p, e in zip(paths, (e for r in results for e in r[1]), strict=True)
                    if not e]
        odd = next((i for i, a in enumerate(flat) if a.shape != flat[0].shape), None)
        if odd is not None:
            (h0, w0), (h1, w1) = flat[0].shape[:2], flat[odd].shape[:2]
            raise DataError(
                f"images differ in size: {w0}x{h0} ({ok_paths[0]}) vs {w1}x{h1} "
                f"({ok_paths[odd]}); set data.image_size=... (e.g. data.image_size=32) to "
                "resize every image to one square size")
        stacked = np.stack(flat)
    t = torch.from_numpy(stacked)
    return (t.unsqueeze(1) if t.dim() == 3 else t.permute(0, 3, 1, 2)).contiguous()


def decode_images(paths: Sequence[Path | str], cfg: DataConfig
                  ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decodes image files to ``uint8`` ``[N, C, H, W]`` (RGB, or L with ``cfg.grayscale``).

    Args:
        paths: image files.
        cfg: uses ``grayscale``, ``image_size``, ``num_workers`` and ``on_bad_image``.

    Returns:
        ``(images, kept, notes)``: images of the decoded files, a boolean mask over ``paths`` of
        the files kept, and notes on skipped files.

    Raises:
        DataError: an undecodable file with ``on_bad_image="fail"``; sizes that differ without
            ``image_size``.
    """
    str_paths = [str(p) for p in paths]
    results = _map_chunks(str_paths, "L" if cfg.grayscale else "RGB", cfg.image_size,
                          _num_workers(cfg))
    errors = [e for _, chunk_errors in results for e in chunk_errors]
    bad = [(p, e) for p, e in zip(str_paths, errors, strict=True) if e]
    notes: list[str] = []
    if bad and cfg.on_bad_image == "fail":
        listing = "; ".join(f"{p} ({e})" for p, e in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"cannot decode {len(bad)} image file(s): {listing}{more}. Fix or remove "
                        "them, or set data.on_bad_image=skip to drop them")
    if bad:
        names = ", ".join(p for p, _ in bad[:10]) + (", ..." if len(bad) > 10 else "")
        notes.append(f"skipped {len(bad)} undecodable images: {names}")
        warnings.warn(notes[-1], stacklevel=3)
    kept = torch.tensor([not e for e in errors], dtype=torch.bool)
    if not bool(kept.any()):
        raise DataError(f"none of the {len(str_paths)} image files could be decoded")
    return _stack(results, str_paths), kept, notes


def _files_to_raw(groups: dict[str, tuple[list[Path], list[int]]], classes: list[str],
                  cfg: DataConfig) -> RawData:
    """Decodes the files of every split at once (one pool) and builds :class:`RawData`."""
    all_paths = [p for paths, _ in groups.values() for p in paths]
    images, kept, notes = decode_images(all_paths, cfg)
    all_labels = torch.tensor([y for _, labels in groups.values() for y in labels],
                              dtype=torch.int64)
    position = torch.cumsum(kept.long(), 0) - 1  # row of each kept file in ``images``
    splits: dict[str, Split] = {}
    start = 0
    for name, (paths, _) in groups.items():
        sel = torch.arange(start, start + len(paths))
        sel = sel[kept[sel]]
        if len(sel) == 0:
            raise DataError(f"no {name} image could be decoded ({len(paths)} skipped; see the "
                            "warning for the files)")
        splits[name] = Split(images[position[sel]], all_labels[sel])
        start += len(paths)
    counts = torch.bincount(splits["train"].labels, minlength=len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        raise DataError(f"class(es) {empty} have no decodable training image (every file was "
                        "skipped as undecodable); fix the files or remove the class")
    return RawData(splits["train"], classes, "natural", val=splits.get("val"),
                   test=splits.get("test"), notes=notes)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _scan_classes(folder: Path, classes: list[str] | None
                  ) -> tuple[list[str], list[Path], list[int]]:
    """Lists ``folder/<class>/<image>``; ``classes`` None means "this is train: define them"."""
    dirs = _class_dirs(folder)
    if not dirs:
        raise DataError(f"no class folders in {folder}: expected {folder}/<class>/<image files>")
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise DataError(f"class folder(s) {unknown} in {folder} do not exist in the training "
                        f"split (classes: {classes})")
    paths: list[Path] = []
    labels: list[int] = []
    for d in dirs:
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                       and not p.name.startswith(".") and p.is_file())
        if not files:
            raise DataError(f"class folder {d} holds no image files "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        paths += files
        labels += [classes.index(d.name)] * len(files)
    return classes, paths, labels


def _load_folder(cfg: DataConfig) -> RawData:
    if cfg.root is None:
        raise DataError("source 'folder' needs data.root: a folder of <class>/<image> folders, or "
                        "of train/, val/, test/ folders that hold them")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"source 'folder': data.root={cfg.root!r} is not a folder")
    if not (root / "train").is_dir():
        classes, paths, labels = _scan_classes(root, None)
        return _files_to_raw({"train": (paths, labels)}, classes, cfg)
    classes, paths, labels = _scan_classes(root / "train", None)
    groups = {"train": (paths, labels)}
    for name in ("val", "test"):
        if (root / name).is_dir():
            groups[name] = _scan_classes(root / name, classes)[1:]
    return _files_to_raw(groups, classes, cfg)


def _read_csv(path: Path, cfg: DataConfig, split: str, classes: list[str] | None
              ) -> tuple[list[Path], list[str]]:
    """Reads ``(image paths, label strings)`` of one CSV, validating columns and labels."""
    files = cfg.csv
    assert files is not None
    if not path.is_file():
        raise DataError(f"{split} CSV not found: {path}")
    image_dir = Path(files.image_dir) if files.image_dir else path.parent
    if files.image_dir and cfg.root and not image_dir.is_absolute():
        image_dir = Path(cfg.root) / image_dir
    known = set(classes) if classes is not None else None
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for col, key in ((files.filename_column, "filename_column"),
                         (files.label_column, "label_column")):
            if col not in columns:
                raise DataError(f"{split} CSV {path} has no column {col!r}; columns found: "
                                f"{columns}. Set data.csv.{key} to the right one")
        paths, labels = [], []
        for row in reader:
            name, label = (row[files.filename_column] or "").strip(), (
                row[files.label_column] or "").strip()
            if not name or not label:
                raise DataError(f"{split} CSV {path} line {reader.line_num}: empty file name "
                                "or label")
            if known is not None and label not in known:
                raise DataError(f"{split} CSV {path} line {reader.line_num}: label {label!r} does "
                                f"not occur in the training CSV (classes: {classes})")
            paths.append(image_dir / name)
            labels.append(label)
    if not paths:
        raise DataError(f"{split} CSV {path} lists no images")
    return paths, labels


def _load_csv(cfg: DataConfig) -> RawData:
    if cfg.csv is None:
        raise DataError("source 'csv' needs data.csv.train (and optionally data.csv.val / .test)")

    def resolve(p: str) -> Path:
        path = Path(p).expanduser()
        return Path(cfg.root) / path if cfg.root and not path.is_absolute() else path

    train_paths, train_labels = _read_csv(resolve(cfg.csv.train), cfg, "train", None)
    classes = sorted(set(train_labels))
    index = {name: i for i, name in enumerate(classes)}
    groups = {"train": (train_paths, [index[y] for y in train_labels])}
    for split in ("val", "test"):
        name = getattr(cfg.csv, split)
        if name is not None:
            paths, labels = _read_csv(resolve(name), cfg, split, classes)
            groups[split] = (paths, [index[y] for y in labels])
    return _files_to_raw(groups, classes, cfg)
