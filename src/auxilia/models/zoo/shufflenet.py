"""CIFAR ShuffleNets V1 and V2, as the KD benchmark RepDistiller defines them.

ShuffleNet V1: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
Mobile Devices" (CVPR 2018). ShuffleNet V2: Ma et al., "ShuffleNet V2: Practical Guidelines for
Efficient CNN Architecture Design" (ECCV 2018). The CIFAR versions follow Tian et al.,
"Contrastive Representation Distillation" (ICLR 2020): the ImageNet stem (conv3x3 stride 2 and a
max-pool) becomes a stride-1 conv1x1 to 24 channels + BN + ReLU, so the three stages run at
strides 2 / 4 / 8 (16x16, 8x8, 4x4 on 32x32 inputs). Each stage is an exit, ``s1`` .. ``s3``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from auxilia.models.backbone import Backbone, StagedBackbone, kaiming_init

_STEM_WIDTH = 24


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups: ``[B, g*n, H, W] -> [B, n*g, H, W]`` (V1, Fig. 1c)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1,
             groups: int = 1) -> nn.Sequential:
    """conv(kernel, same padding, no bias) + BN."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups,
                  bias=False),
        nn.BatchNorm2d(out_ch),
    )


def _stem(in_chans: int) -> nn.Sequential:
    """The CIFAR stem: conv1x1 to 24 channels + BN + ReLU, ``[B, C, H, W] -> [B, 24, H, W]``."""
    return nn.Sequential(_conv_bn(in_chans, _STEM_WIDTH, 1), nn.ReLU(inplace=True))


class ShuffleUnitV1(nn.Module):
    """ShuffleNet V1 unit (Zhang et al. 2018, Fig. 2b/c).

    Grouped 1x1 to ``out_ch / 4`` - channel shuffle - depthwise 3x3 (stride) - grouped 1x1 to
    ``out_ch``, plus the input (stride 1) or concatenated with a 3x3 average-pooled input
    (stride 2), then ReLU. Maps ``[B, in_ch, H, W]`` to ``[B, out_ch (+ in_ch if stride 2),
    H / stride, W / stride]``. As in the benchmark, the depthwise conv is followed by ReLU.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int,
                 first_groups: int | None = None) -> None:
        super().__init__()
        mid = out_ch // 4
        self.first_groups = groups if first_groups is None else first_groups
        self.stride = stride
        self.reduce = _conv_bn(in_ch, mid, 1, groups=self.first_groups)
        self.depthwise = _conv_bn(mid, mid, 3, stride=stride, groups=mid)
        self.expand = _conv_bn(mid, out_ch, 1, groups=groups)
        self.shortcut: nn.Module = nn.Identity()
        if stride == 2:
            self.shortcut = nn.AvgPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(branch(x) + x)``, or ``relu(cat(branch(x), avgpool(x)))`` when striding."""
        out = F.relu(self.reduce(x))
        if self.first_groups > 1:
            out = channel_shuffle(out, self.first_groups)
        out = self.expand(F.relu(self.depthwise(out)))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(StagedBackbone):
    """CIFAR ShuffleNet V1 cut into its three stages.

    Args:
        widths: output channels of the three stages (240 / 480 / 960 for ``g = 3``).
        blocks: units per stage, the first one striding (4 / 8 / 4).
        groups: groups of the pointwise convs, ``g``.
        in_chans: input channels.

    The first unit of ``s1`` uses an ungrouped first 1x1 conv (its input has only 24 channels).
    ``forward`` maps ``[B, in_chans, H, W]`` to ``{"s1": [B, 240, H/2, W/2],
    "s2": [B, 480, H/4, W/4], "s3": [B, 960, H/8, W/8]}`` for the default widths.
    """

    family = "shufflenet"

    def __init__(self, widths: Sequence[int] = (240, 480, 960),
                 blocks: Sequence[int] = (4, 8, 4), groups: int = 3, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = _stem(in_chans)
        stages: list[nn.Module] = []
        in_ch = _STEM_WIDTH
        for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            units = [ShuffleUnitV1(in_ch, width - in_ch, 2, groups,
                                   first_groups=1 if i == 0 else None)]
            units += [ShuffleUnitV1(width, width, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            in_ch = width
        self.stages = nn.ModuleList(stages)
        self.stage_names = ("s1", "s2", "s3")
        self.stage_channels = dict(zip(self.stage_names, widths, strict=True))
        self.stage_strides = {"s1": 2, "s2": 4, "s3": 8}
        kaiming_init(self)


class ShuffleUnitV2(nn.Module):
    """ShuffleNet V2 basic unit (Ma et al. 2018, Fig. 3c).

    Channel split in halves; the second half goes through 1x1-BN-ReLU, depthwise 3x3-BN,
    1x1-BN-ReLU; the halves are concatenated and shuffled. ``[B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.split = channels - half
        self.pw1 = _conv_bn(half, half, 1)
        self.depthwise = _conv_bn(half, half, 3, groups=half)
        self.pw2 = _conv_bn(half, half, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``shuffle(cat(x1, branch(x2)))``."""
        x1, x2 = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.pw2(self.depthwise(F.relu(self.pw1(x2)))))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class DownUnitV2(nn.Module):
    """ShuffleNet V2 down-sampling unit (Ma et al. 2018, Fig. 3d).

    Left: depthwise 3x3 stride 2-BN, 1x1-BN-ReLU; right: 1x1-BN-ReLU, depthwise 3x3 stride 2-BN,
    1x1-BN-ReLU; each to ``out_ch / 2``, concatenated and shuffled.
    ``[B, in_ch, H, W] -> [B, out_ch, ceil(H / 2), ceil(W / 2)]``.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.left_dw = _conv_bn(in_ch, in_ch, 3, stride=2, groups=in_ch)
        self.left_pw = _conv_bn(in_ch, out_ch - mid, 1)
        self.right_pw1 = _conv_bn(in_ch, mid, 1)
        self.right_dw = _conv_bn(mid, mid, 3, stride=2, groups=mid)
        self.right_pw2 = _conv_bn(mid, mid, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``shuffle(cat(left(x), right(x)))``."""
        left = F.relu(self.left_pw(self.left_dw(x)))
        right = F.relu(self.right_pw2(self.right_dw(F.relu(self.right_pw1(x)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


# Width multiplier -> stage widths and the final conv's width (Ma et al. 2018, Table 5).
_V2_WIDTHS: dict[float, tuple[int, int, int, int]] = {
    0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024), 2.0: (244, 488, 976, 2048),
}


class ShuffleNetV2(StagedBackbone):
    """CIFAR ShuffleNet V2 cut into its three stages.

    Args:
        width: width multiplier, one of 0.5, 1.0, 1.5, 2.0.
        blocks: basic units per stage after its down-sampling unit. The benchmark's (3, 7, 3)
            makes every stage one unit deeper than the paper's 4 / 8 / 4.
        in_chans: input channels.

    The final conv1x1 (to 1024, or 2048 at width 2) + BN + ReLU is part of ``s3``.
    ``forward`` maps ``[B, in_chans, H, W]`` to ``{"s1": [B, 116, H/2, W/2],
    "s2": [B, 232, H/4, W/4], "s3": [B, 1024, H/8, W/8]}`` at width 1.
    """

    family = "shufflenet"

    def __init__(self, width: float = 1.0, blocks: Sequence[int] = (3, 7, 3),
                 in_chans: int = 3) -> None:
        super().__init__()
        if width not in _V2_WIDTHS:
            raise ValueError(f"ShuffleNetV2 width must be one of {sorted(_V2_WIDTHS)}, got {width}")
        *widths, last = _V2_WIDTHS[width]
        self.stem = _stem(in_chans)
        stages: list[nn.Sequential] = []
        in_ch = _STEM_WIDTH
        for out_ch, n in zip(widths, blocks, strict=True):
            units = [DownUnitV2(in_ch, out_ch), *(ShuffleUnitV2(out_ch) for _ in range(n))]
            stages.append(nn.Sequential(*units))
            in_ch = out_ch
        stages[-1].append(nn.Sequential(_conv_bn(in_ch, last, 1), nn.ReLU(inplace=True)))
        self.stages = nn.ModuleList(stages)
        self.stage_names = ("s1", "s2", "s3")
        self.stage_channels = dict(zip(self.stage_names, (*widths[:-1], last), strict=True))
        self.stage_strides = {"s1": 2, "s2": 4, "s3": 8}
        kaiming_init(self)


def _build_v1(*, in_chans: int = 3, image_size: int = 32) -> Backbone:
    """Registry factory ``(in_chans=3, image_size=32) -> ShuffleNetV1`` (g = 3)."""
    del image_size  # fully convolutional: any input size works
    return ShuffleNetV1(in_chans=in_chans)


def _build_v2(*, in_chans: int = 3, image_size: int = 32, width: float = 1.0) -> Backbone:
    """Registry factory ``(in_chans=3, image_size=32, width=1.0) -> ShuffleNetV2``."""
    del image_size  # fully convolutional: any input size works
    return ShuffleNetV2(width=width, in_chans=in_chans)


MODELS: dict[str, Callable[..., Backbone]] = {
    "shufflenetv1": _build_v1,
    "shufflenetv2": _build_v2,
}
