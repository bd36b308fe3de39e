"""A run knows its data: a fingerprint of the splits, and what changed when it differs.

The fingerprint (:func:`identity`) holds the class names, the image shape, the normalisation
statistics and, per split, the sample count, the count per class and a digest of every
sample's content key and label in order. It does not depend on where the data lies: a dataset
moved to another root has the same fingerprint. The per-sample listing (:func:`listing`: name
and key of every sample of every split) is written beside the run (``data.json``) so that a
mismatch can say which files were added, removed, changed or moved between splits.
"""

from __future__ import annotations

import hashlib
from typing import Any

from auxilia.data.types import DatasetSplits, Split

__all__ = ["VERSION", "describe_changes", "identity", "listing", "same"]

VERSION = 1
SPLITS = ("train", "val", "test", "unlabeled", "pseudo")
_SHOWN = 4


def _digest(split: Split) -> str:
    h = hashlib.blake2b(digest_size=16)
    if split.keys is not None:
        h.update(split.keys.numpy().tobytes())
    else:  # no keys (a split built by hand): the pixels themselves
        h.update(split.images.numpy().tobytes())
    h.update(split.labels.numpy().tobytes())
    for name in sorted(split.targets or {}):  # dense maps, a teacher's pseudo-label rows
        h.update(name.encode())
        h.update(split.targets[name].float().numpy().tobytes())  # type: ignore[index]
    return h.hexdigest()


def _splits(data: DatasetSplits) -> dict[str, Split]:
    return {name: s for name in SPLITS if (s := getattr(data, name)) is not None and len(s)}


def identity(data: DatasetSplits, source: str) -> dict[str, Any]:
    """The fingerprint of ``data`` (JSON-ready), as stored in checkpoints and ``data.json``."""
    k = len(data.classes)
    return {
        "version": VERSION,
        "source": source,
        "classes": list(data.classes),
        "image_shape": list(data.image_shape),
        "mean": list(data.mean),
        "std": list(data.std),
        "splits": {name: {"count": len(s),
                          "class_counts": [int((s.labels == c).sum()) for c in range(k)],
                          "digest": _digest(s)}
                   for name, s in _splits(data).items()},
        **({"pseudo_labels": data.pseudo_record} if data.pseudo_record else {}),
    }


def listing(data: DatasetSplits) -> dict[str, list[list[str]]]:
    """Per split, ``[name, key]`` of every sample (key as 16 hex digits)."""
    out = {}
    for name, s in _splits(data).items():
        names = s.names if s.names is not None else [f"{name}[{i}]" for i in range(len(s))]
        keys = s.keys.tolist() if s.keys is not None else [0] * len(s)
        out[name] = [[str(n), f"{k & (2**64 - 1):016x}"] for n, k in zip(names, keys,
                                                                       strict=True)]
    return out


def same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two fingerprints describe the same data (statistics compared as stored)."""
    keys = ("classes", "image_shape", "splits", "pseudo_labels")
    return all(old.get(k) == new.get(k) for k in keys)


def describe_changes(old: dict[str, Any], new: dict[str, Any],
                     old_files: dict[str, list[list[str]]] | None = None,
                     new_files: dict[str, list[list[str]]] | None = None) -> str:
    """What differs between two fingerprints, in one line (file-level when listings are given)."""
    parts: list[str] = []
    if old.get("classes") != new.get("classes"):
        gone = [c for c in old.get("classes", []) if c not in new.get("classes", [])]
        added = [c for c in new.get("classes", []) if c not in old.get("classes", [])]
        parts.append("classes " + ", ".join(filter(None, [
            f"removed {gone}" if gone else "", f"added {added}" if added else "",
            "reordered" if not gone and not added else ""])))
    if old.get("image_shape") != new.get("image_shape"):
        parts.append(f"image shape {old.get('image_shape')} -> {new.get('image_shape')}")
    files = (_file_changes(old_files, new_files)
             if old_files is not None and new_files is not None else [])
    parts += files or _split_changes(old.get("splits", {}), new.get("splits", {}))
    return "; ".join(parts) or "the fingerprints differ"


def _split_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    parts = []
    for name in SPLITS:
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if a is None or b is None:
            parts.append(f"{name} split {'added' if a is None else 'removed'}")
        elif a["count"] != b["count"]:
            parts.append(f"{name}: {a['count']} -> {b['count']} samples")
        elif a["class_counts"] != b["class_counts"]:
            parts.append(f"{name}: the same number of samples, in other classes")
        else:
            parts.append(f"{name}: the same counts, other content")
    return parts


def _file_changes(old: dict[str, list[list[str]]], new: dict[str, list[list[str]]]
                  ) -> list[str]:
    def where(files: dict[str, list[list[str]]]) -> dict[str, tuple[str, str]]:
        return {n: (split, key) for split, rows in files.items() for n, key in rows}

    a, b = where(old), where(new)
    removed = sorted(n for n in a if n not in b)
    added = sorted(n for n in b if n not in a)
    changed = sorted(n for n in a if n in b and a[n][1] != b[n][1])
    moved = sorted(f"{n} ({a[n][0]} -> {b[n][0]})" for n in a
                   if n in b and a[n][0] != b[n][0])
    parts = []
    for label, names in (("added", added), ("removed", removed), ("changed", changed),
                         ("moved between splits", moved)):
        if names:
            more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
            parts.append(f"{len(names)} file(s) {label}: {', '.join(names[:_SHOWN])}{more}")
    return parts
