"""MLP-Mixer against CNNs of similar cost on an MNIST subset, 3 seeds.

Tolstikhin et al. ("MLP-Mixer", NeurIPS 2021) find Mixers competitive only with large-scale
pre-training and trailing CNNs when trained from scratch on small data. Here ``mixer_tiny``
(patch 4 at 28 px: 7x7 tokens, 64 channels, 4 blocks) meets ``small_cnn`` matched on FLOPs
(its default widths 32/64/128) and on parameters (widths 24/48/96), all trained from scratch
on 5,000 MNIST training images for the same steps, tested on the official 10,000. Parameters
and FLOPs per image are the ones ``auxilia compare`` measures; the runs are one sweep
(resumable) and the table goes to ``benchmarks/results/mixer_vs_cnn.md``.

Usage: ``flock /tmp/auxilia-cpu.lock .venv/bin/python benchmarks/mixer_vs_cnn.py``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import write_readme_section

from auxilia.compare.collect import collect
from auxilia.compare.runner import run_sweep
from auxilia.compare.spec import Sweep, Variant
from auxilia.compare.tables import variant_figures

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
VARIANTS = (
    Variant("mixer_tiny", "mixer_tiny", None, ("model.name=mixer_tiny",)),
    Variant("small_cnn (FLOPs-matched)", "cnn_flops", None, ("model.name=small_cnn",)),
    Variant("small_cnn 24/48/96 (params-matched)", "cnn_params", None,
            ("model.name=small_cnn", "model.kwargs={widths: [24, 48, 96]}")),
)


def make_sweep(runs: Path, seeds: int, steps: int) -> Sweep:
    """The three models as one sweep on one budget of ``steps``; AdamW suits the Mixer (the
    paper trains Mixers with Adam) and the CNNs alike."""
    base = (f"run.dir={runs}", "data.source=mnist", f"data.root={DATA}",
            "data.train_subset=5000", "optim.name=adamw", "optim.lr=0.002",
            "optim.weight_decay=0.05", "run.tensorboard=false", "run.plot=false",
            "train.eval_every=100")
    return Sweep("mixer_vs_cnn", None, VARIANTS, tuple(range(seeds)), base, {"steps": steps},
                 "mixer_tiny")


def table(folder: Path) -> tuple[str, dict[str, float]]:
    """The comparison as Markdown, and each model's mean test top-1."""
    rows = variant_figures(collect([folder]), 3, "mixer_tiny")
    lines = ["| model | parameters | FLOPs / image | test top-1 (%) | vs mixer (paired) | seeds |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        paired = row.paired.format() if row.paired is not None else "baseline"
        lines.append(f"| {row.variant} | {row.params['deployed'].mean:,.0f} | "
                     f"{row.flops['deployed'].mean:,.0f} | {row.selected['final'].format()} | "
                     f"{paired} | {row.selected['final'].n} |")
    return "\n".join(lines) + "\n", {r.variant: r.selected["final"].mean for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/bench", help="run.dir of the sweep")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="every run's length")
    args = parser.parse_args()
    outcome = run_sweep(make_sweep(Path(args.runs), args.seeds, args.steps))
    text, means = table(outcome.folder)
    mixer = means.pop("mixer_tiny")
    behind = all(mixer < m for m in means.values())
    verdict = ("Paper's direction (from scratch on small data, the Mixer trails CNNs of its "
               f"cost): {'met' if behind else 'missed'} (mixer {mixer:.2f}, CNNs "
               f"{', '.join(f'{m:.2f}' for m in means.values())}).\n")
    setting = (f"MNIST, 5,000 training images (a stratified subset per seed), official 10,000 "
               f"test, {args.steps} steps of batch 64, AdamW lr 0.002 wd 0.05, cosine, 2-core "
               f"CPU, seeds 0..{args.seeds - 1}, test top-1 at the checkpoint selected on val, "
               "mean ± std.\n\n")
    out = ROOT / "benchmarks" / "results" / "mixer_vs_cnn.md"
    out.write_text(setting + text + "\n" + verdict)
    write_readme_section("mixer_vs_cnn", setting + text + "\n" + verdict)  # docs/benchmarks.md
    print(out.read_text())


if __name__ == "__main__":
    main()
