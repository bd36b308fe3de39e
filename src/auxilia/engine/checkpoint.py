"""Atomic checkpoints that load without unpickling arbitrary objects."""

from __future__ import annotations

import os
import random
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auxilia.models.weights import describe_load_error
from auxilia.paths import regular_file

TEMPORARY_GLOB = ".*.tmp"
"""Names of the temporaries :func:`atomic_write` creates; a crash may leave one behind."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, named in the message."""


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


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Atomically save ``state`` (tensors, numbers, strings, lists and dicts only)."""
    atomic_write(path, lambda f: torch.save(state, f))


def _traced(members: list[str]) -> bool:
    """Whether a zip archive's member names are those of a TorchScript export."""
    return any(m.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for m in members)


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript export (``auxilia export --format torchscript``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return _traced(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: no arbitrary code runs.

    The archive's CRC-32 checksums are verified first, so that flipped bytes in tensor data
    are refused rather than loaded.

    Raises:
        CheckpointError: the file is missing, empty, truncated, corrupted or holds foreign
            objects; the message names it.
    """
    p = regular_file(path, "checkpoint", CheckpointError)  # a FIFO or /dev/zero would block
    hint = "(truncated, corrupted, or not an auxilia checkpoint)"
    if p.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {p}: the file is empty (0 bytes) {hint}")
    try:
        with zipfile.ZipFile(p) as archive:
            damaged = archive.testzip()
            members = archive.namelist()
        if _traced(members):
            raise CheckpointError(f"{p} is an exported TorchScript model, not a training "
                                  "checkpoint: load it with torch.jit.load; auxilia eval and "
                                  "export take a run folder or its checkpoints/*.pt")
        if damaged is not None:
            raise CheckpointError(f"cannot read checkpoint {p}: member {damaged} fails its CRC "
                                  f"check {hint}")
        state = torch.load(p, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # a damaged file raises many types (KeyError, IndexError, ...)
        raise CheckpointError(f"cannot read checkpoint {p}: {describe_load_error(err)} "
                              f"{hint}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{p} is not an auxilia checkpoint (no 'model' entry)")
    return state


def rng_state() -> dict[str, Any]:
    """Every random generator the run draws from, in a weights-only-loadable form."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "gauss": [int(np_state[3]), float(np_state[4])]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["gauss"][0], np_state["gauss"][1]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple | list) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x
