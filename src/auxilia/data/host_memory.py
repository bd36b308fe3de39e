"""Free host memory, and the decoded dataset checked against it before it is allocated.

Every split is held in memory as ``uint8`` ``N x C x H x W``: an image size that does not fit
would make the loader allocate until the machine swaps or the kernel kills it. The check
(:func:`check_decoded_size`) runs before decoding or resizing, with a one-line error naming
the keys to lower. The engine's step estimate (:mod:`auxilia.engine.memory`) reads the same
free memory through :func:`cpu_available_bytes`.
"""

from __future__ import annotations

import os
from pathlib import Path

from auxilia.data.errors import DataError

__all__ = ["CGROUP", "GiB", "check_decoded_size", "cpu_available_bytes", "gib"]

GiB = 2**30

CGROUP = Path("/sys/fs/cgroup")
"""The cgroup v2 folder of this process: in a container, its memory limit is the real one."""


def cpu_available_bytes(cgroup: Path = CGROUP) -> int | None:
    """Host memory free for this process, or None when it cannot be told.

    ``MemAvailable`` of ``/proc/meminfo`` (else ``os.sysconf``), lowered to what the cgroup's
    limit leaves (containers; reclaimable page cache counts as free).

    Args:
        cgroup: the cgroup v2 folder to read the limit from.
    """
    candidates = [n for n in (_meminfo_available(), _cgroup_available(cgroup)) if n is not None]
    return min(candidates) if candidates else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_available(cgroup: Path) -> int | None:
    """``memory.max`` minus the unreclaimable part of ``memory.current``; None if unlimited."""
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((cgroup / "memory.current").read_text())
        stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
        return max(0, int(limit) - used + int(stat.get("inactive_file", 0)))
    except (OSError, ValueError):
        return None


def check_decoded_size(n_images: int, channels: int, height: int, width: int, what: str, *,
                       working_bytes: int = 0,
                       fix: str = "lower data.image_size (or load fewer images)") -> None:
    """Refuses to decode images whose ``uint8`` array would not fit in host memory.

    Call it before allocating the ``N x C x H x W`` array (decoding, resizing). When the free
    memory cannot be read, nothing is checked.

    Args:
        n_images: images to hold.
        channels, height, width: shape of one decoded image.
        what: what is decoded, with the keys that size it, e.g.
            ``"digits resized to data.image_size=4096"``.
        working_bytes: memory needed on top while the array is produced (e.g. a float32
            buffer of the images being resized).
        fix: what the user can change, ending the message.

    Raises:
        DataError: ``<what>: 1,797 images of 1x4096x4096 need 28 GiB in memory as uint8, but
            21 GiB is available; lower data.image_size (or load fewer images)``.
    """
    need = n_images * channels * height * width
    free = cpu_available_bytes() if need + working_bytes else None
    if free is None or need + working_bytes <= free:
        return
    extra = f" (and {gib(working_bytes)} more while converting)" if working_bytes else ""
    raise DataError(f"{what}: {n_images:,} images of {channels}x{height}x{width} need "
                    f"{gib(need)} in memory as uint8{extra}, but {gib(free)} is available; {fix}")


def gib(n: int | float) -> str:
    """``12 MiB``, ``1.3 GiB``, ``21 GiB``, ``1,234 GiB``."""
    size = n / GiB
    if size < 1:
        return f"{n / 2**20:,.0f} MiB"
    return f"{size:,.1f} GiB" if size < 10 else f"{size:,.0f} GiB"
