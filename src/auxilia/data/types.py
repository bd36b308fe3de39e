"""In-memory dataset splits shared by every source."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from auxilia.data.file_images import FileImages


@dataclass
class Split:
    """The samples of one split.

    Attributes:
        images: ``uint8`` ``[N, C, H, W]``: a tensor (the memory store: decoded once, kept in
            memory) or :class:`~auxilia.data.file_images.FileImages` (the file store: an index
            view over image files, decoded when a batch is read).
        labels: ``int64`` tensor ``[N]``; ``-1`` where the label is hidden (unlabeled data).
        keys: ``int64`` ``[N]`` content hash of each sample (of the file's bytes for image
            files, of the pixels otherwise): equal keys mean identical images. Set by
            :func:`auxilia.data.sources.load_dataset`.
        names: where each sample came from, ``[N]`` strings: a file path relative to the
            data root, or ``<split>[<index>]`` for array datasets.
        targets: dense regression targets of a task whose output is a dict of maps (a grasp
            detector's position / cos / sin / width): ``{field: float [N, C, H, W]}``. Batches
            carry them as ``target_<stream keys>_<field>``; evaluation then reports each
            field's mean squared error.
        true_labels: ``int64`` ``[N]``, the hidden truth of an unlabeled split: the original
            label of a sample whose label was hidden (``data.labels_per_class``,
            ``data.labels_fraction``, ``data.unlabeled_includes_labeled``), ``-1`` where it is
            unknown (an image of the user's ``data.unlabeled`` folder, STL-10's unlabeled
            split); None when no label is known. Used **only for reporting** (the accuracy of
            the pseudo-labels on the unlabeled split): training never reads it.
    """

    images: torch.Tensor | FileImages
    labels: torch.Tensor
    keys: torch.Tensor | None = None
    names: np.ndarray | None = None
    targets: dict[str, torch.Tensor] | None = None
    true_labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx: torch.Tensor) -> Split:
        """The samples ``idx`` (an ``int64`` index tensor), with their keys, names and truth."""
        return Split(self.images[idx], self.labels[idx],
                     None if self.keys is None else self.keys[idx],
                     None if self.names is None else self.names[idx.numpy()],
                     None if self.targets is None else {k: v[idx] for k, v in
                                                        self.targets.items()},
                     None if self.true_labels is None else self.true_labels[idx])

    def with_images(self, images: torch.Tensor | FileImages) -> Split:
        """The same samples with other pixels (e.g. resized)."""
        return replace(self, images=images)

    def with_labels(self, labels: torch.Tensor) -> Split:
        """The same samples with other labels (``true_labels`` unchanged)."""
        return replace(self, labels=labels)

    def hidden(self) -> Split:
        """The same samples unlabeled: labels ``-1``, the labels they had in ``true_labels``.

        Labels already hidden stay what ``true_labels`` says (``-1`` when it is None).
        """
        truth = self.labels if self.true_labels is None else self.true_labels
        return replace(self, labels=torch.full_like(self.labels, -1),
                       true_labels=truth.clone())

    @staticmethod
    def cat(a: Split, b: Split) -> Split:
        """``a`` followed by ``b`` (keys and names kept when both have them; ``true_labels``
        when either has them, ``-1`` for the samples of the other)."""
        keys = None if a.keys is None or b.keys is None else torch.cat([a.keys, b.keys])
        names = (None if a.names is None or b.names is None
                 else np.concatenate([a.names, b.names]))
        targets = (None if a.targets is None or b.targets is None
                   else {k: torch.cat([v, b.targets[k]]) for k, v in a.targets.items()})
        truth = (None if a.true_labels is None and b.true_labels is None
                 else torch.cat([_truth(a), _truth(b)]))
        images = (a.images.concat(b.images) if isinstance(a.images, FileImages)
                  else torch.cat([a.images, b.images]))  # type: ignore[list-item]
        return Split(images, torch.cat([a.labels, b.labels]), keys,
                     names, targets, truth)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"Split.images must be uint8 [N, C, H, W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError("Split.images and Split.labels differ in length: "
                             f"{self.images.shape[0]} vs {self.labels.shape[0]}")
        for name, target in (self.targets or {}).items():
            if target.shape[0] != self.labels.shape[0] or not target.is_floating_point():
                raise ValueError(f"Split.targets[{name!r}] must be float [N, ...] for the "
                                 f"{self.labels.shape[0]} samples, got {target.dtype} "
                                 f"{tuple(target.shape)}")
        for name, value in (("keys", self.keys), ("names", self.names),
                            ("true_labels", self.true_labels)):
            if value is not None and len(value) != self.labels.shape[0]:
                raise ValueError(f"Split.{name} has {len(value)} entries for "
                                 f"{self.labels.shape[0]} samples")
        truth = self.true_labels
        if truth is not None and (truth.dtype != torch.int64 or truth.dim() != 1):
            raise ValueError(f"Split.true_labels must be int64 [N], got {truth.dtype} "
                             f"{tuple(truth.shape)}")


def _truth(split: Split) -> torch.Tensor:
    """``split.true_labels``, or ``-1`` for every sample when it has none."""
    if split.true_labels is not None:
        return split.true_labels
    return torch.full((len(split),), -1, dtype=torch.int64)


@dataclass
class DatasetSplits:
    """Everything a run needs from a data source.

    Attributes:
        train: labeled training samples.
        val: validation samples (model selection happens here, never on test).
        test: held-out test samples.
        unlabeled: samples without labels (``-1``), or None: training samples whose labels
            are hidden (``labels_per_class`` / ``labels_fraction``; their labels in
            ``true_labels``, for reporting only), the user's ``data.unlabeled`` images,
            STL-10's unlabeled split. Never holds a val or test image.
        classes: class names, index = label.
        mean, std: per-channel normalisation statistics in [0, 1] units.
        family: augmentation family: ``"digits"`` (no flips, small shifts), ``"natural"``
            (crop + flip), ``"natural_noflip"`` (crop only, e.g. SVHN house numbers), or
            ``"natural_cropped"`` (flips only: the file store's random-resized crops).
    """

    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    family: str
    unlabeled: Split | None = None
    notes: list[str] = field(default_factory=list)
    identity: dict[str, Any] | None = None
    """The data's fingerprint (:mod:`auxilia.data.identity`), stored with every run."""
    origins: dict[str, str] = field(default_factory=dict)
    """Where each split came from: a folder, a CSV, "carved from train (fraction, seed)"."""
    pseudo: Split | None = None
    """Unlabeled images labelled by a teacher (``data.pseudo_labels``, Noisy Student), repeats
    allowed; their targets in ``targets["pseudo"]``, the teacher's classes as labels."""
    storage: str | None = None
    """Where the image files' pixels live and why (:func:`~auxilia.data.storage.choose_store`'s
    line); None for array sources."""
    pseudo_record: dict[str, Any] | None = None
    """The pseudo-label file's sha256 and its teacher's: part of the data's fingerprint."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)
