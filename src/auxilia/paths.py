"""Checks on user-given paths before they are opened.

Opening a FIFO blocks until a writer appears, and reading ``/dev/zero`` or ``/dev/urandom``
never ends, so a path the user names is checked with ``os.stat`` (which never opens it) first.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def regular_file(path: str | os.PathLike[str], what: str,
                 error: type[Exception] | None = None) -> Path:
    """The path of a readable regular file, checked without opening it.

    Symbolic links are followed: a link to a regular file is accepted (``/dev/stdin``
    redirected from a file is one). Every message is one line naming ``what`` and the path.

    Args:
        path: the path to check.
        what: what the file is, for the message, e.g. ``"config file"`` or ``"image"``.
        error: the exception class to raise for every problem (e.g. ``ConfigError``,
            ``CheckpointError``, ``DataError``), called with the message. ``None`` raises the
            matching ``OSError`` subclass instead (see Raises).

    Returns:
        ``Path(path)``, unchanged (not resolved, so messages keep the user's spelling).

    Raises:
        FileNotFoundError: nothing at ``path`` (or a symbolic link to nothing):
            ``"<what> not found: PATH"``.
        IsADirectoryError: ``path`` is a directory.
        OSError: ``path`` is a FIFO, a character or block device or a socket
            (``"<what> PATH is a FIFO (named pipe), not a regular file; ..."``), or ``os.stat``
            failed otherwise (a symbolic-link loop, a name too long, a NUL byte).
        PermissionError: the file or a folder above it cannot be read.
        Exception: an instance of ``error`` instead of any of the above, when given.
    """
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        dangling = f" (a symbolic link to the missing {os.readlink(p)})" if p.is_symlink() else ""
        raise _fail(error, FileNotFoundError, f"{what} not found: {p}{dangling}") from None
    except PermissionError:
        raise _fail(error, PermissionError, f"cannot read {what} {p}: permission denied on a "
                                            "folder above it; fix its permissions") from None
    except (OSError, ValueError) as err:  # ELOOP, ENAMETOOLONG, ENOTDIR; ValueError: NUL byte
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise _fail(error, OSError, f"cannot read {what} {p}: {reason}") from None
    if stat.S_ISDIR(mode):
        raise _fail(error, IsADirectoryError,
                    f"{what} {p} is a directory, not a file; give the path of a file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "special file")
        raise _fail(error, OSError, f"{what} {p} is a {kind}, not a regular file; give the "
                                    "path of a regular file (save a stream to one first)")
    if not os.access(p, os.R_OK):
        raise _fail(error, PermissionError,
                    f"cannot read {what} {p}: permission denied; fix its permissions "
                    f"(e.g. chmod u+r {p})")
    return p


def _fail(error: type[Exception] | None, default: type[Exception], message: str) -> Exception:
    """The exception to raise: ``error(message)`` when given, else ``default(message)``."""
    return (error or default)(message)
