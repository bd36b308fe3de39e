"""Normalisation statistics of a training split, whatever its store."""

from __future__ import annotations

import hashlib
import json

import torch

from auxilia.atomic_files import atomic_write
from auxilia.data.file_images import FileImages
from auxilia.data.file_index import cache_dir
from auxilia.data.types import Split

__all__ = ["STATS_SAMPLE", "channel_stats", "split_stats"]

STATS_SAMPLE = 2000
"""Images of the file store the normalisation statistics are computed on (evenly spread)."""


def split_stats(split: Split) -> tuple[tuple[float, ...], ...]:
    """:func:`channel_stats` of a training split. The file store's: of :data:`STATS_SAMPLE`
    images evenly spread over it (all of a smaller split: then the same as the memory
    store's), decoded as evaluation decodes them, cached by their content keys."""
    if not isinstance(split.images, FileImages):
        return channel_stats(split.images)
    rows = torch.linspace(0, len(split) - 1, min(len(split), STATS_SAMPLE)).long().unique()
    keys = split.keys[rows].numpy().tobytes() if split.keys is not None else b""
    digest = hashlib.blake2b(keys + repr(split.images.decoding).encode(), digest_size=12)
    cached = cache_dir() / "stats" / f"{digest.hexdigest()}.json"
    try:
        mean, std = json.loads(cached.read_text())
        return tuple(mean), tuple(std)
    except (OSError, ValueError):
        pass
    stats = channel_stats(torch.cat([split.images.read(rows[i : i + 256])  # bounded memory
                                     for i in range(0, len(rows), 256)]))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, lambda f: f.write(json.dumps(stats).encode()))
    except OSError:
        pass  # the index cache says so when the folder cannot be written
    return stats


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std (population) of ``uint8`` images, in ``[0, 1]`` units.

    Args:
        images: ``uint8`` ``[N, C, H, W]``.
        chunk: images converted to float at a time (bounds the memory used).

    Returns:
        ``(mean, std)``, each a tuple of ``C`` floats.
    """
    c = images.shape[1]
    total, total_sq = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = max(images.shape[0] * images.shape[2] * images.shape[3], 1)
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
