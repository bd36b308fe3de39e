"""Atomic file writes: a temporary sibling, fsynced, then renamed over the target.

Every file auxilia writes (checkpoints, config, logs, plots, exports, markers) goes through
:func:`atomic_write` or :func:`atomic_write_path`, so that a crash leaves either the old file or
the new one, never a torn one. The module imports nothing of auxilia: the report, the compare
plots and the engine all write through it, each from its own layer.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TEMPORARY_GLOB", "atomic_write", "atomic_write_path", "current_umask"]

TEMPORARY_GLOB = ".*.tmp"
"""Names of the temporaries :func:`atomic_write` creates; a crash may leave one behind."""


def atomic_write(path: Path, write: Callable[[Any], object]) -> None:
    """Write through ``write(file)`` into a temporary sibling, fsync, then rename over ``path``.

    A crash at any point leaves either the old file or the new one, never a torn one; a
    crash may leave a ``.<name>.*.tmp`` sibling behind (see :data:`TEMPORARY_GLOB`).

    ``write`` gets a binary file object whose failed writes are recorded: ``torch.save``
    reports a failed write as a ``RuntimeError`` (``enforce fail at inline_container.cc``),
    and the recorded ``OSError`` is the one raised instead.

    Raises:
        OSError: the write failed (e.g. no space left on device); the message names ``path``
            and ``path`` itself is unchanged.
    """
    def fill(fd: int, tmp: Path) -> None:
        with os.fdopen(fd, "wb") as f:
            _write_through(f, write)
            f.flush()
            os.fsync(f.fileno())

    _replace(path, fill)


def atomic_write_path(path: Path, write: Callable[[Path], object]) -> None:
    """:func:`atomic_write` for writers that take a path only (``torch.onnx.export``).

    ``write(tmp)`` writes the temporary sibling ``tmp``; it is then fsynced and renamed.

    Raises:
        OSError: as :func:`atomic_write`.
    """
    def fill(fd: int, tmp: Path) -> None:
        os.close(fd)
        write(tmp)
        sync_fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(sync_fd)
        finally:
            os.close(sync_fd)

    _replace(path, fill)


def current_umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace(path: Path, fill: Callable[[int, Path], None]) -> None:
    """Create a temporary sibling of ``path``, ``fill(fd, tmp)`` it, rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600, made the user's usual mode
        fill(fd, Path(tmp))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _named(err, f"cannot write {path}", "the previous file is unchanged") from err
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise _named(err, f"wrote {path} but cannot sync its folder",
                     "the new file may not survive a power loss") from err


class _RecordingFile:
    """A file object that keeps the first ``OSError`` its ``write`` or ``flush`` raised."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:  # fileno, tell, seek, ... of the real file
        return getattr(self._file, name)


def _write_through(file: Any, write: Callable[[Any], object]) -> None:
    """``write(file)``, raising the file's own ``OSError`` when the writer hid or replaced it."""
    recorder = _RecordingFile(file)
    try:
        write(recorder)
    except Exception as err:
        if recorder.error is None:
            raise
        raise recorder.error from err
    if recorder.error is not None:  # swallowed by the writer: the file is incomplete
        raise recorder.error


def _named(err: OSError, what: str, consequence: str) -> OSError:
    """``err`` again (same class and errno), its message naming the file and the consequence."""
    reason = err.strerror or str(err) or type(err).__name__
    message = f"{what}: {reason}; {consequence}"
    return type(err)(err.errno, message) if err.errno is not None else type(err)(message)
