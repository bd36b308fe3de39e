"""RandAugment as FixMatch uses it: operations and magnitudes drawn per sample, batched.

Images are ``float`` batches ``[B, C, H, W]`` in ``[0, 1]``. The operations are kornia's
(``kornia.enhance``, ``kornia.geometry.transform``), chosen where kornia has PIL's semantics, as
FixMatch's reference code applies PIL operations (``ImageEnhance``, ``ImageOps``, affine
transforms with black fill). One forward draws, for every sample, ``n_ops`` operation indices
(uniformly, with replacement) and one magnitude per drawn operation, then applies each
operation to the samples that drew it: a Python loop over the operations, none over samples.
The choices are drawn on the CPU generator for the whole batch, also when the module runs on a
shard of it (see :mod:`auxilia.data.view_shards`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import kornia.enhance as KE
import kornia.geometry.transform as KG
import torch

from auxilia.data.view_shards import Shard, ShardAware, rows_of

__all__ = ["FIXMATCH_OPS", "OPS", "Op", "RandAugment"]

OpFunction = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]
"""``fn(x, magnitude, interpolation)``: ``x`` ``[b, C, H, W]``, ``magnitude`` ``[b]``."""


@dataclass(frozen=True)
class Op:
    """One RandAugment operation and the range its magnitude is drawn from.

    Args:
        fn: ``fn(x, magnitude, interpolation)`` on ``[b, C, H, W]`` images in ``[0, 1]`` with one
            magnitude per sample (``[b]``, in the op's own units); returns ``[b, C, H, W]``.
        low: smallest magnitude (of its absolute value for a symmetric op).
        high: largest magnitude (likewise).
        symmetric: the drawn magnitude gets a random sign, each sign with probability 1/2.
        integer: the magnitude is an integer drawn uniformly from ``low, ..., high``.
    """

    fn: OpFunction
    low: float = 0.0
    high: float = 0.0
    symmetric: bool = False
    integer: bool = False


def _auto_contrast(x: torch.Tensor, m: torch.Tensor, mode: str) -> torch.Tensor:
    """``PIL.ImageOps.autocontrast``: each channel stretched onto ``[0, 1]``; a constant channel
    is kept as it is (``normalize_min_max`` alone would set it to 0)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return torch.where(hi > lo, KE.normalize_min_max(x), x)


def _color(x: torch.Tensor, m: torch.Tensor, mode: str) -> torch.Tensor:
    """``ImageEnhance.Color``: blend with the greyscale image; the identity unless RGB."""
    return KE.adjust_saturation_with_gray_subtraction(x, m) if x.shape[1] == 3 else x


def _solarize(x: torch.Tensor, m: torch.Tensor, mode: str) -> torch.Tensor:
    """``ImageOps.solarize(img, 256 * m)``: inverts the 8-bit levels ``>= 256 m``, i.e. the values
    ``>= m * 256 / 255``; ``m = 1`` inverts nothing, ``m = 0`` everything."""
    return KE.solarize(x, m * (256.0 / 255.0))


def _posterize(x: torch.Tensor, m: torch.Tensor, mode: str) -> torch.Tensor:
    return KE.posterize(x, m.round().long())


def _rotate(x: torch.Tensor, m: torch.Tensor, mode: str) -> torch.Tensor:
    """Counter-clockwise by ``m`` degrees about the centre, black outside."""
    return KG.rotate(x, m, mode=mode, padding_mode="zeros")


def _shear(axis: int) -> OpFunction:
    """Shear by factor ``m`` about the top-left pixel, black outside (``axis`` 0: ShearX,
    ``x' = x + m y``; 1: ShearY). PIL shears about the pixel's corner, half a pixel away."""

    def shear(x: torch.Tensor, m: torch.Tensor, mode: str) -> torch.Tensor:
        factors = torch.zeros(x.shape[0], 2, dtype=x.dtype, device=x.device)
        factors[:, axis] = m
        return KG.shear(x, factors, mode=mode, padding_mode="zeros", align_corners=True)

    return shear


def _translate(axis: int) -> OpFunction:
    """Translate by ``m`` times the side, truncated to whole pixels as FixMatch's
    ``int(v * size)``, black outside (``axis`` 0: TranslateX, 1: TranslateY)."""

    def translate(x: torch.Tensor, m: torch.Tensor, mode: str) -> torch.Tensor:
        side = x.shape[-1] if axis == 0 else x.shape[-2]
        shifts = torch.zeros(x.shape[0], 2, dtype=x.dtype, device=x.device)
        shifts[:, axis] = (m * side).trunc()
        return KG.translate(x, shifts, mode=mode, padding_mode="zeros", align_corners=True)

    return translate


_FACTOR = (0.05, 0.95)  # ImageEnhance factors: 0 = black / grey / mean / blurred, 1 = the input

OPS: dict[str, Op] = {
    "AutoContrast": Op(_auto_contrast),
    "Brightness": Op(lambda x, m, mode: KE.adjust_brightness_accumulative(x, m), *_FACTOR),
    "Color": Op(_color, *_FACTOR),
    "Contrast": Op(lambda x, m, mode: KE.adjust_contrast_with_mean_subtraction(x, m), *_FACTOR),
    "Equalize": Op(lambda x, m, mode: KE.equalize(x)),
    "Identity": Op(lambda x, m, mode: x),
    "Posterize": Op(_posterize, 4, 8, integer=True),
    "Rotate": Op(_rotate, 0.0, 30.0, symmetric=True),
    "Sharpness": Op(lambda x, m, mode: KE.sharpness(x, m), *_FACTOR),
    "ShearX": Op(_shear(0), 0.0, 0.3, symmetric=True),
    "ShearY": Op(_shear(1), 0.0, 0.3, symmetric=True),
    "Solarize": Op(_solarize, 0.0, 1.0),
    "TranslateX": Op(_translate(0), 0.0, 0.3, symmetric=True),
    "TranslateY": Op(_translate(1), 0.0, 0.3, symmetric=True),
}
"""Operations by name, with FixMatch's magnitude ranges (``fixmatch_augment_pool``)."""

FIXMATCH_OPS: tuple[str, ...] = tuple(OPS)
"""The 14 operations of FixMatch's RandAugment, in the paper's order."""


class RandAugment(ShardAware):
    """RandAugment in FixMatch's "RA" variant (Sohn et al. 2020, "FixMatch: Simplifying
    Semi-Supervised Learning with Consistency and Confidence"; RandAugment: Cubuk et al. 2020).

    Every sample gets ``n_ops`` operations drawn uniformly, with replacement, from ``ops`` and
    applied in the order drawn, each always and with its own magnitude drawn uniformly from its
    range (FixMatch draws a random magnitude per sample instead of RandAugment's fixed one):

    - AutoContrast, Equalize, Identity: no magnitude.
    - Brightness, Color (saturation), Contrast, Sharpness: enhancement factor in
      ``[0.05, 0.95]`` (PIL's ``ImageEnhance``: blend towards black, the greyscale image, the
      mean grey level, the smoothed image). Color is the identity on other than 3 channels.
    - Posterize: bits kept, an integer in ``4..8`` (8 = identity).
    - Rotate: ``[-30, 30]`` degrees about the centre.
    - ShearX, ShearY: factor in ``[-0.3, 0.3]``.
    - Solarize: threshold in ``[0, 1]`` (``0..256`` in 8-bit levels; 1 = identity).
    - TranslateX, TranslateY: ``[-0.3, 0.3]`` of the side, in whole pixels.

    A symmetric range's sign is drawn per sample. Geometric operations fill with black, as
    FixMatch's PIL code does, and interpolate with ``interpolation`` (PIL's default, nearest).
    FixMatch's Cutout is not part of this module: the ``strong`` view applies it after
    normalisation (see :mod:`auxilia.data.views`).

    Randomness comes from the CPU default generator, whatever the input's device, so a seeded
    block reproduces the output on a CPU and on a GPU alike, and sampling never waits for the
    device. Input and output ``[B, C, H, W]`` floats in ``[0, 1]``, H, W >= 3.

    Args:
        n_ops: operations per sample (N; FixMatch uses 2).
        ops: names of the candidate operations, keys of :data:`OPS`.
        interpolation: ``"nearest"`` or ``"bilinear"``, for the geometric operations.

    Raises:
        ValueError: ``n_ops`` is below 1, ``ops`` is empty or names an unknown operation, or the
            interpolation is neither.
    """

    def __init__(self, n_ops: int = 2, ops: Sequence[str] = FIXMATCH_OPS,
                 interpolation: str = "nearest") -> None:
        super().__init__()
        if n_ops < 1:
            raise ValueError(f"n_ops must be at least 1, got {n_ops}")
        ops = tuple(ops)
        if not ops:
            raise ValueError("ops must name at least one operation")
        unknown = [name for name in ops if name not in OPS]
        if unknown:
            raise ValueError(f"unknown RandAugment operations {unknown}; known: {', '.join(OPS)}")
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError("interpolation must be 'nearest' or 'bilinear', "
                             f"got {interpolation!r}")
        self.n_ops = n_ops
        self.ops = ops
        self.interpolation = interpolation
        table = [OPS[name] for name in ops]
        # plain CPU tensors, not buffers: they index CPU draws and must stay off the device
        self._low = torch.tensor([op.low for op in table])
        self._high = torch.tensor([op.high for op in table])
        self._symmetric = torch.tensor([op.symmetric for op in table])
        self._integer = torch.tensor([op.integer for op in table])

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws the operations and magnitudes of a batch from the CPU default generator.

        Row ``i`` of a draw for ``batch`` rows depends on the rows before it: a shard of a batch
        draws for the whole batch and keeps its rows (see :meth:`forward`).

        Returns:
            ``(choice, magnitude)``, both ``[batch, n_ops]`` on the CPU: indices into ``ops``
            (``int64``) and magnitudes in the operations' units (``float32``, 0 for those
            without one).
        """
        shape = (batch, self.n_ops)
        choice = torch.randint(len(self.ops), shape)
        u = torch.rand(shape)
        sign = torch.randint(0, 2, shape) * 2 - 1
        low, high, symmetric, integer = (b[choice] for b in
                                         (self._low, self._high, self._symmetric, self._integer))
        magnitude = low + u * (high - low + integer.float())
        magnitude = torch.where(integer, magnitude.floor().minimum(high), magnitude)
        return choice, torch.where(symmetric, magnitude * sign, magnitude)

    def apply(self, x: torch.Tensor, choice: torch.Tensor, magnitude: torch.Tensor,
              batch_choice: torch.Tensor | None = None) -> torch.Tensor:
        """Applies drawn operations (see :meth:`sample`) to ``x`` ``[B, C, H, W]``, in order.

        Args:
            x: images on any device.
            choice: ``[B, n_ops]`` operation indices on the CPU (grouping the batch by
                operation reads them on the host).
            magnitude: ``[B, n_ops]`` magnitudes, copied to ``x``'s device without waiting.
            batch_choice: ``[total, n_ops]``, the choices of the whole batch when ``x`` holds
                only some of its rows; None when ``x`` is the whole batch.
        """
        magnitude = magnitude.to(x.device, x.dtype, non_blocking=True)
        for step in range(choice.shape[1]):
            shared = (None if batch_choice is None else
                      torch.bincount(batch_choice[:, step], minlength=len(self.ops)) > 1)
            x = self._apply_step(x, choice[:, step], magnitude[:, step], shared)
        return x

    def _apply_step(self, x: torch.Tensor, choice: torch.Tensor, magnitude: torch.Tensor,
                    shared: torch.Tensor | None) -> torch.Tensor:
        """One operation per sample: the batch grouped by operation, each group done at once.

        ``shared`` (``[len(ops)]`` bool, on a shard): the operations that several rows of the
        whole batch drew. A shard's lone row of such an operation runs as two copies, so its
        kernels see a batch as they do on the whole batch: a CPU convolution of one one-channel
        image (Sharpness) rounds differently from that of a batch of them.
        """
        order = torch.argsort(choice, stable=True)
        counts = torch.bincount(choice, minlength=len(self.ops)).tolist()  # on the CPU: no sync
        twice = [False] * len(counts) if shared is None else shared.tolist()
        order = order.to(x.device, non_blocking=True)
        groups = x.index_select(0, order).split(counts)
        magnitudes = magnitude.index_select(0, order).split(counts)
        done = [self._run(name, group, m, count == 1 and copy)
                for name, group, m, count, copy in zip(self.ops, groups, magnitudes, counts, twice,
                                                        strict=True)]
        return torch.empty_like(x).index_copy_(0, order, torch.cat(done))

    def _run(self, name: str, group: torch.Tensor, magnitude: torch.Tensor, twice: bool
             ) -> torch.Tensor:
        """Operation ``name`` on ``group`` ``[b, C, H, W]`` (on two copies of its row if
        ``twice``); an empty group is returned as it is."""
        if group.shape[0] == 0:
            return group
        if twice:
            return OPS[name].fn(group.repeat(2, 1, 1, 1), magnitude.repeat(2),
                                self.interpolation)[:1]
        return OPS[name].fn(group, magnitude, self.interpolation)

    def forward(self, x: torch.Tensor, shard: Shard | None = None) -> torch.Tensor:
        """Augments ``x`` ``[n, C, H, W]``, rows ``shard`` of a global batch (None: all of it);
        draws the operations of every row of the global batch, applies those of ``x``'s rows."""
        total, rows = rows_of(x, shard)
        if x.shape[0] == 0:
            return x
        choice, magnitude = self.sample(total)
        if total == x.shape[0]:
            return self.apply(x, choice, magnitude)
        return self.apply(x, choice[rows], magnitude[rows], batch_choice=choice)

    def extra_repr(self) -> str:
        return f"n_ops={self.n_ops}, ops={self.ops}, interpolation={self.interpolation!r}"
