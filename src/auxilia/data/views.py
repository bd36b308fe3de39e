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

Every random draw is made on the CPU default generator, whatever the images' device, and a view
can augment a shard of a batch (one rank's rows under DDP) exactly as it would augment those rows
of the whole batch: ``view(x, Shard(start, total))`` (see :mod:`auxilia.data.view_shards`). An
augmentation module of a new view runs on shards if it is ``nn.Sequential``, a kornia 2D
augmentation or :class:`~auxilia.data.view_shards.ShardAware`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import kornia.augmentation as K
import torch
from torch import nn

from auxilia.data.randaugment import RandAugment
from auxilia.data.view_shards import (
    Shard,
    ShardAware,
    augment,
    move_all_but_kornia,
    rows_of,
    to_rows,
)

__all__ = ["FAMILIES", "VIEWS", "ColorAugment", "Cutout", "GaussianNoise", "Shard", "Staged",
           "View", "build_view", "cutout_mask", "resolve_view_name", "to_unit_float"]

FAMILIES: tuple[str, ...] = ("digits", "natural", "natural_noflip", "natural_cropped")
"""Augmentation families a dataset can declare (see ``DatasetSplits.family``);
``natural_cropped``: natural images whose samples are random-resized crops already (the file
store's ``data.crop=random_resized``)."""

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

    def forward(self, x: torch.Tensor, shard: Shard | None = None) -> torch.Tensor:
        """Augments and normalises a batch ``[B, C, H, W]``; returns ``float32`` on x's device.

        Args:
            x: ``uint8`` or ``[0, 1]`` floating images, on any device.
            shard: where ``x`` lies in the global batch when it holds only some of its rows
                (one rank's share under DDP); None when ``x`` is the whole batch. Row ``i`` of
                ``x`` then gets exactly the augmentation that row ``shard.start + i`` of the
                whole batch gets under the same seeded RNG state.
        """
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"view {self.name!r} expects [B, {self.mean.shape[1]}, H, W] images, "
                             f"got {tuple(x.shape)}")
        rows_of(x, shard)  # refuses a shard that does not fit before anything is drawn
        before, after = ((self.augment.before, self.augment.after)
                         if isinstance(self.augment, Staged) else (self.augment, None))
        x = to_unit_float(x)
        if before is not None and x.shape[0] > 0:
            x = augment(before, x, shard)
        mean = self.mean.to(x.device, non_blocking=True)
        std = self.std.to(x.device, non_blocking=True)
        x = (x - mean) / std
        if after is not None and x.shape[0] > 0:
            x = augment(after, x, shard)
        return x.contiguous()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> View:
        """``.to(device)`` and the like move the normalisation and the augmentations' tensors,
        but the kornia modules keep drawing on the CPU generator."""
        super()._apply(fn, recurse=False)
        if recurse:
            for child in self.children():
                move_all_but_kornia(child, fn)
        return self

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
    ``natural_cropped``: flips only (the sample is a random-resized crop, translated and
    scaled already, as in the ImageNet recipe).
    """
    if family == "natural_cropped":
        return K.RandomHorizontalFlip(p=0.5)
    size = (image_size, image_size)
    pad = _padding(image_size)
    if family == "digits":
        return K.RandomCrop(size, padding=pad, fill=0.0, padding_mode="constant",
                            cropping_mode="resample")
    crop = K.RandomCrop(size, padding=pad, padding_mode="reflect", cropping_mode="resample")
    if family == "natural_noflip":
        return crop
    return nn.Sequential(crop, K.RandomHorizontalFlip(p=0.5))


def _cutout_centres(batch: int, height: int, width: int,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cutout centres ``(cy, cx)``, each ``[batch, 1]`` int64, uniform over the pixel grid, drawn
    on the CPU (``generator``, by default the default one)."""
    cy = torch.randint(0, height, (batch, 1), generator=generator)
    cx = torch.randint(0, width, (batch, 1), generator=generator)
    return cy, cx


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
        generator: CPU random generator the centres are drawn from (default: the default one),
            whatever ``device`` is.

    Returns:
        ``[B, H, W]`` bool, True inside each sample's square.
    """
    cy, cx = _cutout_centres(batch, height, width, generator)
    device = torch.device("cpu") if device is None else torch.device(device)
    every = slice(None)
    if isinstance(size, torch.Tensor):
        size = to_rows(size.view(batch, 1), every, device)
    return _square_mask(to_rows(cy, every, device), to_rows(cx, every, device), size, height,
                        width)


def _square_mask(cy: torch.Tensor, cx: torch.Tensor, size: int | torch.Tensor, height: int,
                 width: int) -> torch.Tensor:
    """``[B, H, W]`` bool mask of the squares of side ``size`` (an int or ``[B, 1]``) centred at
    ``(cy, cx)`` (each ``[B, 1]``), built on ``cy``'s device."""
    device = cy.device
    rows = torch.arange(height, device=device).unsqueeze(0)  # [1, H]
    cols = torch.arange(width, device=device).unsqueeze(0)  # [1, W]
    top, left = cy - size // 2, cx - size // 2
    in_rows = (rows >= top) & (rows < top + size)  # [B, H]
    in_cols = (cols >= left) & (cols < left + size)  # [B, W]
    return in_rows.unsqueeze(2) & in_cols.unsqueeze(1)


class Cutout(ShardAware):
    """Cutout (DeVries & Taylor 2017): one ``size`` x ``size`` square per sample set to ``fill``
    at a uniformly random centre, clipped at the borders (see :func:`cutout_mask`).

    Applied after normalisation with ``fill=0`` it sets the square to the dataset mean, as the
    reference code does. With ``random_size`` each sample's side is drawn uniformly from
    ``1, ..., size`` (FixMatch's Cutout: ``v * side`` with ``v`` in ``(0, 0.5]``). Sides and
    centres are drawn on the CPU, for the whole batch when ``x`` is a shard of one.
    Input and output ``[B, C, H, W]``.
    """

    def __init__(self, size: int, fill: float = 0.0, random_size: bool = False) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"cutout size must be positive, got {size}")
        self.size = size
        self.fill = fill
        self.random_size = random_size

    def forward(self, x: torch.Tensor, shard: Shard | None = None) -> torch.Tensor:
        total, rows = rows_of(x, shard)
        size: int | torch.Tensor = self.size
        if self.random_size:
            size = to_rows(torch.randint(1, self.size + 1, (total, 1)), rows, x.device)
        cy, cx = _cutout_centres(total, x.shape[-2], x.shape[-1])
        mask = _square_mask(to_rows(cy, rows, x.device), to_rows(cx, rows, x.device), size,
                            x.shape[-2], x.shape[-1])
        return x.masked_fill(mask.unsqueeze(1), self.fill)

    def extra_repr(self) -> str:
        return f"size={self.size}, fill={self.fill}, random_size={self.random_size}"


class GaussianNoise(ShardAware):
    """Additive Gaussian noise ``x + std * N(0, 1)``, drawn per element from the CPU default
    generator (Mean Teacher, Tarvainen & Valpola 2017: ``std = 0.15`` on normalised inputs).

    A shard of ``n`` rows of a ``total``-row batch draws the noise of all ``total`` rows and keeps
    its own: row ``i``'s noise follows the rows before it in one stream, so W ranks draw W times
    the noise of one process (0.6 ms per 64 x 3 x 32 x 32 on one CPU core). On a GPU the noise
    crosses to the device as one ``non_blocking`` copy of ``x``'s size.

    Args:
        std: standard deviation of the noise, in the units of the input.
    """

    def __init__(self, std: float) -> None:
        super().__init__()
        if std < 0:
            raise ValueError(f"noise std must be non-negative, got {std}")
        self.std = std

    def forward(self, x: torch.Tensor, shard: Shard | None = None) -> torch.Tensor:
        total, rows = rows_of(x, shard)
        noise = torch.randn((total, *x.shape[1:]), dtype=x.dtype)
        return x + self.std * to_rows(noise, rows, x.device)

    def extra_repr(self) -> str:
        return f"std={self.std}"


class ColorAugment(ShardAware):
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

    def forward(self, x: torch.Tensor, shard: Shard | None = None) -> torch.Tensor:
        return augment(self.rgb if x.shape[1] == 3 else self.other, x, shard)


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


def _randaugment(family: str, image_size: int) -> nn.Module:
    """Factory of the ``randaugment`` view (Noisy Student's input noise, Xie et al. 2020): the
    weak view's translations and flips, then :class:`~auxilia.data.randaugment.RandAugment`
    with two operations per sample, magnitudes drawn per sample (no Cutout)."""
    return nn.Sequential(_weak(family, image_size), RandAugment(n_ops=2))


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
    "randaugment": _randaugment,
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
