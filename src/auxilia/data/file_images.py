"""The file store: a split's images as an index view over image files, decoded when read.

:class:`FileImages` stands where the memory store's ``uint8 [N, C, H, W]`` tensor stands in a
:class:`~auxilia.data.types.Split`: it has a ``shape``, a ``dtype`` and a length, and indexing
it (``images[idx]``, by a tensor, a slice or an array) gives another index view, never pixels.
Carving val and test, deduplicating, drawing a subset and hiding labels therefore copy file
names, not images. Pixels come from :meth:`FileImages.read`, one file at a time, in the input
pipeline's worker processes (:mod:`auxilia.engine.batches`).

Two decodings (:class:`Decoding`):

- ``resize``: the whole image stretched to the input size, exactly as the memory store decodes
  it (the same function, :func:`auxilia.data.decode.decode_resized`): both stores give the same
  pixels, and so the same batches.
- ``random_resized``: training reads draw a random-resized crop (area ``scale``, aspect
  ``ratio``) at full resolution, from a generator seeded per sample by the caller (purpose,
  sample, step), and resize it to the input size; evaluation reads resize the shorter side to
  ``size / center`` and take the centred square.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from auxilia.data.decode import (
    center_box,
    decode_box,
    decode_resized,
    random_resized_box,
    read_regular,
)
from auxilia.data.errors import DataError
from auxilia.data.streams import eval_batches

__all__ = ["CROPS", "Decoding", "FileImages", "pixel_batches", "quiet_worker", "read_pixels",
           "worker_context"]

CROPS = ("resize", "random_resized")


@dataclass(frozen=True)
class Decoding:
    """How a file becomes a sample of the file store.

    Attributes:
        height, width: the sample's size (square for ``random_resized``).
        mode: ``RGB`` or ``L``.
        crop: ``resize`` or ``random_resized`` (module docstring).
        scale: the random crop's share of the image's area, ``(low, high)``.
        ratio: the random crop's aspect ratio w / h, ``(low, high)``.
        center: the evaluation crop's side over the resized shorter side (0.875).
    """

    height: int
    width: int
    mode: str
    crop: str = "resize"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    center: float = 0.875

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3


class FileImages:
    """``uint8`` images ``[N, C, H, W]`` kept as files: an index view over ``paths``.

    Args:
        paths: the image files, one per sample (an object array of ``str``).
        decoding: how every file is decoded (:class:`Decoding`).
    """

    dtype = torch.uint8

    def __init__(self, paths: np.ndarray, decoding: Decoding) -> None:
        self.paths = np.asarray(paths, dtype=object).reshape(-1)
        self.decoding = decoding

    def __len__(self) -> int:
        return int(self.paths.shape[0])

    @property
    def shape(self) -> torch.Size:
        d = self.decoding
        return torch.Size((len(self), d.channels, d.height, d.width))

    def dim(self) -> int:
        return 4

    def __getitem__(self, idx: torch.Tensor | np.ndarray | slice | Sequence[int]) -> FileImages:
        """The samples ``idx``: another view over the same files, no pixels read."""
        if isinstance(idx, torch.Tensor):
            idx = idx.numpy()
        picked = self.paths[idx]
        return FileImages(np.atleast_1d(picked), self.decoding)

    def concat(self, other: FileImages) -> FileImages:
        """``self`` followed by ``other`` (the same decoding)."""
        if other.decoding != self.decoding:
            raise ValueError(f"cannot join file stores decoded differently: {self.decoding} "
                             f"and {other.decoding}")
        return FileImages(np.concatenate([self.paths, other.paths]), self.decoding)

    def with_decoding(self, decoding: Decoding) -> FileImages:
        """The same files decoded another way (e.g. at another size)."""
        return FileImages(self.paths, decoding)

    def read(self, rows: torch.Tensor | slice | None = None,
             seeds: Sequence[int] | None = None) -> torch.Tensor:
        """Decodes the samples ``rows`` (all by default) to ``uint8 [B, C, H, W]``.

        Args:
            rows: which samples of this view.
            seeds: one seed per sample for a training read (the random-resized crop's
                generator); None for an evaluation read (the centre crop). Ignored by the
                ``resize`` decoding, which has nothing random.

        Raises:
            DataError: a file cannot be read or decoded; the message names it.
        """
        paths = self.paths if rows is None else self[rows].paths
        if seeds is not None and len(seeds) != len(paths):
            raise ValueError(f"read: {len(seeds)} seeds for {len(paths)} samples")
        d = self.decoding
        out = np.empty((len(paths), d.height, d.width, d.channels), dtype=np.uint8)
        for i, path in enumerate(paths):
            out[i] = self._decode(str(path), None if seeds is None else int(seeds[i])).reshape(
                d.height, d.width, d.channels)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    def _decode(self, path: str, seed: int | None) -> np.ndarray:
        d = self.decoding
        try:
            if d.crop == "resize":
                return decode_resized(read_regular(path), d.mode, (d.height, d.width))
            if seed is None:
                box = partial(center_box, size=d.height, fraction=d.center)
            else:
                rng = np.random.default_rng(seed)
                box = partial(random_resized_box, rng=rng, scale=d.scale, ratio=d.ratio)
            return decode_box(path, d.mode, d.height, box)
        except Exception as exc:  # PIL raises many types on unreadable files
            raise DataError(f"cannot decode image file {path} while reading a batch "
                            f"({type(exc).__name__}: {exc}); fix or remove it (the file store "
                            "reads files as batches need them; data.storage=memory decodes "
                            "every file before training)") from exc

    def __repr__(self) -> str:
        d = self.decoding
        return (f"FileImages({len(self)} files, {d.mode} {d.height}x{d.width}, "
                f"crop={d.crop})")


def read_pixels(images: torch.Tensor | FileImages, rows: torch.Tensor | slice | None = None
                ) -> torch.Tensor:
    """The ``uint8`` pixels of ``rows`` as evaluation sees them, whatever the store: a tensor's
    rows, or the files decoded with the evaluation crop."""
    if isinstance(images, FileImages):
        return images.read(rows)
    return images if rows is None else images[rows]


class _EvalReads(torch.utils.data.Dataset):
    """Batch ``i`` of a file store read in order with the evaluation crop (a worker's task)."""

    def __init__(self, images: FileImages, batches: list[slice]) -> None:
        self.images, self.batches = images, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images.read(self.batches[i])


def pixel_batches(images: torch.Tensor | FileImages, batch_size: int, workers: int = 0
                  ) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, uint8 pixels)`` of contiguous batches in order, as evaluation reads them: a
    tensor's slices (no copy), or the file store's files decoded by ``workers`` processes
    (in this process with 0) while the batches before them are evaluated."""
    batches = list(eval_batches(len(images), batch_size))
    if not isinstance(images, FileImages):
        yield from ((rows, images[rows]) for rows in batches)
        return
    if workers == 0:
        yield from ((rows, images.read(rows)) for rows in batches)
        return
    loader = torch.utils.data.DataLoader(_EvalReads(images, batches), batch_size=None,
                                         num_workers=min(workers, len(batches)),
                                         multiprocessing_context=worker_context(),
                                         worker_init_fn=quiet_worker)
    yield from zip(batches, loader, strict=True)


def worker_context() -> str | None:
    """Fork where there is one (Linux: workers start at once and share the parent's pages),
    else the platform's default."""
    return "fork" if sys.platform == "linux" else None


def quiet_worker(_worker_id: int = 0) -> None:
    """An input worker leaves Ctrl-C and SIGTERM to the training process: a terminal's Ctrl-C
    reaches every process of its group, and the run stops by finishing its step, saving, and
    then shutting its workers down (they also exit when the training process dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
