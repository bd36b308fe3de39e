"""Batched augmentation views: one ``nn.Module`` per view, random parameters per sample.

A view takes a ``uint8`` (0..255) or floating (0..1) batch ``[B, C, H, W]`` on any device and
returns a normalised ``float32`` batch on the same device. Augmentations run batched through
``kornia.augmentation`` (about 18 µs per 32x32 image on 2 CPU cores, against ~119 µs for a
per-sample torchvision loop).

New views register a factory in :data:`VIEWS`; callers only ever use :func:`build_view`::

    VIEWS["mine"] = lambda family, image_size: nn.Sequential(...)

A factory may return :class:`Staged` to run part of its augmentation after the normalisation
(``cutout`` zeroes its square there, i.e. sets it to the dataset mean).

Views: ``eval`` / ``none`` (normalisation only), ``weak`` (translations, flips where the family
allows), ``cutout`` and ``color`` (CDS), ``strong`` (FixMatch's RandAugment + Cutout) and
``noisy`` (Mean Teacher's Gaussian input noise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import kornia.augmentation as K
import torch
from torch import nn

from auxilia.data.randaugment import RandAugment

__all__ = ["FAMILIES", "VIEWS", "ColorAugment", "Cutout", "GaussianNoise", "Staged", "View",
           "build_view", "cutout_mask", "resolve_view_name", "to_unit_float"]

FAMILIES: tuple[str, ...] = ("digits", "natural", "natural_noflip")
"""Augmentation families a dataset can declare (see ``DatasetSplits.family``)."""

ViewFactory = Callable[[str, int], nn.Module | None]
"""``factory(family, image_size)``: the augmentation applied to ``[0, 1]`` floats, or None."""


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """Converts a ``uint8`` batch to ``float32`` in ``[0, 1]``; floats are taken as already so."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        raise TypeError(f"views take uint8 or floating images, got {x.dtype}")
    return x.to(torch.float32)


class Staged(nn.Module):
    """An augmentation in two parts around the normalisation: ``before`` runs on ``[0, 1]``
    images, ``after`` on normalised ones (e.g. Cutout, which zeroes = sets to the mean).

    Args:
        before: module applied before normalisation, or None.
        after: module applied after normalisation, or None.
    """

    def __init__(self, before: nn.Module | None, after: nn.Module | None) -> None:
        super().__init__()
        self.before = before
        self.after = after


class View(nn.Module):
    """Optional augmentation followed by per-channel normalisation.

    An augmentation given as :class:`Staged` is split around the normalisation.

    Args:
        augment: module applied to ``float32`` images in ``[0, 1]``, or None for none.
        mean: per-channel mean in ``[0, 1]`` units.
        std: per-channel standard deviation in ``[0, 1]`` units.
        name: view name, for ``repr`` and error messages.
    """

    def __init__(self, augment: nn.Module | None, mean: Sequence[float], std: Sequence[float],
                 name: str = "") -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.name = name
        self.augment = augment
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Augments and normalises a batch ``[B, C, H, W]``; returns ``float32`` on x's device."""
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"view {self.name!r} expects [B, {self.mean.shape[1]}, H, W] images, "
                             f"got {tuple(x.shape)}")
        before, after = ((self.augment.before, self.augment.after)
                         if isinstance(self.augment, Staged) else (self.augment, None))
        x = to_unit_float(x)
        if before is not None and x.shape[0] > 0:
            x = before(x)
        mean = self.mean.to(x.device, non_blocking=True)
        std = self.std.to(x.device, non_blocking=True)
        x = (x - mean) / std
        if after is not None and x.shape[0] > 0:
            x = after(x)
        return x.contiguous()

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def _padding(image_size: int) -> int:
    """Crop padding: an eighth of the side (4 px at 32), at least one pixel."""
    return max(1, image_size // 8)


def _no_augment(family: str, image_size: int) -> None:
    """Factory of the ``eval`` / ``none`` views: no augmentation."""
    return None


def _weak(family: str, image_size: int) -> nn.Module:
    """Factory of the ``weak`` view: small random translations, plus flips for natural images.

    ``digits``: zero-padded random crop (black background), never flipped.
    ``natural_noflip``: reflect-padded random crop. ``natural``: the same plus horizontal flips.
    """
    size = (image_size, image_size)
    pad = _padding(image_size)
    if family == "digits":
        return K.RandomCrop(size, padding=pad, fill=0.0, padding_mode="constant",
                            cropping_mode="resample")
    crop = K.RandomCrop(size, padding=pad, padding_mode="reflect", cropping_mode="resample")
    if family == "natural_noflip":
        return crop
    return nn.Sequential(crop, K.RandomHorizontalFlip(p=0.5))


def cutout_mask(batch: int, height: int, width: int, size: int | torch.Tensor,
                device: torch.device | str | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Cutout squares (DeVries & Taylor 2017), one per sample, as a boolean mask.

    Each sample's centre ``(cy, cx)`` is uniform over the pixel grid; the square covers rows
    ``[cy - size // 2, cy - size // 2 + size)`` (likewise columns), clipped at the borders, so it
    is ``size`` x ``size`` inside the image and smaller where it crosses an edge.

    Args:
        batch: number of samples B.
        height: image height H.
        width: image width W.
        size: side of the square, or ``[B]`` integer sides, one per sample.
        device: device of the mask.
        generator: random generator on ``device`` (default: the global one).

    Returns:
        ``[B, H, W]`` bool, True inside each sample's square.
    """
    cy = torch.randint(0, height, (batch, 1), device=device, generator=generator)
    cx = torch.randint(0, width, (batch, 1), device=device, generator=generator)
    rows = torch.arange(height, device=device).unsqueeze(0)  # [1, H]
    cols = torch.arange(width, device=device).unsqueeze(0)  # [1, W]
    if isinstance(size, torch.Tensor):
        size = size.to(device).view(batch, 1)
    top, left = cy - size // 2, cx - size // 2
    in_rows = (rows >= top) & (rows < top + size)  # [B, H]
    in_cols = (cols >= left) & (cols < left + size)  # [B, W]
    return in_rows.unsqueeze(2) & in_cols.unsqueeze(1)


class Cutout(nn.Module):
    """Cutout (DeVries & Taylor 2017): one ``size`` x ``size`` square per sample set to ``fill``
    at a uniformly random centre, clipped at the borders (see :func:`cutout_mask`).

    Applied after normalisation with ``fill=0`` it sets the square to the dataset mean, as the
    reference code does. With ``random_size`` each sample's side is drawn uniformly from
    ``1, ..., size`` (FixMatch's Cutout: ``v * side`` with ``v`` in ``(0, 0.5]``).
    Input and output ``[B, C, H, W]``.
    """

    def __init__(self, size: int, fill: float = 0.0, random_size: bool = False) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"cutout size must be positive, got {size}")
        self.size = size
        self.fill = fill
        self.random_size = random_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size: int | torch.Tensor = self.size
        if self.random_size:
            size = torch.randint(1, self.size + 1, (x.shape[0],), device=x.device)
        mask = cutout_mask(x.shape[0], x.shape[-2], x.shape[-1], size, x.device)
        return x.masked_fill(mask.unsqueeze(1), self.fill)

    def extra_repr(self) -> str:
        return f"size={self.size}, fill={self.fill}, random_size={self.random_size}"


class GaussianNoise(nn.Module):
    """Additive Gaussian noise ``x + std * N(0, 1)``, drawn per element from the global generator
    (Mean Teacher, Tarvainen & Valpola 2017: ``std = 0.15`` on normalised inputs).

    Args:
        std: standard deviation of the noise, in the units of the input.
    """

    def __init__(self, std: float) -> None:
        super().__init__()
        if std < 0:
            raise ValueError(f"noise std must be non-negative, got {std}")
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.std * torch.randn_like(x)

    def extra_repr(self) -> str:
        return f"std={self.std}"


class ColorAugment(nn.Module):
    """SimCLR / SupCon colour distortion: ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8, then
    RandomGrayscale with p = 0.2, each gated per sample.

    Uses ``kornia.augmentation.ColorJitter`` (torchvision's formulas: multiplicative brightness,
    blend with the grey mean for contrast, with the greyscale for saturation; random order of the
    four steps), not ``ColorJiggle`` (kornia's additive brightness and HSV saturation). The order
    is drawn once per batch, where torchvision draws it per image. Images with other than 3
    channels (e.g. greyscale digits) get brightness and contrast only: saturation, hue and
    greyscale conversion do not apply to them.

    Input and output ``[B, C, H, W]`` in ``[0, 1]``.
    """

    def __init__(self, strength: float = 0.4, hue: float = 0.1, p: float = 0.8,
                 p_gray: float = 0.2) -> None:
        super().__init__()
        self.rgb = nn.Sequential(K.ColorJitter(strength, strength, strength, hue, p=p),
                                 K.RandomGrayscale(p=p_gray))
        self.other = K.ColorJitter(strength, strength, 0.0, 0.0, p=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rgb(x) if x.shape[1] == 3 else self.other(x)


def _cutout(family: str, image_size: int) -> Staged:
    """Factory of the ``cutout`` view (CDS view 1): the weak view, then after normalisation a
    Cutout square of side ``image_size // 2`` (16 px at 32) set to 0, the mean."""
    return Staged(_weak(family, image_size), Cutout(max(1, image_size // 2)))


def _color(family: str, image_size: int) -> nn.Module:
    """Factory of the ``color`` view (CDS view 2): the weak view, then :class:`ColorAugment`."""
    return nn.Sequential(_weak(family, image_size), ColorAugment())


def _strong(family: str, image_size: int) -> Staged:
    """Factory of the ``strong`` view (FixMatch, Sohn et al. 2020): the weak view's translations
    and flips (never flips for digits), then :class:`~auxilia.data.randaugment.RandAugment` with
    two operations per sample, then after normalisation a Cutout square of side drawn per sample
    from ``1 .. image_size // 2``, set to 0 (the mean)."""
    return Staged(nn.Sequential(_weak(family, image_size), RandAugment(n_ops=2)),
                  Cutout(max(1, image_size // 2), random_size=True))


NOISE_STD = 0.15
"""Mean Teacher's input noise, in normalised units."""


def _noisy(family: str, image_size: int) -> Staged:
    """Factory of the ``noisy`` view (Mean Teacher): the weak view, then after normalisation
    Gaussian noise of std :data:`NOISE_STD`."""
    return Staged(_weak(family, image_size), GaussianNoise(NOISE_STD))


VIEWS: dict[str, ViewFactory] = {
    "eval": _no_augment,
    "none": _no_augment,
    "weak": _weak,
    "cutout": _cutout,
    "color": _color,
    "strong": _strong,
    "noisy": _noisy,
}
"""Registry of views: name → ``factory(family, image_size)``."""

EVAL_VIEW = "eval"


def resolve_view_name(name: str, augment: str = "auto") -> str:
    """The view actually built for ``name`` under ``data.augment``.

    Args:
        name: requested view (``"weak"``, ``"strong"``, ...).
        augment: ``"auto"`` keeps the view; ``"none"`` maps every view to ``"eval"``.

    Raises:
        ValueError: for an unknown view name or augment mode.
    """
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}; known views: {', '.join(sorted(VIEWS))}")
    if augment == "none":
        return EVAL_VIEW
    if augment != "auto":
        raise ValueError(f"augment must be 'auto' or 'none', got {augment!r}")
    return name


def build_view(name: str, family: str, mean: Sequence[float], std: Sequence[float],
               image_size: int, augment: str = "auto") -> View:
    """Builds a view module.

    Args:
        name: a key of :data:`VIEWS` (``"eval"``, ``"weak"``, ``"none"``, ...).
        family: the dataset's augmentation family, one of :data:`FAMILIES`.
        mean: per-channel normalisation mean in ``[0, 1]`` units.
        std: per-channel normalisation std in ``[0, 1]`` units.
        image_size: side of the (square) images the view outputs.
        augment: ``data.augment``; ``"none"`` turns every view into ``"eval"``.

    Returns:
        A :class:`View`; call it on ``[B, C, H, W]`` uint8 or float batches.

    Raises:
        ValueError: for an unknown view, family or augment mode.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown augmentation family {family!r}; known: {', '.join(FAMILIES)}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    resolved = resolve_view_name(name, augment)
    return View(VIEWS[resolved](family, image_size), mean, std, name=resolved)
