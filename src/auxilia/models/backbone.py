"""The backbone contract every model in auxilia answers.

A backbone is a feature extractor cut into named stages. ``forward(x)`` returns the feature map
of every stage in one pass, so that heads can attach to any of them (deep supervision, projection
heads, self-distillation) without a second forward. The last stage is the one the main classifier
pools.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class Backbone(nn.Module):
    """Base class: a network with named stage exits.

    Subclasses set, in ``__init__``:
        stage_names: exit names in depth order, ``("s1", ..., "sN")``.
        stage_channels: channels of each stage's feature map.
        stage_strides: total down-sampling of each stage relative to the input.

    ``forward(x)`` with ``x`` of shape ``[B, C_in, H, W]`` returns ``{name: [B, C_s, H_s, W_s]}``
    for every stage, in depth order.
    """

    family: ClassVar[str] = "own"

    def __init__(self) -> None:
        super().__init__()
        self.stage_names: tuple[str, ...] = ()
        self.stage_channels: dict[str, int] = {}
        self.stage_strides: dict[str, int] = {}

    @property
    def last_stage(self) -> str:
        """Name of the deepest stage, the one the main classifier pools."""
        return self.stage_names[-1]

    @property
    def num_features(self) -> int:
        """Channels of the deepest stage: the main classifier's input width."""
        return self.stage_channels[self.last_stage]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class StagedBackbone(Backbone):
    """A backbone that is a stem followed by a list of stages, one exit per stage.

    Subclasses fill ``self.stem`` (default: identity) and ``self.stages`` (one module per name
    in ``stage_names``); ``forward`` returns each stage's output in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem: nn.Module = nn.Identity()
        self.stages = nn.ModuleList()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return every stage's feature map, ``{"s1": ..., "sN": ...}``."""
        out: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        for name, stage in zip(self.stage_names, self.stages, strict=True):
            x = stage(x)
            out[name] = x
        return out


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU) with zero bias, unit BatchNorm: the initialisation
    of torchvision's ResNet, shared by the zoo's small-image models."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
