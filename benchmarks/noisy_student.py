"""Noisy Student rounds 1-3 against their teacher, 10 labels per class, 3 seeds.

Runs ``configs/noisy_student_digits.yaml``'s rounds (teacher, then three label/student round
pairs) on digits (its own base) and on MNIST (``configs/semi_mnist_cpu.yaml`` as the base),
one pipeline per seed under ``runs/bench/noisy_student_<data>/seed<k>`` (resumable: a finished
round is skipped), then writes ``benchmarks/results/noisy_student.json`` and the docs'
``<!-- bench:noisy_student -->`` block: test top-1 of the model selected on val per round
(mean ± std over seeds) and the pseudo-labels' accuracy (the hidden labels of the unlabeled
images, for reporting only).

Usage: ``python benchmarks/noisy_student.py [--steps 600] [--data digits mnist]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import write_readme_section

from auxilia.engine.pipeline_file import Pipeline, load_pipeline
from auxilia.engine.rounds import RoundResult, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "configs" / "noisy_student_digits.yaml"
BASES = {"digits": ROOT / "configs" / "semi_digits_cpu.yaml",
         "mnist": ROOT / "configs" / "semi_mnist_cpu.yaml"}
SEEDS = (0, 1, 2)


def run(data: str, seed: int, steps: int) -> list[RoundResult]:
    """One seed's pipeline on ``data`` (finished rounds are skipped)."""
    items = [f"seed={seed}", f"train.steps={steps}", "run.progress=off",
             f"run.dir=runs/bench/noisy_student_{data}/seed{seed}"]
    if data == "mnist":
        items.append(f"data.root={ROOT.parent / 'shared' / 'data'}")
    spec = load_pipeline(PIPELINE, items)
    return run_pipeline(Pipeline(spec.name, BASES[data], spec.rounds, spec.overrides))


def _figure(result: RoundResult) -> float | None:
    if result.summary.get("entries") is not None:
        return (result.summary.get("accuracy") or {}).get("entries")
    return result.test_top1


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def table(results: dict[str, dict[int, list[RoundResult]]]) -> str:
    """Per data, a row per round: test top-1 (training rounds) or pseudo-label top-1."""
    lines = []
    for data, by_seed in results.items():
        names = [r.name for r in next(iter(by_seed.values()))]
        lines += [f"**{data}**, 10 labels per class, seeds {', '.join(map(str, by_seed))}:", "",
                  "| round | measured | mean ± std | Δ vs teacher |", "|---|---|---|---|"]
        teacher = [_figure(rs[0]) for rs in by_seed.values()]
        for i, name in enumerate(names):
            values = [v for rs in by_seed.values() if (v := _figure(rs[i])) is not None]
            label = by_seed[next(iter(by_seed))][i].summary.get("entries") is not None
            what = "pseudo-label top-1 (%)" if label else "test top-1 (%)"
            delta = "-" if label or i == 0 else _cell(
                [v - t for v, t in zip(values, teacher, strict=True) if t is not None])
            lines.append(f"| {name} | {what} | {_cell(values)} | {delta} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--data", nargs="+", default=list(BASES), choices=list(BASES))
    args = parser.parse_args()
    results = {data: {seed: run(data, seed, args.steps) for seed in SEEDS} for data in args.data}
    record: dict[str, Any] = {
        data: {str(seed): [{"round": r.name, "figure": _figure(r), "entries":
                            r.summary.get("entries")} for r in rs]
               for seed, rs in by_seed.items()} for data, by_seed in results.items()}
    record["steps"] = args.steps
    out = ROOT / "benchmarks" / "results" / "noisy_student.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    text = table(results) + (f"\n\n{args.steps} steps per training round, batch 64 labeled "
                             "(+ 3 × 64 pseudo-labelled), small_cnn; 2-core CPU.")
    write_readme_section("noisy_student", text)
    print(text)


if __name__ == "__main__":
    main()
