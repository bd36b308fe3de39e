"""What a run folder holds, as sweeps and pipelines judge it: finished, resumable or new, and
whether it was made from the same config. One code path for every command that plans runs."""

from __future__ import annotations

import json
from typing import Any, Literal

from auxilia.config import Config
from auxilia.config import read_yaml as _read_yaml
from auxilia.data.streams import IndexStream
from auxilia.engine import state as run_state
from auxilia.engine.auto import resolve
from auxilia.engine.runfolder import RunFolder

__all__ = ["UNRESOLVED", "Status", "check_writable", "config_differences", "folder_status",
           "read_summary", "replaces_failed_start"]

Status = Literal["trained", "resumed", "skipped"]

UNRESOLVED = ("auto", "native")
"""Config values the run folder records resolved (against the data)."""


def folder_status(config: Config, folder: RunFolder) -> Status:
    """``skipped`` (a finished run), ``resumed`` (a ``last.pt``) or ``trained``."""
    if _finished(config, folder):
        return "skipped"
    return "resumed" if folder.last.is_file() else "trained"


def _finished(config: Config, folder: RunFolder) -> bool:
    """Whether ``folder`` holds a summary (written after the last step) of all the steps."""
    summary = read_summary(folder)
    try:
        n_train = summary["splits"]["train"]["count"]
        # the loop's step count: train.steps, or epochs of its labeled stream
        per_epoch = IndexStream(n_train, config.data.batch_size, config.seed).batches_per_epoch
        # (a train.time run's: the count it derived, recorded in its summary)
        total = config.train.total_steps(per_epoch, (summary.get("time_budget") or {}).get(
            "steps"))
        return bool(summary["steps"] == total)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return False


def read_summary(folder: RunFolder) -> dict[str, Any]:
    try:
        summary = json.loads(folder.summary.read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def replaces_failed_start(status: Status, folder: RunFolder) -> bool:
    """Whether training ``folder`` replaces what a run that failed before its first
    checkpoint left there (a folder without any checkpoint): the ``overwrite`` a sweep or a
    pipeline trains with."""
    return status == "trained" and not folder.best.is_file()


def check_writable(status: Status, folder: RunFolder) -> None:
    """Refuse, before anything trains, a run folder a sweep or a pipeline could not write when
    it gets there (a folder auxilia did not make, or one holding the user's files).

    Raises:
        RunFolderError: naming the folder and the fix.
    """
    if status == "trained":
        folder.check(resume=False, overwrite=replaces_failed_start(status, folder))


def config_differences(config: Config, folder: RunFolder, what: str = "the round"
                       ) -> list[str]:
    """The keys (that change results) in which ``folder``'s config differs from ``config``."""
    if not folder.config.is_file():
        return []  # resuming checks the checkpoint's own config
    saved = _read_yaml(folder.config)
    # the folder records the config with model and size resolved, as training resolves it
    given, _ = resolve(config)
    old, new = run_state.flatten(saved), run_state.flatten(given.to_dict())
    return [f"  {k}: the run has {old[k]!r}, {what} gives {new.get(k)!r}"
            for k in sorted(old)
            if old[k] != new.get(k) and not k.startswith(run_state.RESUMABLE_CHANGES)
            # "auto" / "native" resolve against the data, which is not read here
            and new.get(k) not in UNRESOLVED]
