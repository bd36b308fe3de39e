"""Indexing image files without keeping their pixels: content keys and sizes, cached.

The file store (:mod:`auxilia.data.file_images`) needs, for every file, what the memory store
gets from decoding it: the content key of its bytes (duplicates, test-leak checks, the data's
fingerprint), whether it can be read, and its size in pixels. :func:`index_files` streams each
file once (BLAKE2b of its bytes, PIL's header for the size: the pixels are not decoded) in
worker processes, shows its progress on a large folder, and caches the result by
``(path, size in bytes, mtime)`` so that a second run on the same folder reads no file again.

The cache lives in ``$AUXILIA_CACHE_DIR`` (default ``$XDG_CACHE_HOME/auxilia`` or
``~/.cache/auxilia``), one file per folder indexed, written atomically; a changed file has
another size or mtime and is read again. A cache that cannot be written is skipped, with a
note.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from auxilia.atomic_files import atomic_write
from auxilia.data.decode import read_regular

__all__ = ["IndexedFiles", "cache_dir", "index_files"]

_VERSION = 1
_PROGRESS_FROM = 5000  # files: below this, indexing is quick enough to be silent
_PROGRESS_EVERY = 2.0  # seconds between progress lines


@dataclass
class IndexedFiles:
    """What :func:`index_files` learned about each file, in the order given.

    Attributes:
        keys: ``int64 [N]`` content key of the bytes (0 when unreadable).
        sizes: ``int64 [N]`` size in bytes.
        heights, widths: ``int64 [N]`` size in pixels (0 when unreadable).
        errors: ``""`` per readable file, else why not.
        cached: how many came from the cache.
    """

    keys: np.ndarray
    sizes: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    errors: list[str]
    cached: int = 0
    notes: list[str] = field(default_factory=list)


def cache_dir() -> Path:
    """Where indexes are cached: ``$AUXILIA_CACHE_DIR``, else the user's cache folder."""
    if os.environ.get("AUXILIA_CACHE_DIR"):
        return Path(os.environ["AUXILIA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "auxilia"


def _index_one(path: str) -> tuple[int, int, int, int, str]:
    """``(key, bytes, height, width, error)`` of one file: its bytes hashed, its header read."""
    data = b""
    try:
        data = read_regular(path)
        key = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little",
                             signed=True)  # as files.content_key
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
        return key, len(data), height, width, ""
    except Exception as exc:  # PIL raises many types on unreadable files
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return 0, len(data), 0, 0, why


def index_chunk(paths: Sequence[str]) -> list[tuple[int, int, int, int, str]]:
    """:func:`_index_one` over a chunk of files (runs in worker processes)."""
    return [_index_one(p) for p in paths]


def _stamp(path: str) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file, ``(-1, -1)`` when it cannot be stat'ed."""
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def _cache_file(paths: Sequence[str]) -> Path:
    folder = os.path.commonpath([os.path.abspath(p) for p in (paths[0], paths[-1])])
    digest = hashlib.blake2b(folder.encode(), digest_size=10).hexdigest()
    return cache_dir() / f"file-index-v{_VERSION}" / f"{digest}.npz"


def _load_cache(path: Path) -> dict[str, tuple[int, int, int, int, int]]:
    """path → (size, mtime_ns, key, height, width), or empty when absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            rows = np.stack([z["size"], z["mtime"], z["key"], z["height"], z["width"]], 1)
            return dict(zip(z["path"].tolist(), map(tuple, rows.tolist()), strict=True))
    except (OSError, ValueError, KeyError):
        return {}


def _save_cache(path: Path, table: dict[str, tuple[int, int, int, int, int]]) -> str | None:
    """Writes the cache atomically; the reason when it could not be written."""
    names = list(table)
    rows = np.array([table[n] for n in names], dtype=np.int64).reshape(-1, 5)
    arrays = {"path": np.array(names, dtype=str), "size": rows[:, 0], "mtime": rows[:, 1],
              "key": rows[:, 2], "height": rows[:, 3], "width": rows[:, 4]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as exc:
        return f"the file index cache {path} could not be written ({exc}); set " \
               "AUXILIA_CACHE_DIR to a writable folder to start the next run faster"
    return None


def index_files(paths: Sequence[str], run_chunks: Callable[[list[str]], list[list]],
                *, what: str = "image files") -> IndexedFiles:
    """Content keys, byte sizes and pixel sizes of ``paths``, from the cache when unchanged.

    Args:
        paths: the files (absolute or relative to the working folder).
        run_chunks: maps :func:`index_chunk` over chunks of a list of paths, in order, yielding
            each chunk's result as it completes (a process pool, or in-process).
        what: what the files are, for the progress line.
    """
    paths = [str(p) for p in paths]
    n = len(paths)
    out = (np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64),
           np.zeros(n, np.int64))
    errors = [""] * n
    if not n:
        return IndexedFiles(*out, errors)
    cache_path = _cache_file(paths)
    cache = _load_cache(cache_path)
    stamps = [_stamp(p) for p in paths]
    absolute = [os.path.abspath(p) for p in paths]
    todo = []
    for i, (p, stamp) in enumerate(zip(absolute, stamps, strict=True)):
        hit = cache.get(p)
        if hit is not None and stamp[0] >= 0 and hit[:2] == stamp:
            out[0][i], out[1][i], out[2][i], out[3][i] = hit[2], stamp[0], hit[3], hit[4]
        else:
            todo.append(i)
    done, start, shown = 0, time.monotonic(), 0.0
    for results in run_chunks([paths[i] for i in todo]):
        for i, (key, size, h, w, why) in zip(todo[done:], results, strict=False):
            out[0][i], out[1][i], out[2][i], out[3][i], errors[i] = key, size, h, w, why
            if not why and stamps[i][0] >= 0:
                cache[absolute[i]] = (*stamps[i], key, h, w)
        done += len(results)
        now = time.monotonic()
        if len(todo) >= _PROGRESS_FROM and (now - shown >= _PROGRESS_EVERY or done == len(todo)):
            shown = now
            print(f"indexing {what}: {done:,}/{len(todo):,} read ({n - len(todo):,} cached), "
                  f"{now - start:.0f} s", file=sys.stderr, flush=True)
    notes = []
    if todo:
        failed = _save_cache(cache_path, cache)
        notes = [failed] if failed else []
    return IndexedFiles(*out, errors, cached=n - len(todo), notes=notes)
