"""A small three-stage CNN for tiny images: the default demo model.

Sized for scikit-learn's 8x8 digits and 28x28 MNIST. Each stage is conv3x3-BN-ReLU (32/64/128
channels, ~93k parameters for one input channel), the first conv of stages 2 and 3 with stride 2
(8x8 inputs give 8 -> 4 -> 2, 28x28 give 28 -> 14 -> 7), in the VGG spirit (Simonyan & Zisserman,
ICLR 2015) with BatchNorm (Ioffe & Szegedy, ICML 2015). Thirty epochs on the 1,437 training digits
(80/20 split) take ~3 s on 2 CPU cores and reach 98-99% test accuracy (SGD or AdamW, cosine).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from auxilia.models.backbone import Backbone, StagedBackbone
from auxilia.models.scaled import scaled_channels, scaled_repeats
from auxilia.models.scaling import Scale


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    """conv3x3(stride) + BN + ReLU."""
    return [
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(StagedBackbone):
    """Three stages of ``convs_per_stage`` conv3x3-BN-ReLU layers each.

    Args:
        in_chans: input channels (1 for digits / MNIST).
        widths: channels of the three stages.
        convs_per_stage: conv layers in each stage (2 triples the parameters, +~1 point).
        strides: stride of each stage's first conv.

    ``forward`` maps ``[B, in_chans, H, W]`` (H, W >= 8 recommended) to ``{"s1": [B, w1, H/s1,
    W/s1], "s2": ..., "s3": ...}`` with the cumulative strides (ceil division).
    """

    family = "small_cnn"

    def __init__(
        self,
        in_chans: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 1,
        strides: Sequence[int] = (1, 2, 2),
    ) -> None:
        super().__init__()
        if len(widths) != 3 or convs_per_stage < 1:
            raise ValueError(f"need three stage widths and >= 1 conv, got {widths}, "
                             f"{convs_per_stage}")
        stages: list[nn.Module] = []
        in_ch = in_chans
        if len(strides) != 3:
            raise ValueError(f"need three stage strides, got {strides}")
        for width, stride in zip(widths, strides, strict=True):
            layers = _conv_bn_relu(in_ch, width, stride)
            for _ in range(convs_per_stage - 1):
                layers += _conv_bn_relu(width, width, 1)
            stages.append(nn.Sequential(*layers))
            in_ch = width
        self.stages = nn.ModuleList(stages)
        self.stage_names = ("s1", "s2", "s3")
        self.stage_channels = dict(zip(self.stage_names, widths, strict=True))
        total = [strides[0], strides[0] * strides[1], strides[0] * strides[1] * strides[2]]
        self.stage_strides = dict(zip(self.stage_names, total, strict=True))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")



def small_cnn(
    *,
    in_chans: int = 3,
    image_size: int = 32,
    widths: Sequence[int] = (32, 64, 128),
    convs_per_stage: int | None = None,
    strides: Sequence[int] | None = None,
    scale: Scale | None = None,
) -> Backbone:
    """Registry factory for :class:`SmallCNN`.

    ``scale`` (compound scaling, Tan & Le 2019) multiplies the convs per stage (rounded up) and
    the widths (multiples of 8). The network has no residual blocks, so no stochastic depth.

    By default, inputs under 16 px (8x8 digits) get one conv per stage at 8 -> 4 -> 2, and
    larger ones (28x28 MNIST) two convs per stage at 14 -> 7 -> 4, so that the receptive field
    covers most of a digit before the global pooling: one conv per stage at full resolution
    reached only 60% MNIST test accuracy after 150 steps, this layout 94%.
    """
    large = image_size >= 16
    if strides is None:
        strides = (2, 2, 2) if large else (1, 2, 2)
    if convs_per_stage is None:
        convs_per_stage = 2 if large else 1
    return SmallCNN(in_chans=in_chans, widths=[scaled_channels(w, scale) for w in widths],
                    convs_per_stage=scaled_repeats(convs_per_stage, scale), strides=strides)


MODELS: dict[str, Callable[..., Backbone]] = {"small_cnn": small_cnn}
