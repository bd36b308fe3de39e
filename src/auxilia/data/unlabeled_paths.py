"""``data.unlabeled`` never takes a split or a class: its files must not be labeled files.

The files ``data.unlabeled`` names (a folder's, or a CSV's) are compared with the files the
labeled source was read from (:attr:`auxilia.data.raw.RawData.files`) by what the file system
says they are: device and inode, as :func:`os.path.samefile` does. Every spelling of a path
(relative, absolute, with ``..``, through a symbolic link to the file or to a folder above it,
another case on a case-insensitive file system) and a hard link give the same identity. One
shared file is refused before any unlabeled image is decoded, naming what ``data.unlabeled``
is (data.root, a split folder, a class folder), what it holds, and the fix. Copies (other
files, equal bytes) are left to the content keys (:func:`auxilia.data.hygiene.clean_unlabeled`).

The training files count too: val and test may be carved from them later, and an image cannot
be labeled and unlabeled at once (``data.unlabeled_includes_labeled`` is how to train on the
labeled images without labels as well).
"""

from __future__ import annotations

import os
from pathlib import Path

from auxilia.data.config import DataConfig
from auxilia.data.errors import DataError
from auxilia.data.folders import split_of

__all__ = ["check_unlabeled_paths"]

Identity = tuple[int, int]
"""``(st_dev, st_ino)``: one file, however its path is spelled."""

_ORDER = ("test", "val", "train")
"""Splits from the most to the least serious leak: a file in two splits counts as the first."""


def _identity(path: str | Path) -> Identity | None:
    """The file's identity, following symbolic links; None when it cannot be stat'ed (the
    decoder then names the file)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _labeled_identities(files: dict[str, list[str]]) -> dict[Identity, tuple[str, str]]:
    """``identity -> (split, path)`` of every labeled file."""
    known: dict[Identity, tuple[str, str]] = {}
    for split in reversed(_ORDER):  # the more serious split, written last, wins
        for path in files.get(split, []):
            ident = _identity(path)
            if ident is not None:
                known[ident] = (split, path)
    return known


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _split_layout(root: Path) -> bool:
    """Whether ``root`` holds split folders (else class folders), as the folder source reads it."""
    try:
        return any(split_of(d.name) and d.is_dir() and not d.name.startswith(".")
                   for d in root.iterdir())
    except OSError:
        return False


def _role(cfg: DataConfig, folder: Path, labeled_file: str) -> str:
    """What the unlabeled ``folder`` is in the folder source's layout, e.g. ``is the test
    folder test/ of data.root``; ``""`` when it is none of its folders."""
    if cfg.source != "folder" or cfg.root is None:
        return ""
    root = Path(cfg.root).expanduser()
    if _same(folder, root):
        return " is data.root"
    split_layout = _split_layout(root)
    for parent in Path(labeled_file).parents:
        if _same(parent, root):
            return ""
        if not _same(parent, folder):
            continue
        parts = parent.relative_to(root).parts if parent.is_relative_to(root) else (parent.name,)
        rel = "/".join(parts)
        if split_layout and len(parts) == 1:
            return f" is the {split_of(parts[0]) or parts[0]} folder {rel}/ of data.root"
        if len(parts) == (2 if split_layout else 1):
            return f" is the folder of class {parts[-1]!r} ({rel}/) of data.root"
        return f" is the folder {rel}/ inside data.root"
    return ""


def _fix(cfg: DataConfig, hits: set[str], carved: bool) -> str:
    """Why files of the splits ``hits`` are refused, and what to do; ``carved``: val or test
    is carved from the training files."""
    root = Path(cfg.root).expanduser() if cfg.source == "folder" and cfg.root else None
    where = ("; in a data.root of class folders every folder is a class: keep unlabeled images "
             "outside data.root, or put the class folders in data.root/train/ and the unlabeled "
             "folder beside it" if root is not None and not _split_layout(root) else "")
    include = ("to train on the labeled training images without their labels as well, set "
               "data.unlabeled_includes_labeled=true (it keeps val and test out)")
    if "test" in hits or "val" in hits:
        also = f"; {include}" if "train" in hits else ""
        return ("val and test images never enter training: point data.unlabeled at images that "
                f"are not in the labeled data{where}{also}")
    source = " (val and test are carved from them when loading)" if carved else ""
    return (f"an image is either labeled or unlabeled{source}: {include}, and point "
            f"data.unlabeled only at other images or unset it{where}")


def _hits(files: list[Path], labeled: dict[str, list[str]]
          ) -> dict[str, list[tuple[str, str]]]:
    """``split -> [(unlabeled file, the labeled file it is)]``, in the order of ``files``."""
    known = _labeled_identities(labeled)
    hits: dict[str, list[tuple[str, str]]] = {}
    for f in files:
        found = known.get(_identity(f) or (-1, -1))
        if found is not None:
            hits.setdefault(found[0], []).append((str(f), found[1]))
    return hits


def check_unlabeled_paths(cfg: DataConfig, path: Path, files: list[Path],
                          labeled: dict[str, list[str]]) -> None:
    """Refuse ``data.unlabeled`` files that are files of the labeled source.

    Args:
        cfg: the data section; ``cfg.unlabeled`` is set.
        path: ``data.unlabeled`` resolved (a folder or a CSV).
        files: the image files it names.
        labeled: the labeled source's files by split (:attr:`auxilia.data.raw.RawData.files`);
            empty for an array source (its images are keyed by pixels instead).

    Raises:
        DataError: one line: ``data.unlabeled=...`` and what it is, the number of labeled
            images of each split it holds (with an example), why, and the fix.
    """
    hits = _hits(files, labeled) if labeled else {}
    if not hits:
        return
    worst = next(s for s in _ORDER if s in hits)
    unlabeled_file, labeled_file = hits[worst][0]
    counts = ", ".join(f"{len(hits[s])} {s}" for s in _ORDER if s in hits)
    shown = f"{cfg.unlabeled}" + ("" if str(path) == cfg.unlabeled else f" ({path})")
    what = (f"{_role(cfg, path, labeled_file)}: it holds" if path.is_dir()
            else ": the CSV lists")
    if Path(unlabeled_file) != Path(labeled_file):  # spelled another way
        unlabeled_file += f", which is {labeled_file}"
    fix = _fix(cfg, set(hits), carved=not {"val", "test"} <= set(labeled))
    raise DataError(f"data.unlabeled={shown}{what} labeled images ({counts}; e.g. the {worst} "
                    f"image {unlabeled_file}); {fix}")
