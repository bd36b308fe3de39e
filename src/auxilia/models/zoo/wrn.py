"""Wide Residual Networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k: a 3x3 stem of 16 channels, then three groups of ``(d - 4) / 6`` pre-activation
BasicBlocks at 16k/32k/64k channels with strides 1/2/2. As in FixMatch (Sohn et al., NeurIPS 2020)
the network's final BN + activation is part of the last stage, so ``s3`` is the map the classifier
pools, and the first block activates before its residual split.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from auxilia.models.backbone import Backbone
from auxilia.models.scaled import scaled_channels, scaled_repeats
from auxilia.models.scaling import Scale
from auxilia.models.stochastic_depth import block_rates, drop_path


def _act(leaky_slope: float) -> nn.Module:
    """ReLU (Zagoruyko) or LeakyReLU (FixMatch uses slope 0.1)."""
    return nn.LeakyReLU(leaky_slope, inplace=True) if leaky_slope > 0 else nn.ReLU(inplace=True)


class PreActBlock(nn.Module):
    """BN-act-conv3x3-BN-act-dropout-conv3x3 with a residual connection (Zagoruyko, Fig. 1d).

    Maps ``[B, in_planes, H, W]`` to ``[B, planes, H / stride, W / stride]``. When the shape
    changes (or ``activate_before_residual``) the shortcut takes the pre-activated input, through a
    1x1 conv if needed.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        dropout: float = 0.0,
        activate_before_residual: bool = False,
        leaky_slope: float = 0.0,
        bn_momentum: float = 0.1,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.drop_path = drop_path(drop_rate)  # stochastic depth (Huang et al. 2016)
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=bn_momentum)
        self.act1 = _act(leaky_slope)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.act2 = _act(leaky_slope)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == planes and stride == 1
        self.activate_before_residual = activate_before_residual or not self.equal_in_out
        self.shortcut: nn.Module = nn.Identity()
        if not self.equal_in_out:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation residual forward."""
        pre = self.act1(self.bn1(x))
        if self.activate_before_residual:
            x = pre
        out = self.act2(self.bn2(self.conv1(pre)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.shortcut(x) + self.drop_path(self.conv2(out))


class WideResNet(Backbone):
    """WRN-depth-width cut into its three groups.

    Args:
        depth: ``6n + 4`` (16, 28, 40, ...).
        width: widening factor ``k``.
        in_chans: input channels.
        dropout: dropout between the two convs of every block (0.3 in Zagoruyko for CIFAR).
        leaky_slope: 0 for ReLU (Zagoruyko), 0.1 for FixMatch's LeakyReLU.
        bn_momentum: BatchNorm momentum (FixMatch uses 0.001).
        drop_path: stochastic depth of the last block, linear over the blocks.
        scale: compound scaling (Tan & Le 2019) of the blocks per group and of every width.

    ``forward`` maps ``[B, in_chans, H, W]`` to ``{"s1": [B, 16k, H, W], "s2": [B, 32k, H/2, W/2],
    "s3": [B, 64k, H/4, W/4]}``; ``s3`` is after the final BN + activation.
    """

    family = "wrn"

    def __init__(
        self,
        depth: int,
        width: int,
        in_chans: int = 3,
        dropout: float = 0.0,
        leaky_slope: float = 0.0,
        bn_momentum: float = 0.1,
        drop_path: float = 0.0,
        scale: Scale | None = None,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        n = scaled_repeats((depth - 4) // 6, scale)
        widths = tuple(scaled_channels(c * width, scale) for c in (16, 32, 64))
        stem = scaled_channels(16, scale)
        rates = iter(block_rates(drop_path, 3 * n))
        block_kw = {"dropout": dropout, "leaky_slope": leaky_slope, "bn_momentum": bn_momentum}
        self.stem = nn.Conv2d(in_chans, stem, 3, padding=1, bias=False)
        groups: list[nn.Module] = []
        in_planes = stem
        for i, (planes, stride) in enumerate(zip(widths, (1, 2, 2), strict=True)):
            blocks = [PreActBlock(in_planes, planes, stride, activate_before_residual=i == 0,
                                  drop_rate=next(rates), **block_kw)]
            blocks += [PreActBlock(planes, planes, 1, drop_rate=next(rates), **block_kw)
                       for _ in range(n - 1)]
            groups.append(nn.Sequential(*blocks))
            in_planes = planes
        self.groups = nn.ModuleList(groups)
        self.final_bn = nn.BatchNorm2d(widths[-1], momentum=bn_momentum)
        self.final_act = _act(leaky_slope)
        self.stage_names = ("s1", "s2", "s3")
        self.stage_channels = dict(zip(self.stage_names, widths, strict=True))
        self.stage_strides = {"s1": 1, "s2": 2, "s3": 4}
        self._init_weights(leaky_slope)

    def _init_weights(self, leaky_slope: float) -> None:
        """Kaiming-normal convs (fan_out), unit BN."""
        nonlinearity = "leaky_relu" if leaky_slope > 0 else "relu"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=leaky_slope, mode="fan_out",
                                        nonlinearity=nonlinearity)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return every group's feature map, ``{"s1": ..., "s2": ..., "s3": ...}``."""
        x = self.stem(x)
        s1 = self.groups[0](x)
        s2 = self.groups[1](s1)
        s3 = self.final_act(self.final_bn(self.groups[2](s2)))
        return {"s1": s1, "s2": s2, "s3": s3}


def _factory(depth: int, width: int) -> Callable[..., Backbone]:
    """A registry factory ``(in_chans=3, image_size=32, **wrn_kwargs) -> WideResNet``."""

    def build(
        *,
        in_chans: int = 3,
        image_size: int = 32,
        dropout: float = 0.0,
        leaky_slope: float = 0.0,
        bn_momentum: float = 0.1,
        drop_path: float = 0.0,
        scale: Scale | None = None,
    ) -> Backbone:
        del image_size  # fully convolutional: any input size works
        return WideResNet(depth, width, in_chans=in_chans, dropout=dropout,
                          leaky_slope=leaky_slope, bn_momentum=bn_momentum,
                          drop_path=drop_path, scale=scale)

    return build


MODELS: dict[str, Callable[..., Backbone]] = {
    "wrn_28_2": _factory(28, 2),
    "wrn_28_8": _factory(28, 8),
    "wrn_16_2": _factory(16, 2),
    "wrn_40_2": _factory(40, 2),
}
