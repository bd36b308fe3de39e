"""``model.scale`` and ``model.drop_path`` as the zoo's factories use them.

:class:`ScaleConfig` is the ``model.scale`` section: a compound coefficient φ and the bases α
(depth), β (width) and γ (resolution) of Tan & Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks" (ICML 2019). A scalable zoo family takes the resulting
:class:`~auxilia.models.scaling.Scale` and applies :func:`scaled_repeats` to each stage's block
count and :func:`scaled_channels` to each layer's width; the resolution is scaled where
``data.image_size=auto`` is resolved (:mod:`auxilia.engine.auto`). The published B0–B7 rows are
presets, ``model.name=efficientnet_b3``, built by timm (:func:`preset_for`).
"""

from __future__ import annotations

import math

from pydantic import Field, field_validator
from torch import nn

from auxilia.models.scaling import (
    ALPHA,
    B_TABLE,
    BETA,
    GAMMA,
    Preset,
    Scale,
    compound,
    flops_factor,
    round_channels,
    round_repeats,
    round_resolution,
)
from auxilia.strict import Strict

PRESET_PREFIX = "efficientnet_"
"""``model.name=efficientnet_b0`` .. ``efficientnet_b7``: the published rows of :data:`B_TABLE`."""


class ScaleConfig(Strict):
    """``model.scale``: compound scaling of a zoo family (Tan & Le 2019, Eq. 3).

    Depth (block repeats per stage) grows by ``alpha**phi`` rounded up, width (channels) by
    ``beta**phi`` rounded to multiples of 8, and the input side by ``gamma**phi`` when
    ``data.image_size`` is ``auto``; FLOPs grow by about ``(alpha * beta**2 * gamma**2)**phi``.
    """

    phi: float = Field(description="the compound coefficient; 0 is the baseline")
    alpha: float = Field(default=ALPHA, gt=0, description="depth base (the paper's 1.2)")
    beta: float = Field(default=BETA, gt=0, description="width base (the paper's 1.1)")
    gamma: float = Field(default=GAMMA, gt=0, description="resolution base (the paper's 1.15)")
    round_to: int = Field(default=8, ge=1, strict=True, description="the scaled input side is "
                          "a multiple of this (4 suits 28 px images, 32 ImageNet networks)")

    @field_validator("phi")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"model.scale.phi must be a finite number, got {value}")
        return value

    def multipliers(self) -> Scale:
        """The real depth, width and resolution multipliers (``alpha**phi``, ...)."""
        return compound(self.phi, self.alpha, self.beta, self.gamma)

    def flops(self) -> float:
        """The nominal FLOPs factor ``(alpha * beta**2 * gamma**2)**phi`` (before rounding)."""
        return flops_factor(self.alpha, self.beta, self.gamma) ** self.phi

    def resolution(self, size: int) -> int:
        """The input side ``size`` scaled by ``gamma**phi`` to a multiple of ``round_to``
        (:func:`round_resolution`); a multiplier of exactly 1 keeps ``size`` as it is."""
        factor = self.multipliers().resolution
        return size if factor == 1 else round_resolution(size, factor, self.round_to)

    def describe(self) -> str:
        """``phi=1 (alpha=1.2, beta=1.1, gamma=1.15): depth x1.2, width x1.1, resolution
        x1.15, FLOPs x1.92``: the header's account of the scaling."""
        m = self.multipliers()
        return (f"phi={self.phi:g} (alpha={self.alpha:g}, beta={self.beta:g}, "
                f"gamma={self.gamma:g}): depth x{m.depth:.3g}, width x{m.width:.3g}, "
                f"resolution x{m.resolution:.3g} (with data.image_size=auto), "
                f"FLOPs x{self.flops():.3g} nominal")


def scale_note(scale: ScaleConfig | None, backbone: nn.Module, side: int) -> str:
    """The run header's account of ``model.scale`` on the built ``backbone`` and its input
    ``side``: ``"; scale phi=1 (...): ..., giving N weight layers, stage channels 16/40/72,
    input 32x32"`` ("" without one)."""
    if scale is None:
        return ""
    layers = sum(1 for m in backbone.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    channels = "/".join(str(c) for c in getattr(backbone, "stage_channels", {}).values())
    return (f"; scale {scale.describe()}, giving {layers} weight layers, stage channels "
            f"{channels}, input {side}x{side}")


def scaled_repeats(repeats: int, scale: Scale | None) -> int:
    """A stage's block count under ``scale``: ``ceil(repeats * depth)``, unchanged without one."""
    return repeats if scale is None else round_repeats(repeats, scale.depth)


def scaled_channels(channels: int, scale: Scale | None) -> int:
    """A layer's width under ``scale`` (:func:`round_channels`, multiples of 8, not below
    90 %). A width multiplier of exactly 1 (φ = 0, or β = 1) keeps the channels as they are,
    so the baseline is the unscaled model even where its widths are not multiples of 8."""
    if scale is None or scale.width == 1:
        return channels
    return round_channels(channels, scale.width)


def preset_for(name: str) -> Preset | None:
    """The :data:`B_TABLE` row of ``efficientnet_b0`` .. ``efficientnet_b7``, else None."""
    if not name.startswith(PRESET_PREFIX):
        return None
    return B_TABLE.get(name.removeprefix(PRESET_PREFIX))


def preset_names() -> list[str]:
    """``efficientnet_b0`` .. ``efficientnet_b7``."""
    return [PRESET_PREFIX + key for key in B_TABLE]
