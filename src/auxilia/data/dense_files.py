"""Dense tasks from files: images with their target maps beside them (``data.dense``).

Naming: the map ``F`` (one of ``data.dense.fields``) of the image ``<stem>.<ext>`` is the file
``<stem>.F.npy`` (a numeric array ``[H, W]`` or ``[C, H, W]``, read as ``float32``) or
``<stem>.F.<image ext>`` (a single-channel image, read as value / its type's maximum: 8-bit
/ 255, 16-bit / 65535; 32-bit float TIFFs as they are), in the same folder. A map must have its
image's height and width. Files ``<stem>.G.<ext>`` whose ``G`` is not a field are maps this run
does not use (skipped, with a note) when the image ``<stem>`` exists.

- ``folder``: ``data.root`` holds the images and maps (in subfolders or not), or ``train/``,
  ``val/``, ``test/`` folders that do (the classification source's split-folder rules,
  :func:`auxilia.data.folders.split_folders`).
- ``csv``: one CSV per split (``data.csv.train`` / ``val`` / ``test``) with the image in
  ``data.csv.filename_column`` and each field's map file in a column named after the field;
  paths follow the classification CSV's rule (:data:`auxilia.data.folders.PATH_RULE`).

Val and test are carved from train where not given, as for classification
(:func:`auxilia.data.carve.official_to_splits`): every sample has the one class ``maps``.
Maps are never resized, so ``data.image_size`` must leave the images at their size.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from auxilia.data.config import DataConfig
from auxilia.data.files import IMAGE_EXTENSIONS, decode_files
from auxilia.data.folders import (
    PATH_RULE,
    read_text_file,
    resolve_path,
    root_folder,
    split_folders,
)
from auxilia.data.raw import DataError, RawData
from auxilia.data.types import Split

__all__ = ["CLASS", "load_dense", "read_map"]

CLASS = "maps"
"""The one class of a dense dataset (labels are 0; the targets are the maps)."""

Sample = tuple[Path, dict[str, Path]]
"""An image and its map file per field."""

_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def read_map(path: Path, field: str, image: Path, hw: tuple[int, int]) -> np.ndarray:
    """The map ``field`` of ``image`` (``hw`` = its height, width) as ``float32`` ``[C, H, W]``.

    Raises:
        DataError: unreadable, not numeric, multi-channel image, or not of the image's size;
            the message names the file and the fix.
    """
    try:
        arr = _load(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read map {path} ({type(exc).__name__}: {exc}); write it with "
                        "numpy.save (no pickles) or as a single-channel image") from None
    if arr.dtype.kind not in "biuf":
        raise DataError(f"map {path} holds {arr.dtype} values; save a numeric array")
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or tuple(arr.shape[-2:]) != hw:
        raise DataError(f"map {path} has shape {list(arr.shape)}; its image {image.name} is "
                        f"{hw[1]}x{hw[0]}: field {field!r} must be [H, W] or [C, H, W] = "
                        f"[{hw[0]}, {hw[1]}] or [C, {hw[0]}, {hw[1]}]; fix the file")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _load(path: Path) -> np.ndarray:
    """A ``.npy`` array, or a single-channel image scaled to [0, 1] (floats as stored)."""
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    with Image.open(path) as im:
        arr = np.asarray(im)
        if im.mode == "I" and im.format == "PNG":  # a 16-bit PNG read by older Pillow
            arr = arr.astype(np.uint16)
    if arr.ndim != 2:
        raise ValueError(f"a map image must have one channel, this one has {arr.shape[-1]}; "
                         "save a multi-channel map as .npy")
    return arr / _SCALE[arr.dtype] if arr.dtype in _SCALE else arr


def _scan(folder: Path, fields: list[str]) -> tuple[list[Sample], set[str]]:
    """The images under ``folder`` with their maps, and the unused fields found.

    Raises:
        DataError: no image, an image without a map of some field, a map without its image,
            two maps of one field, two images of one stem, a stray ``.npy``.
    """
    files = sorted(p for p in folder.rglob("*") if not p.name.startswith(".") and not p.is_dir()
                   and (p.suffix.lower() in IMAGE_EXTENSIONS or p.suffix.lower() == ".npy"))
    maps: dict[tuple[Path, str], dict[str, Path]] = {}
    rest = []
    for p in files:
        stem, dot, field = p.stem.rpartition(".")
        if dot and field in fields:
            slot = maps.setdefault((p.parent, stem), {})
            if field in slot:
                raise DataError(f"two maps of field {field!r} for {p.parent / stem}: "
                                f"{slot[field].name} and {p.name}; keep one")
            slot[field] = p
        else:
            rest.append(p)
    stems = {(p.parent, p.stem) for p in rest if p.suffix.lower() != ".npy"}
    unused = {p.stem.rpartition(".")[2] for p in rest
              if (p.parent, p.stem.rpartition(".")[0]) in stems}
    images = [p for p in rest if (p.parent, p.stem.rpartition(".")[0]) not in stems]
    _check_pairs(folder, images, maps, fields)
    return [(p, maps[(p.parent, p.stem)]) for p in images], unused


def _check_pairs(folder: Path, images: list[Path], maps: dict[tuple[Path, str], dict[str, Path]],
                 fields: list[str]) -> None:
    """Refuse stray arrays, twin images, orphan maps and missing maps, naming the file."""
    stray = next((p for p in images if p.suffix.lower() == ".npy"), None)
    if stray is not None:
        raise DataError(f"{stray} is no map: a map is <stem>.<field>.npy beside the image "
                        f"<stem>.<ext>, with <field> one of data.dense.fields {fields}; rename "
                        "it or add its field")
    if not images:
        raise DataError(f"no image files in {folder}: expected <stem>.png (or another image "
                        f"type) with its maps <stem>.<field>.npy for fields {fields}")
    seen: dict[tuple[Path, str], Path] = {}
    for p in images:
        if (p.parent, p.stem) in seen:
            raise DataError(f"two images of one stem: {seen[(p.parent, p.stem)]} and {p}; "
                            "their maps would be shared; rename one")
        seen[(p.parent, p.stem)] = p
    orphan = next(((k, m) for k, m in maps.items() if k not in seen), None)
    if orphan is not None:
        (parent, stem), found = orphan
        raise DataError(f"map {next(iter(found.values()))} has no image {parent / stem}.<ext> "
                        "beside it; add the image or remove the map")
    for p in images:
        missing = [f for f in fields if f not in maps.get((p.parent, p.stem), {})]
        if missing:
            raise DataError(f"image {p} has no map of field {missing[0]!r}: expected "
                            f"{p.parent / p.stem}.{missing[0]}.npy (or .png); add it, or remove "
                            f"{missing[0]!r} from data.dense.fields")


def _folder_groups(cfg: DataConfig, fields: list[str]
                   ) -> tuple[dict[str, list[Sample]], Path, list[str], dict[str, str]]:
    """The samples of every split folder (or of ``data.root`` alone), the root, the notes and
    the origins."""
    root = root_folder(cfg, "source 'folder' with data.dense needs data.root: a folder of "
                            "images and their maps, or of train/, val/, test/ folders that hold "
                            "them")
    folders = split_folders(root) or {"train": root}
    groups, unused = {}, set()
    for name, folder in folders.items():
        groups[name], found = _scan(folder, fields)
        unused |= found
    notes = [f"maps of fields not in data.dense.fields skipped: {', '.join(sorted(unused))}"
             ] if unused else []
    origins = {name: (f"images and maps in {root}" if folder == root else
                      f"folder {folder.name}/") for name, folder in folders.items()}
    return groups, root, notes, origins


def _read_csv(path: Path, cfg: DataConfig, split: str, fields: list[str]) -> list[Sample]:
    """The samples one CSV lists: an image column and one map column per field."""
    assert cfg.csv is not None
    image_dir = Path(cfg.csv.image_dir) if cfg.csv.image_dir else path.parent
    if cfg.csv.image_dir and cfg.root and not image_dir.is_absolute():
        image_dir = Path(cfg.root) / image_dir
    reader = csv.DictReader(io.StringIO(read_text_file(path, f"{split} CSV"), newline=""))
    columns = reader.fieldnames or []
    for col in (cfg.csv.filename_column, *fields):
        if col not in columns:
            what = ("data.csv.filename_column" if col == cfg.csv.filename_column
                    else "a field of data.dense.fields")
            raise DataError(f"{split} CSV {path} has no column {col!r} ({what}); columns "
                            f"found: {columns}. Add it, or change the setting")
    samples = []
    for row in reader:
        cells = [(row[c] or "").strip() for c in (cfg.csv.filename_column, *fields)]
        if not all(cells):
            raise DataError(f"{split} CSV {path} line {reader.line_num}: an empty cell; every "
                            f"row needs an image and the maps of {fields}")
        files = [image_dir / c for c in cells]
        missing = next((f for f in files if not f.is_file()), None)
        if missing is not None:
            raise DataError(f"file not found: {missing} ({split} CSV {path} line "
                            f"{reader.line_num}). Path rule: {PATH_RULE}")
        samples.append((files[0], dict(zip(fields, files[1:], strict=True))))
    if not samples:
        raise DataError(f"{split} CSV {path} lists no images")
    return samples


def _csv_groups(cfg: DataConfig, fields: list[str]
                ) -> tuple[dict[str, list[Sample]], Path, list[str], dict[str, str]]:
    if cfg.csv is None:
        raise DataError("source 'csv' needs data.csv.train (and optionally data.csv.val / .test)")
    groups, origins = {}, {}
    for split in ("train", "val", "test"):
        name = getattr(cfg.csv, split)
        if name is not None:
            groups[split] = _read_csv(resolve_path(cfg, name), cfg, split, fields)
            origins[split] = f"CSV {resolve_path(cfg, name)}"
    anchor = (Path(cfg.root).expanduser() if cfg.root
              else resolve_path(cfg, cfg.csv.train).parent)
    return groups, anchor, [], origins


def _check_settings(cfg: DataConfig) -> list[str]:
    """The fields to read, once the settings that have no meaning for a dense task are refused.

    Raises:
        DataError: no fields, or a semi-supervised setting, naming it.
    """
    assert cfg.dense is not None
    if not cfg.dense.fields:
        raise DataError("data.dense.fields is empty: name the target maps to read beside each "
                        "image, e.g. data.dense.fields=[pos,cos,sin,width]")
    for key in ("unlabeled", "labels_per_class", "labels_fraction", "pseudo_labels"):
        if getattr(cfg, key, None) is not None:
            raise DataError(f"data.{key} does not apply to a dense task (data.dense): every "
                            f"image trains on its maps; unset data.{key}")
    return list(cfg.dense.fields)


def _decode(samples: list[Sample], cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor,
                                                             torch.Tensor, list[str]]:
    """``(images, kept, keys, notes)`` of the samples' image files, at their own size."""
    native = cfg.model_copy(update={"image_size": None})
    try:
        decoded = decode_files([p for p, _ in samples], native)
    except DataError as exc:
        if "differ in size" not in str(exc):
            raise
        raise DataError(f"{str(exc).split(';')[0]}; a dense dataset's images and maps must "
                        "share one size: resize them beforehand") from None
    size, hw = cfg.size, tuple(decoded.images.shape[-2:])
    if size is not None and hw != (size, size):
        raise DataError(f"data.image_size={size} would resize the {hw[1]}x{hw[0]} images but "
                        "not their maps; set data.image_size=native (and a model.name), or "
                        "resize images and maps beforehand")
    return decoded.images, decoded.kept, decoded.keys, decoded.notes


def _split(samples: list[Sample], images: torch.Tensor, keys: torch.Tensor, anchor: Path,
           fields: list[str]) -> Split:
    """A split of decoded images with their maps read and stacked, ``{field: [N, C, H, W]}``."""
    hw = (int(images.shape[-2]), int(images.shape[-1]))
    targets = {}
    for field in fields:
        maps = [read_map(m[field], field, p, hw) for p, m in samples]
        odd = next((i for i, a in enumerate(maps) if a.shape != maps[0].shape), None)
        if odd is not None:
            raise DataError(f"map {samples[odd][1][field]} has {maps[odd].shape[0]} channels, "
                            f"{samples[0][1][field]} {maps[0].shape[0]}: every map of field "
                            f"{field!r} needs the same channels; fix the file")
        targets[field] = torch.from_numpy(np.stack(maps))
    names = np.array([str(p.relative_to(anchor)) if p.is_relative_to(anchor) else str(p)
                      for p, _ in samples], dtype=object)
    return Split(images, torch.zeros(len(samples), dtype=torch.int64), keys, names, targets)


def load_dense(cfg: DataConfig) -> RawData:
    """A dense dataset (``data.dense``) from a ``folder`` or ``csv`` source.

    Raises:
        DataError: another source, a missing or mis-shaped map (naming the file and the fix),
            any error of the image files themselves.
    """
    fields = _check_settings(cfg)
    if cfg.source not in ("folder", "csv"):
        raise DataError(f"data.dense reads maps beside image files: set data.source to folder "
                        f"or csv (got {cfg.source!r})")
    read = _folder_groups if cfg.source == "folder" else _csv_groups
    groups, anchor, notes, origins = read(cfg, fields)
    everything = [s for samples in groups.values() for s in samples]
    images, kept, keys, decode_notes = _decode(everything, cfg)
    position = torch.cumsum(kept.long(), 0) - 1
    splits, start = {}, 0
    for name, samples in groups.items():
        sel = torch.arange(start, start + len(samples))
        sel = sel[kept[sel]]
        start += len(samples)
        if not len(sel):
            raise DataError(f"no {name} image could be decoded; see the warning for the files")
        splits[name] = _split([everything[i] for i in sel.tolist()], images[position[sel]],
                              keys[sel], anchor, fields)
    return RawData(splits["train"], [CLASS], "natural", val=splits.get("val"),
                   test=splits.get("test"), notes=notes + decode_notes, origins=origins,
                   files={name: [str(p) for p, _ in s] for name, s in groups.items()})
