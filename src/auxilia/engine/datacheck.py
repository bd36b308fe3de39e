"""A run knows its data: the fingerprint beside the run, checked on resume, eval and export.

Every checkpoint stores the data's fingerprint (:func:`auxilia.data.identity.identity`) and the
run folder's ``data.json`` holds it with the per-sample listing. ``--resume``, ``auxilia eval``
and ``auxilia export`` rebuild the data and refuse it when the fingerprint differs, saying what
changed (which files were added, removed, changed or moved when ``data.json`` is there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from auxilia import jsonio
from auxilia.atomic_files import atomic_write
from auxilia.data.identity import describe_changes, listing, same
from auxilia.data.types import DatasetSplits

__all__ = ["DataChangedError", "check_same_data", "read_data_listing", "write_data_identity"]


class DataChangedError(ValueError):
    """The data differs from the data the run was trained on; the message says how."""


def write_data_identity(path: Path, data: DatasetSplits) -> None:
    """Write ``data.json``: the fingerprint and the per-sample listing of every split."""
    text = jsonio.dumps({"identity": data.identity, "files": listing(data)}).encode() + b"\n"
    atomic_write(path, lambda f: f.write(text))


def read_data_listing(path: Path) -> dict[str, list[list[str]]] | None:
    """The per-sample listing of a ``data.json``, or None when it is missing or unreadable."""
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) else None


def check_same_data(checkpoint: dict[str, Any], data: DatasetSplits, run_dir: Path | None,
                    action: str = "resume") -> str | None:
    """Refuse ``data`` unless it has the fingerprint stored in ``checkpoint``.

    Args:
        checkpoint: a loaded checkpoint (its ``"data"`` entry is the fingerprint).
        data: the data rebuilt from the checkpoint's config.
        run_dir: the run folder (for ``data.json``'s listing), if known.
        action: what is refused, for the message (``"resume"``, ``"evaluate"``, ``"export"``).

    Returns:
        A note when the checkpoint predates fingerprints (nothing could be checked), else None.

    Raises:
        DataChangedError: the fingerprints differ; the message says what changed.
    """
    stored = checkpoint.get("data")
    if not isinstance(stored, dict) or data.identity is None:
        return "the checkpoint holds no data fingerprint (an earlier auxilia); data not checked"
    if same(stored, data.identity):
        return None
    old_files = read_data_listing(run_dir / "data.json") if run_dir is not None else None
    changes = describe_changes(stored, data.identity, old_files,
                               listing(data) if old_files is not None else None)
    root = checkpoint.get("config", {}).get("data", {}).get("root")
    raise DataChangedError(
        f"cannot {action}: the data differs from the data the run was trained on "
        f"(data.root={root!r}): {changes}. Restore the original data, or train a new run "
        "on the new data")
