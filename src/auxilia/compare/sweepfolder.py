"""A sweep's folder: owned and locked like a run folder, and ``sweep.json``, its record.

A sweep folder belongs to one sweep. Running a sweep again may add variants and seeds, and may
change what does not change results (``train.device``, ``k``, the baseline, the workers), but a
sweep that would drop a recorded variant or seed, define a recorded variant otherwise, or change
the budget or the shared overrides is refused before anything is written, naming the
differences: its ``sweep.json`` would otherwise stop describing the runs in the folder. A time
budget (``budget: time:`` or a ``train.time`` override) is compared by value (``120s`` is
``2m``), and a changed one is refused like a changed number of steps.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from auxilia.compare.collect import SWEEP_FILE
from auxilia.compare.spec import PlannedRun, Sweep, SweepError
from auxilia.config import ConfigError, apply_override
from auxilia.durations import canonical_duration, parse_duration
from auxilia.engine import state as run_state
from auxilia.engine.owned import OwnedFolder
from auxilia.engine.runfolder import RunFolderError
from auxilia.engine.runstatus import check_writable

__all__ = ["SweepRecord", "check_run_folders", "check_same_sweep", "sweep_owner"]


def sweep_owner(folder: Path) -> OwnedFolder:
    """The ownership rules of a sweep folder (marker ``.auxilia-sweep``, a lock beside it)."""
    return OwnedFolder(folder, "sweep", own_files={SWEEP_FILE: "runs"},
                       hint="give the sweep another name (name: in the sweep file, --name) or "
                            "set run.dir")


def check_same_sweep(folder: Path, sweep: Sweep) -> None:
    """Refuse a sweep that would rewrite another sweep's record (see the module doc).

    Raises:
        SweepError: naming each difference and the fix.
    """
    try:
        old = json.loads((folder / SWEEP_FILE).read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as err:
        raise SweepError(f"{folder / SWEEP_FILE} cannot be read ({err}); it records the "
                         "sweep's runs: restore it, or give the sweep another name") from None
    if not isinstance(old, dict) or not isinstance(old.get("runs"), list):
        raise SweepError(f"{folder / SWEEP_FILE} is not a sweep record auxilia wrote; give the "
                         "sweep another name (name: in the sweep file, --name)")
    new = _record_fields(sweep)
    problems = []
    if old.get("budget", {}) != new["budget"]:
        problems.append(f"budget: the folder's runs have {old.get('budget')}, this sweep "
                        f"gives {new['budget']}")
    if _effect(old.get("overrides", [])) != _effect(new["overrides"]):
        problems.append(f"overrides: the folder's sweep has {old.get('overrides')}, this one "
                        f"{new['overrides']}")
    definitions = old.get("definitions") or {}
    missing = [v for v in old.get("variants", []) if v not in new["definitions"]]
    if missing:
        problems.append(f"variants {', '.join(map(repr, missing))} are recorded but not in "
                        "this sweep")
    for label, was in definitions.items():
        now = json.loads(json.dumps(new["definitions"].get(label), default=str))
        if now is not None and was != now:
            problems.append(_redefined(label, was, now))
    seeds = [s for s in old.get("seeds", []) if s not in new["seeds"]]
    if seeds:
        problems.append(f"seeds {', '.join(map(str, seeds))} are recorded but not in this sweep")
    if problems:
        raise SweepError(f"{folder} holds another sweep ({old.get('name')!r}): "
                         + "; ".join(problems) + ". Keep its variants, seeds and budget (adding "
                         "variants or seeds is fine), or give this sweep another name")


def _effect(overrides: Any) -> dict[str, Any] | None:
    """What the overrides set, in the keys that change results (``train.device=cpu`` does not;
    the order of overrides of different keys does not matter)."""
    raw: dict[str, Any] = {}
    try:
        for item in overrides:
            apply_override(raw, str(item))
    except (ConfigError, TypeError):
        return None  # a record that cannot be read this way differs
    flat = run_state.flatten(raw)
    if parse_duration(flat.get("train.time")) is not None:  # 120s and 2m: one budget
        flat["train.time"] = canonical_duration(flat["train.time"])
    return {k: v for k, v in flat.items() if not k.startswith(run_state.RESUMABLE_CHANGES)}


def _redefined(label: str, was: dict[str, Any], now: dict[str, Any]) -> str:
    if {k: v for k, v in was.items() if k != "folder"} == \
            {k: v for k, v in now.items() if k != "folder"}:
        return (f"variant {label!r} keeps its runs in folder {was.get('folder')!r} and would now "
                f"get {now.get('folder')!r} (another label makes the same folder name): set "
                f"folder: {was.get('folder')} on variant {label!r}, or another folder: on the "
                "new variant")
    return f"variant {label!r} was {was}, this sweep defines {now}"


def check_run_folders(plans: Sequence[PlannedRun]) -> None:
    """Refuse, before anything trains, a run folder the sweep could not write when it gets
    there: a folder auxilia did not make, or one holding files of the user's."""
    for plan in plans:
        try:
            check_writable(plan.status, plan.folder)
        except RunFolderError as err:
            raise SweepError(f"variant {plan.variant.label!r} seed {plan.seed}: {err}") from None


def _record_fields(sweep: Sweep) -> dict[str, Any]:
    definitions = {v.label: {"folder": v.folder, "method": v.method,
                             "overrides": list(v.overrides)} for v in sweep.variants}
    base = sweep.base
    if isinstance(base, str | Path):
        base = str(Path(base).expanduser().resolve())
    elif base is not None:
        base = "config"
    return {"name": sweep.name, "base": base, "overrides": list(sweep.overrides),
            "budget": sweep.budget, "seeds": list(sweep.seeds), "baseline": sweep.baseline_label,
            "k": sweep.k, "variants": list(definitions), "definitions": definitions}


class SweepRecord:
    """``sweep.json``: the variants in order, the baseline, k, the sweep's status (``running``,
    ``finished``, ``failed`` when a run failed, ``interrupted`` with the signal that stopped
    it) and each run's status."""

    def __init__(self, folder: Path, sweep: Sweep, plans: Sequence[PlannedRun]) -> None:
        self.path = folder / SWEEP_FILE
        self.sweep, self.plans = sweep, plans
        self.status = ["finished" if p.status == "skipped" else "pending" for p in plans]
        self.error = [""] * len(plans)
        self.state = "running"
        self.stopped_by: str | None = None

    def set(self, index: int, status: str, error: str = "") -> None:
        self.status[index], self.error[index] = status, error
        self.write()

    def end(self, signum: int | None = None) -> None:
        """The sweep ended: interrupted by ``signum``, else finished or failed."""
        if signum is not None:
            self.state, self.stopped_by = "interrupted", signal.Signals(signum).name
        else:
            self.state = "failed" if "failed" in self.status else "finished"
        self.write()

    def write(self) -> None:
        run_state.write_json(self.path, {
            **_record_fields(self.sweep), "status": self.state,
            **({"stopped_by": self.stopped_by} if self.stopped_by else {}),
            "runs": [{"folder": p.key, "variant": p.variant.label, "seed": p.seed,
                      "status": s, **({"error": e} if e else {})}
                     for p, s, e in zip(self.plans, self.status, self.error, strict=True)]})
