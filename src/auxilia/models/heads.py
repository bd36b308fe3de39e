"""Heads that attach to a backbone's exits. Every head is training-only scaffolding unless it
is the main classifier: ``MultiExitModel.strip()`` drops them all."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
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
    model: str = "student"  # the model slot the head attaches to

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


def downsample_steps(in_stride: int, out_stride: int) -> int:
    """Number of stride-2 steps that take a map of ``in_stride`` to ``out_stride``.

    Args:
        in_stride: total down-sampling of the input map relative to the image.
        out_stride: total down-sampling wanted (usually the deepest stage's).

    Returns:
        ``log2(out_stride / in_stride)``, at least 0.

    Raises:
        ValueError: for non-positive strides, ``out_stride < in_stride``, or a ratio that is not
            a power of two.
    """
    if in_stride < 1 or out_stride < 1:
        raise ValueError(f"strides must be positive, got {in_stride} and {out_stride}")
    ratio, rest = divmod(out_stride, in_stride)
    if rest or ratio & (ratio - 1):
        raise ValueError(f"stride {out_stride} is not a power-of-two multiple of {in_stride}")
    return ratio.bit_length() - 1


def sepconv_layout(in_channels: int, in_stride: int, out_channels: int, out_stride: int) -> int:
    """Number of stride-2 SepConv blocks a CDS projection head needs (Zhang et al., ECCV 2022).

    CDS brings every stage to the final stage's resolution with one stride-2 SepConv block per
    halving: 3/2/1/0 blocks on a CIFAR ResNet18's s1..s4 (strides 1, 2, 4, 8). Channels do not
    change the count: with 0 blocks and ``in_channels != out_channels`` the head adds a stride-1
    pointwise adapter instead (see :class:`SepConvProjection`).

    Args:
        in_channels: channels of the stage the head attaches to.
        in_stride: that stage's stride (``Backbone.stage_strides``).
        out_channels: channels of the projection (CDS: the last stage's, 512·expansion).
        out_stride: the last stage's stride.

    Returns:
        The ``blocks`` option of the ``"sepconv_proj"`` head.
    """
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"channels must be positive, got {in_channels} and {out_channels}")
    return downsample_steps(in_stride, out_stride)


def _l2_normalise(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(x, dim=1, eps=1e-12)


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` → ``[B, D, 1, 1]``; a 4-D map passes unchanged."""
    if x.dim() == 2:
        return x[:, :, None, None]
    if x.dim() != 4:
        raise ValueError(f"heads take [B, C, H, W] maps or [B, D] vectors, got {tuple(x.shape)}")
    return x


class SepConv(nn.Sequential):
    """Separable-convolution block of CDS / task-oriented feature distillation (Zhang et al.).

    depthwise 3x3 (stride ``stride``) → pointwise 1x1 → BN → ReLU → depthwise 3x3 (stride 1) →
    pointwise 1x1 to ``out_channels`` → BN → ReLU. Maps ``[B, C_in, H, W]`` to
    ``[B, C_out, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
            nn.BatchNorm2d(in_channels), nn.ReLU(),
            nn.Conv2d(in_channels, in_channels, 3, 1, 1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU())


def _pointwise(in_channels: int, out_channels: int) -> nn.Sequential:
    """Stride-1 channel adapter: 1x1 conv → BN → ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class SepConvProjection(nn.Module):
    """Projection head of Contrastive Deep Supervision (CDS, Zhang et al., ECCV 2022).

    ``blocks`` stride-2 :class:`SepConv` blocks, each doubling the channels until
    ``out_channels`` (the last block always lands on ``out_channels``), then global average
    pooling and L2 normalisation. On a CIFAR ResNet18 with ``out_channels=512``: s1 64→128→256→512
    (3 blocks), s2 128→256→512 (2), s3 256→512 (1), s4 pool + normalise only (0). With 0 blocks
    and ``in_channels != out_channels`` a stride-1 pointwise adapter (1x1 conv → BN → ReLU) maps
    the channels. A ``[B, D]`` input (exit ``final``) is a 1x1 map: normalised, after the
    pointwise adapter (a linear layer + BN + ReLU) where ``D != out_channels``; it needs
    ``blocks=0``.

    Input ``[B, C, H, W]`` or ``[B, C]``; output ``[B, out_channels]``, unit L2 norm per row.

    Args:
        in_channels: channels of the exit.
        num_classes: unused (heads share one factory signature).
        out_channels: projection width (CDS: 512·expansion, the last stage's channels).
        blocks: stride-2 blocks, from :func:`sepconv_layout`.
    """

    def __init__(self, in_channels: int, num_classes: int = 0, *, out_channels: int,
                 blocks: int) -> None:
        super().__init__()
        if blocks < 0 or out_channels < 1:
            raise ValueError(f"need blocks >= 0 and out_channels >= 1, got {blocks}, "
                             f"{out_channels}")
        self.blocks = blocks
        layers: list[nn.Module] = []
        width = in_channels
        for i in range(blocks):
            nxt = out_channels if i == blocks - 1 else min(width * 2, out_channels)
            layers.append(SepConv(width, nxt, stride=2))
            width = nxt
        if blocks == 0 and in_channels != out_channels:
            layers.append(_pointwise(in_channels, out_channels))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and self.blocks:
            raise ValueError("a pooled [B, D] input takes a head with blocks=0")
        return _l2_normalise(self.body(_as_map(x)).mean(dim=(2, 3)))


class MLPProjection(nn.Module):
    """SimCLR projector (Chen et al., ICML 2020): pool → Linear → BN1d → ReLU → Linear → L2 norm.

    Input ``[B, C, H, W]`` (globally average-pooled first) or ``[B, C]``; output
    ``[B, out_dim]`` with unit L2 norm per row.

    Args:
        in_channels: channels of the exit.
        num_classes: unused.
        hidden: hidden width.
        out_dim: projection width.
    """

    def __init__(self, in_channels: int, num_classes: int = 0, *, hidden: int = 512,
                 out_dim: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden, bias=False),
                                 nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.mean(dim=(2, 3))
        return _l2_normalise(self.mlp(x))


class BYOTHead(nn.Module):
    """Shallow classifier of Be Your Own Teacher (BYOT, Zhang et al., ICCV 2019).

    Bottleneck: 1x1 conv to ``width`` → BN → ReLU → 3x3 conv (``downsample`` times stride 2,
    each → BN → ReLU; one stride-1 conv when 0) → 1x1 conv to ``out_channels`` → BN → ReLU;
    then global average pooling and a linear classifier. ``out_channels`` is the deepest stage's
    width, so the pooled bottleneck (the "hint") compares by L2 with the deepest exit's pooled
    feature. A ``[B, D]`` input is treated as a 1x1 map.

    Input ``[B, C, H, W]``; output ``{"logits": [B, num_classes], "hint": [B, out_channels]}``.

    Args:
        in_channels: channels of the exit.
        num_classes: classifier outputs.
        out_channels: the deepest stage's channels.
        downsample: stride-2 steps to the deepest stage's resolution (:func:`downsample_steps`).
        width: bottleneck width; default ``out_channels // 4`` (the official code's choice).
    """

    def __init__(self, in_channels: int, num_classes: int, *, out_channels: int,
                 downsample: int, width: int | None = None) -> None:
        super().__init__()
        if downsample < 0 or out_channels < 1:
            raise ValueError(f"need downsample >= 0 and out_channels >= 1, got {downsample}, "
                             f"{out_channels}")
        mid = width or max(1, out_channels // 4)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, mid, 1, bias=False),
                                   nn.BatchNorm2d(mid), nn.ReLU()]
        for stride in [2] * downsample or [1]:
            layers += [nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid),
                       nn.ReLU()]
        layers += [nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                   nn.ReLU()]
        self.bottleneck = nn.Sequential(*layers)
        self.fc = nn.Linear(out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hint = self.bottleneck(_as_map(x)).mean(dim=(2, 3))
        return {"logits": self.fc(hint), "hint": hint}


class LinearProbe(nn.Module):
    """Marker for an online linear probe on exit ``final`` (metric learning's linear evaluation).

    The probe is the main classifier applied to the *detached* pooled feature;
    :class:`~auxilia.models.multi_exit.MultiExitModel` computes it, since only the model holds
    the classifier. The marker owns no parameters or buffers, so attaching it adds no
    ``state_dict`` keys, and ``strip()`` keeps the classifier it trained.

    Args:
        in_channels: unused (heads share one factory signature).
        num_classes: unused.
    """

    def __init__(self, in_channels: int = 0, num_classes: int = 0) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a linear probe is computed by MultiExitModel with its own classifier")


HeadFactory = Callable[..., nn.Module]

class HintRegressor(nn.Module):
    """FitNet's regressor (Romero et al., ICLR 2015): a student feature map to the teacher's
    shape, conv3x3 + BN + ReLU (as the CIFAR distillation benchmarks build it), then average
    pooling (or bilinear up-sampling) to the teacher's side.

    Maps ``[B, in_channels, H, W]`` to ``[B, out_channels, out_size, out_size]``; trained with
    the student, dropped at export like every head.
    """

    def __init__(self, in_channels: int, num_classes: int = 0, *, out_channels: int,
                 out_size: int) -> None:
        super().__init__()
        del num_classes
        self.out_size = out_size
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        if x.shape[-1] > self.out_size:
            return F.adaptive_avg_pool2d(x, self.out_size)
        if x.shape[-1] < self.out_size:
            return F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear",
                                 align_corners=False)
        return x


class DenseHead(nn.Module):
    """Dense outputs of a regression task on one exit: conv3x3 + BN + ReLU, a 1x1 conv to every
    field's channels, bilinear up-sampling to ``out_size``, split into fields (a grasp
    detector's position / cos / sin / width maps).

    Maps ``[B, in_channels, H, W]`` to ``{field: [B, C_field, out_size, out_size]}``.
    """

    def __init__(self, in_channels: int, num_classes: int = 0, *,
                 fields: tuple[tuple[str, int], ...], out_size: int, hidden: int = 64) -> None:
        super().__init__()
        del num_classes
        self.fields, self.out_size = tuple(fields), out_size
        self.body = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(hidden, sum(c for _, c in self.fields), 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.out(self.body(x))
        if y.shape[-1] != self.out_size:
            y = F.interpolate(y, size=(self.out_size, self.out_size), mode="bilinear",
                              align_corners=False)
        parts = y.split([c for _, c in self.fields], dim=1)
        return {name: part for (name, _), part in zip(self.fields, parts, strict=True)}


HEADS: dict[str, HeadFactory] = {
    "classifier": ClassifierHead,
    "sepconv_proj": SepConvProjection,
    "mlp_proj": MLPProjection,
    "byot": BYOTHead,
    "probe": LinearProbe,
    "hint_regressor": HintRegressor,
    "dense": DenseHead,
}
"""Registry of heads: kind → ``factory(in_channels, num_classes, **options)``."""


def build_head(spec: HeadSpec, in_channels: int, num_classes: int) -> nn.Module:
    """Instantiate the head a :class:`HeadSpec` names."""
    if spec.kind not in HEADS:
        raise ValueError(f"unknown head kind {spec.kind!r}; valid: {', '.join(sorted(HEADS))}")
    if spec.kind == "probe" and spec.exit != "final":
        # the probe is the main classifier, which reads the final exit's pooled feature only
        raise ValueError(f"a 'probe' head belongs on exit 'final', not {spec.exit!r}")
    return HEADS[spec.kind](in_channels, num_classes, **dict(spec.options))
