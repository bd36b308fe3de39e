"""Reading and decoding image files, for the ``folder`` and ``csv`` sources.

Files are read once and decoded with PIL from memory, in a process pool when there are many of
them (:func:`decode_files`); each file's bytes also give its content key, so that identical
files are recognised (:mod:`auxilia.data.hygiene`). The sources themselves live in
:mod:`auxilia.data.folders`.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import stat
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from auxilia.data.config import DataConfig
from auxilia.data.host_memory import check_decoded_size
from auxilia.data.raw import DataError, RawData
from auxilia.data.types import Split

__all__ = ["IMAGE_EXTENSIONS", "DecodedFiles", "NoReadableImage", "content_key", "decode_files",
           "decode_images"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm"})
_SERIAL_DECODE_BELOW = 2048  # fewer files than this decode in-process: a pool costs more


Decoded = tuple[np.ndarray | list[np.ndarray], list[str], list[int], list[int]]
"""What :func:`_decode_chunk` returns for a chunk of files: images, errors, keys, sizes."""


def _decode_chunk(paths: Sequence[str], mode: str, size: int | None) -> Decoded:
    """Reads and decodes image files (runs in worker processes).

    Returns:
        ``(images, errors, keys, sizes)``: the decoded images in order, stacked
        ``[k, H, W(, C)]`` when they share one shape (a list otherwise); one error string per
        path (``""`` = decoded); per path the content key of its bytes (:func:`content_key`,
        0 when unreadable) and its size in bytes.
    """
    images: list[np.ndarray] = []
    errors, keys, sizes = [], [], []
    for path in paths:
        data = b""
        try:
            data = _read_regular(path)
            with Image.open(io.BytesIO(data)) as im:
                im = _to_8bit(im).convert(mode)
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                images.append(np.asarray(im))
            errors.append("")
        except Exception as exc:  # PIL raises many types on unreadable files
            errors.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        keys.append(content_key(data) if data else 0)
        sizes.append(len(data))
    if images and len({a.shape for a in images}) == 1:
        return np.stack(images), errors, keys, sizes
    return images, errors, keys, sizes


def content_key(data: bytes) -> int:
    """A 64-bit content hash (BLAKE2b) of ``data`` as a signed ``int64``: equal bytes, equal key."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def _read_regular(path: str) -> bytes:
    """The bytes of a regular file; FIFOs, devices and sockets are refused, never read.

    ``O_NONBLOCK`` keeps the open of a FIFO from waiting for a writer; the type is checked on
    the opened file, so it cannot change between the check and the read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                    or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "special")
            raise OSError(f"{kind}, not a regular file; refused")
        return f.read()


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scales 16-bit greyscale to ``L`` (``v / 257``, so 65535 becomes 255).

    16-bit means mode ``I;16*``, or mode ``I`` read from a PNG (older Pillow). PIL's own
    conversion of these modes clips every value above 255; other ``I`` files (32-bit TIFF)
    are left to it.
    """
    if not (im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG")):
        return im
    values = np.asarray(im).astype(np.float64)
    scaled = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


def _num_workers(cfg: DataConfig) -> int:
    if cfg.num_workers > 0:
        return cfg.num_workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _map_chunks(paths: list[str], mode: str, size: int | None, workers: int
                ) -> list[Decoded]:
    """Decodes ``paths`` in chunks, in a process pool when there are enough of them."""
    decode = partial(_decode_chunk, mode=mode, size=size)
    if workers <= 1 or len(paths) < _SERIAL_DECODE_BELOW:
        return [decode(paths)]
    step = max(64, min(1024, -(-len(paths) // (workers * 8))))
    chunks = [paths[i : i + step] for i in range(0, len(paths), step)]
    fork = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if fork else None)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            return list(pool.map(decode, chunks))
    except BrokenProcessPool:
        raise DataError(
            f"a process decoding the {len(paths)} image files (from {paths[0]} on) died, e.g. "
            "out of memory or a crash in an image decoder; set data.num_workers=1 to decode "
            "in-process and find the file") from None


def _stack(results: list[Decoded], paths: list[str]) -> torch.Tensor:
    """Stacks decoded chunks into ``uint8`` ``[N, C, H, W]``; differing sizes are an error."""
    arrays = [r[0] for r in results if len(r[0])]
    if all(isinstance(a, np.ndarray) for a in arrays) and len({a.shape[1:] for a in arrays}) == 1:
        stacked = np.concatenate(arrays)
    else:
        flat = [a for chunk in arrays for a in chunk]
        ok_paths = [p for p, e in zip(paths, (e for r in results for e in r[1]), strict=True)
                    if not e]
        odd = next((i for i, a in enumerate(flat) if a.shape != flat[0].shape), None)
        if odd is not None:
            (h0, w0), (h1, w1) = flat[0].shape[:2], flat[odd].shape[:2]
            raise DataError(
                f"images differ in size: {w0}x{h0} ({ok_paths[0]}) vs {w1}x{h1} "
                f"({ok_paths[odd]}); set data.image_size=... (e.g. data.image_size=32) to "
                "resize every image to one square size")
        stacked = np.stack(flat)
    t = torch.from_numpy(stacked)
    return (t.unsqueeze(1) if t.dim() == 3 else t.permute(0, 3, 1, 2)).contiguous()


class NoReadableImage(DataError):
    """Not one of the image files could be decoded; ``bad`` lists ``(path, why)`` of each, so
    that a caller can name the setting the files came from."""

    def __init__(self, message: str, bad: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.bad = bad


@dataclass
class DecodedFiles:
    """Image files decoded by :func:`decode_files`.

    Attributes:
        images: ``uint8`` ``[K, C, H, W]``, one per kept file, in order.
        kept: boolean ``[N]`` over the input paths: which files were decoded.
        keys: ``int64`` ``[N]`` content key of each file's bytes (:func:`content_key`).
        sizes: ``int64`` ``[N]`` size of each file in bytes.
        notes: what was skipped, for the run's notes.
    """

    images: torch.Tensor
    kept: torch.Tensor
    keys: torch.Tensor
    sizes: torch.Tensor
    notes: list[str]


def decode_images(paths: Sequence[Path | str], cfg: DataConfig
                  ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(images, kept, notes)`` of :func:`decode_files`."""
    decoded = decode_files(paths, cfg)
    return decoded.images, decoded.kept, decoded.notes


def decode_files(paths: Sequence[Path | str], cfg: DataConfig) -> DecodedFiles:
    """Reads and decodes image files to ``uint8`` ``[N, C, H, W]`` (RGB, or L with grayscale).

    Each file is read once: its bytes give the content key (identical files, identical keys)
    and are decoded from memory. Special files (FIFOs, devices) are refused, never read.

    Args:
        paths: image files.
        cfg: uses ``grayscale``, ``image_size``, ``num_workers`` and ``on_bad_image``.

    Raises:
        DataError: an undecodable file with ``on_bad_image="fail"``; sizes that differ without
            ``image_size``; :class:`NoReadableImage` (with ``bad``) when no file decodes.
    """
    str_paths = [str(p) for p in paths]
    if cfg.size is not None:
        check_decoded_size(len(str_paths), 1 if cfg.grayscale else 3, cfg.size, cfg.size,
                           f"{len(str_paths)} image files at data.image_size={cfg.size}")
    results = _map_chunks(str_paths, "L" if cfg.grayscale else "RGB", cfg.size,
                          _num_workers(cfg))
    errors = [e for r in results for e in r[1]]
    bad = [(p, e) for p, e in zip(str_paths, errors, strict=True) if e]
    notes: list[str] = []
    if bad and cfg.on_bad_image == "fail":
        listing = "; ".join(f"{p} ({e})" for p, e in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        message = (f"cannot decode {len(bad)} image file(s): {listing}{more}. Fix or remove "
                   "them, or set data.on_bad_image=skip to drop them")
        if len(bad) == len(str_paths):
            raise NoReadableImage(message, bad)
        raise DataError(message)
    if bad:
        names = ", ".join(p for p, _ in bad[:10]) + (", ..." if len(bad) > 10 else "")
        notes.append(f"skipped {len(bad)} undecodable images: {names}")
        warnings.warn(notes[-1], stacklevel=3)
    kept = torch.tensor([not e for e in errors], dtype=torch.bool)
    if not bool(kept.any()):
        raise NoReadableImage(f"none of the {len(str_paths)} image files could be decoded", bad)
    keys = torch.tensor([k for r in results for k in r[2]], dtype=torch.int64)
    sizes = torch.tensor([n for r in results for n in r[3]], dtype=torch.int64)
    return DecodedFiles(_stack(results, str_paths), kept, keys, sizes, notes)


def _files_to_raw(groups: dict[str, tuple[list[Path], list[int]]], classes: list[str],
                  cfg: DataConfig, anchor: Path) -> RawData:
    """Decodes the files of every split at once (one pool) and builds :class:`RawData`.

    Samples are named by their path relative to ``anchor`` (the data root), so that a run's
    fingerprint does not change when the whole dataset moves.
    """
    all_paths = [p for paths, _ in groups.values() for p in paths]
    decoded = decode_files(all_paths, cfg)
    kept = decoded.kept
    all_labels = torch.tensor([y for _, labels in groups.values() for y in labels],
                              dtype=torch.int64)
    all_names = np.array([os.path.relpath(p, anchor) for p in all_paths], dtype=object)
    position = torch.cumsum(kept.long(), 0) - 1  # row of each kept file in ``images``
    splits: dict[str, Split] = {}
    start = 0
    for name, (paths, _) in groups.items():
        sel = torch.arange(start, start + len(paths))
        sel = sel[kept[sel]]
        if len(sel) == 0:
            raise DataError(f"no {name} image could be decoded ({len(paths)} skipped; see the "
                            "warning for the files)")
        splits[name] = Split(decoded.images[position[sel]], all_labels[sel], decoded.keys[sel],
                             all_names[sel.numpy()])
        start += len(paths)
    counts = torch.bincount(splits["train"].labels, minlength=len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        raise DataError(f"class(es) {empty} have no decodable training image (every file was "
                        "skipped as undecodable); fix the files or remove the class")
    return RawData(splits["train"], classes, "natural", val=splits.get("val"),
                   test=splits.get("test"), notes=decoded.notes,
                   files={name: [str(p) for p in paths] for name, (paths, _) in groups.items()})
