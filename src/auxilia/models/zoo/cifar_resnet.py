"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2).

The 6n+2 networks: a 3x3 stem, then three stages of ``n`` BasicBlocks at 16/32/64 channels with
strides 1/2/2. Shortcuts that change shape are 1x1 conv + BN projections (option B), as in
RepDistiller (Tian et al., "Contrastive Representation Distillation", ICLR 2020), whose
``resnet8x4`` and ``resnet32x4`` (stem 32, stages 64/128/256) are included too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from auxilia.models.backbone import Backbone, StagedBackbone, kaiming_init
from auxilia.models.scaled import scaled_channels, scaled_repeats
from auxilia.models.scaling import Scale
from auxilia.models.stochastic_depth import block_rates, drop_path


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (He et al. 2016, Fig. 2).

    Maps ``[B, in_planes, H, W]`` to ``[B, planes, H / stride, W / stride]``; ``drop_rate`` is
    the stochastic-depth probability of the residual branch (Huang et al. 2016).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_rate: float = 0.0
                 ) -> None:
        super().__init__()
        self.drop_path = drop_path(drop_rate)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block forward: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + self.shortcut(x))


class CifarResNet(StagedBackbone):
    """A 6n+2 CIFAR ResNet cut into its three stages.

    Args:
        depth: total depth, ``6n + 2`` (8, 14, 20, 32, 44, 56, 110, ...).
        widths: stem width then the three stage widths, e.g. ``(16, 16, 32, 64)``.
        in_chans: input channels.
        drop_path: stochastic depth of the last block, linear over the blocks
            (:func:`~auxilia.models.stochastic_depth.block_rates`).
        scale: compound scaling (Tan & Le 2019): blocks per stage ``ceil(n * depth)``, every
            width through :func:`~auxilia.models.scaled.scaled_channels`.

    ``forward`` maps ``[B, in_chans, H, W]`` to ``{"s1": [B, w1, H, W], "s2": [B, w2, H/2, W/2],
    "s3": [B, w3, H/4, W/4]}``.
    """

    family = "cifar_resnet"

    def __init__(self, depth: int, widths: Sequence[int], in_chans: int = 3,
                 drop_path: float = 0.0, scale: Scale | None = None) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must be (stem, s1, s2, s3), got {tuple(widths)}")
        n = scaled_repeats((depth - 2) // 6, scale)
        widths = [scaled_channels(w, scale) for w in widths]
        rates = iter(block_rates(drop_path, 3 * n))
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        strides = (1, 2, 2)
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for planes, stride in zip(widths[1:], strides, strict=True):
            stages.append(_make_stage(in_planes, planes, n, stride, rates))
            in_planes = planes
        self.stages = nn.ModuleList(stages)
        self.stage_names = ("s1", "s2", "s3")
        self.stage_channels = dict(zip(self.stage_names, widths[1:], strict=True))
        self.stage_strides = {"s1": 1, "s2": 2, "s3": 4}
        kaiming_init(self)


def _make_stage(in_planes: int, planes: int, blocks: int, stride: int,
                rates: Iterator[float]) -> nn.Sequential:
    """``blocks`` BasicBlocks, the first one with ``stride``, their stochastic-depth rates
    drawn in order from ``rates``."""
    layers = [BasicBlock(in_planes, planes, stride, next(rates))]
    layers += [BasicBlock(planes, planes, 1, next(rates)) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _factory(depth: int, widths: Sequence[int]) -> Callable[..., Backbone]:
    """A registry factory ``(in_chans=3, image_size=32) -> CifarResNet`` for one configuration."""

    def build(*, in_chans: int = 3, image_size: int = 32, drop_path: float = 0.0,
              scale: Scale | None = None) -> Backbone:
        del image_size  # fully convolutional: any input size works
        return CifarResNet(depth, widths, in_chans=in_chans, drop_path=drop_path, scale=scale)

    return build


_BASE = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)

MODELS: dict[str, Callable[..., Backbone]] = {
    **{f"resnet{d}": _factory(d, _BASE) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _factory(8, _X4),
    "resnet32x4": _factory(32, _X4),
}
