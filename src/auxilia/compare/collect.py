"""Read what runs left on disk: sweep folders, run folders, or folders holding run folders.

A :class:`RunRecord` is one run folder as read back: its config, its evaluation records, its
summary (present only when the run finished) and its status. :func:`collect` takes any mix of
sweep folders (they carry ``sweep.json``, which names each run's variant and seed), single run
folders and folders of runs made by hand, which are grouped into variants by their configs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from auxilia.engine import state as run_state
from auxilia.engine.runfolder import MARKER, RunFolder
from auxilia.yamlio import load as load_yaml

__all__ = ["SWEEP_FILE", "Collection", "RunRecord", "Status", "collect", "read_run"]

SWEEP_FILE = "sweep.json"
"""What a sweep folder carries: its variants in order, the baseline, k, and every run's status."""

Status = Literal["finished", "failed", "incomplete"]

IGNORED_FOR_GROUPING = ("seed", "run.", "train.device", "train.log_every", "data.num_workers",
                        "data.eval_batch_size", "data.root")
"""Config keys that do not tell two variants apart (the seed, where the run was written)."""


@dataclass
class RunRecord:
    """One run folder as read back.

    Attributes:
        path: the run folder.
        variant: the label it is reported under.
        seed: the run's ``seed``.
        status: ``finished`` (its summary exists), ``failed`` (its sweep recorded an error)
            or ``incomplete`` (stopped, crashed or still running).
        error: the failure's message, for a failed run.
        config: the run's ``config.yaml``.
        evals: its evaluation records (``metrics.jsonl`` lines with val/test figures).
        summary: its ``summary.json``; empty unless finished.
    """

    path: Path
    variant: str
    seed: int | None
    status: Status
    config: dict[str, Any] = field(default_factory=dict)
    evals: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def exits(self) -> list[str]:
        """The exits the run reported, in depth order (those with a test top-1)."""
        names = self.summary.get("exits") or ["final"]
        last = self.summary.get("last", {})
        selected = (self.summary.get("best_val") or {}).get("test") or {}
        return [e for e in names if f"test/{e}/top1" in last or f"{e}/top1" in selected]

    def selected(self, key: str) -> float:
        """``key`` (e.g. ``test/final/top1``) at the checkpoint selected on validation."""
        split, _, rest = key.partition("/")
        best = self.summary.get("best_val") or {}
        return _number((best.get(split) or {}).get(rest))

    def last(self, key: str) -> float:
        """``key`` at the last evaluation."""
        return _number(self.summary.get("last", {}).get(key))

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Steps and values of ``key`` over the evaluations that have it."""
        pairs = [(int(e["step"]), float(e[key])) for e in self.evals
                 if isinstance(e.get(key), int | float) and isinstance(e.get("step"), int)]
        return [s for s, _ in pairs], [v for _, v in pairs]


@dataclass
class Collection:
    """Runs to report, with the variants in display order."""

    records: list[RunRecord]
    variants: list[str]
    baseline: str | None = None
    k: int | None = None
    names: list[str] = field(default_factory=list)  # the sweeps read

    def of(self, variant: str, status: Status | None = "finished") -> list[RunRecord]:
        """The records of ``variant`` (with ``status``, or all), by seed."""
        rows = [r for r in self.records if r.variant == variant
                and (status is None or r.status == status)]
        return sorted(rows, key=lambda r: (r.seed is None, r.seed or 0))


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def read_run(path: Path, variant: str = "", seed: int | None = None,
             status: Status | None = None, error: str = "") -> RunRecord:
    """Read one run folder; ``status`` (a sweep's record) wins over what the folder shows."""
    folder = RunFolder(path)
    config = _read_yaml(folder.config)
    try:
        records = folder.read_records()
    except ValueError as err:
        records, error = [], error or str(err)
    evals = [r for r in records if any(k.startswith(("val/", "test/")) for k in r)]
    summary = _read_json(folder.summary)
    if status is None or (status != "failed" and summary):
        status = "finished" if summary else "incomplete"
    if status != "finished":
        summary = {}
    if seed is None and isinstance(config.get("seed"), int):
        seed = config["seed"]
    return RunRecord(path, variant, seed, status, config, evals, summary, error)


def collect(paths: Sequence[str | Path]) -> Collection:
    """Every run under ``paths``: sweep folders, run folders, or folders holding run folders.

    Raises:
        FileNotFoundError: a path does not exist, or holds no run folder.
        ValueError: two runs report the same variant and seed (e.g. one sweep given twice).
    """
    records: list[RunRecord] = []
    variants: list[str] = []
    baseline: str | None = None
    k: int | None = None
    names: list[str] = []
    loose: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such folder; give a sweep folder, a run folder "
                                    "or a folder holding run folders")
        if (path / SWEEP_FILE).is_file():
            sweep = _read_json(path / SWEEP_FILE)
            names.append(str(sweep.get("name", path.name)))
            baseline = baseline or sweep.get("baseline")
            k = k or sweep.get("k")
            variants += [v for v in sweep.get("variants", []) if v not in variants]
            records += [read_run(path / r["folder"], r["variant"], r.get("seed"),
                                 _sweep_status(r.get("status")), r.get("error", ""))
                        for r in sweep.get("runs", [])]
            continue
        found = _run_folders(path)
        if not found:
            raise FileNotFoundError(f"{path}: no run folder in it (a run folder holds "
                                    "config.yaml and metrics.jsonl)")
        loose += found
    hand = [read_run(p) for p in loose]
    _label_by_config(hand)
    records += hand
    variants += [v for v in dict.fromkeys(r.variant for r in hand) if v not in variants]
    _check_unique(records)
    if not records:
        raise FileNotFoundError(f"{', '.join(str(p) for p in paths)}: no runs to report (the "
                                "sweep recorded none yet); run the sweep first, or give run "
                                "folders")
    return Collection(records, variants, baseline, k, names)


def _sweep_status(status: Any) -> Status | None:
    return "failed" if status == "failed" else None


def _run_folders(path: Path, depth: int = 4) -> list[Path]:
    if (path / "config.yaml").is_file() and ((path / "metrics.jsonl").is_file()
                                            or (path / MARKER).is_file()):
        return [path]
    if depth == 0:
        return []
    found: list[Path] = []
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
            found += _run_folders(child, depth - 1)
    return found


def _label_by_config(records: Iterable[RunRecord]) -> None:
    """Give runs made by hand a variant label: runs whose configs differ only in the seed
    (and where they were written) are one variant, named by its methods, and by the settings
    that tell it apart from other variants of the same methods."""
    groups: dict[str, list[RunRecord]] = {}
    flats: dict[str, dict[str, Any]] = {}
    for record in records:
        flat = {k: v for k, v in run_state.flatten(record.config).items()
                if not k.startswith(IGNORED_FOR_GROUPING)}
        key = json.dumps(flat, sort_keys=True, default=str)
        groups.setdefault(key, []).append(record)
        flats[key] = flat
    by_method: dict[str, list[str]] = {}
    for key, rows in groups.items():
        by_method.setdefault(_methods_label(rows[0].config), []).append(key)
    for method, keys in by_method.items():
        differing = sorted({k for a in keys for b in keys for k in set(flats[a]) | set(flats[b])
                            if flats[a].get(k) != flats[b].get(k)})
        for key in keys:
            extra = ", ".join(f"{k}={flats[key].get(k)}" for k in differing
                              if not k.startswith("method"))
            label = f"{method} ({extra})" if extra else method
            for record in groups[key]:
                record.variant = label


def _methods_label(config: dict[str, Any]) -> str:
    methods = config.get("method") or []
    names = [m.get("name", "?") if isinstance(m, dict) else str(m) for m in methods]
    return "+".join(names) or "?"


def _check_unique(records: list[RunRecord]) -> None:
    """Drop a folder given twice (a sweep and one of its runs); refuse two runs that both
    claim one variant and seed."""
    unique: dict[Path, RunRecord] = {}
    for r in records:
        unique.setdefault(r.path.resolve(), r)
    records[:] = list(unique.values())
    seen: dict[tuple[str, int | None], Path] = {}
    for r in records:
        key = (r.variant, r.seed)
        if key in seen:
            raise ValueError(f"{seen[key]} and {r.path} are two runs of {r.variant!r} at seed "
                             f"{r.seed}: a report holds one run per variant and seed; report "
                             "them separately (auxilia report A, then auxilia report B --out "
                             "ANOTHER)")
        seen[key] = r.path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        value = load_yaml(path.read_text())  # no duplicate keys, as every reader
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}
