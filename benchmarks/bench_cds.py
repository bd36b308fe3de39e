"""Deep supervision, CDS and self-distillation compared on real data at CPU scale.

CIFAR-10 image folders (``../shared/data/cifar10-jpg``, JPEG quality 75, so accuracies sit a
little below figures on the original PNG-exact data): a fixed stratified training subset, a small
validation split carved from the rest of the training pool, and the full 10,000-image test set.
One small CIFAR ResNet, one epoch budget, the same optimizer and schedule for every method, three
seeds. Reports mean ± std test top-1 of the main exit (at the checkpoint selected on validation),
per-exit test top-1, and each method's training step time relative to supervised training.

Usage: ``python benchmarks/bench_cds.py [--model resnet8] [--train-subset 5000] [--epochs 15]``
Writes ``benchmarks/results/cds.json``, ``cds.md`` and the README's table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import write_readme_section

from auxilia.config import load_config
from auxilia.data.sources import load_dataset
from auxilia.engine import train

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
METHODS = {  # label -> method override
    "supervised": "supervised",
    "deep supervision": "deep_supervision",
    "CDS": "cds",
    "BYOT": "byot",
    "DDGSD": "ddgsd",
    "PS-KD": "ps_kd",
    "supervised, 2 views (reference)": "[{name: ddgsd, kd_weight: 0, feat_weight: 0}]",
}


def base_overrides(args: argparse.Namespace, tmp: Path) -> list[str]:
    root = Path(args.root) if Path(args.root).is_absolute() else (ROOT / args.root).resolve()
    return ["data.source=folder", f"data.root={root}", "data.val_fraction=0.02",
            f"data.train_subset={args.train_subset}", "data.batch_size=128",
            f"model.name={args.model}", "model.channels_last=true", "train.amp=true",
            f"train.epochs={args.epochs}", "optim.lr=0.1", "optim.weight_decay=5e-4",
            "schedule.name=cosine", "schedule.warmup_epochs=1", f"run.dir={tmp}",
            "run.progress=off", "run.tensorboard=false", "run.plot=false"]


def run_one(args: argparse.Namespace, method: str, seed: int, tmp: Path, data) -> dict:
    """One training run; ``method`` is a method override, optionally followed by
    ``;key=value`` overrides of the variant (e.g. ``cds;data.views={x_lb: weak}``)."""
    method_text, *extra = method.split(";")
    overrides = [*base_overrides(args, tmp), f"method={method_text}", *extra, f"seed={seed}",
                 f"run.name=m{list(METHODS.values()).index(method)}-s{seed}"]
    config = load_config(None, overrides)
    steps_per_epoch = len(data.train) // config.data.batch_size
    config.train.eval_every = steps_per_epoch * max(1, args.epochs // 3)
    result = train(config, overwrite=True, data=data)
    summary = result.summary
    return {"test_top1": summary["best_val"]["test"]["final/top1"],
            "exits": {k.split("/")[0]: v for k, v in summary["best_val"]["test"].items()
                      if k.endswith("/top1")},
            "step_ms": 1e3 * summary["train_seconds"] / summary["steps"],
            "steps": summary["steps"]}


def time_methods(args: argparse.Namespace, tmp: Path, data) -> dict[str, list[float]]:
    """Step time of each method on a quiet machine: ``--timing-steps`` steps, two rounds
    interleaved over the methods so that drift hits them alike (the first step is excluded by
    the warm-up run of round zero)."""
    times: dict[str, list[float]] = {label: [] for label in args.methods}
    for _ in range(2):
        for label in args.methods:
            method_text, *extra = METHODS[label].split(";")
            config = load_config(None, [*base_overrides(args, tmp), f"method={method_text}",
                                        *extra, f"train.steps={args.timing_steps}",
                                        "run.name=timing"])
            config.train.eval_every = 10**9
            config.data.eval_batch_size = 2048
            summary = train(config, overwrite=True, data=data).summary
            times[label].append(1e3 * summary["train_seconds"] / summary["steps"])
    return times


def fmt(values: list[float], digits: int = 2) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def table(results: dict, args: argparse.Namespace, machine: str, minutes: float,
          timing: dict[str, list[float]] | None = None) -> str:
    """The results table; step times from ``timing`` (quiet re-measurement) when given."""
    def step_ms(label: str) -> list[float]:
        return timing[label] if timing else [r["step_ms"] for r in results[label]]

    reference = "supervised" if "supervised" in results else next(iter(results))
    sup_ms = statistics.mean(step_ms(reference))
    exits = sorted({e for runs in results.values() for r in runs for e in r["exits"]
                    if e != "final"})
    head = ["method", "test top-1 (final)", *[f"{e} top-1" for e in exits],
            "step (ms)", "step / supervised"]
    lines = [f"CIFAR-10 JPEG folders, {args.model}, {args.train_subset} training images "
             f"(fixed stratified subset), {args.epochs} epochs, batch 128, SGD 0.1 cosine, "
             f"bf16 autocast; test = all 10,000 test images, checkpoint selected on a "
             f"1,000-image validation split; seeds {', '.join(map(str, args.seeds))} "
             f"(mean ± std). {machine}" + (f"; {minutes:.0f} min in all." if minutes else "."),
             "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, runs in results.items():
        row = [label, fmt([r["test_top1"] for r in runs])]
        for e in exits:
            vals = [r["exits"][e] for r in runs if e in r["exits"]]
            row.append(fmt(vals) if vals else "-")
        ms = step_ms(label)
        row += [fmt(ms, 1), f"{statistics.mean(ms) / sup_ms:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/cifar10-jpg",
                        help="the CIFAR-10 image folders; a relative path is taken from the "
                             "repository root")
    parser.add_argument("--model", default="resnet8")
    parser.add_argument("--train-subset", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=METHOD",
                        help="an extra method setting, e.g. 'CDS w 0.5=[{name: cds, weight: "
                             "0.5}]', optionally with ';key=value' config overrides")
    parser.add_argument("--name", default="cds", help="results file stem and README section")
    parser.add_argument("--timing-only", action="store_true",
                        help="re-measure step times of a finished run's methods on a quiet "
                             "machine and rewrite its table (accuracy runs are kept)")
    parser.add_argument("--timing-steps", type=int, default=60)
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the table and README section from the saved results")
    args = parser.parse_args()
    for item in args.variant:
        label, _, method = item.partition("=")
        METHODS[label] = method
        args.methods.append(label)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads")
    if args.timing_only:
        retime(args, machine)
        return
    if args.table_only:
        write_tables(args, json.loads((OUT / f"{args.name}.json").read_text()))
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset(load_config(None, base_overrides(args, Path(tmp))).data, seed=0)
        results: dict[str, list[dict]] = {label: [] for label in args.methods}
        for seed in args.seeds:
            for label in args.methods:
                run = run_one(args, METHODS[label], seed, Path(tmp), data)
                results[label].append(run)
                print(f"seed {seed} {label}: test {run['test_top1']:.2f} "
                      f"step {run['step_ms']:.1f} ms", flush=True)
    minutes = (time.perf_counter() - start) / 60
    OUT.mkdir(parents=True, exist_ok=True)
    methods = {label: METHODS[label] for label in args.methods}
    (OUT / f"{args.name}.json").write_text(json.dumps(
        {"args": vars(args), "methods": methods, "machine": machine, "results": results,
         "minutes": minutes},
        indent=2))
    text = table(results, args, machine, minutes)
    (OUT / f"{args.name}.md").write_text(text + "\n")
    write_readme_section(args.name, text)
    print(text)


def retime(args: argparse.Namespace, machine: str) -> None:
    """Add quiet step times (``quiet_step_ms``) to a finished benchmark and rewrite its table."""
    path = OUT / f"{args.name}.json"
    saved = json.loads(path.read_text())
    METHODS.update(saved.get("methods", {}))
    args.methods = list(saved["results"])
    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset(load_config(None, base_overrides(args, Path(tmp))).data, seed=0)
        times = time_methods(args, Path(tmp), data)
    saved["timing"] = {"steps": args.timing_steps, "machine": machine, "step_ms": times}
    path.write_text(json.dumps(saved, indent=2))
    write_tables(args, saved)


def write_tables(args: argparse.Namespace, saved: dict) -> None:
    """Write the markdown table and the README section from a saved benchmark."""
    saved_args = argparse.Namespace(**{**vars(args), **saved["args"],
                                       "methods": list(saved["results"])})
    timing = saved.get("timing")
    text = table(saved["results"], saved_args, saved["machine"], saved.get("minutes", 0),
                 timing["step_ms"] if timing else None)
    if timing:
        text += (f"\n\nStep times (mean ± std of two interleaved rounds of {timing['steps']} "
                 "steps per method) were measured separately on an otherwise idle machine; "
                 "the accuracy runs shared the CPU with other work.")
    (OUT / f"{args.name}.md").write_text(text + "\n")
    write_readme_section(args.name, text)
    print(text)


if __name__ == "__main__":
    main()
