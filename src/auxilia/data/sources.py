"""Data sources: every one decodes to in-memory ``uint8`` splits (see :mod:`auxilia.data.types`).

A source's loader returns :class:`RawData` (its official splits); :func:`load_dataset` then
applies the common pipeline: carve test and val where the source has none (stratified,
``split_seed``), resize, normalisation statistics, ``train_subset``, the unlabeled split
(:mod:`auxilia.data.unlabeled`). The image-file sources (``folder``, ``csv``) live in
:mod:`auxilia.data.folders` and :mod:`auxilia.data.files`;
:class:`RawData` and :class:`DataError` in :mod:`auxilia.data.raw` (both re-exported here).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from auxilia.data.carve import labeled_line, official_to_splits
from auxilia.data.config import DataConfig
from auxilia.data.dense_files import load_dense
from auxilia.data.files import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from auxilia.data.files import decode_images
from auxilia.data.folders import load_csv, load_folder
from auxilia.data.host_memory import check_decoded_size
from auxilia.data.hygiene import clean_raw
from auxilia.data.identity import identity
from auxilia.data.pseudo_labels import attach_pseudo_labels
from auxilia.data.raw import DataError, RawData
from auxilia.data.splits import small_val_note, stratified_subset
from auxilia.data.stats import channel_stats as channel_stats
from auxilia.data.stats import split_stats
from auxilia.data.types import DatasetSplits, Split
from auxilia.data.unlabeled import check_label_settings, hide_labels, read_unlabeled

__all__ = ["SOURCES", "DataError", "RawData", "SourceSpec", "channel_stats", "decode_images",
           "describe_splits", "load_dataset", "read_source", "source_key", "val_at_size"]


@dataclass(frozen=True)
class SourceSpec:
    """A registered source: ``loader(cfg) -> RawData`` and a one-line description."""

    loader: Callable[[DataConfig], RawData]
    description: str


# ----------------------------------------------------------------------------- helpers


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
    return RawData(Split(images, labels), [str(c) for c in range(10)], "digits",
                   origins={"train": "scikit-learn's bundled digits"})


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
        unlabeled = unlabeled.with_labels(torch.full_like(unlabeled.labels, -1))
    origins = {"train": f"{info.cls_name} official train split",
               "test": f"{info.cls_name} official test split"}
    if unlabeled is not None:
        origins["unlabeled"] = f"{info.cls_name} unlabeled split"
    return RawData(train, classes, info.family, test=test, unlabeled=unlabeled,
                   stats=(info.mean, info.std), origins=origins)


# ----------------------------------------------------------------------------- registry


SOURCES: dict[str, SourceSpec] = {
    "digits": SourceSpec(_load_digits, "scikit-learn's bundled 8x8 digits (1,797), no files"),
    "folder": SourceSpec(load_folder, "image folders: root/[train|val|test/]<class>/<image>"),
    "csv": SourceSpec(load_csv, "CSV files of (filename, class) rows, one per split"),
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


LABELED = "labeled"
"""The key of :attr:`DatasetSplits.origins` holding :func:`~auxilia.data.carve.labeled_line`."""

AFTER_READING = ("val_fraction", "val_per_class", "test_fraction", "split_seed",
                 "labels_per_class", "labels_fraction", "unlabeled_includes_labeled",
                 "train_subset", "augment", "views", "batch_size", "eval_batch_size",
                 "num_workers")
"""Data settings that act after the source is read (a source read once serves them all)."""


def source_key(cfg: DataConfig) -> str:
    """What :func:`read_source`'s result depends on, as a string (for sharing one read)."""
    kept = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in AFTER_READING}
    return json.dumps(kept, sort_keys=True)


def read_source(cfg: DataConfig) -> RawData:
    """Read ``cfg.source`` into memory with copies inside and across splits handled.

    The expensive part of :func:`load_dataset` (decoding every image), which depends only on
    :func:`source_key`'s settings.

    The user's unlabeled images (``data.unlabeled``) are read here too, beside any source.

    Raises:
        DataError: unknown source, missing files, undecodable images, fewer than 2 classes.
    """
    _check_storage(cfg)
    # a dense task reads its maps beside the folder / csv source's images, one class
    raw = load_dense(cfg) if cfg.dense is not None else _get_spec(cfg.source).loader(cfg)
    if cfg.grayscale and raw.train.images.shape[1] != 1:
        raise DataError(f"data.grayscale applies to the folder and csv sources, not to "
                        f"{cfg.source!r} (3 channels)")
    if len(raw.classes) < 2 and cfg.dense is None:
        raise DataError(f"source {cfg.source!r} has {len(raw.classes)} class "
                        f"({', '.join(raw.classes)}): a classifier needs at least two; "
                        + ("check data.csv.label_column and the training CSV's labels"
                           if cfg.source == "csv" else
                           "check data.root (it should hold one folder per class)"))
    extra = None
    if cfg.unlabeled is not None:
        extra, notes = read_unlabeled(cfg, raw.train, raw.train.keys is None, labeled=raw.files)
        raw.notes += notes
        before = f"{raw.origins['unlabeled']} + " if "unlabeled" in raw.origins else ""
        raw.origins["unlabeled"] = f"{before}data.unlabeled {cfg.unlabeled}"
    clean_raw(raw, cfg.duplicates, extra)
    return raw


def _check_storage(cfg: DataConfig) -> None:
    """Refuse a file store (or its crop) where the images are no files."""
    if cfg.storage != "files" and cfg.crop != "random_resized":
        return
    key = "data.storage=files" if cfg.storage == "files" else "data.crop=random_resized"
    if cfg.source not in ("folder", "csv"):
        raise DataError(f"{key} reads image files from disk (the folder and csv sources); "
                        f"source {cfg.source!r} is an array dataset, held in memory: unset it")
    if cfg.dense is not None:
        raise DataError(f"{key}: dense targets (data.dense) are read into memory with their "
                        "images; unset it for a dense task")


def load_dataset(cfg: DataConfig, seed: int | None = None, *, source: RawData | None = None
                 ) -> DatasetSplits:
    """Loads ``cfg.source`` into memory and splits it.

    Order: official splits → test carve (sources without one; ``test_fraction`` of all
    samples) → val carve (``val_fraction`` of the official train set or of all samples, or
    ``val_per_class`` images of every class: :mod:`auxilia.data.carve`) →
    resize to ``image_size`` → normalisation statistics (published, or computed on the training
    split) → ``train_subset`` → ``labels_per_class`` / ``labels_fraction`` (the rest of train
    becomes ``unlabeled`` with labels -1, the truth in ``true_labels``), joined by the
    unlabeled images of the source and ``data.unlabeled``; last, copies inside the unlabeled
    split and images of the (now final) val and test are dropped from it
    (:func:`auxilia.data.unlabeled.hide_labels`). Carves use ``cfg.split_seed``; the subset and
    labeled draws use ``seed`` (the run's seed; ``split_seed`` when None), so val and test stay
    fixed across run seeds.

    Args:
        cfg: the data section of the config.
        seed: seed of the ``train_subset`` and labeled (``labels_per_class``,
            ``labels_fraction``) draws.
        source: what :func:`read_source` gave for this ``cfg``, shared by runs that differ
            only in what comes after reading (the seed, the splits' fractions); it is not
            changed.

    Returns:
        The in-memory :class:`DatasetSplits`.

    Raises:
        DataError: unknown source, missing files, undecodable images, impossible splits.
    """
    check_label_settings(cfg)
    raw = read_source(cfg) if source is None else dataclasses.replace(
        source, notes=list(source.notes), origins=dict(source.origins))
    draw_seed = cfg.split_seed if seed is None else seed
    train, val, test = official_to_splits(raw, cfg)
    unlabeled = raw.unlabeled
    if cfg.size is not None:
        todo = [len(s) for s in (train, val, test, unlabeled) if s is not None
                and s.images.shape[-2:] != (cfg.size, cfg.size)]
        pixels = train.images.shape[1] * cfg.size**2  # _resize: float32 + uint8 chunks
        check_decoded_size(sum(todo), train.images.shape[1], cfg.size, cfg.size,
                           f"{cfg.source} resized to data.image_size={cfg.size}",
                           working_bytes=5 * pixels * min(max(todo, default=0), 2048))
        train, val, test = (s.with_images(_resize(s.images, cfg.size))
                            for s in (train, val, test))
        if unlabeled is not None:
            unlabeled = unlabeled.with_images(_resize(unlabeled.images, cfg.size))
    mean, std = raw.stats or split_stats(train)
    if cfg.train_subset is not None:
        if cfg.train_subset >= len(train):
            raw.notes.append(f"train_subset={cfg.train_subset} >= {len(train)}: all kept")
        train = train.take(stratified_subset(train.labels, cfg.train_subset, draw_seed))
    origins = {"val": "none", **raw.origins}
    if cfg.train_subset is not None and cfg.train_subset < len(raw.train):
        origins["train"] += f", a stratified subset of {len(train)} (seed {draw_seed})"
    train, unlabeled, notes, hid = hide_labels(train, unlabeled, {"val": val, "test": test}, cfg,
                                               draw_seed, raw.classes, raw.origins.get("unlabeled"))
    raw.notes += notes
    origins = {**origins, **hid, "train": origins["train"] + hid["train"]}
    labeled = labeled_line(train, val, raw.classes, cfg)
    if labeled is not None:  # not a split: describe_splits prints it last
        origins[LABELED] = labeled
    _check_every_class_trains(train, raw.classes, cfg)
    # a fraction to suggest raising only when val was carved by it
    carved = (cfg.val_fraction if raw.val is None and cfg.val_per_class is None else None,
              cfg.test_fraction_for(has_val=False) if raw.test is None else 0.0)
    note = small_val_note(len(val), len(raw.classes), *carved,
                          val_per_class=cfg.val_per_class if raw.val is None else None)
    raw.notes += [note] if note else []
    cropped = raw.store is not None and raw.store.crop == "random_resized"
    data = DatasetSplits(train=train, val=val, test=test, classes=list(raw.classes),
                         mean=tuple(mean), std=tuple(std),
                         family="natural_cropped" if cropped else raw.family,
                         unlabeled=unlabeled, notes=raw.notes, origins=origins,
                         storage=raw.store.line if raw.store is not None else None)
    if cfg.pseudo_labels is not None:
        data = attach_pseudo_labels(data, cfg.pseudo_labels)
    data.identity = identity(data, cfg.source)
    return data


def val_at_size(cfg: DataConfig, size: int) -> Split:
    """The val split :func:`load_dataset` gives for ``cfg``, at ``size`` x ``size``: the same
    images (carved the same way, ``split_seed``), resized as ``data.image_size=size`` resizes
    them (image files decoded at that size, arrays by :func:`_resize`). For a teacher trained at
    another size than the student's: its accuracy on images of its own size.

    The source is read again (image files decoded at ``size``), without ``data.unlabeled``.

    Raises:
        DataError: as :func:`load_dataset` (e.g. the images at ``size`` would not fit in memory).
    """
    at = cfg.model_copy(update={"image_size": size, "unlabeled": None, "stl10_unlabeled": False})
    _, val, _ = official_to_splits(read_source(at), at)
    return val.with_images(_resize(val.images, size))


def describe_splits(data: DatasetSplits) -> list[str]:
    """One line per split: its size and where it came from; then, when labels are scarce by
    choice, how many labeled images training and selection use together
    (:func:`auxilia.data.carve.labeled_line`)."""
    lines = []
    for name in ("train", "val", "test", "unlabeled"):
        split = getattr(data, name)
        if split is None:
            continue
        origin = data.origins.get(name, "")
        lines.append(f"{name:9s} {len(split):7,d}  {origin}")
    if LABELED in data.origins:
        lines.append(data.origins[LABELED])
    return lines + ([data.storage] if data.storage else [])


def _check_every_class_trains(train: Split, classes: list[str], cfg: DataConfig) -> None:
    """Refuse a training split in which some class has no sample (nothing to learn it from)."""
    counts = torch.bincount(train.labels[train.labels >= 0], minlength=len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if not empty:
        return
    hint = (f"data.train_subset={cfg.train_subset} is too small for {len(classes)} classes: "
            f"use at least {len(classes)}" if cfg.train_subset is not None
            else "add training images for them or remove the classes")
    raise DataError(f"class(es) {', '.join(empty[:10])} have no training sample after "
                    f"splitting; {hint}")
