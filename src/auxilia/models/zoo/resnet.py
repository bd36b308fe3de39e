"""ImageNet-depth ResNets with a CIFAR stem (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016).

ResNet18/34 (BasicBlock) and ResNet50 (Bottleneck), with the 7x7/2 stem and max-pool replaced by a
3x3 stride-1 conv, as in kuangliu's pytorch-cifar and the papers built on it (Zhang et al.,
"Be Your Own Teacher", ICCV 2019; Zhang et al., "Contrastive Deep Supervision", ECCV 2022). Four
stages at 64/128/256/512 x expansion channels, strides 1/2/4/8.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from auxilia.models.backbone import Backbone, StagedBackbone
from auxilia.models.scaled import scaled_channels, scaled_repeats
from auxilia.models.scaling import Scale
from auxilia.models.stochastic_depth import block_rates, drop_path


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """1x1 conv + BN shortcut when shape changes, identity otherwise."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """3x3-3x3 residual block: ``[B, in_planes, H, W] -> [B, planes, H/stride, W/stride]``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_rate: float = 0.0
                 ) -> None:
        super().__init__()
        self.drop_path = drop_path(drop_rate)  # stochastic depth (Huang et al. 2016)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 residual block: ``[B, in_planes, H, W] -> [B, 4 planes, H/stride, W/stride]``.

    The stride sits on the 3x3 conv (the "ResNet v1.5" placement used by torchvision).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_rate: float = 0.0
                 ) -> None:
        super().__init__()
        self.drop_path = drop_path(drop_rate)  # stochastic depth (Huang et al. 2016)
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck residual forward."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.drop_path(out) + self.shortcut(x))


class ResNet(StagedBackbone):
    """ResNet with a CIFAR stem, cut into four stages.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        num_blocks: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet18.
        in_chans: input channels.
        drop_path: stochastic depth of the last block, linear over the blocks.
        scale: compound scaling (Tan & Le 2019) of the blocks per stage and of every width.

    ``forward`` maps ``[B, in_chans, H, W]`` to ``{"s1": [B, 64e, H, W], "s2": [B, 128e, H/2, W/2],
    "s3": [B, 256e, H/4, W/4], "s4": [B, 512e, H/8, W/8]}`` with ``e`` the block expansion.
    """

    family = "resnet"

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        num_blocks: Sequence[int],
        in_chans: int = 3,
        drop_path: float = 0.0,
        scale: Scale | None = None,
    ) -> None:
        super().__init__()
        planes_of = [scaled_channels(p, scale) for p in (64, 128, 256, 512)]
        num_blocks = [scaled_repeats(n, scale) for n in num_blocks]
        rates = iter(block_rates(drop_path, sum(num_blocks)))
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, planes_of[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(planes_of[0]),
            nn.ReLU(inplace=True),
        )
        self.stage_names = ("s1", "s2", "s3", "s4")
        stages: list[nn.Module] = []
        in_planes = planes_of[0]
        for planes, n, stride in zip(planes_of, num_blocks, (1, 2, 2, 2), strict=True):
            layers = []
            for s in [stride] + [1] * (n - 1):
                layers.append(block(in_planes, planes, s, next(rates)))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        widths = [p * block.expansion for p in planes_of]
        self.stage_channels = dict(zip(self.stage_names, widths, strict=True))
        self.stage_strides = dict(zip(self.stage_names, (1, 2, 4, 8), strict=True))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")



def _factory(
    block: type[BasicBlock | Bottleneck], num_blocks: Sequence[int]
) -> Callable[..., Backbone]:
    """A registry factory ``(in_chans=3, image_size=32) -> ResNet`` for one configuration."""

    def build(*, in_chans: int = 3, image_size: int = 32, drop_path: float = 0.0,
              scale: Scale | None = None) -> Backbone:
        del image_size  # fully convolutional: any input size works
        return ResNet(block, num_blocks, in_chans=in_chans, drop_path=drop_path, scale=scale)

    return build


MODELS: dict[str, Callable[..., Backbone]] = {
    "resnet18": _factory(BasicBlock, (2, 2, 2, 2)),
    "resnet34": _factory(BasicBlock, (3, 4, 6, 3)),
    "resnet50": _factory(Bottleneck, (3, 4, 6, 3)),
}
