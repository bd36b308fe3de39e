"""The unlabeled split: the user's own unlabeled images, and training labels hidden.

:func:`read_unlabeled` reads ``data.unlabeled`` (a folder of image files, or a CSV of file
names) with the folder source's decoding (:func:`auxilia.data.files.decode_files`), checked
against the labeled source's channels and size; files of the labeled data (a split or class
folder, data.root) are refused before that (:mod:`auxilia.data.unlabeled_paths`).
:func:`hide_labels` applies ``labels_per_class`` / ``labels_fraction`` /
``unlabeled_includes_labeled`` to the training split, joins the unlabeled images read with the
source and keeps val and test images out of the result
(:func:`auxilia.data.hygiene.clean_unlabeled`).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import torch

from auxilia.data.config import DataConfig
from auxilia.data.errors import DataError
from auxilia.data.file_images import FileImages
from auxilia.data.files import IMAGE_EXTENSIONS, DecodedFiles, NoReadableImage, decode_files
from auxilia.data.folders import image_files, read_text_file, resolve_path
from auxilia.data.hygiene import array_keys, clean_unlabeled, note_labeled_copies
from auxilia.data.splits import SplitError, labeled_fraction, labeled_unlabeled
from auxilia.data.storage import StoreChoice
from auxilia.data.types import Split
from auxilia.data.unlabeled_paths import check_unlabeled_paths

__all__ = ["FILENAME_COLUMN", "PATH_RULE", "check_label_settings", "hide_labels",
           "read_unlabeled"]

FILENAME_COLUMN = "filename"
"""The column of a ``data.unlabeled`` CSV that names the image files."""

PATH_RULE = ("data.unlabeled is a folder (every image file under it, recursively) or a .csv "
             f"file with a {FILENAME_COLUMN!r} column; a relative data.unlabeled is relative "
             "to data.root when that is set, else to the working directory; file names in the "
             "CSV are relative to the CSV's folder")


# ----------------------------------------------------------------------------- settings


def check_label_settings(cfg: DataConfig) -> None:
    """Refuse settings that contradict each other (``labels_per_class`` with
    ``labels_fraction``).

    Raises:
        DataError: naming both keys.
    """
    if cfg.labels_per_class is not None and cfg.labels_fraction is not None:
        raise DataError(f"data.labels_per_class={cfg.labels_per_class} and "
                        f"data.labels_fraction={cfg.labels_fraction} are both set; they say "
                        "the same thing two ways: keep one of them")


# ----------------------------------------------------------------------------- reading


def _listed_files(path: Path) -> tuple[list[Path], list[str]]:
    """``(image files, notes)`` listed in the ``filename`` column of a ``data.unlabeled`` CSV."""
    text = read_text_file(path, "data.unlabeled CSV")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    if FILENAME_COLUMN not in columns:
        raise DataError(f"data.unlabeled CSV {path} has no column {FILENAME_COLUMN!r} (columns "
                        f"found: {columns}); name the column of image file names "
                        f"{FILENAME_COLUMN!r}")
    names: dict[str, None] = {}
    rows = 0
    for row in reader:
        name = (row[FILENAME_COLUMN] or "").strip()
        if not name:
            raise DataError(f"data.unlabeled CSV {path} line {reader.line_num}: empty file name")
        names.setdefault(name, None)
        rows += 1
    if not names:
        raise DataError(f"data.unlabeled CSV {path} lists no images")
    files = [path.parent / n for n in names]
    if not any(f.exists() for f in files):
        raise DataError(f"none of the {len(files)} files listed in data.unlabeled CSV {path} "
                        f"exists (e.g. {files[0]}); {PATH_RULE}")
    repeated = rows - len(names)
    notes = [f"data.unlabeled CSV {path} lists {repeated} file(s) more than once; each is used "
             "once"] if repeated > 0 else []
    return files, notes


def _unlabeled_files(path: Path, setting: str) -> tuple[list[Path], Path, list[str]]:
    """``(image files, folder their names are relative to, notes)`` of ``data.unlabeled``
    (``setting``, resolved to ``path``)."""
    if path.suffix.lower() == ".csv" and not path.is_dir():
        files, notes = _listed_files(path)
        return files, path.parent, notes
    if not path.is_dir():
        what = "is not a folder or a .csv file" if path.exists() else "does not exist"
        raise DataError(f"data.unlabeled={setting!r}: {path} {what}; point data.unlabeled at "
                        f"a folder of images or a CSV of file names ({PATH_RULE})")
    files = image_files(path)
    if not files:
        raise DataError(f"data.unlabeled folder {path} holds no image files "
                        f"({', '.join(sorted(IMAGE_EXTENSIONS))}); put the unlabeled images "
                        "in it (any subfolders), or unset data.unlabeled")
    return files, path.parent, []


def _decode_size(cfg: DataConfig, like: Split, array_source: bool) -> int | None:
    """The square size the unlabeled files are decoded at.

    With an image-file source, ``data.image_size`` (as the labeled files). With an array
    source (MNIST, CIFAR, ...), whose images are resized later in memory, the source's native
    size when ``data.image_size`` is set: a copy of one of its images then decodes to the same
    pixels (and key), and every image goes through the same resize.
    """
    h, w = like.images.shape[-2:]
    if cfg.size is None or not array_source or h != w:
        return cfg.size
    return int(h)


def _check_shape(images: torch.Tensor, like: Split, cfg: DataConfig, where: str) -> None:
    """Refuse unlabeled images whose channels or size differ from the labeled images'."""
    (c, h, w), (lc, lh, lw) = images.shape[1:], like.images.shape[1:]
    if c != lc:
        fix = ("set data.grayscale=true to decode them as one channel" if lc == 1 else
               "unset data.grayscale")
        raise DataError(f"the data.unlabeled images in {where} decode to {c} channel(s) but "
                        f"the {cfg.source} images have {lc}; {fix}")
    if (h, w) != (lh, lw):
        raise DataError(f"the data.unlabeled images in {where} are {w}x{h} but the "
                        f"{cfg.source} images are {lw}x{lh}; set data.image_size=... (e.g. "
                        f"data.image_size={max(lh, lw)}) to resize every image to one size")


def _store_like(like: Split) -> StoreChoice | None:
    """The labeled images' store: the unlabeled images are kept as they are."""
    if not isinstance(like.images, FileImages):
        return None
    return StoreChoice("files", like.images.decoding.crop, "")


def _decode(files: list[Path], cfg: DataConfig, path: Path, store: StoreChoice | None
            ) -> DecodedFiles:
    """:func:`decode_files`, naming ``data.unlabeled`` when not one file can be read."""
    try:
        return decode_files(files, cfg, store)
    except NoReadableImage as err:
        shown = f"{cfg.unlabeled}" + ("" if str(path) == cfg.unlabeled else f" ({path})")
        listing = "; ".join(f"{p} ({why})" for p, why in err.bad[:3])
        more = f"; and {len(err.bad) - 3} more" if len(err.bad) > 3 else ""
        raise DataError(f"data.unlabeled={shown}: no readable image ({len(files)} files, all "
                        f"undecodable: {listing}{more}); put image files in it, or unset "
                        "data.unlabeled") from None


def read_unlabeled(cfg: DataConfig, like: Split, array_source: bool,
                   labeled: dict[str, list[str]] | None = None) -> tuple[Split, list[str]]:
    """Reads ``data.unlabeled`` into an unlabeled split (labels ``-1``).

    Its files must not be files of the labeled source (checked by identity before decoding:
    :mod:`auxilia.data.unlabeled_paths`). Files are decoded as the folder source decodes them
    (``grayscale``, ``image_size``, ``on_bad_image``, ``num_workers``) and must match the
    labeled images' channels and size. Samples are named by their path relative to the
    folder's (or the CSV's) parent folder.

    Args:
        cfg: the data section; ``cfg.unlabeled`` is set.
        like: the labeled source's training split, as read (before any resize in memory).
        array_source: whether the source is an in-memory array (keyed by pixels): the files
            are then keyed by their pixels too, so that copies of its images are recognised;
            otherwise by their bytes, as the labeled files are.
        labeled: the labeled source's files by split (:attr:`auxilia.data.raw.RawData.files`).

    Returns:
        ``(split, notes)``.

    Raises:
        DataError: a missing or empty folder, a CSV without a ``filename`` column, files of
            the labeled data, undecodable files (``on_bad_image=fail``; not one readable image
            whatever the setting), images of another shape.
    """
    assert cfg.unlabeled is not None
    path = resolve_path(cfg, cfg.unlabeled)
    files, anchor, notes = _unlabeled_files(path, cfg.unlabeled)
    check_unlabeled_paths(cfg, path, files, labeled or {})
    size = _decode_size(cfg, like, array_source)
    decoded = _decode(files, cfg if size == cfg.size else cfg.model_copy(
        update={"image_size": size}), path, _store_like(like))
    kept = torch.nonzero(decoded.kept).flatten()
    _check_shape(decoded.images, like, cfg, f"{path} (e.g. {files[int(kept[0])]})")
    keys = array_keys(decoded.images) if array_source else decoded.keys[kept]
    names = np.array([os.path.relpath(files[i], anchor) for i in kept.tolist()], dtype=object)
    labels = torch.full((len(kept),), -1, dtype=torch.int64)
    return Split(decoded.images, labels, keys, names), [*notes, *decoded.notes]


# ----------------------------------------------------------------------------- hiding labels


def _labeled_draw(train: Split, cfg: DataConfig, seed: int, classes: list[str]
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(labeled_idx, unlabeled_idx)`` of ``labels_per_class`` / ``labels_fraction``, or None."""
    try:
        if cfg.labels_per_class is not None:
            return labeled_unlabeled(train.labels, cfg.labels_per_class, seed, classes)
        if cfg.labels_fraction is not None:
            return labeled_fraction(train.labels, cfg.labels_fraction, seed, classes)
    except SplitError as exc:
        raise DataError(str(exc)) from exc
    return None


def _origins(cfg: DataConfig, labeled: int, pool: int, seed: int, external: str | None
             ) -> tuple[str, str | None]:
    """``(what is added to train's origin, the unlabeled split's origin)``."""
    if cfg.labels_per_class is not None:
        train = f", {cfg.labels_per_class} labeled per class (seed {seed})"
    elif cfg.labels_fraction is not None:
        train = (f", {labeled} of {pool} labeled (labels_fraction={cfg.labels_fraction}, "
                 f"stratified, at least one per class; seed {seed})")
    else:
        train = ""
    if cfg.unlabeled_includes_labeled:
        hidden = "all of train (the labeled images too), labels hidden"
    elif train:
        hidden = "the rest of train, labels hidden"
    else:
        return train, external
    return train, hidden + (f" + {external}" if external else "")


def hide_labels(train: Split, external: Split | None, held_out: dict[str, Split],
                cfg: DataConfig, seed: int, classes: list[str], external_origin: str | None = None
                ) -> tuple[Split, Split | None, list[str], dict[str, str]]:
    """Splits off the unlabeled samples and builds the unlabeled split.

    The unlabeled split is: the training samples whose labels ``labels_per_class`` /
    ``labels_fraction`` hide (all of train with ``unlabeled_includes_labeled``; labels ``-1``,
    the labels they had in ``true_labels``), then ``external`` (``data.unlabeled``, STL-10's
    unlabeled split). Copies inside it are dropped, and so are images of val or test
    (:func:`auxilia.data.hygiene.clean_unlabeled`, by ``data.duplicates``).

    Args:
        train: the training split (every sample labeled).
        external: unlabeled images read with the source, or None.
        held_out: ``{"val": ..., "test": ...}``, final.
        cfg: the data section.
        seed: seed of the labeled draw.
        classes: the class names.
        external_origin: where ``external`` came from, for the unlabeled split's origin.

    Returns:
        ``(labeled train, unlabeled split or None, notes, origins)``: ``origins`` holds
        ``"train"`` (to append to train's origin) and, when there is an unlabeled split,
        ``"unlabeled"``.

    Raises:
        DataError: a class too small for the draw; a val/test image among the unlabeled ones
            with ``data.duplicates=error``.
    """
    draw = _labeled_draw(train, cfg, seed, classes)
    pool = train
    labeled = train if draw is None else train.take(draw[0])
    hidden = None
    if cfg.unlabeled_includes_labeled:
        hidden = pool.hidden()
    elif draw is not None:
        hidden = pool.take(draw[1]).hidden()
    notes = [] if external is None else note_labeled_copies(external, labeled)
    unlabeled = hidden if external is None else (
        external if hidden is None else Split.cat(hidden, external))
    if unlabeled is not None:
        unlabeled, more = clean_unlabeled(unlabeled, held_out, cfg.duplicates)
        notes += more
    train_origin, origin = _origins(cfg, len(labeled), len(pool), seed,
                                    None if external is None else
                                    external_origin or "unlabeled images")
    origins = {"train": train_origin}
    if origin is not None:
        origins["unlabeled"] = origin
    return labeled, unlabeled, notes, origins
