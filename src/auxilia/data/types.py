"""In-memory dataset splits shared by every source."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Split:
    """Images of one split, decoded once and kept in memory.

    Attributes:
        images: ``uint8`` tensor ``[N, C, H, W]``.
        labels: ``int64`` tensor ``[N]``; ``-1`` where the label is hidden (unlabeled data).
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"Split.images must be uint8 [N, C, H, W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError("Split.images and Split.labels differ in length: "
                             f"{self.images.shape[0]} vs {self.labels.shape[0]}")


@dataclass
class DatasetSplits:
    """Everything a run needs from a data source.

    Attributes:
        train: labeled training samples.
        val: validation samples (model selection happens here, never on test).
        test: held-out test samples.
        unlabeled: training samples whose labels are hidden (``labels_per_class``), or None.
        classes: class names, index = label.
        mean, std: per-channel normalisation statistics in [0, 1] units.
        family: augmentation family: ``"digits"`` (no flips, small shifts), ``"natural"``
            (crop + flip), or ``"natural_noflip"`` (crop only, e.g. SVHN house numbers).
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

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)
