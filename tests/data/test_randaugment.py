"""FixMatch's RandAugment: each op against torchvision's, magnitudes in FixMatch's ranges, ops
and magnitudes drawn per sample from the global generator."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from auxilia.data.randaugment import FIXMATCH_OPS, OPS, RandAugment
from auxilia.seeding import seeded

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _uint8(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def _op(name: str, x: torch.Tensor, magnitude: float, mode: str = "nearest") -> torch.Tensor:
    return OPS[name].fn(x, torch.full((x.shape[0],), float(magnitude)), mode)


def test_fixmatch_op_list() -> None:
    assert FIXMATCH_OPS == ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize",
                            "Identity", "Posterize", "Rotate", "Sharpness", "ShearX", "ShearY",
                            "Solarize", "TranslateX", "TranslateY")
    assert RandAugment().ops == FIXMATCH_OPS and RandAugment().n_ops == 2


# --- each op at a fixed magnitude against torchvision's (PIL semantics) ---

X8 = _uint8((2, 3, 12, 12))
X8[0, 0, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)  # Solarize 1.0 keeps white as it is
X = X8.float() / 255

INTENSITY_REFERENCES = [
    ("AutoContrast", 0.0, lambda x: TF.autocontrast(x)),
    ("Brightness", 0.3, lambda x: TF.adjust_brightness(x, 0.3)),
    ("Color", 0.3, lambda x: TF.adjust_saturation(x, 0.3)),
    ("Contrast", 0.3, lambda x: TF.adjust_contrast(x, 0.3)),
    ("Sharpness", 0.3, lambda x: TF.adjust_sharpness(x, 0.3)),
    ("Equalize", 0.0, lambda x: TF.equalize(X8).float() / 255),
    ("Posterize", 5, lambda x: TF.posterize(X8, 5).float() / 255),
    ("Solarize", 0.5, lambda x: TF.solarize(X8, 128).float() / 255),  # levels >= 128 inverted
    ("Rotate", 20.0, lambda x: TF.rotate(x, 20.0, InterpolationMode.NEAREST)),
    ("TranslateX", 0.25, lambda x: TF.affine(x, 0.0, [3, 0], 1.0, [0.0, 0.0])),  # 0.25 * 12
    ("TranslateY", -0.3, lambda x: TF.affine(x, 0.0, [0, -3], 1.0, [0.0, 0.0])),  # int(-3.6)
]


@pytest.mark.parametrize(("name", "magnitude", "reference"), INTENSITY_REFERENCES,
                         ids=[r[0] for r in INTENSITY_REFERENCES])
def test_op_matches_torchvision(name: str, magnitude: float, reference) -> None:
    out = _op(name, X, magnitude)
    assert out.shape == X.shape and out.dtype == torch.float32
    # torchvision's greyscale weighs red 0.2989, kornia's (and PIL's) 0.299
    atol = 2e-4 if name in ("Color", "Contrast") else 1e-5
    torch.testing.assert_close(out, reference(X), rtol=0, atol=atol)


@pytest.mark.parametrize(("name", "axis"), [("ShearX", 0), ("ShearY", 1)])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_shear_matches_torchvision_about_the_top_left_pixel(name: str, axis: int,
                                                            mode: str) -> None:
    """kornia shears about the top-left pixel's centre: torchvision's affine about (0.5, 0.5),
    with the opposite sign convention (PIL's corner is half a pixel away)."""
    angle = -math.degrees(math.atan(0.2))
    shear = [angle, 0.0] if axis == 0 else [0.0, angle]
    interpolation = InterpolationMode.NEAREST if mode == "nearest" else InterpolationMode.BILINEAR
    reference = TF.affine(X, 0.0, [0, 0], 1.0, shear, interpolation, center=[0.5, 0.5])
    torch.testing.assert_close(_op(name, X, 0.2, mode), reference, rtol=0, atol=1e-5)
    assert not torch.equal(_op(name, X, 0.2, mode), X)


@pytest.mark.parametrize(("name", "magnitude"), [
    ("Identity", 0.0), ("Posterize", 8), ("Solarize", 1.0), ("Rotate", 0.0), ("ShearX", 0.0),
    ("ShearY", 0.0), ("TranslateX", 0.0), ("TranslateY", 0.04)])  # 0.04 * 12 < 1 pixel
def test_neutral_magnitudes_are_the_identity(name: str, magnitude: float) -> None:
    torch.testing.assert_close(_op(name, X, magnitude), X, rtol=0, atol=1e-6)


def test_intensity_op_properties() -> None:
    assert torch.equal(_op("Solarize", X, 0.0), 1 - X)  # threshold 0: every pixel inverted
    low_contrast = (102 + _uint8((2, 3, 32, 32)) // 5).float() / 255  # levels 102..153
    for name in ("Equalize", "AutoContrast"):
        out = _op(name, low_contrast, 0.0)
        assert (out.amin(dim=(2, 3)) < 0.02).all() and (out.amax(dim=(2, 3)) > 0.97).all()
    assert torch.equal(_op("Equalize", low_contrast[..., :8, :8], 0.0),  # < 255 pixels: PIL
                       low_contrast[..., :8, :8])  # leaves the channel as it is
    flat = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(_op("AutoContrast", flat, 0.0), flat)  # PIL keeps flat channels
    torch.testing.assert_close(_op("Brightness", X, 0.05), X * 0.05)
    grey = X[:, :1]
    assert torch.equal(_op("Color", grey, 0.05), grey)  # one channel: Color is the identity
    for name in ("Brightness", "Contrast", "Sharpness", "Equalize", "Posterize", "Rotate"):
        assert _op(name, grey, OPS[name].low or 5.0).shape == grey.shape


# --- sampling: FixMatch's ranges, per sample ---


def test_sampled_magnitudes_cover_fixmatch_ranges() -> None:
    torch.manual_seed(0)
    augment = RandAugment()
    choice, magnitude = augment.sample(20000)
    assert choice.shape == magnitude.shape == (20000, 2)
    assert choice.dtype == torch.int64 and magnitude.dtype == torch.float32
    counts = torch.bincount(choice.flatten(), minlength=14).float()
    assert (counts / counts.sum() - 1 / 14).abs().max() < 0.01  # uniform over the 14 ops
    ranges = {"Brightness": 0.95, "Color": 0.95, "Contrast": 0.95, "Sharpness": 0.95,
              "Rotate": 30.0, "ShearX": 0.3, "ShearY": 0.3, "TranslateX": 0.3,
              "TranslateY": 0.3, "Solarize": 1.0}
    for index, name in enumerate(augment.ops):
        m = magnitude[choice == index]
        if name in ("AutoContrast", "Equalize", "Identity"):
            assert (m == 0).all()
        elif name == "Posterize":
            assert sorted(m.unique().tolist()) == [4.0, 5.0, 6.0, 7.0, 8.0]
        elif OPS[name].symmetric:
            top = ranges[name]
            assert m.abs().max() <= top and m.abs().max() > 0.98 * top
            assert 0.4 < (m > 0).float().mean() < 0.6  # random sign
            assert abs(m.abs().mean() - top / 2) < 0.05 * top  # uniform in [0, top]
        else:
            top, bottom = ranges[name], 0.05 if ranges[name] == 0.95 else 0.0
            assert m.min() >= bottom and m.max() <= top
            assert m.min() < bottom + 0.01 and m.max() > top - 0.01
            assert abs(m.mean() - (top + bottom) / 2) < 0.02


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_dtype_device_range(device: str, channels: int) -> None:
    torch.manual_seed(0)
    x = (_uint8((64, channels, 16, 16)).float() / 255).to(device)
    out = RandAugment()(x)
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device.type == device
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert RandAugment()(x[:0]).shape == (0, channels, 16, 16)


def test_same_seed_same_output_different_seed_different() -> None:
    x = _uint8((32, 3, 16, 16)).float() / 255
    augment = RandAugment()
    with seeded(1):
        a = augment(x)
    with seeded(1):
        b = augment(x)
    with seeded(2):
        c = augment(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_ops_and_magnitudes_are_per_sample() -> None:
    torch.manual_seed(3)
    image = _uint8((1, 3, 16, 16)).float() / 255
    out = RandAugment()(image.expand(128, -1, -1, -1).contiguous())
    distinct = torch.unique(out.flatten(1), dim=0).shape[0]
    assert distinct > 100, f"only {distinct} distinct augmentations of 128 identical images"
    # one op, its magnitude per sample: rotations of one image differ across the batch
    rotate = RandAugment(n_ops=1, ops=("Rotate",))(image.expand(64, -1, -1, -1).contiguous())
    assert torch.unique(rotate.flatten(1), dim=0).shape[0] > 50


def test_apply_follows_the_drawn_ops_in_order() -> None:
    augment = RandAugment(ops=("Identity", "Solarize", "Brightness"))
    x = _uint8((3, 3, 8, 8)).float() / 255
    choice = torch.tensor([[0, 0], [1, 2], [2, 1]])
    magnitude = torch.tensor([[0.0, 0.0], [0.0, 0.5], [0.5, 0.0]])
    out = augment.apply(x, choice, magnitude)
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[1], (1 - x[1]) * 0.5)  # solarize all, then darken
    torch.testing.assert_close(out[2], 1 - x[2] * 0.5)  # darken, then solarize all


def test_errors() -> None:
    with pytest.raises(ValueError, match="n_ops"):
        RandAugment(n_ops=0)
    with pytest.raises(ValueError, match="unknown RandAugment operations"):
        RandAugment(ops=("Rotate", "Invert"))
    with pytest.raises(ValueError, match="at least one"):
        RandAugment(ops=())
    with pytest.raises(ValueError, match="interpolation"):
        RandAugment(interpolation="bicubic")
