"""The 13-layer ConvNet of semi-supervised learning ("ConvNet-13", "CNN-13").

From Laine & Aila, "Temporal Ensembling for Semi-Supervised Learning" (ICLR 2017, Table 5) and
Tarvainen & Valpola, "Mean teachers are better role models" (NeurIPS 2017). Every conv is followed
by BN and LeakyReLU(0.1):

    block 1: 3x conv3x3 128 (same), max-pool 2x2, dropout 0.5          -> s1
    block 2: 3x conv3x3 256 (same), max-pool 2x2, dropout 0.5          -> s2
    block 3: conv3x3 512 (valid), conv1x1 256, conv1x1 128             -> s3

On 32x32 inputs the stages are 16x16, 8x8 and 6x6 (the valid conv trims 2 pixels). The original
uses weight-normalised convs; this version relies on BN alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from auxilia.models.backbone import Backbone


def _conv_bn_act(in_ch: int, out_ch: int, kernel: int, padding: int) -> list[nn.Module]:
    """conv(kernel) + BN + LeakyReLU(0.1)."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(0.1, inplace=True),
    ]


def _pooled_block(in_ch: int, out_ch: int, dropout: float) -> nn.Sequential:
    """Three same-padded 3x3 conv-BN-LReLU layers, 2x2 max-pool, dropout: ``H -> H/2``."""
    layers = _conv_bn_act(in_ch, out_ch, 3, 1)
    layers += _conv_bn_act(out_ch, out_ch, 3, 1) + _conv_bn_act(out_ch, out_ch, 3, 1)
    layers += [nn.MaxPool2d(2, stride=2), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class ConvNet13(Backbone):
    """ConvNet-13 cut into its three blocks.

    Args:
        in_chans: input channels.
        dropout: dropout after each max-pool (0.5 in the papers).

    ``forward`` maps ``[B, in_chans, H, W]`` (H, W >= 12) to ``{"s1": [B, 128, H/2, W/2],
    "s2": [B, 256, H/4, W/4], "s3": [B, 128, H/4 - 2, W/4 - 2]}``.
    """

    family = "convnet13"

    def __init__(self, in_chans: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.block1 = _pooled_block(in_chans, 128, dropout)
        self.block2 = _pooled_block(128, 256, dropout)
        self.block3 = nn.Sequential(
            *_conv_bn_act(256, 512, 3, 0),
            *_conv_bn_act(512, 256, 1, 0),
            *_conv_bn_act(256, 128, 1, 0),
        )
        self.stage_names = ("s1", "s2", "s3")
        self.stage_channels = {"s1": 128, "s2": 256, "s3": 128}
        # s3 has no further down-sampling; its valid 3x3 conv only trims a 1-pixel border.
        self.stage_strides = {"s1": 2, "s2": 4, "s3": 4}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return every block's feature map, ``{"s1": ..., "s2": ..., "s3": ...}``."""
        s1 = self.block1(x)
        s2 = self.block2(s1)
        return {"s1": s1, "s2": s2, "s3": self.block3(s2)}


def convnet13(*, in_chans: int = 3, image_size: int = 32, dropout: float = 0.5) -> Backbone:
    """Registry factory for :class:`ConvNet13` (``image_size`` must be at least 12)."""
    if image_size < 12:
        raise ValueError(f"convnet13 needs inputs of at least 12x12, got image_size={image_size}")
    return ConvNet13(in_chans=in_chans, dropout=dropout)


MODELS: dict[str, Callable[..., Backbone]] = {"convnet13": convnet13}
