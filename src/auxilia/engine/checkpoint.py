"""Atomic checkpoints that load without unpickling arbitrary objects, and where a run's
checkpoints are: :func:`resolve_checkpoint` (a run folder or a checkpoint file), the run folder
of a checkpoint, the sweep or pipeline folder given where a run was expected."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from auxilia.atomic_files import atomic_write
from auxilia.engine.owned import folder_kind
from auxilia.engine.runfolder import MARKER
from auxilia.models.weights import describe_load_error
from auxilia.paths import regular_file


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, named in the message."""


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


def resolve_checkpoint(path: str | Path, which: str = "best",
                       advice: str = "use --checkpoint {which} for {path}") -> Path:
    """A checkpoint file, or ``<run>/checkpoints/{best,last}.pt`` for a run folder.

    Args:
        path: a run folder or a checkpoint file.
        which: ``"best"`` or ``"last"`` for a run folder.
        advice: the fix when only the other checkpoint exists, in the caller's terms (a flag
            of ``eval``/``export``, a config key of a teacher); ``{which}`` and ``{path}`` name
            the other checkpoint.

    Raises:
        CheckpointError: no such checkpoint, naming the other one when it exists.
    """
    p = Path(path)
    if p.is_dir():
        candidate = p / "checkpoints" / f"{which}.pt"
        other = p / "checkpoints" / ("last.pt" if which == "best" else "best.pt")
        if not candidate.exists() and other.exists():
            why = ("no evaluation selected a best checkpoint (e.g. the validation loss was "
                   "never finite, or the run stopped before its first evaluation)"
                   if which == "best" else "last.pt is missing")
            raise CheckpointError(f"{p} has no checkpoints/{which}.pt: {why}; "
                                  + advice.format(which=other.stem, path=other))
        found = runs_folder(p)
        if not candidate.exists() and found is not None:
            raise CheckpointError(f"{p} is a {found[0]} folder, not a run folder: give one of "
                                  f"its runs instead{for_example(found[1])}")
        if not candidate.exists():
            raise CheckpointError(f"{p} holds no checkpoints/{which}.pt; is it an auxilia run "
                                  "folder? (expected checkpoints/best.pt and checkpoints/last.pt)")
        return regular_file(candidate, "checkpoint", CheckpointError)
    if not p.exists():
        raise CheckpointError(f"no run folder or checkpoint at {p}")
    return regular_file(p, "checkpoint", CheckpointError)  # e.g. /dev/null or a FIFO


def runs_folder(path: Path) -> tuple[str, Path | None] | None:
    """``(kind, one run in it)`` for a sweep or pipeline folder (the run is None when it holds
    none yet), else None."""
    kind = folder_kind(path)
    if kind not in ("sweep", "pipeline"):
        return None
    return kind, example_run(path)


def example_run(folder: Path, depth: int = 3) -> Path | None:
    """The first run folder (sorted) up to ``depth`` levels below ``folder``, or None."""
    for level in range(1, depth + 1):
        for marker in sorted(folder.glob("/".join(["*"] * level) + f"/{MARKER}")):
            return marker.parent
    return None


def for_example(run: Path | None, prefix: str = "") -> str:
    """``, e.g. <prefix><run>``, or a note that the folder holds no run yet."""
    return f", e.g. {prefix}{run}" if run is not None else " (it holds no run yet)"


def run_folder_of_checkpoint(path: Path) -> Path | None:
    """The run folder of ``RUN/checkpoints/<name>.pt``, or None for a loose checkpoint file."""
    return path.parent.parent if path.parent.name == "checkpoints" else None

