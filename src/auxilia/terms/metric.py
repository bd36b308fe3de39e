"""Contrastive and metric-learning terms on projection-head outputs."""

from __future__ import annotations

from typing import Any

import torch

from auxilia.losses import supcon, triplet_margin
from auxilia.losses.contrastive import supcon_sum
from auxilia.ranks import all_sum, current, gather, gather_with_grad
from auxilia.terms.core import Batch, Outputs, Progress, Ref, Term


class SupCon(Term):
    """SupCon (with labels) or SimCLR (``labels=None``) over the views of one exit's projection.

    Reads one L2-normalised ``[B, D]`` projection per view and stacks them to ``[B, V, D]``
    (Khosla et al. 2020; the loss CDS puts on every stage, Zhang et al. 2022).

    With several processes (``torchrun``) each holding ``b`` rows of the global batch, the
    projections and labels of every rank are gathered (with gradient), this rank's rows are
    the anchors against all gathered rows, and its loss is its anchors' sum times the world
    size over the count of anchors of all ranks: the mean over ranks that DDP's gradient
    average takes is then exactly the one-process loss of the global batch.
    """

    def __init__(self, name: str, views: tuple[Ref, ...], labels: str | None = "y_lb",
                 temperature: float = 0.07, base_temperature: float = 0.07,
                 weight: float = 1.0) -> None:
        super().__init__(name, weight)
        self.views, self.labels = views, labels
        self.temperature, self.base_temperature = temperature, base_temperature

    def refs(self) -> tuple[Ref, ...]:
        return self.views

    def options(self) -> tuple[Any, ...]:
        return (self.labels, self.temperature, self.base_temperature)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        features = torch.stack([ref.read(outputs).float() for ref in self.views], dim=1)
        labels = batch[self.labels] if self.labels else None
        ranks = current()
        if not ranks.several:
            return supcon(features, labels, self.temperature, self.base_temperature)
        total, count = supcon_sum(gather_with_grad(features),
                                  gather(labels) if labels is not None else None,
                                  self.temperature, self.base_temperature,
                                  anchors=ranks.rows(features.shape[0] * ranks.world))
        return total * ranks.world / all_sum(count).clamp(min=1)


class Triplet(Term):
    """Triplet margin loss on an embedding ``[B, D]`` with in-batch mining."""

    def __init__(self, name: str, ref: Ref, labels: str = "y_lb", margin: float = 0.2,
                 mining: str = "batch_hard", weight: float = 1.0) -> None:
        super().__init__(name, weight)
        self.ref, self.labels, self.margin, self.mining = ref, labels, margin, mining

    def refs(self) -> tuple[Ref, ...]:
        return (self.ref,)

    def options(self) -> tuple[Any, ...]:
        return (self.labels, self.margin, self.mining)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        return triplet_margin(self.ref.read(outputs).float(), batch[self.labels], self.margin,
                              self.mining)
