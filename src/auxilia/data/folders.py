"""The image-file sources: ``folder`` (``<class>/<image>`` trees) and ``csv`` (filename, class).

Split folders are recognised whatever their case and common spelling (:data:`SPLIT_NAMES`);
a root whose folders look like splits under other names is an error rather than a dataset
whose classes are ``seg_train`` and ``seg_test``. CSV files are read as UTF-8 (with or without
a byte-order mark) or UTF-16 with a byte-order mark.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from auxilia.data.config import DataConfig
from auxilia.data.files import IMAGE_EXTENSIONS, _files_to_raw
from auxilia.data.raw import DataError, RawData
from auxilia.paths import decode_text, regular_file

__all__ = ["SPLIT_NAMES", "image_files", "load_csv", "load_folder", "read_text_file",
           "resolve_path", "split_of"]

SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev"),
    "test": ("test", "testing"),
}
"""Folder names (compared case-insensitively) that mean each split."""


# ----------------------------------------------------------------------------- folder


def resolve_path(cfg: DataConfig, path: str) -> Path:
    """A data path of the config: ``~`` expanded; a relative path is relative to ``data.root``
    when that is set, else to the working directory (``data.csv.*``, ``data.unlabeled``)."""
    p = Path(path).expanduser()
    return Path(cfg.root).expanduser() / p if cfg.root and not p.is_absolute() else p


def image_files(folder: Path) -> list[Path]:
    """Every entry under ``folder`` (recursively) with an image suffix that is not a folder or
    a hidden file, sorted. Special files (FIFOs, devices) are listed, so that the decoder
    refuses them by name instead of skipping them silently."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith(".") and not p.is_dir())


def _subfolders(folder: Path, skip: str | None = None) -> list[Path]:
    """The visible subfolders of ``folder``, sorted; ``skip`` names one to leave out."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and d.name != skip)


def split_of(name: str) -> str | None:
    """The split a folder name means (:data:`SPLIT_NAMES`, any case), or None."""
    return next((s for s, names in SPLIT_NAMES.items() if name.lower() in names), None)


def _unlabeled_inside(root: Path, cfg: DataConfig) -> str | None:
    """The name of the folder of ``root`` that ``data.unlabeled`` is, when ``root`` holds split
    folders and it is none of them: it then lies beside them and is no part of the layout.

    Otherwise None, so that a split folder, or a class folder of a root of class folders,
    named in ``data.unlabeled`` is read as what it is, and refused as unlabeled data
    (:mod:`auxilia.data.unlabeled_paths`) instead of silently leaving the layout. The folder
    is found by identity (``os.path.samefile``), so any spelling of its path matches.
    """
    if cfg.unlabeled is None:
        return None
    path = resolve_path(cfg, cfg.unlabeled)
    try:
        dirs = _subfolders(root)
        same = next((d for d in dirs if path.is_dir() and os.path.samefile(d, path)), None)
    except OSError:
        return None
    if same is None or split_of(same.name) or not any(split_of(d.name) for d in dirs):
        return None
    return same.name


def split_folders(root: Path, skip: str | None = None) -> dict[str, Path]:
    """The split folders of ``root`` by split name; empty when ``root`` holds class folders.

    ``skip`` names a folder of ``root`` that is neither (the ``data.unlabeled`` folder).

    Raises:
        DataError: two folders mean one split, a val/test folder without a train folder, or
            folders that look like splits under names that are not recognised.
    """
    found: dict[str, list[Path]] = {}
    dirs = _subfolders(root, skip)
    for d in dirs:
        split = split_of(d.name)
        if split is not None:
            found.setdefault(split, []).append(d)
    names = ", ".join(f"{d.name}/" for d in dirs)
    expected = "; ".join(f"{s}: {'/'.join(n)}" for s, n in SPLIT_NAMES.items())
    for split, folders in found.items():
        if len(folders) > 1:
            raise DataError(f"{root} has {len(folders)} folders for the {split} split "
                            f"({', '.join(d.name for d in folders)}); keep one")
    if found and "train" not in found:
        raise DataError(f"{root} has split folders but no training folder: found {names}; "
                        f"expected {expected} (any case)")
    lowered = [d.name.lower() for d in dirs]
    if not found and any("train" in n for n in lowered) and any(
            "test" in n or "val" in n for n in lowered):
        raise DataError(f"{root} looks like split folders under names auxilia does not know "
                        f"(found {names}); rename them to train/, val/, test/ (expected "
                        f"{expected}, any case), or point data.root at the folder of class "
                        "folders")
    used = {d for folders in found.values() for d in folders}
    extra = [d.name for d in dirs if d not in used]
    if found and extra:
        raise DataError(f"{root} has split folders ({', '.join(d.name for d in sorted(used))}) "
                        f"and other folders beside them ({', '.join(extra)}) that would be "
                        f"ignored; move them into a split, rename them (expected {expected}, any "
                        "case), remove them, or name a folder of unlabeled images in "
                        "data.unlabeled")
    return {split: folders[0] for split, folders in found.items()}


def _match_classes(folder: Path, names: list[str], classes: list[str]
                   ) -> tuple[dict[str, str], list[str]]:
    """Map the class folders of a val/test split onto the training classes.

    A folder that differs from a training class only by case (``coast`` for ``Coast``) is
    matched to it, with a note; any other unknown folder is an error.
    """
    lowered: dict[str, list[str]] = {}
    for c in classes:
        lowered.setdefault(c.lower(), []).append(c)
    mapping, matched, unknown = {}, [], []
    for n in names:
        if n in classes:
            mapping[n] = n
        elif len(lowered.get(n.lower(), [])) == 1:
            mapping[n] = lowered[n.lower()][0]
            matched.append(f"{n} -> {mapping[n]}")
        else:
            unknown.append(n)
    if unknown:
        raise DataError(f"class folder(s) {unknown} in {folder} do not exist in the training "
                        f"split (classes: {classes})")
    notes = [f"{folder.name}/: class folders matched to the training classes by ignoring case: "
             f"{', '.join(matched)}"] if matched else []
    return mapping, notes


def _scan_classes(folder: Path, classes: list[str] | None, notes: list[str] | None = None,
                  skip: str | None = None) -> tuple[list[str], list[Path], list[int]]:
    """Lists ``folder/<class>/<image>``; ``classes`` None means "this is train: define them".

    Every entry of :func:`image_files` is listed. Case-only differences from the training
    classes are matched (noted in ``notes``); ``skip`` names a subfolder that is no class.
    """
    dirs = _subfolders(folder, skip)
    if not dirs:
        raise DataError(f"no class folders in {folder}: expected {folder}/<class>/<image files>")
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
        case_twins = sorted({n for n in names if [m.lower() for m in names].count(n.lower()) > 1})
        if case_twins:
            raise DataError(f"class folders in {folder} differ only by case ({case_twins}); "
                            "merge them or rename one")
    mapping, matched = _match_classes(folder, names, classes)
    if notes is not None:
        notes += matched
    paths: list[Path] = []
    labels: list[int] = []
    for d in dirs:
        files = image_files(d)
        if not files:
            raise DataError(f"class folder {d} holds no image files "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        paths += files
        labels += [classes.index(mapping[d.name])] * len(files)
    return classes, paths, labels


def root_folder(cfg: DataConfig, missing: str) -> Path:
    """``data.root`` as a folder of the ``folder`` source; ``missing``: the error when unset.

    Raises:
        DataError: ``data.root`` is unset or not a folder.
    """
    if cfg.root is None:
        raise DataError(missing)
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"source 'folder': data.root={cfg.root!r} is not a folder")
    return root


def load_folder(cfg: DataConfig) -> RawData:
    """The ``folder`` source: ``root/{train,val,test}/<class>/<image>`` or ``root/<class>/...``."""
    root = root_folder(cfg, "source 'folder' needs data.root: a folder of <class>/<image> "
                            "folders, or of train/, val/, test/ folders that hold them")
    skip = _unlabeled_inside(root, cfg)
    splits = split_folders(root, skip)
    if not splits:
        classes, paths, labels = _scan_classes(root, None, skip=skip)
        raw = _files_to_raw({"train": (paths, labels)}, classes, cfg, root)
        raw.origins["train"] = f"class folders in {root}"
        return raw
    classes, paths, labels = _scan_classes(splits["train"], None)
    groups = {"train": (paths, labels)}
    notes: list[str] = []
    for name in ("val", "test"):
        if name in splits:
            groups[name] = _scan_classes(splits[name], classes, notes)[1:]
    raw = _files_to_raw(groups, classes, cfg, root)
    raw.notes[:0] = notes
    raw.origins.update({name: f"folder {splits[name].name}/" for name in groups})
    return raw


# ----------------------------------------------------------------------------- csv


def read_text_file(path: Path, what: str) -> str:
    """The text of a UTF-8 (optionally with BOM) or BOM-marked UTF-16/UTF-32 file.

    Raises:
        DataError: missing, not a regular file (a FIFO is never opened for reading), or not
            in one of those encodings; the message names the file and the fix.
    """
    regular_file(path, what, DataError)
    return decode_text(path.read_bytes(), f"{what} {path} is", DataError)


def _read_csv(path: Path, cfg: DataConfig, split: str, classes: list[str] | None
              ) -> tuple[list[Path], list[str], list[str]]:
    """Reads ``(image paths, label strings, notes)`` of one CSV, validating columns and labels.

    A file listed twice with one label is kept once (with a note); with two different labels
    it is an error naming both lines.
    """
    files = cfg.csv
    assert files is not None
    text = read_text_file(path, f"{split} CSV")
    image_dir = Path(files.image_dir) if files.image_dir else path.parent
    if files.image_dir and cfg.root and not image_dir.is_absolute():
        image_dir = Path(cfg.root) / image_dir
    known = set(classes) if classes is not None else None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    for col, key in ((files.filename_column, "filename_column"),
                     (files.label_column, "label_column")):
        if col not in columns:
            raise DataError(f"{split} CSV {path} has no column {col!r}; columns found: "
                            f"{columns}. Set data.csv.{key} to the right one")
    rows: dict[str, tuple[str, int]] = {}
    repeated = 0
    for row in reader:
        name, label = (row[files.filename_column] or "").strip(), (
            row[files.label_column] or "").strip()
        if not name or not label:
            raise DataError(f"{split} CSV {path} line {reader.line_num}: empty file name "
                            "or label")
        if known is not None and label not in known:
            raise DataError(f"{split} CSV {path} line {reader.line_num}: label {label!r} does "
                            f"not occur in the training CSV (classes: {classes})")
        if name in rows:
            first_label, first_line = rows[name]
            if first_label != label:
                raise DataError(f"{split} CSV {path}: {name!r} is labelled {first_label!r} on "
                                f"line {first_line} and {label!r} on line {reader.line_num}; "
                                "keep one row per file")
            repeated += 1
            continue
        rows[name] = (label, reader.line_num)
    if not rows:
        raise DataError(f"{split} CSV {path} lists no images")
    _check_some_exist(path, image_dir, list(rows), cfg)
    notes = [f"{split} CSV {path} lists {repeated} file(s) twice with the same label; each is "
             "used once"] if repeated else []
    return [image_dir / n for n in rows], [label for label, _ in rows.values()], notes


PATH_RULE = ("file names in a CSV are relative to data.csv.image_dir when it is set (itself "
             "relative to data.root when that is set), else to the CSV's own folder; absolute "
             "names are used as they are")


def _check_some_exist(csv_path: Path, image_dir: Path, names: list[str], cfg: DataConfig
                      ) -> None:
    """Refuse a CSV none of whose files exist, saying where it looked and where they are."""
    sample = names[:: max(1, len(names) // 50)]  # a quick look first, then every file
    if any((image_dir / n).exists() for n in sample) or any(
            (image_dir / n).exists() for n in names):
        return
    bases = [Path(cfg.root)] if cfg.root else []
    found = _find_folder_holding(names[0], [*bases, csv_path.parent, csv_path.parent.parent])
    hint = (f"; {names[0]!r} is in {found}: set data.csv.image_dir={found}" if found
            else f"; {names[0]!r} was not found near {csv_path.parent} either")
    raise DataError(f"file not found: none of the {len(names)} files listed in {csv_path} "
                    f"exists under {image_dir} (e.g. {image_dir / names[0]}). Path rule: "
                    f"{PATH_RULE}{hint}")


def _find_folder_holding(name: str, bases: list[Path], depth: int = 4,
                         budget: int = 20_000) -> Path | None:
    """The first folder ``D`` under ``bases`` (breadth-first, bounded) with ``D / name``."""
    queue = [(b, 0) for b in bases if b.is_dir()]
    seen = 0
    while queue and seen < budget:
        folder, level = queue.pop(0)
        seen += 1
        if (folder / name).is_file():
            return folder
        if level < depth:
            try:
                queue += [(d, level + 1) for d in sorted(folder.iterdir())
                          if d.is_dir() and not d.name.startswith(".")]
            except OSError:
                continue
    return None


def load_csv(cfg: DataConfig) -> RawData:
    """The ``csv`` source: one CSV of (file name, class) rows per split."""
    if cfg.csv is None:
        raise DataError("source 'csv' needs data.csv.train (and optionally data.csv.val / .test)")

    def resolve(p: str) -> Path:
        return resolve_path(cfg, p)

    train_csv = resolve(cfg.csv.train)
    train_paths, train_labels, notes = _read_csv(train_csv, cfg, "train", None)
    classes = sorted(set(train_labels))
    index = {name: i for i, name in enumerate(classes)}
    groups = {"train": (train_paths, [index[y] for y in train_labels])}
    for split in ("val", "test"):
        name = getattr(cfg.csv, split)
        if name is not None:
            paths, labels, split_notes = _read_csv(resolve(name), cfg, split, classes)
            groups[split] = (paths, [index[y] for y in labels])
            notes += split_notes
    anchor = Path(cfg.root).expanduser() if cfg.root else train_csv.parent
    raw = _files_to_raw(groups, classes, cfg, anchor)
    raw.notes[:0] = notes
    raw.origins.update({name: f"CSV {resolve(getattr(cfg.csv, name))}" for name in groups})
    return raw
