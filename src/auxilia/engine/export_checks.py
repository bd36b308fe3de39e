"""Checks an export makes before it writes anything: where it writes, and what it needs.

``--out /dev/full`` used to become ``/dev/full.pt``, a new file in the device folder (created as
root), and a FIFO would block the exporter; so a special file (device, FIFO, socket) or a path
in the kernel's trees (:data:`SYSTEM_TREES`) is refused before anything is written. A format
whose package is missing is refused with the command that installs it.
"""

from __future__ import annotations

import importlib
import os
import stat
import sys
from pathlib import Path

__all__ = ["FILE_TREES", "FORMAT_PACKAGES", "SYSTEM_TREES", "check_out", "check_packages"]

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
