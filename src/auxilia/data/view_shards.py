"""Augmentations on a shard of a batch: parameters drawn for the whole batch, on the CPU.

Under torchrun / DDP the global batch is split over ranks, rank ``r`` holding a contiguous block
of rows. A view must give every row the augmentation the same row gets when one process
augments the whole batch: drawn batch-wise from one seeded stream, the parameters of row ``i``
depend on the batch size and on the rows before it. So a shard draws the parameters of all
``total`` rows (a few numbers per row, cheap) in exactly the order the whole batch draws them,
keeps its own rows, and runs the image operations on those rows only.

Every draw uses the CPU default generator, whatever the images' device: one seed then gives the
same augmentations on a CPU and on a GPU, and drawing needs no host-device synchronisation (the
parameters travel to the device with ``non_blocking`` copies). :func:`move_all_but_kornia` moves
a view's tensors but leaves its kornia modules (which hold none) drawing on the CPU, and a kornia
module moved to a GPU all the same is put back to drawing on the CPU before it draws.

:func:`augment` is the one dispatch: ``nn.Sequential`` runs its children in order, kornia 2D
augmentations draw through ``forward_parameters`` and apply through ``forward(x, params=...)``,
and modules deriving from :class:`ShardAware` take the shard themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import nn

__all__ = ["Shard", "ShardAware", "augment", "kornia_parameters", "move_all_but_kornia",
           "rows_of", "to_rows"]

_CPU = torch.device("cpu")

# kornia parameters that describe the whole call rather than one row each (ColorJitter's order
# of its four adjustments, the input shape); every other parameter is indexed by row.
_CALL_PARAMETERS = frozenset({"order", "forward_input_shape"})


@dataclass(frozen=True)
class Shard:
    """The rows of a global batch that a view's input holds.

    Args:
        start: first row of the global batch in the input (rank ``r`` of ``W``: ``r * total / W``).
        total: rows in the global batch (``data.batch_size`` for a labeled view).

    Raises:
        ValueError: ``start`` is negative or ``total`` is below 1.
    """

    start: int
    total: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.total < 1:
            raise ValueError(f"a shard needs start >= 0 and total >= 1, got start={self.start}, "
                             f"total={self.total}")


def rows_of(x: torch.Tensor, shard: Shard | None) -> tuple[int, slice]:
    """The global batch size and the rows of it that ``x`` ``[n, ...]`` holds.

    Args:
        x: a batch or a shard of one.
        shard: where ``x`` lies in the global batch; None when ``x`` is the whole batch.

    Returns:
        ``(total, rows)``: draw for ``total`` rows, keep ``rows``.

    Raises:
        ValueError: ``x`` has more rows than fit after ``shard.start``.
    """
    if shard is None:
        return x.shape[0], slice(0, x.shape[0])
    stop = shard.start + x.shape[0]
    if stop > shard.total:
        raise ValueError(f"a shard of {x.shape[0]} rows from row {shard.start} does not fit a "
                         f"batch of {shard.total} rows; pass Shard(start, total) with "
                         f"start + rows <= total")
    return shard.total, slice(shard.start, stop)


def to_rows(drawn: torch.Tensor, rows: slice, device: torch.device) -> torch.Tensor:
    """The local rows of parameters drawn for the whole batch, copied to the images' device
    without waiting (the copy is queued; nothing reads the device back)."""
    return drawn[rows].to(device, non_blocking=True)


class ShardAware(nn.Module):
    """Base of augmentations that take a :class:`Shard` (see :func:`augment`).

    A subclass's ``forward(x, shard)`` draws the random parameters of ``shard.total`` rows (of
    ``x.shape[0]`` when ``shard`` is None) on the CPU generator, in an order that does not depend
    on the shard, and applies those of :func:`rows_of`'s rows to ``x``.
    """

    def forward(self, x: torch.Tensor, shard: Shard | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define forward(x, shard)")


def augment(module: nn.Module, x: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    """Runs an augmentation on ``x`` ``[n, C, H, W]``, rows ``shard`` of a global batch.

    With ``shard`` None (``x`` is the whole batch) the output equals ``module(x)`` at the same
    RNG state; with a shard it equals the matching rows of the whole batch's output.

    Raises:
        ValueError: ``module`` is neither ``nn.Sequential``, a kornia 2D augmentation nor
            :class:`ShardAware`, and ``x`` is only part of the batch.
    """
    if isinstance(module, ShardAware):
        return module(x, shard)
    if isinstance(module, nn.Sequential):
        for child in module:
            x = augment(child, x, shard)
        return x
    if isinstance(module, K.AugmentationBase2D):
        return module(x, params=kornia_parameters(module, x, shard))
    total, _ = rows_of(x, shard)
    if total != x.shape[0]:
        raise ValueError(f"{type(module).__name__} cannot augment a shard of a batch (several "
                         "processes): derive it from auxilia.data.view_shards.ShardAware and "
                         "draw its parameters for shard.total rows")
    return module(x)


def kornia_parameters(module: K.AugmentationBase2D, x: torch.Tensor, shard: Shard | None
                      ) -> dict[str, torch.Tensor]:
    """A kornia augmentation's parameters for the rows of ``x``, drawn for the whole batch.

    ``module.forward_parameters`` draws exactly what ``module(x)`` draws for a batch of
    ``total`` rows; the per-row parameters are then cut to ``x``'s rows.

    Raises:
        RuntimeError: a parameter is neither per-row nor a known per-call one (a kornia version
            this code was not written for).
    """
    if module.device != _CPU:  # moved with .to(device): draw on the CPU all the same
        module.set_rng_device_and_dtype(_CPU, module.dtype)
    total, rows = rows_of(x, shard)
    params = module.forward_parameters((total, *x.shape[1:]))
    if total == x.shape[0]:
        return params
    local = {}
    for key, value in params.items():
        if key == "forward_input_shape":
            local[key] = torch.tensor([x.shape[0], *value.tolist()[1:]], dtype=value.dtype)
        elif key in _CALL_PARAMETERS:
            local[key] = value
        elif value.dim() > 0 and value.shape[0] == total:
            local[key] = value[rows]
        else:
            raise RuntimeError(f"{type(module).__name__} drew a parameter {key!r} of shape "
                               f"{tuple(value.shape)}, not one per row of {total}: this kornia "
                               "version cannot run on a shard of a batch")
    return local


def move_all_but_kornia(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Applies ``nn.Module._apply``'s ``fn`` (``.to(device)``, ``.half()``, ...) to the tensors of
    ``module`` and its submodules, except kornia 2D augmentations: they hold no tensors, and
    moved to a device they would draw there (to the ``meta`` device they refuse to move)."""
    if isinstance(module, K.AugmentationBase2D):
        return
    module._apply(fn, recurse=False)
    for child in module.children():
        move_all_but_kornia(child, fn)
