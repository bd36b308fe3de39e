"""Data sources: every one decodes to in-memory ``uint8`` splits (see :mod:`auxilia.data.types`).

A source's loader returns :class:`RawData` (its official splits); :func:`load_dataset` then
applies the common pipeline: carve test and val where the source has none (stratified,
``split_seed``), resize, normalisation statistics, ``train_subset``, ``labels_per_class``.
"""

from __future__ import annotations

import csv
import difflib
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from auxilia.data.config import DataConfig
from auxilia.data.splits import labeled_unlabeled, stratified_split, stratified_subset
from auxilia.data.types import DatasetSplits, Split

__all__ = ["SOURCES", "DataError", "RawData", "SourceSpec", "channel_stats", "decode_images",
           "load_dataset"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm"})
_SERIAL_DECODE_BELOW = 2048  # fewer files than this decode in-process: a pool costs more


class DataError(Exception):
    """The data cannot be loaded as configured; the message says what to change."""


@dataclass
class RawData:
    """What a source loader returns: official splits, before the common pipeline.

    ``val`` / ``test`` are None when the source has no such official split (they are then
    carved from ``train``); ``stats`` is None when it must be computed from the training split.
    """

    train: Split
    classes: list[str]
    family: str
    val: Split | None = None
    test: Split | None = None
    unlabeled: Split | None = None
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SourceSpec:
    """A registered source: ``loader(cfg) -> RawData`` and a one-line description."""

    loader: Callable[[DataConfig], RawData]
    description: str


# ----------------------------------------------------------------------------- helpers


def _take(split: Split, idx: torch.Tensor) -> Split:
    return Split(split.images[idx], split.labels[idx])


def _cat(a: Split | None, b: Split | None) -> Split | None:
    if a is None or b is None:
        return a if b is None else b
    return Split(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]))


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std (population) of ``uint8`` images, in ``[0, 1]`` units.

    Args:
        images: ``uint8`` ``[N, C, H, W]``.
        chunk: images converted to float at a time (bounds the memory used).

    Returns:
        ``(mean, std)``, each a tuple of ``C`` floats.
    """
    c = images.shape[1]
    total, total_sq = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = max(images.shape[0] * images.shape[2] * images.shape[3], 1)
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def _resize(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Resizes ``uint8`` images to ``size`` x ``size`` (bilinear, antialiased)."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        out[start : start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


# ----------------------------------------------------------------------------- digits


def _load_digits(cfg: DataConfig) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    values = torch.as_tensor(bunch.images, dtype=torch.float64)  # [N, 8, 8], 0..16
    images = (values * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8).unsqueeze(1)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return RawData(Split(images, labels), [str(c) for c in range(10)], "digits")


# ----------------------------------------------------------------------------- torchvision


@dataclass(frozen=True)
class _Torchvision:
    """How to read one torchvision dataset class into tensors."""

    cls_name: str
    layout: str  # "NHW", "NHWC" or "NCHW": layout of the class's ``.data``
    split_arg: str  # "train" (bool flag) or "split" (string)
    files: tuple[str, ...]  # expected files, relative to root
    mean: tuple[float, ...]
    std: tuple[float, ...]
    family: str


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
_TORCHVISION: dict[str, _Torchvision] = {
    "mnist": _Torchvision("MNIST", "NHW", "train", tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES),
                          (0.1307,), (0.3081,), "digits"),
    "fashion_mnist": _Torchvision(
        "FashionMNIST", "NHW", "train", tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES),
        (0.2860,), (0.3530,), "digits"),
    "kmnist": _Torchvision("KMNIST", "NHW", "train", tuple(f"KMNIST/raw/{f}" for f in _MNIST_FILES),
                           (0.1918,), (0.3483,), "digits"),
    "cifar10": _Torchvision(
        "CIFAR10", "NHWC", "train",
        (*(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
         "cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"),
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "natural"),
    "cifar100": _Torchvision(
        "CIFAR100", "NHWC", "train",
        ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "natural"),
    "svhn": _Torchvision("SVHN", "NCHW", "split", ("train_32x32.mat", "test_32x32.mat"),
                         (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "natural_noflip"),
    "stl10": _Torchvision(
        "STL10", "NCHW", "split",
        tuple(f"stl10_binary/{f}" for f in ("train_X.bin", "train_y.bin", "test_X.bin",
                                            "test_y.bin", "unlabeled_X.bin")),
        (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), "natural"),
}


def _missing_files_error(name: str, info: _Torchvision, root: str | None) -> DataError:
    base = root if root is not None else "<root>"
    listing = "\n".join(f"  {os.path.join(base, f)}" for f in info.files)
    where = f"under data.root={root!r}" if root is not None else "(data.root is not set)"
    return DataError(
        f"source {name!r}: dataset files not found {where}. Expected:\n{listing}\n"
        "Point data.root at the folder that holds them, or set data.download=true to download "
        "them there (needs network access).")


def _read_torchvision(name: str, cfg: DataConfig, split: str) -> tuple[Split, list[str]]:
    """Reads one official split (``train``/``test``/``unlabeled``) of a torchvision dataset."""
    import torchvision.datasets as tvd

    info = _TORCHVISION[name]
    if cfg.root is None or (not cfg.download and not Path(cfg.root).is_dir()):
        raise _missing_files_error(name, info, cfg.root)
    kwargs = {"train": split == "train"} if info.split_arg == "train" else {"split": split}
    try:
        ds = getattr(tvd, info.cls_name)(cfg.root, download=cfg.download, **kwargs)
    except RuntimeError as exc:
        if "not found" in str(exc).lower():
            raise _missing_files_error(name, info, cfg.root) from exc
        raise
    data = torch.as_tensor(np.asarray(ds.data), dtype=torch.uint8)
    images = {"NHW": lambda d: d.unsqueeze(1), "NHWC": lambda d: d.permute(0, 3, 1, 2),
              "NCHW": lambda d: d}[info.layout](data).contiguous()
    raw_labels = ds.targets if hasattr(ds, "targets") else ds.labels
    labels = torch.as_tensor(np.asarray(raw_labels), dtype=torch.int64)
    classes = [str(c) for c in getattr(ds, "classes", None) or range(10)]
    return Split(images, labels), classes


def _load_torchvision(name: str, cfg: DataConfig) -> RawData:
    info = _TORCHVISION[name]
    train, classes = _read_torchvision(name, cfg, "train")
    test, _ = _read_torchvision(name, cfg, "test")
    unlabeled = None
    if name == "stl10" and cfg.stl10_unlabeled:
        unlabeled, _ = _read_torchvision(name, cfg, "unlabeled")
        unlabeled = Split(unlabeled.images, torch.full_like(unlabeled.labels, -1))
    return RawData(train, classes, info.family, test=test, unlabeled=unlabeled,
                   stats=(info.mean, info.std))


# ----------------------------------------------------------------------------- image files


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
                im = im.convert(mode)
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                images.append(np.asarray(im))
            errors.append("")
        except Exception as exc:  # PIL raises many types on unreadable files
            errors.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if images and len({a.shape for a in images}) == 1:
        return np.stack(images), errors
    return images, errors


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
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(decode, chunks))


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
        splits[name] = Split(images[position[sel]], all_labels[sel])
        start += len(paths)
    if len(splits["train"]) == 0:
        raise DataError("no training image could be decoded")
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


# ----------------------------------------------------------------------------- registry


SOURCES: dict[str, SourceSpec] = {
    "digits": SourceSpec(_load_digits, "scikit-learn's bundled 8x8 digits (1,797), no files"),
    "folder": SourceSpec(_load_folder, "image folders: root/[train|val|test/]<class>/<image>"),
    "csv": SourceSpec(_load_csv, "CSV files of (filename, class) rows, one per split"),
    **{name: SourceSpec(partial(_load_torchvision, name), f"torchvision {info.cls_name} at root")
       for name, info in _TORCHVISION.items()},
}
"""Registered sources: name → :class:`SourceSpec`."""


def _get_spec(name: str) -> SourceSpec:
    if name in SOURCES:
        return SOURCES[name]
    close = difflib.get_close_matches(name.lower().replace("-", "_"), list(SOURCES), n=1,
                                      cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(f"unknown data source {name!r}.{hint} Valid sources: {', '.join(SOURCES)}")


def _carve(pool: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    keep, take = stratified_split(pool.labels, fraction, seed)
    return _take(pool, keep), _take(pool, take)


def _official_to_splits(raw: RawData, cfg: DataConfig) -> tuple[Split, Split, Split]:
    """Carves test, then val, from train where the source lacks them."""
    train, val, test = raw.train, raw.val, raw.test
    carve_test = test is None
    if carve_test and val is None and cfg.val_fraction + cfg.test_fraction >= 1:
        raise DataError(f"data.val_fraction + data.test_fraction must be < 1, got "
                        f"{cfg.val_fraction} + {cfg.test_fraction}")
    if test is None:
        train, test = _carve(train, cfg.test_fraction, cfg.split_seed)
        raw.notes.append(f"test: {len(test)} samples carved from train "
                         f"(test_fraction={cfg.test_fraction}, split_seed={cfg.split_seed})")
    if val is None:
        fraction = cfg.val_fraction / (1 - cfg.test_fraction) if carve_test else cfg.val_fraction
        train, val = _carve(train, fraction, cfg.split_seed)
        raw.notes.append(f"val: {len(val)} samples carved from train "
                         f"(val_fraction={cfg.val_fraction}, split_seed={cfg.split_seed})")
    return train, val, test


def load_dataset(cfg: DataConfig, seed: int | None = None) -> DatasetSplits:
    """Loads ``cfg.source`` into memory and splits it.

    Order: official splits → test carve (sources without one; ``test_fraction`` of all
    samples) → val carve (``val_fraction``, of the official train set or of all samples) →
    resize to ``image_size`` → normalisation statistics (published, or computed on the training
    split) → ``train_subset`` → ``labels_per_class`` (the rest of train becomes ``unlabeled``
    with labels -1). Carves use ``cfg.split_seed``; the subset and labeled draws use ``seed``
    (the run's seed; ``split_seed`` when None), so val and test stay fixed across run seeds.

    Args:
        cfg: the data section of the config.
        seed: seed of the ``train_subset`` and ``labels_per_class`` draws.

    Returns:
        The in-memory :class:`DatasetSplits`.

    Raises:
        DataError: unknown source, missing files, undecodable images, impossible splits.
    """
    raw = _get_spec(cfg.source).loader(cfg)
    draw_seed = cfg.split_seed if seed is None else seed
    if cfg.grayscale and raw.train.images.shape[1] != 1:
        raise DataError(f"data.grayscale applies to the folder and csv sources, not to "
                        f"{cfg.source!r} (3 channels)")
    train, val, test = _official_to_splits(raw, cfg)
    unlabeled = raw.unlabeled
    if cfg.image_size is not None:
        train, val, test = (Split(_resize(s.images, cfg.image_size), s.labels)
                            for s in (train, val, test))
        if unlabeled is not None:
            unlabeled = Split(_resize(unlabeled.images, cfg.image_size), unlabeled.labels)
    mean, std = raw.stats or channel_stats(train.images)
    if cfg.train_subset is not None:
        if cfg.train_subset >= len(train):
            raw.notes.append(f"train_subset={cfg.train_subset} >= {len(train)}: all kept")
        train = _take(train, stratified_subset(train.labels, cfg.train_subset, draw_seed))
    if cfg.labels_per_class is not None:
        try:
            lab, unl = labeled_unlabeled(train.labels, cfg.labels_per_class, draw_seed,
                                         raw.classes)
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        rest = Split(train.images[unl], torch.full((len(unl),), -1, dtype=torch.int64))
        train, unlabeled = _take(train, lab), _cat(rest, unlabeled)
    return DatasetSplits(train=train, val=val, test=test, classes=list(raw.classes),
                         mean=tuple(mean), std=tuple(std), family=raw.family,
                         unlabeled=unlabeled, notes=raw.notes)
