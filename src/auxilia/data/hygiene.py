"""Data hygiene: identical images within a split, and across splits (a test-set leak).

Samples are compared by their content key (:attr:`auxilia.data.types.Split.keys`: a hash of
the file's bytes, or of the pixels for array datasets). Inside one split, copies are dropped
(the first kept); copies filed under different classes are all dropped, since their label is
ambiguous. Across splits, an image of val or test that also occurs in a training split (or a
test image that also occurs in val) is, by ``data.duplicates``: ``drop`` (default) removed
from val/test, the training copy staying; ``error``: refused; ``keep``: kept, with a note.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from auxilia.data.raw import DataError
from auxilia.data.types import Split

__all__ = ["array_keys", "dedupe_within", "remove_cross_split_copies"]

_SHOWN = 5  # examples named in a note or an error


def array_keys(images: torch.Tensor) -> torch.Tensor:
    """Content keys of in-memory images: BLAKE2b-64 of each image's bytes, as ``int64 [N]``."""
    arr = np.ascontiguousarray(images.numpy())
    digests = b"".join(hashlib.blake2b(arr[i].data, digest_size=8).digest()
                       for i in range(arr.shape[0]))
    return torch.from_numpy(np.frombuffer(digests, dtype="<i8").copy())


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

    The splits are compared in the order ``train``, ``unlabeled``, ``val``, ``test``: an image
    of val is checked against train and unlabeled; one of test against those and val.

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
    for name in ("train", "unlabeled", "val", "test"):
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


def _against(split: Split, name: str, keys: torch.Tensor, labels: torch.Tensor, earlier: str,
             policy: str) -> tuple[Split, list[str]]:
    order = torch.argsort(keys)
    sorted_keys = keys[order]
    assert split.keys is not None
    pos = torch.searchsorted(sorted_keys, split.keys).clamp_max(len(keys) - 1)
    found = sorted_keys[pos] == split.keys
    if not found.any():
        return split, []
    idx = torch.nonzero(found).flatten()
    other = labels[order][pos[idx]]
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
