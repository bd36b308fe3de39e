"""Input pipeline: the CDS reference training loop against auxilia's engine, step for step.

Contrastive Deep Supervision (Zhang et al., ECCV 2022) trains with two augmented views per
image. Its public code does the augmentation the usual PyTorch way: a ``DataLoader`` with
worker processes over an ``ImageFolder``-style dataset, decoding every JPEG and applying PIL
transforms per sample. auxilia decodes the images once and augments whole batches. This
script times both on the same model, batch and files, on this machine's CPU.

Both sides:

- model: auxilia's ``MultiExitModel`` for ``method: cds``, ``model.name: resnet18`` (CIFAR
  3x3 stem, a SepConv projection head on each of the 4 stages), built by
  :func:`auxilia.engine.setup.build_setup` from ``configs/cds_cifar100_resnet18.yaml`` with
  the overrides of :func:`auxilia_config`; a fresh model for every run;
- data: the CIFAR-10 training JPEGs (32 px), the same ``train_subset`` files (the reference
  reads the file names auxilia's split holds); batch 128, two views per image;
- step: one forward over both views concatenated (2 x 128), CE on view 1's final logits +
  0.1 x SupCon(τ 0.07, labels) on each head's projections, backward, SGD(0.1, momentum 0.9,
  wd 5e-4); fp32, and bf16 (CPU autocast + channels_last, as ``train.amp=true``).

Reference loop (written here, plain PyTorch, as the CDS code does it): ``DataLoader``
(``num_workers=2``) over ``torchvision.datasets.ImageFolder``; per sample, view 1 =
RandomCrop(32, 4) + flip + ToTensor + Normalize + Cutout 16 px (zeroed after normalisation),
view 2 = RandomCrop(32, 4) + flip + ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8 + RandomGrayscale
0.2 + ToTensor + Normalize. Its sampler draws (warm-up + steps) batches in one pass, so no
epoch boundary restarts the workers inside the timed window (a full CIFAR epoch is 390 steps).

auxilia: :func:`auxilia.engine.train` with the equivalent config (``method=cds``,
``model.channels_last=true``, ``train.amp`` false / true, evaluation only after the last step,
no progress bar, TensorBoard or plots, a temporary ``run.dir``); ``--workers N`` adds
``data.num_workers=N`` (default: auxilia's own default).

Timing (steady state, the same rule on both sides): each run does ``warmup + steps`` steps;
the time of a step is taken when it has finished (the reference: after ``optimizer.step()``;
auxilia: at the engine's per-step callback, called after each optimizer step, before any
evaluation), and seconds per step = (stamp[warmup + steps] - stamp[warmup]) / steps. This
drops the first steps (worker start-up, first-touch allocation, oneDNN kernel selection) and
excludes data loading (auxilia's decode of the files) and evaluation. The run summary's
``train_seconds`` / steps (all steps, warm-up included) and ``train_images_per_s`` are saved
too, as a cross-check, and every step's seconds. Defaults: 3 repeats of 3 + 10 steps (a step
takes 2-5 s on this 2-core CPU, so 40 steps per run would take over half an hour; in steady
state the step times vary by a few per cent, see the JSON). Speed-up = reference time /
auxilia time, per repeat; > 1 means auxilia is faster. Runs are interleaved (reference fp32,
auxilia fp32, reference bf16, auxilia bf16) so that drift of the machine hits both alike.

Data choices that only save wall time: ``data.root`` is the ``train/`` folder of
``/work/shared/data/cifar10-jpg`` (class folders), with ``data.test_fraction=0`` and
``data.val_fraction=0.002`` (100 images), so that no run decodes or evaluates the 10,000 test
images (neither counts in the timings). The splits are loaded once per process and handed to
every auxilia run (``train(..., data=...)``, as ``auxilia compare`` does).

Usage::

    flock /tmp/auxilia-cpu.lock .venv/bin/python benchmarks/bench_cds_reference.py \
        [--repeats 3] [--steps 10] [--warmup 3] [--subset 5000] [--workers N] [--table-only]

Writes ``benchmarks/results/cds_reference_workers<N>.json`` (N: auxilia's resolved input
workers) and the table of every saved one between ``<!-- bench:cds_reference -->`` markers in
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import nullcontext
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from bench_engine import write_readme_section
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler, Subset
from torchvision import transforms as T

from auxilia.config import Config, load_config
from auxilia.data.file_images import FileImages
from auxilia.data.sources import load_dataset
from auxilia.data.types import DatasetSplits
from auxilia.engine import train
from auxilia.engine.setup import build_setup, input_workers
from auxilia.losses import supcon

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
"""Holds ``cds_reference_workers<N>.json``, one per auxilia input worker count measured."""
BASE = ROOT / "configs" / "cds_cifar100_resnet18.yaml"
TRAIN_FOLDER = Path("/work/shared/data/cifar10-jpg/train")
NAME = "cds_reference"
BATCH, SEED, REF_WORKERS = 128, 0, 2
WEIGHT, TAU = 0.1, 0.07  # CDS: 0.1 x SupCon per head at temperature 0.07
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10, as the CDS code
TARGETS = {"fp32": 1.0, "bf16": 2.0}  # minimum speed-up of auxilia over the reference


class Cutout:
    """Zero one ``size`` x ``size`` square (clipped at the border) of a normalised image."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[1:]
        # torch's generator, seeded per DataLoader worker (numpy's would repeat across workers)
        y, x = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.size // 2
        img[:, max(0, y - half):min(h, y + half), max(0, x - half):min(w, x + half)] = 0
        return img


class TwoViews:
    """The CDS pair of per-sample PIL transforms: (Cutout view, colour view)."""

    def __init__(self) -> None:
        norm = [T.ToTensor(), T.Normalize(MEAN, STD)]
        base = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
        self.cutout = T.Compose([*base, *norm, Cutout(16)])
        self.color = T.Compose([*base, T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                                T.RandomGrayscale(p=0.2), *norm])

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cutout(img), self.color(img)


def auxilia_config(amp: bool, steps: int, run_dir: str, subset: int,
                   workers: int | None) -> Config:
    """The CDS ResNet-18 config on the CIFAR-10 training JPEGs, evaluated once at the end."""
    overrides = [
        "data.source=folder", f"data.root={TRAIN_FOLDER}", f"data.train_subset={subset}",
        "data.val_fraction=0.002", "data.test_fraction=0", f"data.batch_size={BATCH}",
        "model.name=resnet18", "model.channels_last=true", f"seed={SEED}",
        f"train.steps={steps}", f"train.eval_every={steps}", f"train.amp={str(amp).lower()}",
        f"run.dir={run_dir}", "run.progress=off", "run.tensorboard=false", "run.plot=false",
        *([f"data.num_workers={workers}"] if workers is not None else [])]
    config = load_config(BASE, overrides)
    methods = [m.name for m in config.method]
    if methods != ["cds"]:
        raise SystemExit(f"{BASE} should train method cds, not {methods}")
    return config


def steady(stamps: list[float], warmup: int) -> tuple[float, list[float]]:
    """Seconds per step after ``warmup`` steps, and every step's seconds (warm-up included);
    ``stamps[k]``: the end of step k, ``stamps[0]``: the start of the run."""
    durations = [round(b - a, 4) for a, b in pairwise(stamps)]
    return (stamps[-1] - stamps[warmup]) / (len(stamps) - 1 - warmup), durations


def reference_loader(names: list[str], steps: int) -> DataLoader:
    """The CDS-style loader over the given training files, ``steps`` batches in one pass."""
    folder = torchvision.datasets.ImageFolder(str(TRAIN_FOLDER), transform=TwoViews())
    index = {Path(path).relative_to(TRAIN_FOLDER).as_posix(): i
             for i, (path, _) in enumerate(folder.samples)}
    subset = Subset(folder, [index[name] for name in names])
    sampler = RandomSampler(subset, num_samples=steps * BATCH,
                            generator=torch.Generator().manual_seed(SEED))
    return DataLoader(subset, batch_size=BATCH, sampler=sampler, num_workers=REF_WORKERS,
                      drop_last=True)


def reference_run(config: Config, data: DatasetSplits, amp: bool, total: int,
                  warmup: int) -> tuple[float, list[float]]:
    """Seconds per steady-state step of the plain-PyTorch CDS loop, and every step's."""
    torch.manual_seed(SEED)
    model = build_setup(config, data).model
    layout = torch.channels_last if amp else torch.contiguous_format
    model.to(memory_format=layout).train()  # type: ignore[call-arg]
    heads = [spec.exit for spec in model.head_specs.values() if spec.field == "proj"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    names = [str(n) for n in data.train.names]
    batches: Iterator[Any] = iter(reference_loader(names, total))
    stamps = [time.perf_counter()]
    for _ in range(total):
        (x1, x2), y = next(batches)  # ImageFolder: (transform(image), label)
        x = torch.cat([x1, x2]).contiguous(memory_format=layout)
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if amp else nullcontext()
        with cast:
            outs = model(x)
            loss = F.cross_entropy(outs["final"]["logits"][:BATCH], y)
            for exit_name in heads:
                proj = outs[exit_name]["proj"]
                views = torch.stack([proj[:BATCH], proj[BATCH:]], dim=1)  # [B, 2, D]
                loss = loss + WEIGHT * supcon(views, y, TAU, TAU)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(time.perf_counter())
    return steady(stamps, warmup)


def auxilia_run(config: Config, data: DatasetSplits, warmup: int
                ) -> tuple[float, list[float], dict]:
    """Seconds per steady-state step of ``auxilia.engine.train``, every step's, the summary."""
    stamps: dict[int, float] = {0: time.perf_counter()}

    def stamp(step: int, _losses: dict[str, float]) -> None:
        stamps[step] = time.perf_counter()

    result = train(config, overwrite=True, callbacks=[stamp], data=data)
    ordered = [stamps[k] for k in sorted(stamps)]
    return *steady(ordered, warmup), result.summary


def auxilia_input(config: Config, data: DatasetSplits) -> dict[str, Any]:
    """How auxilia reads this run's images: its store and input worker processes (the
    defaults are ``auto``, resolved from the data and the device)."""
    store = "files" if isinstance(data.train.images, FileImages) else "memory"
    return {"storage": store, "workers": input_workers(config.data, data, torch.device("cpu"))}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def measure(args: argparse.Namespace) -> dict:
    """Interleaved repeats of the four runs; the report saved as JSON."""
    total = args.warmup + args.steps
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "seeds": [SEED] * args.repeats,
        "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup,
        "batch": BATCH, "views": 2, "train_subset": args.subset, "data": str(TRAIN_FOLDER),
        "reference_workers": REF_WORKERS, "auxilia_workers": args.workers,
        "precisions": {p: {"reference_s": [], "auxilia_s": [], "auxilia_summary_s": [],
                           "auxilia_images_per_s": [], "reference_step_s": [],
                           "auxilia_step_s": []} for p in TARGETS}}
    with tempfile.TemporaryDirectory() as tmp:
        base = auxilia_config(False, total, tmp, args.subset, args.workers)
        start = time.perf_counter()
        data = load_dataset(base.data, seed=base.seed)  # once: every run reads the same splits
        report["data_load_s"] = round(time.perf_counter() - start, 1)
        report["auxilia_input"] = auxilia_input(base, data)
        for repeat in range(args.repeats):
            for precision in TARGETS:
                amp = precision == "bf16"
                config = auxilia_config(amp, total, tmp, args.subset, args.workers)
                row = report["precisions"][precision]
                seconds, durations = reference_run(config, data, amp, total, args.warmup)
                row["reference_s"].append(seconds)
                row["reference_step_s"].append(durations)
                seconds, durations, summary = auxilia_run(config, data, args.warmup)
                row["auxilia_s"].append(seconds)
                row["auxilia_step_s"].append(durations)
                row["auxilia_summary_s"].append(summary["train_seconds"] / summary["steps"])
                row["auxilia_images_per_s"].append(summary["train_images_per_s"])
                print(f"repeat {repeat + 1}/{args.repeats} {precision}: reference "
                      f"{1e3 * row['reference_s'][-1]:.0f} ms/step, auxilia "
                      f"{1e3 * seconds:.0f} ms/step", flush=True)
    for row in report["precisions"].values():
        row["speedup"] = [r / a for r, a in zip(row["reference_s"], row["auxilia_s"],
                                                 strict=True)]
    return report


def table(reports: list[dict]) -> str:
    """The markdown block for docs/benchmarks.md: one pair of rows per saved measurement."""
    first = reports[0]
    lines = [
        f"Machine: {first['machine']}, torch {first['torch']}, torchvision "
        f"{first['torchvision']}. ResNet-18 (CIFAR stem) + 4 SepConv projection heads, CDS "
        f"loss, batch {first['batch']} x 2 views, CIFAR-10 JPEGs (train_subset "
        f"{first['train_subset']}), seed {SEED}; {first['repeats']} repeats of "
        f"{first['steps']} steps after {first['warmup']} warm-up steps, mean ± std. Reference: "
        f"DataLoader with {first['reference_workers']} workers, per-sample PIL transforms; "
        "auxilia: `auxilia.engine.train` from the memory store, its next batch built between "
        "steps (0 input workers, the default on a CPU) or during the step (1 input worker).",
        "",
        "| auxilia input | precision | auxilia (ms/step) | reference as published, fp32 "
        "(ms/step) | speed-up over it | target | | reference with the same precision (ms/step) "
        "| speed-up over it | measured |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for report in reports:
        inp = report.get("auxilia_input", {})
        where = (f"{inp.get('workers')} worker(s) ("
                 + ("during the step" if inp.get("workers") else "between steps") + ")")
        published = report["precisions"]["fp32"]["reference_s"]  # the CDS code trains in fp32
        for precision, row in report["precisions"].items():
            aux = mean_std([1e3 * s for s in row["auxilia_s"]])
            ref = mean_std([1e3 * s for s in published])
            over = mean_std([r / a for r, a in zip(published, row["auxilia_s"], strict=True)])
            same = mean_std([1e3 * s for s in row["reference_s"]])
            speed = mean_std(row["speedup"])
            target = TARGETS[precision]
            verdict = "met" if over[0] >= target else "**missed**"
            lines.append(f"| {where} | {precision} | {aux[0]:.0f} ± {aux[1]:.0f} "
                         f"| {ref[0]:.0f} ± {ref[1]:.0f} | {over[0]:.2f} ± {over[1]:.2f} "
                         f"| ≥ {target:.1f} | {verdict} | {same[0]:.0f} ± {same[1]:.0f} "
                         f"| {speed[0]:.2f} ± {speed[1]:.2f} | {report['date']} |")
    lines += ["", "The targets compare auxilia with the reference loop as the published code runs "
              "it, in fp32 (it has no mixed precision on the CPU). Given bf16 autocast too, the "
              "reference's step is the model's compute plus what its loader workers take from "
              "the two cores, and auxilia's advantage shrinks to the input pipeline's share of "
              "the step (the column before last). On two cores an input worker costs the bf16 "
              "step a few per cent (it takes time from one of the two threads of the step), "
              "which is why `data.num_workers: auto` prepares the memory store's batches in the "
              "training process on a CPU."]
    return "\n".join(lines)


def write_table(reports: list[dict]) -> None:
    """Write the block into whichever docs page holds its markers (docs/benchmarks.md)."""
    text = table(reports)
    marker = f"<!-- bench:{NAME} -->"
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    if not any(marker in page.read_text() for page in pages):
        print(f"warning: no {marker} in the docs; only {RESULTS} holds the results")
    write_readme_section(NAME, text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    # 10 + 3 steps, not 40 + 5: a step takes 2-5 s here, and 3 repeats of the four runs must
    # finish in about 10 minutes; the per-step times in the JSON show step 2 on is steady
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--subset", type=int, default=5000, help="data.train_subset")
    parser.add_argument("--workers", type=int, default=None,
                        help="auxilia's data.num_workers (default: auxilia's default)")
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the docs table from the saved results, measuring nothing")
    args = parser.parse_args()
    if args.table_only:
        write_table(saved())
        return
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1, --warmup >= 0")
    report = measure(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"cds_reference_workers{report['auxilia_input']['workers']}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    write_table(saved())


def saved() -> list[dict]:
    """Every saved measurement, by auxilia's input worker count."""
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("cds_reference_workers*.json"))]


if __name__ == "__main__":
    main()
