"""Augmentation views: exact normalisation, no flips for digits, per-sample randomness."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from auxilia.data.views import VIEWS, build_view, resolve_view_name

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
@pytest.mark.parametrize("name", ["eval", "none", "weak"])
@pytest.mark.parametrize("family", ["digits", "natural", "natural_noflip"])
def test_output_dtype_shape_device(device: str, name: str, family: str) -> None:
    channels = 1 if family == "digits" else 3
    mean, std = ((0.1307,), (0.3081,)) if channels == 1 else (MEAN3, STD3)
    view = build_view(name, family, mean, std, image_size=16)
    out = view(_uint8((6, channels, 16, 16)).to(device))
    assert out.shape == (6, channels, 16, 16)
    assert out.dtype == torch.float32 and out.device.type == device


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
