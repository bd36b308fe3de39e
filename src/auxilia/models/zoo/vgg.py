"""CIFAR VGGs with BatchNorm (Simonyan & Zisserman, "Very Deep Convolutional Networks", ICLR 2015).

As the knowledge-distillation benchmark RepDistiller (Tian et al., "Contrastive Representation
Distillation", ICLR 2020) defines them for 32x32 inputs (its ``vgg8_bn`` and ``vgg13_bn``).

Five blocks of conv3x3 (with bias) + BN + ReLU layers, separated by 2x2 max-pools; the fully
connected layers are gone: the classifier is one linear layer on the global average of the last
block. On 32x32 inputs the benchmark skips the pool between the fourth and fifth blocks (both run
at 4x4); it pools there only for 64x64 inputs (Tiny-ImageNet). Here that pool is kept for
``image_size >= 64``.

    vgg8  (configuration "S"): 64 | 128 | 256 | 512 | 512            (one conv per block)
    vgg13 (configuration "B"): 64x2 | 128x2 | 256x2 | 512x2 | 512x2

Each block is a stage: ``s1`` .. ``s5``, each ending with its ReLU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from auxilia.models.backbone import Backbone, StagedBackbone, kaiming_init


def _block(in_ch: int, widths: Sequence[int], pool: bool) -> nn.Sequential:
    """Optional 2x2 max-pool, then one conv3x3-BN-ReLU per entry of ``widths``.

    Maps ``[B, in_ch, H, W]`` to ``[B, widths[-1], H', W']`` with ``H' = ceil(H / 2)`` if
    ``pool`` else ``H``.
    """
    layers: list[nn.Module] = [nn.MaxPool2d(2, stride=2, ceil_mode=True)] if pool else []
    for width in widths:
        layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        in_ch = width
    return nn.Sequential(*layers)


class VGG(StagedBackbone):
    """A BN-VGG cut into its five conv blocks.

    Args:
        config: the five blocks' conv widths, e.g. ``((64,), (128,), (256,), (512,), (512,))``.
        in_chans: input channels.
        pool_last: max-pool before the fifth block (the benchmark does so for 64x64 inputs).

    ``forward`` maps ``[B, in_chans, H, W]`` to ``{"s1": [B, 64, H, W], "s2": [B, 128, H/2, W/2],
    "s3": [B, 256, H/4, W/4], "s4": [B, 512, H/8, W/8], "s5": [B, 512, H/8 or H/16, ...]}``.
    """

    family = "vgg"

    def __init__(
        self, config: Sequence[Sequence[int]], in_chans: int = 3, pool_last: bool = False
    ) -> None:
        super().__init__()
        if len(config) != 5 or not all(config):
            raise ValueError(f"VGG config must list five non-empty blocks, got {config}")
        pools = (False, True, True, True, pool_last)
        stages: list[nn.Module] = []
        in_ch = in_chans
        for widths, pool in zip(config, pools, strict=True):
            stages.append(_block(in_ch, widths, pool))
            in_ch = widths[-1]
        self.stages = nn.ModuleList(stages)
        self.stage_names = ("s1", "s2", "s3", "s4", "s5")
        self.stage_channels = {n: c[-1] for n, c in zip(self.stage_names, config, strict=True)}
        self.stage_strides = {"s1": 1, "s2": 2, "s3": 4, "s4": 8, "s5": 16 if pool_last else 8}
        kaiming_init(self)


def _factory(config: Sequence[Sequence[int]]) -> Callable[..., Backbone]:
    """A registry factory ``(in_chans=3, image_size=32) -> VGG`` for one configuration."""

    def build(*, in_chans: int = 3, image_size: int = 32) -> Backbone:
        return VGG(config, in_chans=in_chans, pool_last=image_size >= 64)

    return build


_VGG8 = ((64,), (128,), (256,), (512,), (512,))
_VGG13 = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))

MODELS: dict[str, Callable[..., Backbone]] = {
    "vgg8": _factory(_VGG8),
    "vgg13": _factory(_VGG13),
}
