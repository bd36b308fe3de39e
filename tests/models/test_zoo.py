"""The model zoo and the timm wrapper honour the Backbone contract."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from auxilia.models.backbone import Backbone
from auxilia.models.registry import MODELS, create_backbone, list_models
from auxilia.models.timm_backbone import TimmBackbone

ZOO_NAMES = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4", "resnet18", "resnet34", "resnet50",
    "wrn_28_2", "wrn_28_8", "wrn_16_2", "wrn_40_2", "convnet13", "small_cnn",
    "vgg8", "vgg13", "mobilenetv2", "shufflenetv1", "shufflenetv2", "mixer_nano", "mixer_tiny",
]
# Pixels a stage loses to valid (unpadded) convs, on top of its stride.
VALID_CROP = {("convnet13", "s3"): 2}

FORWARD_CASES = [(name, 3, 32) for name in sorted(MODELS)] + [
    ("small_cnn", 1, 8),
    ("small_cnn", 1, 28),
    ("vgg8", 3, 64), ("vgg13", 3, 28), ("mobilenetv2", 1, 40), ("shufflenetv1", 1, 28),
    ("shufflenetv2", 3, 28),
]


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_contract(
    model: Backbone, out: dict[str, torch.Tensor], size: int, name: str = ""
) -> None:
    """Keys, channels, spatial sizes and finiteness of one forward's output."""
    assert tuple(out) == model.stage_names
    assert model.stage_names == tuple(f"s{i + 1}" for i in range(len(out)))
    assert set(model.stage_channels) == set(model.stage_strides) == set(model.stage_names)
    strides = [model.stage_strides[s] for s in model.stage_names]
    assert strides == sorted(strides)
    assert model.num_features == model.stage_channels[model.last_stage]
    for stage, fmap in out.items():
        side = math.ceil(size / model.stage_strides[stage]) - VALID_CROP.get((name, stage), 0)
        assert fmap.shape == (2, model.stage_channels[stage], side, side), stage
        assert torch.isfinite(fmap).all(), stage


def test_registry_names() -> None:
    presets = [f"efficientnet_b{i}" for i in range(8)]  # timm's, listed with the zoo
    assert list_models() == sorted(ZOO_NAMES + presets)


@pytest.mark.parametrize(("name", "in_chans", "size"), FORWARD_CASES)
def test_zoo_forward(name: str, in_chans: int, size: int) -> None:
    model = create_backbone(name, in_chans=in_chans, image_size=size).eval()
    assert isinstance(model, Backbone)
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, size, size))
    _check_contract(model, out, size, name)


@pytest.mark.parametrize(
    ("name", "kwargs", "channels"),
    [("mobilenetv2", {"width": 1.0}, {"s1": 24, "s2": 32, "s3": 96, "s4": 1280}),
     ("mobilenetv2", {"width": 2.0, "expansion": 4}, {"s1": 48, "s2": 64, "s3": 192, "s4": 2560}),
     ("shufflenetv2", {"width": 0.5}, {"s1": 48, "s2": 96, "s3": 1024}),
     ("shufflenetv2", {"width": 2.0}, {"s1": 244, "s2": 488, "s3": 2048})],
)
def test_zoo_width_options(name: str, kwargs: dict[str, float], channels: dict[str, int]) -> None:
    model = create_backbone(name, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    _check_contract(model, out, 32, name)
    assert model.stage_channels == channels


# Published parameter counts (millions). He et al. 2016 Table 6 (resnet20/56/110), Zagoruyko &
# Komodakis 2016 / FixMatch (WRNs), kuangliu pytorch-cifar (resnet18), RepDistiller (x4 nets, VGGs,
# MobileNetV2 at width 0.5, ShuffleNets; minus their 100-way classifier on the last stage's
# channels). Checked without our classifier, within 3%: the papers round to two significant digits
# and use option-A (parameter-free) shortcuts for the CIFAR ResNets.
PUBLISHED_M = {
    "resnet20": 0.27, "resnet56": 0.85, "resnet110": 1.7, "wrn_28_2": 1.47, "wrn_28_8": 23.4,
    "wrn_40_2": 2.2, "wrn_16_2": 0.69, "resnet18": 11.17, "resnet8x4": 1.23 - 0.0257,
    "resnet32x4": 7.43 - 0.0257, "vgg8": 3.96 - 0.0513, "vgg13": 9.46 - 0.0513,
    "mobilenetv2": 0.81 - 0.1281, "shufflenetv1": 0.95 - 0.0961, "shufflenetv2": 1.36 - 0.1025,
}


@pytest.mark.parametrize(("name", "millions"), sorted(PUBLISHED_M.items()))
def test_parameter_counts(name: str, millions: float) -> None:
    count = _params(create_backbone(name))
    assert count == pytest.approx(millions * 1e6, rel=0.03)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("wrn_16_2", {"dropout": 0.3}), ("convnet13", {}), ("timm/efficientnet_b0", {}),
     ("timm/vit_tiny_patch16_224", {"drop_path_rate": 0.1}), ("vgg8", {}),
     ("mobilenetv2", {}), ("shufflenetv1", {}), ("shufflenetv2", {})],
)
def test_every_parameter_gets_a_gradient(name: str, kwargs: dict[str, float]) -> None:
    model = create_backbone(name, **kwargs).train()
    out = model(torch.randn(2, 3, 32, 32))
    sum(o.mean() for o in out.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused


def test_zoo_rejects_pretrained_and_bad_kwargs() -> None:
    with pytest.raises(ValueError, match=r"no pretrained weights.*resnet20"):
        create_backbone("resnet20", pretrained=True)
    with pytest.raises(TypeError):
        create_backbone("resnet20", dropout=0.3)
    with pytest.raises(ValueError, match="12x12"):
        create_backbone("convnet13", image_size=8)


def test_zoo_weights_round_trip(tmp_path: Path) -> None:
    source = create_backbone("resnet20").eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "resnet20.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    loaded = create_backbone("resnet20", weights=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x)["s3"], source(x)["s3"])
    with pytest.raises(ValueError, match=r"resnet20\.pth.*missing keys"):
        create_backbone("resnet32", weights=str(path))


@pytest.mark.parametrize(
    ("name", "bad", "suggestion"),
    [("resnet21", "resnet21", "resnet20"), ("wrn-28-2", "wrn-28-2", "wrn_28_2"),
     ("timm/efficientnet_b00", "timm/efficientnet_b00", "timm/efficientnet_b0")],
)
def test_unknown_names(name: str, bad: str, suggestion: str) -> None:
    with pytest.raises(ValueError) as info:
        create_backbone(name)
    message = str(info.value)
    assert bad in message
    assert "Did you mean" in message and repr(suggestion) in message
    if not name.startswith("timm/"):
        assert all(valid in message for valid in ZOO_NAMES)
    else:
        assert "timm.list_models()" in message


# name -> channels of the last stage (the map timm's classifier pools).
TIMM_LAST = {"timm/resnet18": 512, "timm/efficientnet_b0": 1280, "timm/mixer_b16_224": 768}


@pytest.mark.parametrize("name", sorted(TIMM_LAST))
def test_timm_forward(name: str) -> None:
    model = create_backbone(name, image_size=32).eval()
    assert isinstance(model, TimmBackbone)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        pooled = model.model.forward_head(model.model.forward_features(x), pre_logits=True)
    _check_contract(model, out, 32)
    assert model.num_features == TIMM_LAST[name]
    # The last stage, average-pooled, is what timm's own head would have pooled.
    torch.testing.assert_close(out[model.last_stage].mean((2, 3)), pooled)


def test_timm_vit_drops_class_token() -> None:
    model = create_backbone("timm/vit_tiny_patch16_224", in_chans=1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    _check_contract(model, out, 32)
    assert len(out) == 12 and model.num_features == 192


def test_timm_features_only_mode() -> None:
    model = TimmBackbone("efficientnet_b0", feature_mode="features_only").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    _check_contract(model, out, 32)
    assert model.num_features == 320


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_weights_round_trip(tmp_path: Path, suffix: str) -> None:
    source = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    loaded = create_backbone("timm/resnet18", weights=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = source.forward_features(x)
        assert torch.equal(loaded(x)[loaded.last_stage], expected)


def test_timm_weights_errors(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match=r"foreign\.pth.*first missing keys.*conv1\.weight"):
        create_backbone("timm/resnet18", weights=str(foreign))
    rgb = tmp_path / "rgb.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), rgb)
    with pytest.raises(ValueError, match=r"rgb\.pth.*wrong shape.*conv1\.weight"):
        create_backbone("timm/resnet18", in_chans=1, weights=str(rgb))
    with pytest.raises(FileNotFoundError):
        create_backbone("timm/resnet18", weights=str(tmp_path / "absent.pth"))
