"""Data hygiene: identical images within a split, and across splits (a test-set leak).

Samples are compared by their content key (:attr:`auxilia.data.types.Split.keys`: a hash of
the file's bytes, or of the pixels for array datasets). Inside one split, copies are dropped
(the first kept); copies filed under different classes are all dropped, since their label is
ambiguous. Across splits, an image of val or test that also occurs in train (or a test image
that also occurs in val) is, by ``data.duplicates``: ``drop`` (default) removed from val/test,
the training copy staying; ``error``: refused; ``keep``: kept, with a note.

The unlabeled split is handled the other way round (:func:`clean_unlabeled`, once val and test
are final): val and test stay fixed, so that every method is compared on the same test set, and
an unlabeled image identical to a val or test image is dropped from the *unlabeled* split
(``error``: refused; ``keep``: kept, with a note). One identical to a labeled training image is
allowed (with a note).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from auxilia.data.raw import DataError, RawData
from auxilia.data.types import Split

__all__ = ["array_keys", "clean_raw", "clean_unlabeled", "dedupe_within", "note_labeled_copies",
           "remove_cross_split_copies", "with_keys"]

_SHOWN = 5  # examples named in a note or an error


def array_keys(images: torch.Tensor) -> torch.Tensor:
    """Content keys of in-memory images: BLAKE2b-64 of each image's bytes, as ``int64 [N]``."""
    arr = np.ascontiguousarray(images.numpy())
    digests = b"".join(hashlib.blake2b(arr[i].data, digest_size=8).digest()
                       for i in range(arr.shape[0]))
    return torch.from_numpy(np.frombuffer(digests, dtype="<i8").copy())


def with_keys(split: Split, name: str) -> Split:
    """``split`` with content keys: its own, or the pixels' (:func:`array_keys`), the samples
    then named ``<name>[<index>]``."""
    if split.keys is not None:
        return split
    names = np.array([f"{name}[{i}]" for i in range(len(split))], dtype=object)
    return Split(split.images, split.labels, array_keys(split.images), names, split.targets,
                 split.true_labels)


def _names(split: Split, idx: torch.Tensor, label: str) -> list[str]:
    if split.names is not None:
        return [str(n) for n in split.names[idx[:_SHOWN].numpy()]]
    return [f"{label}[{int(i)}]" for i in idx[:_SHOWN]]


def _groups(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inverse, counts)`` of equal keys: sample ``i`` is in group ``inverse[i]``."""
    _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    return inverse, counts


def dedupe_within(split: Split, name: str) -> tuple[Split, list[str]]:
    """Drop the copies of identical images inside one split.

    Args:
        split: samples with ``keys``.
        name: the split's name, for the notes.

    Returns:
        ``(split without copies, notes)``: of each group of identical images the first is kept,
        unless the group holds two labels, then all of it is dropped.
    """
    if split.keys is None or len(split) < 2:
        return split, []
    inverse, counts = _groups(split.keys)
    if bool((counts == 1).all()):
        return split, []
    n, groups = len(split), counts.numel()
    labels = split.labels
    lowest = torch.full((groups,), np.iinfo(np.int64).max).scatter_reduce(
        0, inverse, labels, "amin")
    highest = torch.full((groups,), np.iinfo(np.int64).min).scatter_reduce(
        0, inverse, labels, "amax")
    first = torch.full((groups,), n).scatter_reduce(0, inverse, torch.arange(n), "amin")
    ambiguous = (lowest != highest)[inverse]
    keep = torch.zeros(n, dtype=torch.bool)
    keep[first] = True
    keep &= ~ambiguous
    notes = []
    copies = ~keep & ~ambiguous
    if copies.any():
        idx = torch.nonzero(copies).flatten()
        notes.append(f"{name}: dropped {len(idx)} copies of images that occur more than once "
                     f"in the split (identical bytes), e.g. {', '.join(_names(split, idx, name))}")
    if ambiguous.any():
        idx = torch.nonzero(ambiguous).flatten()
        notes.append(f"{name}: dropped {len(idx)} images whose identical copies are filed under "
                     f"different classes, e.g. {', '.join(_names(split, idx, name))}")
    return split.take(torch.nonzero(keep).flatten()), notes


def remove_cross_split_copies(splits: dict[str, Split | None], policy: str
                              ) -> tuple[dict[str, Split | None], list[str]]:
    """Handle images of val/test that also occur in an earlier split.

    The splits are compared in the order ``train``, ``val``, ``test``: an image of val is
    checked against train; one of test against train and val. An ``unlabeled`` entry is passed
    through as it is: it is checked against the final val and test (:func:`clean_unlabeled`).

    Args:
        splits: split name → samples with ``keys`` (or None when absent).
        policy: ``"drop"`` (remove from val/test), ``"error"`` or ``"keep"``.

    Returns:
        ``(splits, notes)``.

    Raises:
        DataError: copies were found and ``policy`` is ``"error"``.
    """
    seen_keys: list[torch.Tensor] = []
    seen_labels: list[torch.Tensor] = []
    seen_from: list[str] = []
    out = dict(splits)
    notes: list[str] = []
    for name in ("train", "val", "test"):
        split = out.get(name)
        if split is None or split.keys is None:
            continue
        if name in ("val", "test") and seen_keys:
            out[name], note = _against(split, name, torch.cat(seen_keys), torch.cat(seen_labels),
                                       "/".join(seen_from), policy)
            notes += note
            split = out[name]
            assert split is not None
        seen_keys.append(split.keys)
        seen_labels.append(split.labels)
        seen_from.append(name)
    return out, notes


def _found(keys: torch.Tensor, among: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(found, where)``: whether each of ``keys`` occurs in ``among``, and (where found) the
    position in ``among`` of an equal key."""
    if len(among) == 0:
        return torch.zeros(len(keys), dtype=torch.bool), torch.zeros(len(keys), dtype=torch.int64)
    order = torch.argsort(among)
    pos = torch.searchsorted(among[order], keys).clamp_max(len(among) - 1)
    return among[order][pos] == keys, order[pos]


def _against(split: Split, name: str, keys: torch.Tensor, labels: torch.Tensor, earlier: str,
             policy: str) -> tuple[Split, list[str]]:
    assert split.keys is not None
    found, where = _found(split.keys, keys)
    if not found.any():
        return split, []
    idx = torch.nonzero(found).flatten()
    other = labels[where[idx]]
    relabelled = int(((other != split.labels[idx]) & (other >= 0)).sum())
    what = (f"{len(idx)} {name} image(s) also occur in {earlier} (identical bytes)"
            + (f", {relabelled} of them under a different class" if relabelled else "")
            + f", e.g. {', '.join(_names(split, idx, name))}")
    if policy == "error":
        raise DataError(f"{what}. A test image seen in training inflates the results: remove "
                        "the copies, or set data.duplicates=drop to drop them from "
                        f"{name} (the default) or data.duplicates=keep")
    if policy == "keep":
        return split, [f"{what}; kept (data.duplicates=keep)"]
    keep = torch.nonzero(~found).flatten()
    if len(keep) == 0:
        raise DataError(f"every {name} image also occurs in {earlier}; {name} would be empty")
    return split.take(keep), [f"{what}; dropped from {name}, the {earlier} copy kept"]


def clean_unlabeled(unlabeled: Split, held_out: dict[str, Split], policy: str
                    ) -> tuple[Split, list[str]]:
    """Keep val and test images out of the unlabeled split; drop copies inside it.

    Called once val and test are final (after every carve), so that it holds whichever way the
    unlabeled images came (hidden training labels, ``data.unlabeled``, STL-10's unlabeled split).

    Args:
        unlabeled: the unlabeled samples, with ``keys``.
        held_out: ``{"val": ..., "test": ...}``, with ``keys``; they are not changed.
        policy: ``data.duplicates``: ``"drop"`` (from the unlabeled split), ``"error"``,
            ``"keep"``.

    Returns:
        ``(unlabeled split, notes)``.

    Raises:
        DataError: an unlabeled image is a val or test image and ``policy`` is ``"error"``.
    """
    unlabeled, notes = dedupe_within(with_keys(unlabeled, "unlabeled"), "unlabeled")
    assert unlabeled.keys is not None
    keyed = {n: s.keys for n, s in held_out.items() if s.keys is not None and len(s)}
    if not keyed or not len(unlabeled):
        return unlabeled, notes
    hits = {n: _found(unlabeled.keys, keys)[0] for n, keys in keyed.items()}
    found = torch.stack(list(hits.values())).any(0)
    if not found.any():
        return unlabeled, notes
    idx = torch.nonzero(found).flatten()
    where = "/".join(n for n, hit in hits.items() if hit.any())
    what = (f"{len(idx)} unlabeled image(s) also occur in {where} (identical content), e.g. "
            f"{', '.join(_names(unlabeled, idx, 'unlabeled'))}")
    if policy == "error":
        raise DataError(f"{what}. A val/test image among the training images leaks the test "
                        "set into training: remove them from the unlabeled images, or set "
                        "data.duplicates=drop to drop them from the unlabeled split (the "
                        "default; val and test stay as they are) or data.duplicates=keep")
    if policy == "keep":
        return unlabeled, [*notes, f"{what}; kept (data.duplicates=keep)"]
    return unlabeled.take(torch.nonzero(~found).flatten()), [
        *notes, f"{what}; dropped from unlabeled ({where} unchanged)"]


def note_labeled_copies(unlabeled: Split, train: Split) -> list[str]:
    """A note when unlabeled images are copies of labeled training images (allowed)."""
    if unlabeled.keys is None or train.keys is None or not len(unlabeled):
        return []
    found = _found(unlabeled.keys, train.keys)[0]
    if not found.any():
        return []
    idx = torch.nonzero(found).flatten()
    return [f"{len(idx)} unlabeled image(s) are also labeled training images (identical "
            f"content), e.g. {', '.join(_names(unlabeled, idx, 'unlabeled'))}; kept in both"]


def clean_raw(raw: RawData, policy: str, extra_unlabeled: Split | None = None) -> None:
    """Give every official split content keys, add ``extra_unlabeled`` to the unlabeled split,
    drop copies inside each split and handle copies of val/test across splits, in place; what
    was done goes to ``raw.notes``.

    Raises:
        DataError: copies across splits with ``policy`` ``"error"``; an empty training split.
    """
    splits = {"train": raw.train, "unlabeled": raw.unlabeled, "val": raw.val, "test": raw.test}
    splits = {name: None if s is None else with_keys(s, name) for name, s in splits.items()}
    if extra_unlabeled is not None:
        base = splits["unlabeled"]
        splits["unlabeled"] = extra_unlabeled if base is None else Split.cat(base,
                                                                             extra_unlabeled)
    for name, split in splits.items():
        if split is not None:
            splits[name], notes = dedupe_within(split, name)
            raw.notes += notes
    splits, notes = remove_cross_split_copies(splits, policy)
    raw.notes += notes
    if splits["train"] is None:
        raise DataError("the training split is empty")
    raw.train, raw.unlabeled, raw.val, raw.test = (splits["train"], splits["unlabeled"],
                                                   splits["val"], splits["test"])
