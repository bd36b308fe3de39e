"""Semi-supervised sweeps' tables: every method against supervised-only, for the deployed model,
the student and the EMA model, with pseudo-label quality and cost; and Mean Teacher's ablation
(its EMA model against its student over training, with and without input noise).

The runs are ``auxilia compare benchmarks/sweeps/semi_<data>.yaml``; this script reads their
folders only, writes ``benchmarks/results/<name>/semi.md`` and replaces docs/benchmarks.md's
``<!-- bench:<name> -->`` block (and ``<!-- bench:<name>_mean_teacher -->``).

Usage: ``python benchmarks/semi_tables.py runs/bench/semi_digits [runs/bench/semi_mnist]``
(also ``runs/bench/mt_ablation_mnist``: an ablation's table, without the "every method beats
the baseline" verdict).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import write_readme_section

from auxilia.compare.aggregate import mean_std, paired
from auxilia.compare.collect import Collection, RunRecord, collect

ROOT = Path(__file__).resolve().parents[1]
TOP1 = "final/top1"
MT_FULL, MT_CLEAN = "Mean Teacher", "Mean Teacher, no noise"
VARIATIONS = (MT_CLEAN, "Mean Teacher, paper defaults", "Temporal Ensembling, μ = 7")
"""Rows that vary a method (an ablation, the published settings, another μ): reported, but
not one of the methods the "every method beats supervised" target is about."""


def model_figures(record: RunRecord, model: str | None) -> dict[str, float]:
    """Selected-on-val and median-of-last-k test top-1 of one model of a run (None: the
    deployed one); NaN where the run has no such model."""
    summary = record.summary
    part = summary if model is None else (summary.get("models") or {}).get(model)
    if part is None and model == "student" and not summary.get("models"):
        part = summary  # a run without an EMA model: the student is the deployed model
    if not part:
        return {"selected": float("nan"), "median": float("nan")}
    best = (part.get("best_val") or {}).get("test") or {}
    median = (part.get("median_last_k") or {}).get(f"test/{TOP1}")
    return {"selected": float(best.get(TOP1, float("nan"))),
            "median": float("nan") if median is None else float(median)}


def unlabeled_figures(record: RunRecord) -> dict[str, float]:
    """Pseudo-label accuracy and share above the threshold at the last evaluation, of the
    model that makes the pseudo-labels (the student for every recipe here, the EMA model for
    Mean Teacher)."""
    quality = record.summary.get("unlabeled") or {}
    prefix = "" if record.summary.get("deployed", "student") == "student" else "student:"
    if record.variant.startswith("Mean Teacher"):
        prefix = ""  # the teacher (deployed EMA model) makes the targets
    return {"top1": float(quality.get(f"{prefix}unlabeled/top1", float("nan"))),
            "above": float(quality.get(f"{prefix}unlabeled/above_threshold", float("nan")))}


def _fmt(values: Sequence[float]) -> str:
    return mean_std(values).format()


def method_table(collection: Collection, baseline: str) -> tuple[str, dict[str, float]]:
    """The markdown table and each variant's mean selected test top-1 (deployed model)."""
    base = {r.seed: model_figures(r, None)["selected"] for r in collection.of(baseline)}
    header = ("| method | seeds | deployed | test top-1, deployed (selected on val) | median "
              "last k | student (selected / median) | EMA model (selected / median) | Δ vs "
              f"{baseline} (paired) | pseudo-labels right | above τ | time / run (s) | "
              "images/s |")
    lines = [header, "|" + "---|" * 12]
    means: dict[str, float] = {}
    for variant in collection.variants:
        runs = collection.of(variant)
        if not runs:
            continue
        deployed = [model_figures(r, None) for r in runs]
        student = [model_figures(r, "student") for r in runs]
        ema = [model_figures(r, "ema") for r in runs]
        quality = [unlabeled_figures(r) for r in runs]
        diff = paired({r.seed: d["selected"] for r, d in zip(runs, deployed, strict=True)}, base)
        means[variant] = mean_std([d["selected"] for d in deployed]).mean
        cells = [
            variant, str(len(runs)), runs[0].summary.get("deployed", "student"),
            _fmt([d["selected"] for d in deployed]), _fmt([d["median"] for d in deployed]),
            f"{_fmt([s['selected'] for s in student])} / {_fmt([s['median'] for s in student])}",
            (f"{_fmt([e['selected'] for e in ema])} / {_fmt([e['median'] for e in ema])}"
             if any(e["selected"] == e["selected"] for e in ema) else "-"),
            "baseline" if variant == baseline else diff.format(),
            _fmt([q["top1"] for q in quality]), _fmt([q["above"] for q in quality]),
            _fmt([r.summary["train_seconds"] for r in runs]),
            f"{statistics.fmean(r.summary['train_images_per_s'] for r in runs):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), means


def describe(collection: Collection) -> str:
    """One line: data, splits, model, budget, machine, seeds."""
    run = collection.of(collection.variants[0])[0]
    cfg, summary = run.config, run.summary
    splits = summary.get("splits", {})
    counts = ", ".join(f"{name} {split['count']:,}" for name, split in splits.items())
    machine = summary.get("machine", {})
    seeds = sorted({r.seed for r in collection.records if r.seed is not None})
    return (f"{cfg['data']['source']} ({counts}), {cfg['model']['name']}, "
            f"{summary['steps']} steps at batch {cfg['data']['batch_size']} labeled + μ·"
            f"{cfg['data']['batch_size']} unlabeled, SGD {cfg['optim']['lr']} "
            f"{cfg['schedule']['name']}, bf16; {machine.get('device', '?')} "
            f"({machine.get('name', '?')}, {machine.get('cpus', '?')} CPUs, torch "
            f"{machine.get('torch', '?')}); seeds {', '.join(map(str, seeds))}; mean ± std over "
            "seeds; test top-1 at the checkpoint selected on val (never the best on test) and "
            f"the median of the last {cfg['train']['keep_last_evals']} evaluations; pseudo-label "
            "figures on up to 2,000 unlabeled images with known labels at the last evaluation; "
            "images/s counts the samples of both streams")


def targets(means: dict[str, float], baseline: str, goal: float | None) -> str:
    """Which targets were met, in words."""
    base = means[baseline]
    methods = [v for v in means if v != baseline and v not in VARIATIONS]
    losers = [v for v in methods if not means[v] > base]
    best = max(methods, key=lambda v: means[v])
    lines = [f"Every method beats {baseline} ({base:.2f}) on the mean of the selected test "
             "top-1 (rows that vary a method not counted): "
             + ("**met**." if not losers else f"**missed** by {', '.join(losers)}.")]
    if goal is not None:
        verdict = "**met**" if means[best] >= goal else "**missed**"
        lines.append(f"Best method {best}: {means[best]:.2f} (target ≥ {goal:g}: {verdict}).")
    return " ".join(lines)


def mt_curve(collection: Collection) -> str:
    """Mean Teacher's EMA model against its student at every evaluation (mean over seeds),
    with noise and without."""
    rows: dict[int, dict[str, list[float]]] = {}
    for variant, short in ((MT_FULL, "noise"), (MT_CLEAN, "clean")):
        for run in collection.of(variant):
            for record in run.evals:
                row = rows.setdefault(int(record["step"]), {})
                for key, name in ((f"test/{TOP1}", "ema"), (f"student:test/{TOP1}", "student")):
                    if key in record:
                        row.setdefault(f"{short}/{name}", []).append(float(record[key]))
    if not rows:
        return ""
    cols = ["noise/ema", "noise/student", "clean/ema", "clean/student"]
    lines = ["| step | EMA model, noise | student, noise | EMA model, no noise | student, no "
             "noise |", "|---|---|---|---|---|"]
    for step in sorted(rows):
        lines.append(f"| {step} | " + " | ".join(_fmt(rows[step].get(c, [])) for c in cols)
                     + " |")
    return "\n".join(lines)


def report(folder: Path, goal: float | None) -> dict[str, Any]:
    collection = collect([folder])
    baseline = collection.baseline or collection.variants[0]
    table, means = method_table(collection, baseline)
    text = f"{describe(collection)}.\n\n{table}"
    if "ablation" not in folder.name:  # an ablation's rows are variations, not competitors
        text += f"\n\n{targets(means, baseline, goal)}"
    name = folder.name
    out = ROOT / "benchmarks" / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "semi.md").write_text(text + "\n")
    write_readme_section(name, text)
    print(text)
    curve = mt_curve(collection)
    if curve:
        (out / "mean_teacher_ablation.md").write_text(curve + "\n")
        write_readme_section(f"{name}_mean_teacher", curve)
        print(curve)
    return {"means": means}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="sweep folders (<run.dir>/<sweep name>)")
    args = parser.parse_args()
    for folder in map(Path, args.sweeps):
        report(folder, 97.0 if "mnist" in folder.name else None)


if __name__ == "__main__":
    main()
