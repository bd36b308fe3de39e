"""Heads that attach to a backbone's exits. Every head is training-only scaffolding unless it
is the main classifier: ``MultiExitModel.strip()`` drops them all."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class HeadSpec:
    """What a recipe asks to attach: a head of ``kind`` on ``exit`` producing output ``field``.

    Two recipes asking for the same (exit, field) must ask for the same head, or combining them
    fails loudly.
    """

    exit: str
    field: str
    kind: str
    options: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def key(self) -> str:
        return f"{self.exit}__{self.field}"


class ClassifierHead(nn.Module):
    """Auxiliary classifier (deep supervision, Lee et al. 2015): optional conv3x3-BN-ReLU
    adapter, global average pooling, linear layer.

    Input ``[B, C, H, W]`` (or ``[B, C]``, already pooled); output logits ``[B, num_classes]``.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 0) -> None:
        super().__init__()
        self.adapter: nn.Module = nn.Identity()
        width = in_channels
        if hidden > 0:
            self.adapter = nn.Sequential(
                nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
                nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
            width = hidden
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = self.adapter(x).mean(dim=(2, 3))
        return self.fc(x)


HeadFactory = Callable[..., nn.Module]

HEADS: dict[str, HeadFactory] = {
    "classifier": ClassifierHead,
}


def build_head(spec: HeadSpec, in_channels: int, num_classes: int) -> nn.Module:
    """Instantiate the head a :class:`HeadSpec` names."""
    if spec.kind not in HEADS:
        raise ValueError(f"unknown head kind {spec.kind!r}; valid: {', '.join(sorted(HEADS))}")
    return HEADS[spec.kind](in_channels, num_classes, **dict(spec.options))
