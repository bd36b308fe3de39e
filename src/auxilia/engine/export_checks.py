"""Checks an export makes before it writes anything, and the undo of one that fails.

``--out /dev/full`` used to become ``/dev/full.pt``, a new file in the device folder (created as
root), and a FIFO would block the exporter; so a special file (device, FIFO, socket) or a path
in the kernel's trees (:data:`SYSTEM_TREES`) is refused before anything is written. A format
whose package is missing is refused with the command that installs it.

An export that fails once it writes (an exporter error, a full disk, Ctrl-C) is undone by
:func:`all_or_nothing`: the files it replaced are put back, the files and folders it created are
removed, so a failed ``auxilia export`` never leaves an empty ``export/`` folder, a model without
its description, or a description of a model that is not there.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["FILE_TREES", "FORMAT_PACKAGES", "SYSTEM_TREES", "all_or_nothing", "check_out",
           "check_packages"]

SYSTEM_TREES = (Path("/dev"), Path("/proc"), Path("/sys"))
"""Folders of devices and kernel files: nothing auxilia writes belongs there."""

FILE_TREES = (Path("/dev/shm"),)
"""Inside :data:`SYSTEM_TREES` but plain file systems (tmpfs), where files may go."""

FORMAT_PACKAGES: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "onnx>=1.15,<2"),  # torch.onnx.export imports it to write the graph
    "state_dict": ("safetensors", "safetensors>=0.4"),
}
"""Per format, the module it imports and its requirement (as in ``pyproject.toml``)."""

_KINDS = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def check_out(path: str | os.PathLike[str], given: str | os.PathLike[str] | None,
              error: type[Exception] = ValueError) -> None:
    """Refuse ``path``, a file an export would write, when it is no place for one.

    Checked with ``os.stat`` (never opened): an existing FIFO, device or socket, or any path in
    :data:`SYSTEM_TREES` (outside :data:`FILE_TREES`), also through a symbolic link. A missing
    path, a regular file and a folder pass (what happens to them is decided elsewhere).

    Args:
        path: the file (or ``--out`` itself, before a suffix or ``model.<suffix>`` is added).
        given: ``--out`` as the user wrote it, or None for the default place.
        error: the exception class raised (``ExportError``).

    Raises:
        Exception: an ``error`` naming ``--out``, what the path is, and the fix.
    """
    p = Path(path)
    name = "the export file" if given is None else "--out"
    shown = p if given is None else given if Path(given) == p else f"{given} ({p})"
    fix = "give --out a file name in a folder of yours (e.g. --out exports/model) or a folder"
    kind = _special_kind(p)
    if kind:
        raise error(f"{name} {shown} is a {kind}, not a regular file or folder; {fix}")
    tree = _system_tree(p)
    if tree is not None:
        raise error(f"{name} {shown} is in {tree}, where the kernel keeps devices and its own "
                    f"files, not exports; {fix}")


def _special_kind(path: Path) -> str:
    """What ``path`` is when it exists and is neither a regular file nor a folder, else ``""``."""
    try:
        mode = os.stat(path).st_mode  # follows links: a link to /dev/null is a device
    except (OSError, ValueError):
        return ""  # missing (or unreadable): the write itself names the problem
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return ""
    return next((name for test, name in _KINDS if test(mode)), "special file")


def _system_tree(path: Path) -> Path | None:
    """The system tree ``path`` lies in, as written or with its links resolved, or None."""
    for spelling in {Path(os.path.abspath(path)), Path(os.path.realpath(path))}:
        if any(spelling.is_relative_to(tree) for tree in FILE_TREES):
            continue
        tree = next((t for t in SYSTEM_TREES if spelling.is_relative_to(t)), None)
        if tree is not None:
            return tree
    return None


def check_packages(fmt: str) -> None:
    """Refuse ``fmt`` when the package its writer imports cannot be imported here.

    Raises:
        ImportError: ``--format onnx needs the onnx package, which this Python cannot import
            (...); install auxilia's dependencies: ...``, naming this interpreter so that the
            package lands in the environment auxilia runs in.
    """
    if fmt not in FORMAT_PACKAGES:
        return
    module, requirement = FORMAT_PACKAGES[fmt]
    try:
        importlib.import_module(module)
    except ImportError as err:  # ModuleNotFoundError, or a broken install of it
        python = sys.executable or "python"
        raise ImportError(
            f"--format {fmt} needs the {module} package, which this Python cannot import "
            f"({type(err).__name__}: {err}); install auxilia's dependencies: {python} -m pip "
            "install -c constraints.txt -e . (in the auxilia checkout: the tested versions), or "
            f"the package alone: {python} -m pip install '{requirement}'") from None


@contextlib.contextmanager
def all_or_nothing(*files: Path) -> Iterator[None]:
    """Create the folders of ``files``; if the block fails, leave everything as it was before.

    Each existing file is kept aside first as a hard link (a copy where the file system has
    none), named like :func:`~auxilia.atomic_files.atomic_write`'s temporaries
    (``.<name>.*.tmp``). On any exception, ``KeyboardInterrupt`` included, the kept files are
    renamed back, files that did not exist are removed, and the folders created here are removed
    again when nothing else was put in them. On success the kept copies are deleted.

    Args:
        files: the files the block writes (each with an atomic rename, so a kept file is never
            written through).

    Raises:
        BaseException: whatever the block raised, after the undo.
    """
    created = [folder for file in files for folder in _missing_folders(file.parent)]
    kept: dict[Path, Path | None] = {}
    try:
        for file in files:
            file.parent.mkdir(parents=True, exist_ok=True)
            kept[file] = _keep_aside(file)
        yield
    except BaseException:
        _undo(kept, created)
        raise
    for aside in kept.values():
        if aside is not None:
            aside.unlink(missing_ok=True)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its missing parents, deepest first, when ``folder`` does not exist."""
    missing = []
    while not os.path.lexists(folder) and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _keep_aside(file: Path) -> Path | None:
    """A hard link to (or copy of) ``file`` beside it, or None when there is no ``file``."""
    if not os.path.lexists(file):
        return None
    aside = file.with_name(f".{file.name}.{secrets.token_hex(4)}.previous.tmp")
    try:
        os.link(file, aside, follow_symlinks=False)
    except OSError:  # a file system without hard links
        shutil.copy2(file, aside, follow_symlinks=False)
    return aside


def _undo(kept: dict[Path, Path | None], created: list[Path]) -> None:
    """Put the kept files back, remove new ones, then the created folders that are empty."""
    for file, aside in kept.items():
        with contextlib.suppress(OSError):  # the undo must not hide the original failure
            if aside is not None:
                os.replace(aside, file)
                aside.unlink(missing_ok=True)  # a rename onto a link of itself does nothing
            else:
                file.unlink(missing_ok=True)
    for folder in dict.fromkeys(created):  # deepest first; a folder holding other files stays
        try:
            folder.rmdir()
        except OSError:
            break
