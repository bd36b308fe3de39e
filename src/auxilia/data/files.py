"""Reading and decoding image files, for the ``folder`` and ``csv`` sources.

Files are read once and decoded with PIL from memory, in a process pool when there are many of
them (:func:`decode_files`); each file's bytes also give its content key, so that identical
files are recognised (:mod:`auxilia.data.hygiene`). The sources themselves live in
:mod:`auxilia.data.folders`.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auxilia.data.config import DataConfig
from auxilia.data.decode import decode_resized, read_regular
from auxilia.data.file_images import FileImages
from auxilia.data.file_index import index_chunk, index_files
from auxilia.data.host_memory import check_decoded_size
from auxilia.data.raw import DataError, RawData
from auxilia.data.storage import StoreChoice, choose_store
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
            data = read_regular(path)
            images.append(decode_resized(data, mode, None if size is None else (size, size)))
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


def cpu_count() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _num_workers(cfg: DataConfig) -> int:
    """Processes decoding or indexing files: ``data.num_workers``, every core for ``auto``,
    in-process (1) for 0."""
    return cpu_count() if cfg.num_workers == "auto" else max(1, cfg.num_workers)


def _map_chunks(paths: list[str], work: Callable[[list[str]], Any], workers: int
                ) -> Iterator[Any]:
    """``work`` over chunks of ``paths``, in order, in a process pool when there are enough
    of them; each chunk's result is yielded as it completes."""
    if workers <= 1 or len(paths) < _SERIAL_DECODE_BELOW:
        if paths:
            yield work(paths)
        return
    step = max(64, min(1024, -(-len(paths) // (workers * 8))))
    chunks = [paths[i : i + step] for i in range(0, len(paths), step)]
    fork = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if fork else None)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            yield from pool.map(work, chunks)
    except BrokenProcessPool:
        raise DataError(
            f"a process reading the {len(paths)} image files (from {paths[0]} on) died, e.g. "
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
        images: ``uint8`` ``[K, C, H, W]``, one per kept file, in order: a tensor, or the
            file store's index view (:class:`~auxilia.data.file_images.FileImages`).
        kept: boolean ``[N]`` over the input paths: which files were decoded.
        keys: ``int64`` ``[N]`` content key of each file's bytes (:func:`content_key`).
        sizes: ``int64`` ``[N]`` size of each file in bytes.
        notes: what was skipped, for the run's notes.
    """

    images: torch.Tensor | FileImages
    kept: torch.Tensor
    keys: torch.Tensor
    sizes: torch.Tensor
    notes: list[str]


def decode_images(paths: Sequence[Path | str], cfg: DataConfig
                  ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(images, kept, notes)`` of :func:`decode_files`."""
    decoded = decode_files(paths, cfg)
    return decoded.images, decoded.kept, decoded.notes


def decode_files(paths: Sequence[Path | str], cfg: DataConfig,
                 store: StoreChoice | None = None) -> DecodedFiles:
    """Reads image files into a store: decoded to ``uint8`` ``[N, C, H, W]`` (RGB, or L with
    grayscale) by the memory store, indexed (:mod:`auxilia.data.file_index`) by the file store.

    Each file is read once: its bytes give the content key (identical files, identical keys)
    and are decoded from memory (the memory store) or only their header is (the file store).
    Special files (FIFOs, devices) are refused, never read.

    Args:
        paths: image files.
        cfg: uses ``grayscale``, ``image_size``, ``num_workers`` and ``on_bad_image``.
        store: the store and its crop (:func:`~auxilia.data.storage.choose_store`); None is
            the memory store.

    Raises:
        DataError: an unreadable file with ``on_bad_image="fail"``; sizes that differ without
            ``image_size``; :class:`NoReadableImage` (with ``bad``) when no file can be read.
    """
    str_paths = [str(p) for p in paths]
    if store is not None and store.kind == "files":
        return _index_to_files(str_paths, cfg, store)
    if cfg.size is not None:
        check_decoded_size(len(str_paths), 1 if cfg.grayscale else 3, cfg.size, cfg.size,
                           f"{len(str_paths)} image files at data.image_size={cfg.size}",
                           fix="lower data.image_size, or set data.storage=files to read them "
                               "from disk as batches need them")
    decode = partial(_decode_chunk, mode="L" if cfg.grayscale else "RGB", size=cfg.size)
    results = list(_map_chunks(str_paths, decode, _num_workers(cfg)))
    errors = [e for r in results for e in r[1]]
    kept, notes = _kept(str_paths, errors, cfg)
    keys = torch.tensor([k for r in results for k in r[2]], dtype=torch.int64)
    sizes = torch.tensor([n for r in results for n in r[3]], dtype=torch.int64)
    return DecodedFiles(_stack(results, str_paths), kept, keys, sizes, notes)


def _kept(paths: list[str], errors: list[str], cfg: DataConfig) -> tuple[torch.Tensor, list[str]]:
    """``(kept [N] bool, notes)``: which files were read, under ``data.on_bad_image``."""
    bad = [(p, e) for p, e in zip(paths, errors, strict=True) if e]
    notes: list[str] = []
    if bad and cfg.on_bad_image == "fail":
        listing = "; ".join(f"{p} ({e})" for p, e in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        message = (f"cannot decode {len(bad)} image file(s): {listing}{more}. Fix or remove "
                   "them, or set data.on_bad_image=skip to drop them")
        if len(bad) == len(paths):
            raise NoReadableImage(message, bad)
        raise DataError(message)
    if bad:
        names = ", ".join(p for p, _ in bad[:10]) + (", ..." if len(bad) > 10 else "")
        notes.append(f"skipped {len(bad)} undecodable images: {names}")
        warnings.warn(notes[-1], stacklevel=4)
    kept = torch.tensor([not e for e in errors], dtype=torch.bool)
    if not bool(kept.any()):
        raise NoReadableImage(f"none of the {len(paths)} image files could be decoded", bad)
    return kept, notes


def _index_to_files(paths: list[str], cfg: DataConfig, store: StoreChoice) -> DecodedFiles:
    """The file store of ``paths``: every file indexed (key, size; its pixels not decoded)."""
    index = index_files(paths, partial(_map_chunks, work=index_chunk, workers=_num_workers(cfg)))
    kept, notes = _kept(paths, index.errors, cfg)
    rows = kept.numpy()
    if cfg.size is not None:
        height = width = cfg.size
    else:  # native: one size is needed to stack a batch, as in memory
        shapes = sorted({(int(h), int(w)) for h, w in zip(index.heights[rows], index.widths[rows],
                                                         strict=True)})
        if len(shapes) > 1:
            first = next(i for i in range(len(paths)) if rows[i])
            odd = next(i for i in range(len(paths)) if rows[i] and (
                index.heights[i], index.widths[i]) != (index.heights[first], index.widths[first]))
            raise DataError(
                f"images differ in size: {index.widths[first]}x{index.heights[first]} "
                f"({paths[first]}) vs {index.widths[odd]}x{index.heights[odd]} ({paths[odd]}); "
                "set data.image_size=... (e.g. data.image_size=32) to resize every image to "
                "one square size")
        height, width = shapes[0]
    absolute = np.array([os.path.abspath(p) for p in paths], dtype=object)  # whatever the cwd
    images = FileImages(absolute[rows], store.decoding(cfg, height, width))
    return DecodedFiles(images, kept, torch.from_numpy(index.keys),
                        torch.from_numpy(index.sizes), [*notes, *index.notes])


def _files_to_raw(groups: dict[str, tuple[list[Path], list[int]]], classes: list[str],
                  cfg: DataConfig, anchor: Path) -> RawData:
    """Decodes the files of every split at once (one pool) and builds :class:`RawData`.

    Samples are named by their path relative to ``anchor`` (the data root), so that a run's
    fingerprint does not change when the whole dataset moves.
    """
    all_paths = [p for paths, _ in groups.values() for p in paths]
    store = choose_store(cfg, all_paths)
    decoded = decode_files(all_paths, cfg, store)
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
                   files={name: [str(p) for p in paths] for name, (paths, _) in groups.items()},
                   store=store)
