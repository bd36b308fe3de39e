"""A checkpoint belongs to one run: the run folder's id, recorded in every checkpoint.

:meth:`RunFolder.create <auxilia.engine.runfolder.RunFolder.create>` gives every run folder a
random id in its ``.auxilia-run`` marker, and every checkpoint records it with the folder it was
written in (``checkpoint["run"]``). ``--resume`` refuses a ``last.pt`` whose id is not the
folder's: a checkpoint copied in from another run would otherwise continue that run's weights,
optimizer and counters under this run's name. A whole folder copied (``cp -r``) keeps its
marker, hence its id, and resumes; ``best.pt`` copied to ``last.pt`` within a run carries the
run's own id; ``--overwrite`` makes a new folder with a new id. ``auxilia eval`` and
``auxilia export`` read any checkpoint file: the id is checked on resume only.
"""

from __future__ import annotations

import os
from typing import Any

from auxilia.engine.runfolder import MARKER, RunFolder
from auxilia.engine.state import IncompatibleResumeError

__all__ = ["ForeignCheckpointError", "check_same_run", "checkpoint_run_id"]


class ForeignCheckpointError(IncompatibleResumeError):
    """The checkpoint to resume was written by another run; the message names both."""


def checkpoint_run_id(checkpoint: dict[str, Any]) -> str | None:
    """The id of the run that wrote ``checkpoint``; None for one written before ids existed."""
    run = checkpoint.get("run")
    found = run.get("id") if isinstance(run, dict) else None
    return found if isinstance(found, str) and found else None


def check_same_run(checkpoint: dict[str, Any], folder: RunFolder) -> str | None:
    """Refuse to resume ``folder`` from a checkpoint another run wrote.

    A folder without an id (no marker, or one from before ids) takes the checkpoint's id when
    the checkpoint was written in this very folder: the marker was lost, the run is the same.

    Returns:
        A note when the checkpoint records no id (an earlier auxilia): nothing could be checked.

    Raises:
        ForeignCheckpointError: the ids differ; the message names both runs and the fix.
    """
    saved = checkpoint_run_id(checkpoint)
    if saved is None:
        return ("the checkpoint records no run id (an earlier auxilia); not checked that it "
                "was written by this run")
    mine = folder.run_id()
    other = str(checkpoint["run"].get("folder") or "another run folder")
    if saved == mine or (mine is None and _same_place(other, folder)):
        return None
    this = f"{folder.path} (run id {mine[:8]})" if mine else (
        f"{folder.path} (which has no run id: its {MARKER} marker is missing or older)")
    raise ForeignCheckpointError(
        f"cannot resume: {folder.last} was written by another run, {other} (run id "
        f"{saved[:8]}), not by {this}; resume that run in its own folder (auxilia train "
        f"--resume {other}), or copy its whole folder (cp -r {other} NEW) and resume the "
        f"copy; to start {folder.path.name} over, use --overwrite")


def _same_place(recorded: str, folder: RunFolder) -> bool:
    """Whether the folder a checkpoint recorded is ``folder`` (the same path, or the same
    directory under another path)."""
    try:
        return os.path.samefile(recorded, folder.path)
    except OSError:
        return False
