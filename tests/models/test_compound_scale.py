"""``model.scale``: compound scaling (Tan & Le 2019) of the zoo's families, the resolution
through ``data.image_size=auto``, and the EfficientNet B0-B7 presets mapped to timm."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from auxilia.config import ConfigError, load_config
from auxilia.engine.auto import resolve_auto
from auxilia.models.registry import create_backbone
from auxilia.models.scaled import ScaleConfig, preset_for, scale_note, scaled_channels
from auxilia.models.scaling import B_TABLE, round_channels, round_repeats
from auxilia.models.zoo.cifar_resnet import BasicBlock as CifarBlock
from auxilia.models.zoo.mlp_mixer import MixerBlock
from auxilia.models.zoo.mobilenetv2 import InvertedResidual
from auxilia.models.zoo.resnet import BasicBlock as ResBlock
from auxilia.models.zoo.wrn import PreActBlock

# model, input channels and side, the block type counted as depth, its baseline count per
# stage (or per group), and its baseline stage widths
FAMILIES = [
    ("resnet20", 3, 32, CifarBlock, (3, 3, 3), (16, 32, 64)),
    ("resnet18", 3, 16, ResBlock, (2, 2, 2, 2), (64, 128, 256, 512)),
    ("wrn_16_2", 3, 32, PreActBlock, (2, 2, 2), (32, 64, 128)),
    ("mobilenetv2", 3, 32, InvertedResidual, (1, 2, 3, 4, 3, 3, 1), (12, 16, 48, 1280)),
    ("mixer_tiny", 1, 28, MixerBlock, (1, 1, 1, 1), (64, 64, 64, 64)),
    ("small_cnn", 1, 28, nn.Conv2d, (2, 2, 2), (32, 64, 128)),
]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "chans", "side", "block", "repeats", "widths"), FAMILIES)
def test_every_scalable_family_scales_depth_and_width_as_computed(
        name: str, chans: int, side: int, block: type[nn.Module], repeats: tuple[int, ...],
        widths: tuple[int, ...]) -> None:
    sizes = []
    for phi in (0, 1, 2):
        scale = ScaleConfig(phi=phi)
        model = create_backbone(name, in_chans=chans, image_size=side, scale=scale)
        m = scale.multipliers()
        blocks = sum(isinstance(x, block) for x in model.modules())
        assert blocks == sum(round_repeats(r, m.depth) for r in repeats), phi
        expected = [w if phi == 0 else round_channels(w, m.width) for w in widths]
        assert list(model.stage_channels.values()) == expected, phi
        out = model.eval()(torch.randn(2, chans, side, side))
        assert out[model.last_stage].shape[1] == expected[-1]
        sizes.append(_params(model))
    assert sizes[0] == _params(create_backbone(name, in_chans=chans, image_size=side))
    assert sizes[0] < sizes[1] < sizes[2]  # parameters grow with phi


@pytest.mark.parametrize("name", ["vgg8", "convnet13", "shufflenetv2", "timm/resnet10t",
                                  "efficientnet_b0"])
def test_families_that_cannot_scale_refuse(name: str) -> None:
    with pytest.raises(ValueError, match=r"model.scale does not apply"):
        create_backbone(name, image_size=32, scale=ScaleConfig(phi=1))


def test_width_one_keeps_the_baseline_channels() -> None:
    m = ScaleConfig(phi=0).multipliers()
    assert scaled_channels(12, m) == 12  # not rounded up to 16 at phi = 0
    assert scaled_channels(12, ScaleConfig(phi=1).multipliers()) == round_channels(12, 1.1)


def test_presets_map_to_timms_efficientnet_with_the_published_resolution() -> None:
    import timm

    assert preset_for("efficientnet_b3") == B_TABLE["b3"]
    assert preset_for("efficientnet_b9") is None and preset_for("resnet20") is None
    model = create_backbone("efficientnet_b0", image_size=32)
    assert model.timm_name == "efficientnet_b0"
    assert _params(model) == _params(timm.create_model("efficientnet_b0", num_classes=0))
    config = load_config(None, ["model.name=efficientnet_b3", "train.steps=1"])
    resolved, line = resolve_auto(config, gpu=False, shape=(3, 32, False))
    assert resolved.data.image_size == 300 and "published resolution" in (line or "")


def test_resolution_scales_where_auto_is_resolved() -> None:
    def size(*items: str) -> object:
        config = load_config(None, ["model.name=small_cnn", "train.steps=1", *items])
        return resolve_auto(config, gpu=False, shape=(1, 28, False))[0].data.image_size

    assert size() == "native"
    assert size("model.scale.phi=0") == "native"  # gamma**0 = 1: the baseline's own size
    assert size("model.scale.phi=1") == 32  # 28 * 1.15 = 32.2, to a multiple of 8
    assert size("model.scale.phi=3", "model.scale.round_to=4") == 4 * round(28 * 1.15**3 / 4)
    assert size("model.scale.phi=1", "data.image_size=28") == 28  # a named size is kept
    resolved = resolve_auto(load_config(None, ["model.scale.phi=1", "model.name=small_cnn",
                                               "train.steps=1"]), gpu=False,
                            shape=(1, 28, False))[0]
    again, _ = resolve_auto(resolved, gpu=False, shape=(1, 28, False))
    assert again.data.image_size == 32  # resolving twice never scales twice


def test_scale_config_is_validated() -> None:
    config = load_config(None, ["model.scale={phi: 1, alpha: 1.3}", "train.steps=1"])
    assert config.model.scale == ScaleConfig(phi=1, alpha=1.3)
    assert config.model.backbone_options() == {"scale": config.model.scale}
    for bad, key in (("model.scale.phi=.nan", "phi"), ("model.scale.beta=0", "beta"),
                     ("model.scale.gamm=1", "gamm"), ("model.scale.alpha=1.2", "phi")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad, "train.steps=1"])


def test_header_states_the_scaling() -> None:
    scale = ScaleConfig(phi=1)
    model = create_backbone("resnet8", image_size=32, scale=scale)
    note = scale_note(scale, model, 32)
    assert "depth x1.2, width x1.1, resolution x1.15" in note
    assert f"FLOPs x{1.2 * 1.1**2 * 1.15**2:.3g}" in note and "input 32x32" in note
    assert "stage channels 16/32/72" in note
    assert scale_note(None, model, 32) == ""
    assert math.isclose(scale.flops(), 1.2 * 1.1**2 * 1.15**2)
