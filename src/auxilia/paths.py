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


_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"), (b"\xef\xbb\xbf", "utf-8"))
"""Byte-order marks, UTF-32's first: its little-endian mark starts with UTF-16's."""


def decode_text(raw: bytes, where: str, error: type[Exception] = ValueError) -> str:
    """Decodes a text file: UTF-8 (optional BOM), or UTF-16/UTF-32 announced by a BOM.

    Args:
        raw: the file's bytes.
        where: how the message starts, naming the file (``"FILE:"``, ``"train CSV FILE is"``).
        error: the exception class raised (``ConfigError``, ``DataError``, ...).

    Returns:
        The text, without its byte-order mark.

    Raises:
        Exception: an ``error``: ``<where> not UTF-8 text (byte 0x.. at position N); save it
            as UTF-8``. A NUL byte counts as not UTF-8: it is how UTF-16 without a BOM looks.
    """
    bom, encoding = next(((b, e) for b, e in _BOMS if raw.startswith(b)), (b"", "utf-8"))
    nul = raw.find(b"\x00", len(bom)) if encoding == "utf-8" else -1
    try:  # up to the first NUL: whichever bad byte comes first is the one named
        text = raw[len(bom):nul if nul >= 0 else None].decode(encoding)
    except UnicodeDecodeError as err:
        name = ("UTF-8 text" if encoding == "utf-8"
                else f"{encoding[:6].upper()} text despite its byte-order mark")
        at = len(bom) + err.start
        raise error(f"{where} not {name} (byte 0x{raw[at]:02x} at position {at}); "
                    "save it as UTF-8") from None
    if nul >= 0:
        raise error(f"{where} not UTF-8 text (byte 0x00 at position {nul}); save it as UTF-8")
    return text


def beside(file: Path, value: str | None) -> Path | None:
    """A path a file names (a sweep's or a pipeline's ``base``): as given when absolute (``~``
    expanded), else relative to the file's folder; None stays None."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else file.parent / path
