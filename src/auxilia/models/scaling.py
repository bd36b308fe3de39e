"""Compound scaling of depth, width and resolution (Tan & Le, "EfficientNet: Rethinking Model
Scaling for Convolutional Neural Networks", ICML 2019).

One coefficient φ scales a baseline network's depth by ``α**φ``, its width (channels) by
``β**φ`` and its input resolution by ``γ**φ``. The paper's grid search on B0 found α=1.2,
β=1.1, γ=1.15 under the constraint α·β²·γ² ≈ 2, so the FLOPs of a convolutional network grow
by about ``(α·β²·γ²)**φ`` (≈ 1.92**φ with those constants: see :func:`flops_factor`).

The multipliers are real numbers; a network needs integers. :func:`round_channels`,
:func:`round_repeats` and :func:`round_resolution` turn them into channel counts, block repeats
and an image side. :data:`B_TABLE` holds the published B0–B7 coefficients, which were rounded by
hand and do not follow one φ (:func:`implied_phi` measures by how much).

Pure arithmetic: nothing here builds or imports a network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

# The paper's constants (Section 3.3, step 1 of the compound scaling method).
ALPHA = 1.2
BETA = 1.1
GAMMA = 1.15
# B0's input side, the baseline every row of the table scales.
BASE_RESOLUTION = 224


@dataclass(frozen=True)
class Scale:
    """Real-valued compound-scaling multipliers.

    Attributes:
        depth: multiplier of each stage's block repeats (``α**φ``).
        width: multiplier of each layer's channel count (``β**φ``).
        resolution: multiplier of the input image side (``γ**φ``).
    """

    depth: float
    width: float
    resolution: float


@dataclass(frozen=True)
class Preset:
    """One published EfficientNet row (Tan & Le 2019; the TF reference's ``efficientnet_params``).

    Attributes:
        width: channel multiplier.
        depth: repeat multiplier.
        resolution: input image side in pixels (square ``[B, 3, resolution, resolution]``).
        dropout: dropout rate before the classifier.
        timm_name: the timm architecture built with these multipliers.
    """

    width: float
    depth: float
    resolution: int
    dropout: float
    timm_name: str


class ImpliedPhi(NamedTuple):
    """The φ each dimension of a preset implies on its own (``log(multiplier) / log(constant)``)."""

    depth: float
    width: float
    resolution: float

    @property
    def spread(self) -> float:
        """How far the three disagree: largest minus smallest implied φ (0 for one exact φ)."""
        return max(self) - min(self)


def _check_positive(name: str, value: float) -> None:
    """Refuse a value that is not a finite positive real number, naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"compound scaling: {name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"compound scaling: {name} must be a finite number > 0, got {value!r}")


def _check_count(name: str, value: int) -> None:
    """Refuse a value that is not a positive integer, naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"compound scaling: {name} must be an integer >= 1, got {value!r}")


def compound(
    phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA
) -> Scale:
    """Compound-scaling multipliers: depth ``α**φ``, width ``β**φ``, resolution ``γ**φ``.

    Args:
        phi: the compound coefficient; 0 is the baseline, a negative φ scales down (useful to
            shrink an ImageNet design to CPU scale).
        alpha: depth base (the paper's 1.2).
        beta: width base (the paper's 1.1).
        gamma: resolution base (the paper's 1.15).

    Returns:
        The three real multipliers; round them with :func:`round_repeats`,
        :func:`round_channels` and :func:`round_resolution`.

    Raises:
        ValueError: if ``phi`` is not finite, or ``alpha``, ``beta`` or ``gamma`` is not > 0.
    """
    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or not math.isfinite(phi):
        raise ValueError(f"compound scaling: phi must be a finite number, got {phi!r}")
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        _check_positive(name, value)
    return Scale(depth=alpha**phi, width=beta**phi, resolution=gamma**phi)


def flops_factor(alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA) -> float:
    """FLOPs growth per unit of φ, ``α·β²·γ²``: FLOPs grow linearly with depth, quadratically
    with width and with resolution. The paper constrains it to about 2 (1.92 with its constants).

    Raises:
        ValueError: if ``alpha``, ``beta`` or ``gamma`` is not > 0.
    """
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        _check_positive(name, value)
    return alpha * beta**2 * gamma**2


def _nearest_multiple(value: float, divisor: int) -> int:
    """Nearest multiple of ``divisor`` to ``value`` (halves round up), at least ``divisor``.

    ``int(v + d/2) // d * d`` rather than ``round``: Python's ``round`` sends halves to even,
    and this is the expression the TF reference and timm use, so ties land where theirs do.
    """
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Channel count after width scaling: ``channels * width`` to the nearest multiple of
    ``divisor``, at least ``divisor``, bumped up by one ``divisor`` if rounding lost more than 10 %.

    Matches timm's ``round_channels`` (``timm.models._efficientnet_builder``), i.e.
    ``make_divisible(channels * width, divisor, min_value=None, round_limit=0.9)`` in
    ``timm.layers.helpers``, itself the TF reference's ``round_filters``: same expression, same
    float order, so a preset rounds to exactly timm's channel counts.

    Args:
        channels: the baseline's channel count.
        width: the width multiplier (``Scale.width``).
        divisor: the multiple to land on (8 suits vector units and grouped convolutions).

    Returns:
        The scaled channel count.

    Raises:
        ValueError: if ``channels`` or ``divisor`` is not an integer >= 1, or ``width`` not > 0.
    """
    _check_count("channels", channels)
    _check_count("divisor", divisor)
    _check_positive("width", width)
    scaled = channels * width
    rounded = _nearest_multiple(scaled, divisor)
    # rounding to the nearest multiple can drop a small layer by up to divisor/2 channels
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


def round_repeats(repeats: int, depth: float) -> int:
    """Block repeats of a stage after depth scaling: ``ceil(depth * repeats)``.

    Rounded up, as in the TF reference's ``round_repeats`` and timm's default
    ``depth_trunc='ceil'``: any depth multiplier above 1 deepens every stage. The product is
    taken in floating point as theirs is, so a preset gets exactly timm's repeats.

    Raises:
        ValueError: if ``repeats`` is not an integer >= 1, or ``depth`` not > 0.
    """
    _check_count("repeats", repeats)
    _check_positive("depth", depth)
    return math.ceil(depth * repeats)


def round_resolution(size: int, resolution: float, divisor: int = 8) -> int:
    """Input side after resolution scaling: ``size * resolution`` to the nearest multiple of
    ``divisor`` (halves up), at least ``divisor``.

    The published B1–B7 sides (240, 260, 300, 380, 456, 528, 600) were picked by hand and follow
    no formula (224·1.15**φ gives 258, 296, 341, 392, 451, 518, 596), so this is our rule, not
    theirs. The default 8 keeps the feature map an exact integer through three stride-2 stages,
    the most our small-image zoo uses; pass 32 for an ImageNet network with five.

    Args:
        size: the baseline input side in pixels.
        resolution: the resolution multiplier (``Scale.resolution``).
        divisor: the multiple to land on.

    Returns:
        The scaled input side in pixels.

    Raises:
        ValueError: if ``size`` or ``divisor`` is not an integer >= 1, or ``resolution`` not > 0.
    """
    _check_count("size", size)
    _check_count("divisor", divisor)
    _check_positive("resolution", resolution)
    return _nearest_multiple(size * resolution, divisor)


# (width, depth, resolution, dropout) as published in the TF reference's efficientnet_params and
# in timm's _gen_efficientnet docstring; timm's efficientnet_b{i} pass the same two multipliers
# (timm's pretrained tags train at other sides, e.g. b3.ra2_in1k at 288; the table keeps the
# paper's)
B_TABLE: dict[str, Preset] = {
    f"b{i}": Preset(width=w, depth=d, resolution=r, dropout=p, timm_name=f"efficientnet_b{i}")
    for i, (w, d, r, p) in enumerate((
        (1.0, 1.0, 224, 0.2),
        (1.0, 1.1, 240, 0.2),
        (1.1, 1.2, 260, 0.3),
        (1.2, 1.4, 300, 0.3),
        (1.4, 1.8, 380, 0.4),
        (1.6, 2.2, 456, 0.4),
        (1.8, 2.6, 528, 0.5),
        (2.0, 3.1, 600, 0.5),
    ))
}
"""The published EfficientNet B0–B7 presets by name (``"b0"``…``"b7"``).

The table does not follow one φ: each row's multipliers were rounded by hand, so the φ implied
by depth, width and resolution separately (:func:`implied_phi`, with the paper's α, β, γ)
disagree by up to 1.07 (B7: 6.21, 7.27, 7.05) and by 0.52 already at B1 (0.52, 0, 0.49).
"""


def implied_phi(
    preset: Preset, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA
) -> ImpliedPhi:
    """The φ each dimension of ``preset`` implies on its own: depth ``log(depth) / log(α)``,
    width ``log(width) / log(β)``, resolution ``log(resolution / 224) / log(γ)``.

    Raises:
        ValueError: if ``alpha``, ``beta`` or ``gamma`` is not > 0 and ≠ 1 (log base 1 is
            undefined).
    """
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        _check_positive(name, value)
        if value == 1:
            raise ValueError(f"compound scaling: {name}=1 scales nothing, so it implies no phi")
    return ImpliedPhi(
        depth=math.log(preset.depth) / math.log(alpha),
        width=math.log(preset.width) / math.log(beta),
        resolution=math.log(preset.resolution / BASE_RESOLUTION) / math.log(gamma),
    )
