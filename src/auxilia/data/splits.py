"""Seeded, stratified index splits.

Every helper is pure: the same labels and seed give the same indices, on every machine, whatever
the global random state. Indices are returned as sorted ``int64`` tensors, so a split keeps the
original sample order. Work is vectorised; the only Python loops run over classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["MIN_VAL_PER_CLASS", "SplitError", "labeled_fraction", "labeled_unlabeled",
           "per_class_split", "small_val_note", "stratified_split", "stratified_subset"]


class SplitError(ValueError):
    """A split cannot be made as asked (e.g. more labels per class than a class has)."""


def _as_labels(labels: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
    """Returns ``labels`` as a 1-D ``int64`` CPU tensor."""
    out = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    return out.cpu()


def _rank_within_class(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Random rank of every sample among the samples of its class (0 = drawn first).

    Args:
        labels: ``int64`` labels ``[N]``.
        seed: seed of the shuffle.

    Returns:
        ``int64`` tensor ``[N]``: sample ``i`` is the ``rank[i]``-th draw of its class.
    """
    n = labels.numel()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    order = perm[torch.argsort(labels[perm], stable=True)]
    sorted_labels = labels[order]
    # start of each class run in the sorted order
    is_start = torch.ones(n, dtype=torch.bool)
    is_start[1:] = sorted_labels[1:] != sorted_labels[:-1]
    starts = torch.cummax(torch.where(is_start, torch.arange(n), 0), dim=0).values
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - starts
    return rank


def _class_quotas(counts: torch.Tensor, n_take: int) -> torch.Tensor:
    """Splits ``n_take`` over classes proportionally to ``counts`` (largest remainder).

    Args:
        counts: samples per class.
        n_take: total to allocate, ``0 <= n_take <= counts.sum()``.

    Returns:
        ``int64`` quota per class, summing to ``n_take``, each at most the class count.
    """
    total = int(counts.sum())
    exact = counts.double() * n_take / max(total, 1)
    quota = exact.floor().long()
    remainder = n_take - int(quota.sum())
    if remainder > 0:
        # ties go to the larger class, then the lower class index: deterministic
        key = (exact - quota.double()) * (total + 1) + counts.double() / (total + 1)
        quota[torch.argsort(key, descending=True, stable=True)[:remainder]] += 1
    return torch.minimum(quota, counts)


def _take_by_quota(labels: torch.Tensor, quotas: torch.Tensor, seed: int) -> torch.Tensor:
    """Boolean mask of the samples drawn: the first ``quotas[c]`` random draws of class ``c``."""
    if labels.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    rank = _rank_within_class(labels, seed)
    return rank < quotas[labels]


def stratified_split(
    labels: torch.Tensor | np.ndarray | Sequence[int], fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Carves a stratified fraction out of a labelled set.

    ``round(fraction * N)`` samples are taken, spread over classes in proportion to their size.

    Args:
        labels: class labels ``[N]`` (non-negative integers).
        fraction: share of the samples to take, in ``[0, 1)``.
        seed: seed of the draw.

    Returns:
        ``(keep_idx, take_idx)``: sorted ``int64`` indices, disjoint, together covering ``0..N-1``.

    Raises:
        SplitError: when ``fraction`` is outside ``[0, 1)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise SplitError(f"fraction must be in [0, 1), got {fraction}")
    y = _as_labels(labels)
    n_take = round(fraction * y.numel())
    return _split_by_count(y, n_take, seed)


def _split_by_count(y: torch.Tensor, n_take: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified draw of exactly ``n_take`` samples; returns ``(keep_idx, take_idx)``."""
    if y.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    if int(y.min()) < 0:
        raise SplitError("labels must be non-negative to stratify (found -1: unlabeled samples?)")
    counts = torch.bincount(y)
    take = _take_by_quota(y, _class_quotas(counts, n_take), seed)
    return torch.nonzero(~take).flatten(), torch.nonzero(take).flatten()


def stratified_subset(
    labels: torch.Tensor | np.ndarray | Sequence[int], n: int, seed: int
) -> torch.Tensor:
    """Picks ``n`` samples, stratified by class (``train_subset``).

    Args:
        labels: class labels ``[N]``.
        n: number of samples to keep; all of them when ``n >= N``.
        seed: seed of the draw.

    Returns:
        Sorted ``int64`` indices of the kept samples.
    """
    if n < 0:
        raise SplitError(f"subset size must be >= 0, got {n}")
    y = _as_labels(labels)
    if n >= y.numel():
        return torch.arange(y.numel())
    return _split_by_count(y, n, seed)[1]


def labeled_unlabeled(
    labels: torch.Tensor | np.ndarray | Sequence[int],
    labels_per_class: int,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keeps ``labels_per_class`` labelled samples of every class; the rest become unlabeled.

    Args:
        labels: class labels ``[N]``.
        labels_per_class: labelled samples kept per class.
        seed: seed of the draw.
        class_names: names of all classes (index = label). When given, every one of them must
            have enough samples, including classes absent from ``labels``; errors name them.

    Returns:
        ``(labeled_idx, unlabeled_idx)``: sorted, disjoint ``int64`` indices covering ``0..N-1``.

    Raises:
        SplitError: when a class has fewer than ``labels_per_class`` samples.
    """
    if labels_per_class < 1:
        raise SplitError(f"labels_per_class must be >= 1, got {labels_per_class}")
    return per_class_split(labels, labels_per_class, seed, class_names,
                           setting=f"labels_per_class={labels_per_class}",
                           fix="lower data.labels_per_class to at most {most}")


def per_class_split(
    labels: torch.Tensor | np.ndarray | Sequence[int],
    per_class: int,
    seed: int,
    class_names: Sequence[str] | None = None,
    *,
    setting: str,
    fix: str,
    keep_at_least: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws exactly ``per_class`` samples of every class (``labels_per_class``,
    ``val_per_class``): the first ``per_class`` random ranks of each class at ``seed``.

    Args:
        labels: class labels ``[N]``.
        per_class: samples drawn per class.
        seed: seed of the draw.
        class_names: names of all classes (index = label); when given, every one of them must
            have enough samples, including classes absent from ``labels``; errors name them.
        setting: the setting asking for the draw, as errors name it (``"val_per_class=10"``).
        fix: what an error suggests; ``{most}`` is replaced by the largest ``per_class`` every
            class allows.
        keep_at_least: samples every class must keep besides the drawn ones.

    Returns:
        ``(drawn_idx, rest_idx)``: sorted, disjoint ``int64`` indices covering ``0..N-1``.

    Raises:
        SplitError: a class with fewer than ``per_class + keep_at_least`` samples.
    """
    y, counts = _class_counts(labels, class_names)
    most = max(int(counts.min()) - keep_at_least, 0) if counts.numel() else 0
    _check_counts(counts, per_class + keep_at_least, class_names, setting,
                  fix.format(most=most))
    take = _take_by_quota(y, torch.full_like(counts, per_class), seed)
    return torch.nonzero(take).flatten(), torch.nonzero(~take).flatten()


def labeled_fraction(
    labels: torch.Tensor | np.ndarray | Sequence[int],
    fraction: float,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keeps a stratified ``fraction`` of the samples labelled; the rest become unlabeled.

    ``round(fraction * N)`` samples are spread over the classes in proportion to their size
    (largest remainder), then every class gets at least one. The draw within a class is the
    one :func:`labeled_unlabeled` makes with the same seed: the first ``k`` ranks of the class.

    Args:
        labels: class labels ``[N]``.
        fraction: share of the samples kept labelled, in ``(0, 1)``.
        seed: seed of the draw.
        class_names: names of all classes (index = label); when given, every one must have a
            sample, including classes absent from ``labels``.

    Returns:
        ``(labeled_idx, unlabeled_idx)``: sorted, disjoint ``int64`` indices covering ``0..N-1``.

    Raises:
        SplitError: ``fraction`` outside ``(0, 1)``, or a class without samples.
    """
    if not 0.0 < fraction < 1.0:
        raise SplitError(f"labels_fraction must be in (0, 1), got {fraction}")
    y, counts = _class_counts(labels, class_names)
    _check_counts(counts, 1, class_names, f"labels_fraction={fraction}",
                  "add training images for it or remove the class")
    quotas = _class_quotas(counts, round(fraction * y.numel())).clamp_min(1)
    take = _take_by_quota(y, quotas, seed)
    return torch.nonzero(take).flatten(), torch.nonzero(~take).flatten()


def _class_counts(labels: torch.Tensor | np.ndarray | Sequence[int],
                  class_names: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, samples per class)``: counts over every class, named or seen."""
    y = _as_labels(labels)
    if y.numel() and int(y.min()) < 0:
        raise SplitError("labels must be non-negative (found -1: already unlabeled samples?)")
    num_classes = max(len(class_names) if class_names else 0, int(y.max()) + 1 if y.numel() else 0)
    return y, torch.bincount(y, minlength=num_classes)


def _check_counts(counts: torch.Tensor, need: int, class_names: Sequence[str] | None,
                  setting: str, fix: str) -> None:
    """Refuse classes with fewer than ``need`` samples, naming the first of them."""
    short = torch.nonzero(counts < need).flatten().tolist()
    if not short:
        return
    c = short[0]
    name = f"{class_names[c]!r} (label {c})" if class_names and c < len(class_names) else str(c)
    more = f" ({len(short) - 1} more classes are short too)" if len(short) > 1 else ""
    raise SplitError(f"{setting} but class {name} has only {int(counts[c])} training "
                     f"samples{more}; {fix}")


MIN_VAL_PER_CLASS = 10
"""Fewer validation images per class than this (on average) make checkpoint selection noisy."""
MAX_CARVED_SHARE = 0.5
"""A val_fraction the small-val note suggests leaves training at least this share of the
samples (val and a carved test together take at most the rest)."""


def small_val_note(val_count: int, num_classes: int, val_fraction: float | None,
                   test_share: float = 0.0, val_per_class: int | None = None) -> str | None:
    """A note when the validation split is empty or too small to select a checkpoint on.

    Args:
        val_count: images in the validation split.
        num_classes: classes of the data.
        val_fraction: ``data.val_fraction`` when val was carved from train with it; None when
            the source gave its own val split (the fraction then changes nothing).
        test_share: the share of the samples carved as test beside val (0 when the source
            has its own test split).
        val_per_class: ``data.val_per_class`` when val was carved with it (the note then
            suggests raising it).

    Returns:
        The note, or None when val is large enough. It suggests a larger ``val_fraction``
        only when one gives about :data:`MIN_VAL_PER_CLASS` images per class and keeps
        training at least :data:`MAX_CARVED_SHARE` of the samples.
    """
    if val_count == 0:
        return "no validation split: the last evaluation is the selected one"
    wanted = MIN_VAL_PER_CLASS * num_classes
    if val_count >= wanted:
        return None
    fix = f"add validation images (at least {MIN_VAL_PER_CLASS} per class)"
    if val_per_class:
        fix = f"raise data.val_per_class to {MIN_VAL_PER_CLASS} if the labels allow, or {fix}"
    if val_fraction:  # val grows with the fraction: scale it, rounded up to a hundredth
        larger = max(math.ceil(val_fraction * wanted / val_count * 100) / 100,
                     round(val_fraction + 0.01, 2))
        if larger + test_share <= MAX_CARVED_SHARE:
            fix = f"raise data.val_fraction (e.g. {larger:g}) or {fix}"
    return (f"val has {val_count} images for {num_classes} classes "
            f"({val_count / num_classes:.1f} per class): too few to select a checkpoint "
            f"reliably; {fix}")
