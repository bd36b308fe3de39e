"""``results/``: the tables and plots of a comparison, from run folders alone.

:func:`write_report` is what ``auxilia compare`` runs after its runs and what
``auxilia report`` runs on existing folders (a sweep's, or runs made by hand).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from auxilia.atomic_files import TEMPORARY_GLOB, atomic_write
from auxilia.compare.collect import Collection, RunRecord
from auxilia.compare.plots import write_plots
from auxilia.compare.tables import (
    describe_budget,
    markdown,
    runs_csv,
    variant_figures,
    variants_csv,
)
from auxilia.engine.owned import MARKERS, OwnedFolder

__all__ = ["MARKER", "REPORT_FILES", "describe_setting", "report_owner", "write_report"]

REPORT_FILES = ("results.md", "results.csv", "runs.csv", "curves.png", "exits.png",
                "accuracy_vs_time.png", "anytime.png")
"""What a report folder holds (plots with nothing to draw are left out)."""
MARKER = MARKERS["report"]
"""Written into every report folder: its report files may be replaced."""


def write_report(collection: Collection, out: Path, *, baseline: str | None = None,
                 k: int | None = None) -> list[Path]:
    """Write ``results.md``, ``results.csv``, ``runs.csv`` and the plots into ``out``.

    Args:
        collection: the runs, by variant.
        out: the report folder (created; only :data:`REPORT_FILES` are written in it).
        baseline: the variant of the paired comparison (default: the sweep's, else the first).
        k: evaluations in the median-of-last-k figure (default: the sweep's, else 3).

    Returns:
        The files written.

    Raises:
        ValueError: ``baseline`` is not one of the variants.
        RunFolderError: ``out`` is a folder auxilia did not make as a report folder (and not
            empty), a run, sweep or pipeline folder, or lies inside a run folder.
    """
    if not collection.variants:
        raise ValueError("no runs to report")
    baseline = baseline or collection.baseline or collection.variants[0]
    if baseline not in collection.variants:
        raise ValueError(f"baseline {baseline!r} is not a variant; variants: "
                         + ", ".join(collection.variants))
    k = k or collection.k or 3
    _check_one_test_split(collection)
    folder = report_owner(out)
    folder.check()
    folder.create()
    for stale in out.glob(TEMPORARY_GLOB):  # left by a write that was killed (kill -9)
        stale.unlink(missing_ok=True)
    rows = variant_figures(collection, k, baseline)
    texts = {"results.md": markdown(rows, baseline, k, describe_setting(collection, k)),
             "results.csv": variants_csv(rows), "runs.csv": runs_csv(collection, k)}
    written = []
    for name, text in texts.items():
        data = text.encode()
        atomic_write(out / name, lambda f, data=data: f.write(data))
        written.append(out / name)
    plots = write_plots(collection, out)
    for stale in REPORT_FILES[3:]:  # a plot that has nothing to draw now must not linger
        if out / stale not in plots:
            (out / stale).unlink(missing_ok=True)
    return written + plots


def _check_one_test_split(collection: Collection) -> None:
    """Refuse runs tested on different test splits or classes: their figures do not compare
    (a paired difference across two datasets means nothing)."""
    seen: dict[tuple[Any, ...], Path] = {}
    for record in collection.records:
        if record.status != "finished":
            continue
        try:
            ident = json.loads((record.path / "data.json").read_text())["identity"]
            key = (tuple(ident["classes"]), ident["splits"]["test"]["digest"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a run from before data fingerprints: nothing to compare
        if seen and key not in seen:
            other = next(iter(seen.values()))
            raise ValueError(
                f"{other} and {record.path} were tested on different data (other test images "
                "or classes): a comparison needs one test split; report them separately")
        seen.setdefault(key, record.path)


def report_owner(out: Path) -> OwnedFolder:
    """A report folder's rules: it carries ``.auxilia-report``; a folder without it is taken
    only when empty (report files would replace the user's), and never inside a run folder."""
    return OwnedFolder(out, "report", own_files=None,
                       hint="choose another report folder (--out), a new or empty one")


def describe_setting(collection: Collection, k: int) -> str:
    """One paragraph: what was compared, on which data and budget, where, and how read."""
    finished = [r for r in collection.records if r.status == "finished"]
    first: RunRecord | None = finished[0] if finished else None
    parts = []
    if collection.names:
        parts.append(f"Sweep {', '.join(collection.names)}")
    if first is not None:
        cfg, s = first.config, first.summary
        data, train = cfg.get("data", {}), cfg.get("train", {})
        splits = s.get("splits", {})
        sizes = ", ".join(f"{n} {v.get('count')}" for n, v in splits.items())
        parts.append(f"data {data.get('source')} ({sizes}), model "
                     f"{cfg.get('model', {}).get('name')}, "
                     + describe_budget(train, data.get("batch_size"), s.get("steps")))
        machine = s.get("machine") or {}
        if machine:
            parts.append(f"trained on {machine.get('device')} ({machine.get('name')}, "
                         f"{machine.get('cpus')} CPUs, {machine.get('threads')} threads, torch "
                         f"{machine.get('torch')})")
    seeds = sorted({r.seed for r in finished if r.seed is not None})
    parts.append(f"seeds {', '.join(map(str, seeds)) or 'none finished'}; mean ± std over "
                 f"seeds (sample std); test top-1 at the checkpoint selected on val (never "
                 f"the best on test), at the last evaluation, and the median of the last {k} "
                 f"evaluations; Δ = paired per-seed difference of the selected test top-1")
    return "; ".join(parts) + "."
