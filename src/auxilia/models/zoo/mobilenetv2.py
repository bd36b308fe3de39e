"""MobileNetV2 (Sandler et al., "Inverted Residuals and Linear Bottlenecks", CVPR 2018).

The CIFAR version of the knowledge-distillation benchmark RepDistiller (Tian et al., "Contrastive
Representation Distillation", ICLR 2020; from Jin et al., "Knowledge Distillation via Route
Constrained Optimization", ICCV 2019), whose ``mobile_half`` is width 0.5, expansion 6:

    stem conv3x3 stride 2 to 32w, then inverted-residual groups (t, c, n, s):
    (1, 16, 1, 1) (t, 24, 2, 1) (t, 32, 3, 2) (t, 64, 4, 2) (t, 96, 3, 1) (t, 160, 3, 2)
    (t, 320, 1, 1), then conv1x1 to 1280 (1280w when w > 1) + BN + ReLU.

Differences from the ImageNet network, kept from the benchmark: ReLU instead of ReLU6, and the
t = 1 block keeps its (1x1, C -> C) expansion conv. The groups are cut by resolution into four
stages, strides 2 / 4 / 8 / 16: ``s1`` = groups 1-2, ``s2`` = group 3, ``s3`` = groups 4-5,
``s4`` = groups 6-7 and the final 1x1 conv, the map the classifier pools.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from auxilia.models.backbone import Backbone, StagedBackbone, kaiming_init
from auxilia.models.scaled import scaled_channels, scaled_repeats
from auxilia.models.scaling import Scale
from auxilia.models.stochastic_depth import block_rates, drop_path

# (expansion or None for "the model's t", output channels, blocks, first stride), per group.
_SETTING: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
    (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1),
)
# Groups (indices into _SETTING) of each stage.
_STAGE_GROUPS = ((0, 1), (2,), (3, 4), (5, 6))


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
             relu: bool = True) -> list[nn.Module]:
    """conv(kernel, same padding) + BN, then ReLU unless ``relu`` is false."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups,
                  bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    return [*layers, nn.ReLU(inplace=True)] if relu else layers


class InvertedResidual(nn.Module):
    """Expand 1x1 - depthwise 3x3 - linear project 1x1 (Sandler et al. 2018, Fig. 3b).

    Maps ``[B, in_ch, H, W]`` to ``[B, out_ch, H / stride, W / stride]``, with an identity
    residual when the shape is kept; ``drop_rate`` is the stochastic-depth probability of the
    branch, used only where there is a residual to keep (Huang et al. 2016).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        self.drop_path = drop_path(drop_rate if self.use_residual else 0.0)
        self.conv = nn.Sequential(
            *_conv_bn(in_ch, hidden, 1),
            *_conv_bn(hidden, hidden, 3, stride=stride, groups=hidden),
            *_conv_bn(hidden, out_ch, 1, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + conv(x)`` when shapes match, else ``conv(x)``."""
        out = self.conv(x)
        return x + self.drop_path(out) if self.use_residual else out


class MobileNetV2(StagedBackbone):
    """CIFAR MobileNetV2 cut by resolution into four stages.

    Args:
        width: width multiplier ``w`` (0.5 in the KD benchmarks, 1.0 for the full network).
        expansion: expansion ratio ``t`` of the inverted residuals (6 in the paper).
        in_chans: input channels.
        drop_path: stochastic depth of the last block, linear over all the blocks (timm's
            EfficientNet counts them all too); blocks without a skip never drop.
        scale: compound scaling (Tan & Le 2019): blocks per group ``ceil(n * depth)``, every
            width (the final 1x1 conv's included) through ``scaled_channels``.

    ``forward`` maps ``[B, in_chans, H, W]`` to ``{"s1": [B, 24w, H/2, W/2],
    "s2": [B, 32w, H/4, W/4], "s3": [B, 96w, H/8, W/8], "s4": [B, 1280, H/16, W/16]}``
    (channels rounded down to integers; ``s4`` has ``1280w`` channels when ``w > 1``).
    """

    family = "mobilenetv2"

    def __init__(self, width: float = 0.5, expansion: int = 6, in_chans: int = 3,
                 drop_path: float = 0.0, scale: Scale | None = None) -> None:
        super().__init__()
        if width <= 0 or expansion < 1:
            raise ValueError(f"need width > 0 and expansion >= 1, got {width}, {expansion}")
        in_ch = scaled_channels(int(32 * width), scale)
        self.stem = nn.Sequential(*_conv_bn(in_chans, in_ch, 3, stride=2))
        repeats = [scaled_repeats(n, scale) for _, _, n, _ in _SETTING]
        rates = iter(block_rates(drop_path, sum(repeats)))
        groups: list[nn.Sequential] = []
        for (t, channels, _, stride), blocks in zip(_SETTING, repeats, strict=True):
            out_ch = scaled_channels(int(channels * width), scale)
            strides = [stride] + [1] * (blocks - 1)
            groups.append(nn.Sequential(*[
                InvertedResidual(c_in, out_ch, s, t or expansion, next(rates))
                for c_in, s in zip([in_ch] + [out_ch] * (blocks - 1), strides, strict=True)
            ]))
            in_ch = out_ch
        last = scaled_channels(int(1280 * width) if width > 1.0 else 1280, scale)
        stages = [nn.Sequential(*(groups[i] for i in idx)) for idx in _STAGE_GROUPS]
        stages[-1].append(nn.Sequential(*_conv_bn(in_ch, last, 1)))
        self.stages = nn.ModuleList(stages)
        self.stage_names = ("s1", "s2", "s3", "s4")
        ends = [groups[idx[-1]][-1].conv[-1].num_features for idx in _STAGE_GROUPS[:-1]]
        self.stage_channels = dict(zip(self.stage_names, [*ends, last], strict=True))
        self.stage_strides = {"s1": 2, "s2": 4, "s3": 8, "s4": 16}
        kaiming_init(self)


def _build(*, in_chans: int = 3, image_size: int = 32, width: float = 0.5,
           expansion: int = 6, drop_path: float = 0.0, scale: Scale | None = None) -> Backbone:
    """Registry factory ``(in_chans=3, image_size=32, width=0.5, expansion=6) -> MobileNetV2``."""
    del image_size  # fully convolutional: any input size works
    return MobileNetV2(width=width, expansion=expansion, in_chans=in_chans,
                       drop_path=drop_path, scale=scale)


MODELS: dict[str, Callable[..., Backbone]] = {"mobilenetv2": _build}
