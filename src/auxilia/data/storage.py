"""Where a dataset's images live: decoded in memory, or as files decoded when read.

One decision (:func:`choose_store`) for every command that loads image files: the memory store
when the decoded images fit ``data.memory_budget`` (by default half of the memory available),
the file store (:mod:`auxilia.data.file_images`) when they do not; ``data.storage`` forces
either. The crop of the file store (``data.crop``) is decided with it. The choice is printed
with the data's lines, with the keys that change it.
"""

from __future__ import annotations

import os
import stat
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from auxilia.data.config import DataConfig
from auxilia.data.errors import DataError
from auxilia.data.file_images import Decoding
from auxilia.data.host_memory import check_decoded_size, cpu_available_bytes, gib

__all__ = ["PEEK", "StoreChoice", "choose_store", "peek_sides"]

PEEK = 64
"""File headers read to learn the images' size."""


@dataclass(frozen=True)
class StoreChoice:
    """The store of a dataset's image files and how the file store decodes them.

    Attributes:
        kind: ``memory`` or ``files``.
        crop: ``resize`` or ``random_resized`` (``resize`` for the memory store).
        line: what was chosen and why, printed with the data's lines.
    """

    kind: str
    crop: str
    line: str

    def decoding(self, cfg: DataConfig, height: int, width: int) -> Decoding:
        """How the file store decodes a file into a sample of ``height`` x ``width``."""
        return Decoding(height, width, "L" if cfg.grayscale else "RGB", self.crop,
                        cfg.crop_scale, cfg.crop_ratio, cfg.center_crop)


def peek_sides(paths: Sequence[str | os.PathLike[str]], peek: int = PEEK) -> list[int]:
    """The longer side of up to ``peek`` images evenly spread over ``paths``, read from their
    headers (no pixel decoded); unreadable files and special files are skipped."""
    step = max(1, len(paths) // peek)
    sides = []
    for path in list(paths)[::step][:peek]:
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                continue  # a FIFO or device is never opened; the decoder names it
            with Image.open(path) as im:  # reads the header only
                sides.append(max(im.size))
        except (OSError, ValueError):
            continue
    return sides


def _budget(cfg: DataConfig) -> tuple[int | None, str]:
    """``(budget in bytes or None when unknown, where it comes from)``."""
    if cfg.budget_bytes is not None:
        return cfg.budget_bytes, f"data.memory_budget={cfg.memory_budget}"
    free = cpu_available_bytes()
    if free is None:
        return None, "the memory available is unknown"
    return free // 2, f"half of the {gib(free)} available"


def choose_store(cfg: DataConfig, paths: Sequence[str | os.PathLike[str]]) -> StoreChoice:
    """The store of the image files ``paths`` (every split's, listed) and its crop.

    Raises:
        DataError: ``data.crop=random_resized`` with the memory store, or without
            ``data.image_size``.
    """
    sides = peek_sides(paths)
    native = int(statistics.median(sides)) if sides else 0
    side = cfg.size or native
    channels = 1 if cfg.grayscale else 3
    need = len(paths) * channels * side * side
    shape = f"{len(paths):,} images of {channels}x{side}x{side}"
    budget, whence = _budget(cfg)
    if cfg.storage == "memory":
        kind, why = "memory", f" (data.storage=memory): {shape} take {gib(need)} decoded"
    elif cfg.storage == "files":
        kind, why = "files", (f" (data.storage=files): {len(paths):,} image files read by the "
                              "input pipeline as batches need them")
    elif budget is None or need <= budget:
        within = f"within the memory budget {gib(budget)}" if budget is not None else "kept"
        kind, why = "memory", (f": {shape} take {gib(need)} decoded, {within} ({whence}); "
                               "data.storage=files reads them from disk instead")
    else:
        kind, why = "files", (f": {shape} would take {gib(need)} decoded, over the memory "
                              f"budget {gib(budget)} ({whence}): read from disk by the input "
                              "pipeline; data.storage=memory loads them anyway, "
                              "data.memory_budget=... sets the budget")
    if kind == "files":  # a batch must still fit: a side of 200,000 is refused here
        check_decoded_size(min(len(paths), max(cfg.batch_size, cfg.eval_batch_size)), channels,
                           side, side, f"a batch of image files at data.image_size={side}")
    crop = _crop(cfg, kind, native)
    if crop == "random_resized":
        why += (f"; crop random_resized (training: scale {list(cfg.crop_scale)} at full "
                f"resolution; evaluation: resize + centre crop {cfg.center_crop:g})")
    return StoreChoice(kind, crop, f"storage: {kind}{why}")


def _crop(cfg: DataConfig, kind: str, native: int) -> str:
    """``data.crop`` resolved: random_resized for stored files at least twice the input size."""
    if cfg.crop == "random_resized":
        if kind == "memory":
            raise DataError("data.crop=random_resized draws crops from the image files at full "
                            "resolution; the memory store holds them resized once: set "
                            "data.storage=files (or data.crop=resize)")
        if cfg.size is None:
            raise DataError("data.crop=random_resized needs the input size: set "
                            "data.image_size=N (e.g. 224)")
        return "random_resized"
    if cfg.crop == "auto" and kind == "files" and cfg.size is not None and native >= 2 * cfg.size:
        return "random_resized"
    return "resize"
