"""Geometric augmentations of an image batch and its dense target maps, applied together.

A crop or flip applied to the image alone would leave its maps pointing at the old pixels, so a
dense task (``data.dense``) augments image and maps with the same per-sample draw: a
zero-padded random crop (a translation by up to ``padding`` pixels), a horizontal flip, and a
rotation by a multiple of 90° (``torch.rot90``: counter-clockwise as displayed, row 0 on top).
Flip and rotations together give every symmetry of the square (a vertical flip is a horizontal
flip then 180°). The image is padded with 0 (black) and every map with 0 (no grasp there).

Angle fields. A grasp angle θ (defined modulo 180°: a gripper's axis has no head) is stored as
``cos 2θ`` and ``sin 2θ`` (GG-CNN, Morrison et al. 2018). A transform moves the pixels *and*
turns the axis drawn in them:

- crop: a translation; θ unchanged.
- horizontal flip: an axis of direction ``(dx, dy)`` becomes ``(-dx, dy)``, so θ → 180° − θ ≡ −θ:
  ``cos 2θ`` unchanged, ``sin 2θ`` negated.
- rotation by 90°: θ → θ ± 90° (the sign depends on whether θ is measured with y up or down),
  so 2θ → 2θ ± 180°: both ``cos 2θ`` and ``sin 2θ`` negated, whichever convention.
- rotation by 180°: 2θ → 2θ ± 360°: both unchanged (the axis has no head).

Applied in the order crop, flip, rotation by ``k`` quarter turns: ``cos' = (-1)^k cos`` and
``sin' = (-1)^(k + flip) sin`` at the moved pixel. Every other field (position, width) only
moves. Parameters are drawn for the whole global batch on the CPU default generator (seeded per
step by the caller), like the views' (:mod:`auxilia.data.view_shards`), and applied batched on
the images' device: no Python loop over samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from auxilia.data.config import DataConfig
from auxilia.data.view_shards import Shard, rows_of, to_rows

__all__ = ["JointAugment", "JointDraw", "angle_signs", "joint_augmentation", "move"]


@dataclass(frozen=True)
class JointDraw:
    """One batch's geometric parameters, per sample (CPU or the images' device).

    Attributes:
        offsets: ``int64`` ``[B, 2]``: the crop window's top-left ``(row, col)`` in the padded
            image, each in ``0 .. 2 * padding`` (``padding`` = no shift); None without crop.
        flips: ``bool`` ``[B]``: flipped left-right; None without flips.
        turns: ``int64`` ``[B]`` in ``0..3``: quarter turns counter-clockwise; None without.
    """

    offsets: torch.Tensor | None
    flips: torch.Tensor | None
    turns: torch.Tensor | None

    def rows(self, rows: slice, device: torch.device) -> JointDraw:
        """The parameters of ``rows`` of the batch, on ``device``."""
        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else to_rows(t, rows, device)
        return JointDraw(cut(self.offsets), cut(self.flips), cut(self.turns))


def _crop(x: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Each sample of ``x`` ``[B, C, H, W]`` zero-padded by ``padding`` and cut back to
    ``H x W`` at its own ``offsets`` ``[B, 2]`` (one gather for the whole batch)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    # advanced indices around a slice: the indexed dims come first, [B, H, W, C]
    return padded[batch, :, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)


def _rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Each sample of a square batch ``[B, C, S, S]`` turned by its own ``turns`` ``[B]``
    quarter turns (``torch.rot90`` over the last two dims; a loop over the 4 turns only)."""
    out = x
    for k in (1, 2, 3):
        out = torch.where((turns == k).view(-1, 1, 1, 1), torch.rot90(x, k, (-2, -1)), out)
    return out


def move(x: torch.Tensor, draw: JointDraw, padding: int) -> torch.Tensor:
    """The pixels of ``x`` ``[B, C, H, W]`` (any dtype) moved by ``draw``: crop, flip, turn."""
    if draw.offsets is not None and padding:
        x = _crop(x, draw.offsets, padding)
    if draw.flips is not None:
        x = torch.where(draw.flips.view(-1, 1, 1, 1), x.flip(-1), x)
    if draw.turns is not None:
        x = _rotate(x, draw.turns)
    return x.contiguous()


def angle_signs(draw: JointDraw, batch: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors ``([B], [B])`` that ``cos 2θ`` and ``sin 2θ`` take under ``draw``: ``(-1)^k``
    and ``(-1)^(k + flip)`` (see the module's derivation)."""
    turns = (draw.turns if draw.turns is not None
             else torch.zeros(batch, dtype=torch.int64, device=device))
    flips = (draw.flips.long() if draw.flips is not None
             else torch.zeros(batch, dtype=torch.int64, device=device))
    cos = 1.0 - 2.0 * (turns % 2).float()
    return cos, cos * (1.0 - 2.0 * flips.float())


class JointAugment:
    """Crop / flip / quarter turns of an image batch and its target maps, one draw per sample.

    Args:
        augment: which of ``crop``, ``flip``, ``rot90`` to apply.
        padding: the crop's zero padding in pixels.
        angle: the ``(cos 2θ, sin 2θ)`` fields, or None.
    """

    def __init__(self, augment: Sequence[str], padding: int,
                 angle: tuple[str, str] | None = None) -> None:
        self.augment, self.padding, self.angle = tuple(augment), padding, angle

    def draw(self, total: int) -> JointDraw:
        """Parameters for ``total`` samples from the CPU default generator, always drawn in the
        order crop, flip, rot90 (so a shard draws exactly what the whole batch draws)."""
        crop = "crop" in self.augment and self.padding > 0
        offsets = torch.randint(0, 2 * self.padding + 1, (total, 2)) if crop else None
        flips = torch.rand(total) < 0.5 if "flip" in self.augment else None
        turns = torch.randint(0, 4, (total,)) if "rot90" in self.augment else None
        return JointDraw(offsets, flips, turns)

    def __call__(self, images: torch.Tensor, targets: Mapping[str, torch.Tensor],
                 shard: Shard | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(images, targets)`` moved together.

        Args:
            images: ``[n, C, H, W]`` (``uint8`` or float), rows ``shard`` of the global batch.
            targets: field → ``[n, C_f, H, W]`` maps of the same samples; a target that is not
                a map of the images' size (e.g. a per-sample vector) is returned unchanged.
            shard: where the rows lie in the global batch (several processes), or None.

        Raises:
            ValueError: ``rot90`` on images that are not square.
        """
        total, rows = rows_of(images, shard)
        h, w = images.shape[-2:]
        if "rot90" in self.augment and h != w:
            raise ValueError(f"data.dense.augment has rot90 but the images are {w}x{h}, not "
                             "square; remove rot90 or set data.image_size")
        draw = self.draw(total).rows(rows, images.device)
        out = {}
        for name, t in targets.items():
            out[name] = move(t, draw, self.padding) if t.shape[-2:] == (h, w) else t
        if self.angle is not None and self.angle[0] in out:
            signs = angle_signs(draw, images.shape[0], images.device)
            for name, sign in zip(self.angle, signs, strict=True):
                out[name] = out[name] * sign.view(-1, 1, 1, 1).to(out[name].dtype)
        return move(images, draw, self.padding), out


def joint_augmentation(cfg: DataConfig, fields: Sequence[str], side: int
                       ) -> JointAugment | None:
    """The joint augmentation ``data.dense`` asks for over maps ``fields`` of images ``side``
    pixels high, or None (no ``data.dense``, ``data.augment=none``, an empty list).

    Raises:
        ValueError: ``data.dense.angle_fields`` names one field of the targets but not the other.
    """
    dense = cfg.dense
    if dense is None or cfg.augment == "none" or not dense.augment:
        return None
    angle = dense.angle_fields
    if angle is not None:
        present = [f for f in angle if f in fields]
        if len(present) == 1:
            raise ValueError(f"data.dense.angle_fields={list(angle)} but the targets have "
                             f"{present[0]!r} and not the other ({', '.join(fields)}); name "
                             "the cos 2θ and sin 2θ fields, or set it to null")
        angle = angle if present else None
    padding = dense.padding if dense.padding is not None else max(1, side // 8)
    return JointAugment(dense.augment, padding, angle)
