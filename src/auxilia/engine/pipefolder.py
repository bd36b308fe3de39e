"""A pipeline's folder: owned and locked like a run folder, and ``pipeline.json``, its state.

The rounds of a pipeline live in ``<run.dir>/<pipeline name>/<round>``. That folder carries
``.auxilia-pipeline`` (see :mod:`auxilia.engine.owned`), is locked while the pipeline runs (a
second process is refused naming the first) and holds ``pipeline.json``: the pipeline's status
(``running``, ``finished``, ``failed`` naming the round, ``interrupted`` with the signal) and
each round's.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from auxilia.engine import state as run_state
from auxilia.engine.owned import OwnedFolder
from auxilia.engine.runfolder import RunFolder, RunFolderError
from auxilia.engine.runstatus import Status, check_writable

__all__ = ["PIPELINE_FILE", "PipelineRecord", "check_round_folder", "pipeline_owner"]

PIPELINE_FILE = "pipeline.json"


def pipeline_owner(folder: Path) -> OwnedFolder:
    """The ownership rules of a pipeline folder."""
    return OwnedFolder(folder, "pipeline", own_files={PIPELINE_FILE: "rounds"},
                       hint="give the pipeline another name (name: in the pipeline file) or set "
                            "run.dir")


def check_round_folder(name: str, folder: RunFolder, status: Status) -> str | None:
    """Why a round's run folder could not be written when its turn comes, or None."""
    try:
        check_writable(status, folder)
    except RunFolderError as err:
        return f"round {name!r}: {err}"
    return None


class PipelineRecord:
    """``pipeline.json`` in the pipeline folder: the pipeline's and each round's status."""

    def __init__(self, folder: Path, name: str, rounds: Sequence[tuple[str, Path, str]]) -> None:
        self.path = folder / PIPELINE_FILE
        self.name = name
        self.rounds = [{"name": n, "folder": str(f), "status": "finished" if s == "skipped"
                        else "pending"} for n, f, s in rounds]
        self.state: dict[str, Any] = {"status": "running"}

    def set(self, index: int, status: str, error: str = "") -> None:
        self.rounds[index]["status"] = status
        if error:
            self.rounds[index]["error"] = error
        self.write()

    def end(self, status: str, *, signum: int | None = None, round_name: str = "") -> None:
        """``finished``, ``failed`` (in ``round_name``) or ``interrupted`` (by ``signum``)."""
        self.state = {"status": status}
        if signum is not None:
            self.state["stopped_by"] = signal.Signals(signum).name
        if round_name:
            self.state["round"] = round_name
        self.write()

    def write(self) -> None:
        run_state.write_json(self.path, {"name": self.name, **self.state,
                                         "rounds": self.rounds})
