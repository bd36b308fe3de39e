"""The figures of a comparison, per run and per variant, as CSV and Markdown.

Per variant, over its finished seeds: each exit's test top-1 at the checkpoint selected on
validation, at the last evaluation, and the median of the last ``k`` evaluations (mean ± std);
val top-1 at the selected checkpoint; steps trained (each run's own under a ``train.time``
budget, :func:`describe_budget`); training time and images/s; trained and deployed parameters
and FLOPs; and, against the baseline, the paired per-seed difference of the main
exit's selected test top-1. Never the best test figure over a run: that would select on test.
Failed and incomplete runs are listed, never averaged in.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from auxilia.compare.aggregate import MeanStd, Paired, mean_std, median_last_k, paired
from auxilia.compare.collect import Collection, RunRecord

__all__ = ["RunFigures", "VariantFigures", "describe_budget", "markdown", "run_figures",
           "runs_csv", "variant_figures", "variants_csv"]


@dataclass(frozen=True)
class RunFigures:
    """One finished run's figures; accuracies in percent, per exit."""

    selected: dict[str, float]      # test top-1 at the checkpoint selected on val
    last: dict[str, float]          # test top-1 at the last evaluation
    median: dict[str, float]        # median test top-1 of the last k evaluations
    val_selected: float
    selected_step: int | None
    steps: float                    # steps trained (derived per run under a time budget)
    wall_seconds: float             # the training loop's wall time, evaluations included
    train_seconds: float
    images_per_s: float
    params: dict[str, float]        # total (trained), deployed
    flops: dict[str, float]         # trained, deployed (per image)


def run_figures(record: RunRecord, k: int) -> RunFigures:
    """The figures of a finished run (``k``: evaluations in the median)."""
    exits = record.exits
    s = record.summary
    flops = s.get("flops") or {}
    params = s.get("params") or {}
    return RunFigures(
        selected={e: record.selected(f"test/{e}/top1") for e in exits},
        last={e: record.last(f"test/{e}/top1") for e in exits},
        median={e: median_last_k(record.series(f"test/{e}/top1")[1], k)
                if record.series(f"test/{e}/top1")[1] else math.nan for e in exits},
        val_selected=record.selected("val/final/top1"),
        selected_step=(s.get("best_val") or {}).get("step"),
        steps=float(s.get("steps", math.nan)),
        wall_seconds=float(s.get("wall_seconds", math.nan)),
        train_seconds=float(s.get("train_seconds", math.nan)),
        images_per_s=float(s.get("train_images_per_s", math.nan)),
        params={"trained": float(params.get("total", math.nan)),
                "deployed": float(params.get("deployed", math.nan))},
        flops={"trained": float(flops.get("trained", math.nan)),
               "deployed": float(flops.get("deployed", math.nan))})


@dataclass(frozen=True)
class VariantFigures:
    """A variant's figures over its finished seeds, and its unfinished runs."""

    variant: str
    seeds: tuple[int | None, ...]
    exits: tuple[str, ...]
    selected: dict[str, MeanStd]
    last: dict[str, MeanStd]
    median: dict[str, MeanStd]
    val_selected: MeanStd
    steps: MeanStd
    train_seconds: MeanStd
    images_per_s: MeanStd
    params: dict[str, MeanStd]
    flops: dict[str, MeanStd]
    paired: Paired | None           # against the baseline; None for the baseline itself
    unfinished: tuple[RunRecord, ...]


def variant_figures(collection: Collection, k: int, baseline: str | None) -> list[VariantFigures]:
    """Every variant's figures, in ``collection.variants`` order."""
    runs = {v: [(r, run_figures(r, k)) for r in collection.of(v)] for v in collection.variants}
    base = {r.seed: f.selected.get("final", math.nan) for r, f in runs.get(baseline or "", [])
            if r.seed is not None}
    rows = []
    for v in collection.variants:
        figs = [f for _, f in runs[v]]
        exits = tuple(dict.fromkeys(e for r, _ in runs[v] for e in r.exits))

        def over(pick: Any, figs: Sequence[RunFigures] = figs) -> MeanStd:
            return mean_std([pick(f) for f in figs])

        mine = {r.seed: f.selected.get("final", math.nan) for r, f in runs[v]
                if r.seed is not None}
        rows.append(VariantFigures(
            variant=v, seeds=tuple(r.seed for r, _ in runs[v]), exits=exits,
            selected={e: over(lambda f, e=e: f.selected.get(e, math.nan)) for e in exits},
            last={e: over(lambda f, e=e: f.last.get(e, math.nan)) for e in exits},
            median={e: over(lambda f, e=e: f.median.get(e, math.nan)) for e in exits},
            val_selected=over(lambda f: f.val_selected),
            steps=over(lambda f: f.steps),
            train_seconds=over(lambda f: f.train_seconds),
            images_per_s=over(lambda f: f.images_per_s),
            params={key: over(lambda f, key=key: f.params[key]) for key in ("trained", "deployed")},
            flops={key: over(lambda f, key=key: f.flops[key]) for key in ("trained", "deployed")},
            paired=None if v == baseline or not base else paired(mine, base),
            unfinished=tuple(r for r in collection.of(v, status=None) if r.status != "finished")))
    return rows


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _n(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}"


def runs_csv(collection: Collection, k: int) -> str:
    """One row per run (failed and incomplete included, without figures): the raw numbers
    every mean in ``results.csv`` is taken over."""
    exits = list(dict.fromkeys(e for r in collection.records for e in r.exits))
    header = ["variant", "seed", "status", "folder", "selected_step", "val_final_selected",
              *[f"test_{e}_{what}" for e in exits for what in ("selected", "last", "median_k")],
              "steps", "wall_seconds", "train_seconds", "images_per_s", "params_trained",
              "params_deployed", "flops_trained", "flops_deployed", "error"]
    rows = []
    for v in collection.variants:
        for r in collection.of(v, status=None):
            if r.status != "finished":
                rows.append([v, r.seed, r.status, str(r.path), *[""] * (len(header) - 5),
                             r.error])
                continue
            f = run_figures(r, k)
            rows.append([v, r.seed, r.status, str(r.path), f.selected_step or "",
                         _n(f.val_selected),
                         *[_n(getattr(f, what).get(e, math.nan)) for e in exits
                           for what in ("selected", "last", "median")],
                         _n(f.steps), _n(f.wall_seconds), _n(f.train_seconds),
                         _n(f.images_per_s), _n(f.params["trained"]),
                         _n(f.params["deployed"]), _n(f.flops["trained"]),
                         _n(f.flops["deployed"]), ""])
    return _csv(header, rows)


def variants_csv(rows: Sequence[VariantFigures]) -> str:
    """One row per variant: mean, std and n of each figure, and the paired comparison."""
    exits = list(dict.fromkeys(e for row in rows for e in row.exits))
    figures = [(f"test_{e}_{what}", what, e) for e in exits
               for what in ("selected", "last", "median")]
    header = ["variant", "seeds", "unfinished"]
    for name, _, _ in figures:
        header += [f"{name}_mean", f"{name}_std"]
    header += ["val_final_selected_mean", "val_final_selected_std", "steps_mean", "steps_std",
               "train_seconds_mean",
               "train_seconds_std", "images_per_s_mean", "params_trained", "params_deployed",
               "flops_trained", "flops_deployed", "paired_diff_mean", "paired_diff_std",
               "paired_seeds", "paired_improved", "paired_differences"]
    out = []
    for row in rows:
        line: list[Any] = [row.variant, len(row.seeds), len(row.unfinished)]
        for _, what, e in figures:
            ms = getattr(row, what).get(e, mean_std([]))
            line += [_n(ms.mean), _n(ms.std)]
        p = row.paired
        line += [_n(row.val_selected.mean), _n(row.val_selected.std),
                 _n(row.steps.mean), _n(row.steps.std), _n(row.train_seconds.mean),
                 _n(row.train_seconds.std),
                 _n(row.images_per_s.mean), _n(row.params["trained"].mean),
                 _n(row.params["deployed"].mean), _n(row.flops["trained"].mean),
                 _n(row.flops["deployed"].mean),
                 *((_n(p.diff.mean), _n(p.diff.std), len(p.seeds), p.improved,
                    " ".join(f"{s}:{d:+.4g}" for s, d in zip(p.seeds, p.differences,
                                                              strict=True)))
                   if p else ("", "", "", "", ""))]
        out.append(line)
    return _csv(header, out)


def _count(value: float) -> str:
    if math.isnan(value):
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def _steps(steps: MeanStd) -> str:
    """``"2,050"``, or ``"2,050 ± 31"`` where the seeds trained different numbers of steps
    (each derived its own from its speed, under a time budget)."""
    if not steps.n:
        return "-"
    return f"{steps.mean:,.0f}" + (f" ± {steps.std:,.0f}" if steps.std else "")


def describe_budget(train: dict[str, Any], batch: Any, steps: Any) -> str:
    """How long each run trained, for the report's setting: ``30 epochs at batch 64, 600
    steps per run``, or under a wall-clock budget ``a train.time=2m budget per run at batch
    64 (each run derived its steps from its own measured speed: the steps column)``."""
    if train.get("time"):
        return (f"a train.time={train['time']} budget per run at batch {batch} (each run "
                "derived its steps from its own measured speed: the steps column), so variants "
                "of different cost are compared on equal wall time")
    length = (f"{train['steps']} steps" if train.get("steps")
              else f"{float(train.get('epochs') or 0):g} epochs")
    return f"{length} at batch {batch}, {steps} steps per run"


def markdown(rows: Sequence[VariantFigures], baseline: str | None, k: int,
             context: str = "") -> str:
    """``results.md``: the main table, the per-exit table, and the unfinished runs."""
    lines = [context, ""] if context else []
    head = ["variant", "seeds", "steps", "test top-1 (selected on val)", "last eval",
            f"median last {k}", "val top-1", f"Δ vs {baseline} (paired)", "train time (s)",
            "images/s", "params trained / deployed", "FLOPs trained / deployed"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        def final(d: dict[str, MeanStd]) -> str:
            return d["final"].format() if "final" in d else "-"

        delta = "baseline" if row.variant == baseline else (row.paired.format() if row.paired
                                                            else "-")
        lines.append("| " + " | ".join([
            row.variant, str(len(row.seeds)), _steps(row.steps), final(row.selected),
            final(row.last), final(row.median), row.val_selected.format(), delta,
            row.train_seconds.format(1), f"{row.images_per_s.mean:.0f}"
            if row.images_per_s.n else "-",
            f"{_count(row.params['trained'].mean)} / {_count(row.params['deployed'].mean)}",
            f"{_count(row.flops['trained'].mean)} / {_count(row.flops['deployed'].mean)}"])
            + " |")
    exits = list(dict.fromkeys(e for row in rows for e in row.exits if e != "final"))
    if exits:
        lines += ["", "Test top-1 of every exit at the checkpoint selected on val:", "",
                  "| variant | " + " | ".join([*exits, "final"]) + " |",
                  "|" + "---|" * (len(exits) + 2)]
        for row in rows:
            cells = [row.selected[e].format() if e in row.selected else "-"
                     for e in [*exits, "final"]]
            lines.append(f"| {row.variant} | " + " | ".join(cells) + " |")
    unfinished = [r for row in rows for r in row.unfinished]
    if unfinished:
        lines += ["", "Not averaged in (failed or unfinished):", ""]
        lines += [f"- {r.variant}, seed {r.seed}: {r.status}" + (f": {r.error}" if r.error
                                                                  else "") + f" ({r.path})"
                  for r in unfinished]
    return "\n".join(lines) + "\n"
