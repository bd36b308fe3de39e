"""Augmentation views: exact normalisation, no flips for digits, per-sample randomness."""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch
from torch import nn

from auxilia.data.randaugment import RandAugment
from auxilia.data.views import (
    VIEWS,
    Cutout,
    GaussianNoise,
    Staged,
    build_view,
    cutout_mask,
    resolve_view_name,
)
from auxilia.seeding import seeded

MEAN3, STD3 = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _uint8(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_eval_normalises_exactly() -> None:
    x = _uint8((5, 3, 8, 8))
    view = build_view("eval", "natural", MEAN3, STD3, image_size=8)
    expected = (x.double() / 255 - torch.tensor(MEAN3).double().view(1, 3, 1, 1)) / torch.tensor(
        STD3).double().view(1, 3, 1, 1)
    out = view(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(view(x.float() / 255), out)  # floats are taken in [0, 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["eval", "none", "weak", "cutout", "color", "strong", "noisy"])
@pytest.mark.parametrize("family", ["digits", "natural", "natural_noflip"])
def test_output_dtype_shape_device(device: str, name: str, family: str) -> None:
    channels = 1 if family == "digits" else 3
    mean, std = ((0.1307,), (0.3081,)) if channels == 1 else (MEAN3, STD3)
    view = build_view(name, family, mean, std, image_size=16)
    out = view(_uint8((6, channels, 16, 16)).to(device))
    assert out.shape == (6, channels, 16, 16)
    assert out.dtype == torch.float32 and out.device.type == device
    assert torch.isfinite(out).all()


def _horizontal_centroid(view: nn.Module, image: torch.Tensor, n: int) -> torch.Tensor:
    out = view(image.expand(n, -1, -1, -1).contiguous())  # mean 0, std 1: output = x / 255
    columns = torch.arange(out.shape[-1], dtype=torch.float32)
    mass = out.sum(dim=(1, 2))  # [n, W]
    return (mass * columns).sum(1) / mass.sum(1)


def _asymmetric_image(size: int = 16) -> torch.Tensor:
    image = torch.zeros(1, 1, size, size, dtype=torch.uint8)
    image[..., 3 : size - 3, 2:5] = 255  # a bar on the left, nothing on the right
    return image


def test_weak_digits_never_flips() -> None:
    torch.manual_seed(0)
    view = build_view("weak", "digits", (0.0,), (1.0,), image_size=16)
    centroid = _horizontal_centroid(view, _asymmetric_image(), 512)
    assert (centroid < 6.0).all(), "a digit image was mirrored"
    assert centroid.unique().numel() > 1, "no translation happened"


def test_weak_natural_does_flip_the_same_image() -> None:
    torch.manual_seed(0)
    view = build_view("weak", "natural", (0.0,), (1.0,), image_size=16)
    centroid = _horizontal_centroid(view, _asymmetric_image(), 512)
    flipped = (centroid > 8.0).float().mean()
    assert 0.3 < flipped < 0.7
    noflip = build_view("weak", "natural_noflip", (0.0,), (1.0,), image_size=16)
    assert (_horizontal_centroid(noflip, _asymmetric_image(), 512) < 6.0).all()


def test_per_sample_randomness() -> None:
    torch.manual_seed(1)
    view = build_view("weak", "natural", MEAN3, STD3, image_size=32)
    batch = _uint8((1, 3, 32, 32)).expand(64, -1, -1, -1).contiguous()
    out = view(batch)
    distinct = torch.unique(out.flatten(1), dim=0).shape[0]
    assert distinct > 32, f"only {distinct} distinct augmentations out of 64 identical images"


def test_weak_crop_is_a_pure_translation() -> None:
    torch.manual_seed(2)
    view = build_view("weak", "natural_noflip", (0.0,) * 3, (1.0,) * 3, image_size=16)
    x = _uint8((8, 3, 16, 16))
    out = view(x) * 255
    padded = nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    for i in range(8):
        errors = [(padded[i, :, dy : dy + 16, dx : dx + 16] - out[i]).abs().max()
                  for dy in range(5) for dx in range(5)]
        assert min(errors) < 1e-3


def test_augment_none_maps_every_view_to_eval() -> None:
    assert resolve_view_name("weak", "none") == "eval"
    assert resolve_view_name("weak", "auto") == "weak"
    x = _uint8((4, 3, 16, 16))
    weak_off = build_view("weak", "natural", MEAN3, STD3, 16, augment="none")
    torch.testing.assert_close(weak_off(x), build_view("eval", "natural", MEAN3, STD3, 16)(x))
    torch.testing.assert_close(build_view("none", "natural", MEAN3, STD3, 16)(x), weak_off(x))


def test_registry_is_extensible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(VIEWS, "invert", lambda family, size: _Invert())
    view = build_view("invert", "natural", (0.0,), (1.0,), 4)
    x = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    assert torch.equal(view(x), torch.ones(2, 1, 4, 4))


class _Invert(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 - x


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown view 'strongest'"):
        build_view("strongest", "natural", MEAN3, STD3, 32)
    with pytest.raises(ValueError, match="family"):
        build_view("weak", "satellite", MEAN3, STD3, 32)
    view = build_view("eval", "natural", MEAN3, STD3, 32)
    with pytest.raises(ValueError, match="expects"):
        view(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))


# --- CDS views: "cutout" (weak + Cutout 16 px) and "color" (weak + colour jitter + grey) ---


def test_cutout_mask_is_one_clipped_square_per_sample() -> None:
    mask = cutout_mask(2000, 32, 32, 16, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (2000, 32, 32) and mask.dtype == torch.bool
    rows, cols = mask.any(2), mask.any(1)  # [B, H], [B, W]
    # a full rectangle: every marked row x marked column, nothing else
    assert torch.equal(mask, rows.unsqueeze(2) & cols.unsqueeze(1))
    for lines in (rows, cols):
        n = lines.sum(1)
        first = lines.float().argmax(1)
        assert torch.equal(lines.cumsum(1).amax(1), n)  # contiguous span
        assert (n >= 8).all() and (n <= 16).all()  # half the square at least: centre inside
        touches = (first == 0) | (first + n == 32)
        assert (n[~touches] == 16).all(), "a square was clipped away from the border"
        assert (n[touches] < 16).any()
    full = ((rows.sum(1) == 16) & (cols.sum(1) == 16)).float().mean()
    assert abs(full - (17 / 32) ** 2) < 0.05  # centre uniform: 17 of 32 rows give a full side


def test_cutout_view_zeroes_one_square_per_sample() -> None:
    torch.manual_seed(0)
    view = build_view("cutout", "natural", MEAN3, STD3, image_size=32)
    image = torch.tensor([0.9, 0.1, 0.6]).view(1, 3, 1, 1).expand(256, 3, 32, 32)
    out = view(image.contiguous())  # constant colour: crop + flip keep it, nothing else is 0
    assert out.shape == (256, 3, 32, 32) and out.dtype == torch.float32
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # the same square on every channel
    mask = zero[:, 0]
    rows, cols = mask.any(2), mask.any(1)
    assert torch.equal(mask, rows.unsqueeze(2) & cols.unsqueeze(1))
    assert (rows.sum(1) <= 16).all() and (cols.sum(1) <= 16).all()
    assert (mask.sum((1, 2)) == 256).any() and (mask.sum((1, 2)) < 256).any()
    corners = torch.stack([rows.float().argmax(1), cols.float().argmax(1)], 1)
    assert torch.unique(corners, dim=0).shape[0] > 100, "squares do not move across samples"
    expected = ((torch.tensor([0.9, 0.1, 0.6]) - torch.tensor(MEAN3)) / torch.tensor(STD3))
    expected = expected.view(1, 3, 1, 1).expand_as(out)
    torch.testing.assert_close(torch.where(zero, expected, out), expected)  # the rest untouched


def test_cutout_size_scales_with_image_size() -> None:
    torch.manual_seed(0)
    view = build_view("cutout", "natural_noflip", (0.0,), (1.0,), image_size=28)
    out = view(torch.ones(512, 1, 28, 28))  # reflect padding: only the square is 0
    assert out.shape == (512, 1, 28, 28)
    area = (out == 0).sum((1, 2, 3))
    assert area.max() == 14 * 14 and area.min() >= 7 * 7


def _colour_stats(out: torch.Tensor) -> torch.Tensor:
    """Per-sample channel means ``[B, C]`` of a view with mean 0, std 1 (the [0, 1] image)."""
    return out.mean(dim=(2, 3))


def test_color_view_changes_colours_with_p_08_and_grey_with_p_02() -> None:
    torch.manual_seed(0)
    colour = torch.tensor([0.6, 0.3, 0.2])
    view = build_view("color", "natural", (0.0,) * 3, (1.0,) * 3, image_size=32)
    x = colour.view(1, 3, 1, 1).expand(2000, 3, 32, 32).contiguous()
    out = view(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    stats = _colour_stats(out)
    unchanged = (stats - colour).abs().amax(1) < 1e-4
    grey = (stats.amax(1) - stats.amin(1)) < 1e-4
    # untouched = no jitter (0.2) and no greyscale (0.8): 0.16; greyscale: 0.2
    assert 0.12 < unchanged.float().mean() < 0.20
    assert 0.16 < grey.float().mean() < 0.24
    assert not (unchanged & grey).any()
    hue = torch.atan2(stats[:, 1] - stats[:, 2], 2 * stats[:, 0] - stats[:, 1] - stats[:, 2])
    assert hue[~grey].std() > 0.05, "hue never moves"


def test_color_view_uses_torchvision_brightness() -> None:
    """ColorJitter (torchvision) multiplies brightness: grey 0.25 stays in 0.25·[0.6, 1.4].
    ColorJiggle would add factor - 1 and reach 0 and 0.65."""
    torch.manual_seed(1)
    view = build_view("color", "natural_noflip", (0.0,) * 3, (1.0,) * 3, image_size=8)
    out = view(torch.full((2000, 3, 8, 8), 0.25))
    assert out.min() >= 0.15 - 1e-5 and out.max() <= 0.35 + 1e-5
    assert out.min() < 0.16 and out.max() > 0.34


def test_color_view_on_one_channel_is_brightness_and_contrast() -> None:
    torch.manual_seed(0)
    # natural_noflip, not digits: digits' zero padding would darken a flat image's border
    view = build_view("color", "natural_noflip", (0.0,), (1.0,), image_size=16)
    out = view(torch.full((2000, 1, 16, 16), 0.5))
    assert out.shape == (2000, 1, 16, 16)
    changed = (out.mean(dim=(1, 2, 3)) - 0.5).abs() > 1e-4
    assert 0.74 < changed.float().mean() < 0.86  # brightness only acts on a flat image; p = 0.8


@pytest.mark.parametrize("name", ["cutout", "color"])
def test_new_views_never_flip_digits(name: str) -> None:
    torch.manual_seed(0)
    view = build_view(name, "digits", (0.0,), (1.0,), image_size=16)
    centroid = _horizontal_centroid(view, _asymmetric_image(), 512)
    centroid = centroid[torch.isfinite(centroid)]  # Cutout may erase the whole bar
    assert centroid.numel() > 256
    assert (centroid < 6.0).all(), "a digit image was mirrored"
    assert centroid.unique().numel() > 1
    rgb = build_view(name, "digits", (0.0,) * 3, (1.0,) * 3, image_size=16)  # e.g. SVHN
    centroid = _horizontal_centroid(rgb, _asymmetric_image().expand(1, 3, 16, 16), 512)
    assert (centroid[torch.isfinite(centroid)] < 6.0).all()
    natural = build_view(name, "natural", (0.0,), (1.0,), image_size=16)
    flipped = _horizontal_centroid(natural, _asymmetric_image(), 512)
    assert 0.3 < (flipped[torch.isfinite(flipped)] > 8.0).float().mean() < 0.7


@pytest.mark.parametrize("name", ["cutout", "color"])
@pytest.mark.parametrize("family", ["digits", "natural", "natural_noflip"])
def test_augment_none_turns_new_views_into_eval(name: str, family: str) -> None:
    mean, std = ((0.1307,), (0.3081,)) if family == "digits" else (MEAN3, STD3)
    assert build_view(name, family, mean, std, 16, augment="none").name == "eval"


# --- semi-supervised views: "strong" (FixMatch RandAugment + Cutout), "noisy" (Mean Teacher) ---


def _flips(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, K.RandomHorizontalFlip)]


def test_strong_view_is_weak_geometry_then_randaugment_then_cutout() -> None:
    for family, size in (("natural", 32), ("digits", 28), ("natural_noflip", 32)):
        view = build_view("strong", family, (0.5,), (0.25,), image_size=size)
        assert isinstance(view.augment, Staged)
        before, after = view.augment.before, view.augment.after
        assert isinstance(before, nn.Sequential) and isinstance(before[-1], RandAugment)
        assert before[-1].n_ops == 2 and len(before[-1].ops) == 14
        assert any(isinstance(m, K.RandomCrop) for m in before[0].modules())
        assert isinstance(after, Cutout) and after.random_size and after.size == size // 2
        assert after.fill == 0.0
        assert len(_flips(view)) == (1 if family == "natural" else 0), family


def test_strong_view_never_flips_digits() -> None:
    assert not _flips(build_view("strong", "digits", (0.5,) * 3, (0.25,) * 3, image_size=32))
    # its geometric part is exactly the weak view's: the same crops under the same seed
    weak = build_view("weak", "digits", (0.0,), (1.0,), image_size=16)
    strong = build_view("strong", "digits", (0.0,), (1.0,), image_size=16)
    image = _asymmetric_image().expand(256, -1, -1, -1).contiguous()
    with seeded(0):
        expected = weak(image)
    with seeded(0):
        cropped = strong.augment.before[0](image.float() / 255)
    torch.testing.assert_close(cropped, expected)


@pytest.mark.parametrize("name", ["strong", "noisy"])
def test_semi_views_same_seed_same_output(name: str) -> None:
    view = build_view(name, "natural", MEAN3, STD3, image_size=32)
    x = _uint8((64, 3, 32, 32))
    with seeded(5):
        a = view(x)
    with seeded(5):
        b = view(x)
    with seeded(6):
        c = view(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    with seeded(5):
        torch.testing.assert_close(view(x.float() / 255), a)  # uint8 and [0, 1] floats alike


def test_strong_view_is_per_sample_and_strong() -> None:
    x = _uint8((1, 3, 32, 32)).expand(128, -1, -1, -1).contiguous()
    with seeded(0):
        strong = build_view("strong", "natural", MEAN3, STD3, image_size=32)(x)
    with seeded(0):
        weak = build_view("weak", "natural", MEAN3, STD3, image_size=32)(x)
    assert torch.isfinite(strong).all()
    assert torch.unique(strong.flatten(1), dim=0).shape[0] == 128
    # every sample gets Cutout, most some RandAugment op: far from the weak view on average
    assert ((strong - weak).abs().mean((1, 2, 3)) > 0.05).float().mean() > 0.9


def test_random_size_cutout_sizes_vary_and_stay_within_half_the_side() -> None:
    torch.manual_seed(0)
    out = Cutout(16, random_size=True)(torch.ones(4000, 3, 32, 32))
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))
    mask = zero[:, 0]
    rows, cols = mask.any(2).sum(1), mask.any(1).sum(1)
    assert torch.equal(mask.sum((1, 2)), rows * cols)  # one rectangle per sample
    assert (rows >= 1).all() and rows.max() == 16 and cols.max() == 16
    full = mask.sum((1, 2))[(rows == cols)]  # squares that no border clipped (mostly)
    sides = full.float().sqrt()
    assert torch.unique(sides[sides == sides.round()]).numel() >= 14, "side does not vary"
    assert abs(rows.float().mean() - 7.5) < 1.0  # sides 1..16 uniform, a few clipped


def test_cutout_mask_with_one_size_per_sample() -> None:
    sizes = torch.randint(1, 17, (3000,), generator=torch.Generator().manual_seed(1))
    mask = cutout_mask(3000, 32, 32, sizes, generator=torch.Generator().manual_seed(2))
    rows, cols = mask.any(2), mask.any(1)
    assert torch.equal(mask, rows.unsqueeze(2) & cols.unsqueeze(1))
    for lines in (rows, cols):
        n, first = lines.sum(1), lines.float().argmax(1)
        assert (n <= sizes).all() and (n >= (sizes + 1) // 2).all()
        inside = (first > 0) & (first + n < 32)
        assert torch.equal(n[inside], sizes[inside])


def test_noisy_view_adds_gaussian_noise_of_std_015_after_normalisation() -> None:
    x = _uint8((256, 3, 32, 32))
    noisy = build_view("noisy", "natural", MEAN3, STD3, image_size=32)
    weak = build_view("weak", "natural", MEAN3, STD3, image_size=32)
    assert isinstance(noisy.augment.after, GaussianNoise) and noisy.augment.after.std == 0.15
    with seeded(3):
        a = noisy(x)
    with seeded(3):
        b = weak(x)  # the same crops and flips: the noise is drawn after them
    noise = a - b
    assert abs(noise.mean()) < 0.002
    assert abs(noise.std() - 0.15) < 0.002
    assert abs((noise / 0.15).pow(4).mean() - 3.0) < 0.05  # Gaussian kurtosis
    assert (noise.flatten(1).std(1) > 0.14).all()  # every sample gets noise
    digits = build_view("noisy", "digits", (0.1307,), (0.3081,), image_size=28)
    assert not _flips(digits)


@pytest.mark.parametrize("name", ["strong", "noisy"])
@pytest.mark.parametrize("family", ["digits", "natural", "natural_noflip"])
def test_augment_none_turns_semi_views_into_eval(name: str, family: str) -> None:
    assert build_view(name, family, MEAN3, STD3, 16, augment="none").name == "eval"
