"""Compound-scaling curve at CPU scale: test top-1 against measured FLOPs for φ = 0..3.

Tan & Le ("EfficientNet", ICML 2019, Fig. 1 and §4) scale a baseline's depth by α^φ, width by
β^φ and resolution by γ^φ and find accuracy rising with φ. Here the baseline is the CIFAR
ResNet-8 on scikit-learn's 8x8 digits (the bundled set: each run well under 30 s on 2 CPU
cores), scaled with the paper's α=1.2, β=1.1, γ=1.15 (``model.scale.phi=φ``; the side is
rounded to a multiple of 2, ``model.scale.round_to=2``, since 8 px leaves no room for 8). The
runs are one ``auxilia compare`` sweep (resumable; FLOPs and parameters measured by it), and
the table goes to ``benchmarks/results/scaling_curve.md``.

Usage: ``flock /tmp/auxilia-cpu.lock .venv/bin/python benchmarks/scaling_curve.py``
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import write_readme_section

from auxilia.compare.collect import collect
from auxilia.compare.runner import run_sweep
from auxilia.compare.spec import Sweep, Variant
from auxilia.compare.tables import variant_figures
from auxilia.models.scaled import ScaleConfig

ROOT = Path(__file__).resolve().parents[1]
PHIS = (0, 1, 2, 3)
BASE = ("data.source=digits", "model.scale.round_to=2", "run.tensorboard=false",
        "run.plot=false", "train.eval_every=50")


def make_sweep(runs: Path, seeds: int, steps: int, subset: int | None,
               model: str = "resnet8") -> Sweep:
    """φ = 0..3 as the variants of one sweep, on one budget of ``steps`` (on a stratified
    ``subset`` of the training images when given: the full set leaves little above 99 %)."""
    variants = tuple(Variant(f"phi={p}", f"phi{p}", None, (f"model.scale.phi={p}",))
                     for p in PHIS)
    extra = () if subset is None else (f"data.train_subset={subset}",)
    return Sweep(_name(subset, model), None, variants, tuple(range(seeds)),
                 (f"run.dir={runs}", f"model.name={model}", *BASE, *extra), {"steps": steps},
                 "phi=0")


def _name(subset: int | None, model: str = "resnet8") -> str:
    """The sweep's and the results file's name."""
    name = "scaling_curve" if model == "resnet8" else f"scaling_curve_{model}"
    return name if subset is None else f"{name}_subset{subset}"


def table(folder: Path) -> tuple[str, list[float]]:
    """The curve as Markdown, and the mean test top-1 per φ."""
    collection = collect([folder])
    rows = variant_figures(collection, 3, "phi=0")
    base_flops = rows[0].flops["deployed"].mean
    lines = ["| φ | input side | parameters | FLOPs / image (measured) | FLOPs factor measured "
             "(nominal 1.92^φ) | test top-1 (%) | seeds |", "|---|---|---|---|---|---|---|"]
    means = []
    for phi, row in zip(PHIS, rows, strict=True):
        side = collection.of(row.variant)[0].config["data"]["image_size"]
        nominal = ScaleConfig(phi=phi).flops()
        flops = row.flops["deployed"].mean
        lines.append(f"| {phi} | {side} | {row.params['deployed'].mean:,.0f} | {flops:,.0f} | "
                     f"{flops / base_flops:.2f} ({nominal:.2f}) | "
                     f"{row.selected['final'].format()} | {row.selected['final'].n} |")
        means.append(row.selected["final"].mean)
    return "\n".join(lines) + "\n", means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/bench", help="run.dir of the sweep")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="every run's length")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="train on a stratified subset of this many images")
    parser.add_argument("--model", default="resnet8", help="the family scaled (a zoo name)")
    args = parser.parse_args()
    outcome = run_sweep(make_sweep(Path(args.runs), args.seeds, args.steps, args.train_subset,
                                   args.model))
    text, means = table(outcome.folder)
    rising = all(a < b for a, b in itertools.pairwise(means))
    verdict = (f"Paper's direction (accuracy rises with φ): {'met' if rising else 'missed'} "
               f"(mean test top-1 by φ: {', '.join(f'{m:.2f}' for m in means)}).\n")
    subset = "" if args.train_subset is None else f", {args.train_subset} training images"
    setting = (f"digits 8x8 (auxilia's default split: 20 % test, 10 % val{subset}), {args.model} "
               "scaled by "
               f"α=1.2 β=1.1 γ=1.15, {args.steps} steps of batch 64, SGD cosine, 2-core CPU, "
               f"seeds 0..{args.seeds - 1}, test top-1 at the checkpoint selected on val, "
               "mean ± std.\n\n")
    out = ROOT / "benchmarks" / "results" / f"{_name(args.train_subset, args.model)}.md"
    out.write_text(setting + text + "\n" + verdict)
    write_readme_section(_name(args.train_subset, args.model), setting + text + "\n" + verdict)
    print(out.read_text())


if __name__ == "__main__":
    main()
