"""The input pipeline alone, against a training step; the file store's memory.

Measures, on this machine:

1. images/s of the input pipeline alone: ``Batches.build(setup).next(step)`` of a real
   :class:`~auxilia.engine.setup.Setup` (no model step), batch 128, the batches of
   ``supervised`` (one ``weak`` view) and ``cds`` (two views), per store (memory, files) and
   input worker count (0, 1, 2; ``auto`` resolved by ``input_workers``), on CIFAR-10's 32 px
   JPEGs and on 224 px crops of large JPEGs made from them (500x375, in a temporary folder);
   the host half alone (``BatchReader.host``: files decoded, no view: a worker's share when the
   views run on a GPU), per core;
2. against it, forward + backward + SGD images/s of ResNet-18 / ResNet-50 on this CPU (fp32,
   and bf16 autocast + channels_last as ``train.amp=true``), and published single-GPU
   training figures (quoted, not measured);
3. ``load_dataset`` with the file store, its index cache cold, then warm;
4. the training process's peak resident memory (``ru_maxrss``, a fresh process per size)
   after 20 steps of ``small_cnn`` at 64 px with 2 workers, at 1x, 4x and 16x a folder of
   256 px JPEGs, file store against memory store.

Usage: ``flock /tmp/auxilia-cpu.lock python benchmarks/bench_input.py [--steps 30]
[--repeats 3] [--smoke] [--table-only]``; writes ``benchmarks/results/input_pipeline.json``
and the blocks ``input_pipeline`` and ``input_memory`` of docs/performance.md. Everything
generated (images, index cache, runs) lives in a temporary folder, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import mean_std, write_readme_section

from auxilia.config import Config, load_config
from auxilia.data.files import cpu_count
from auxilia.data.sources import load_dataset
from auxilia.data.types import DatasetSplits
from auxilia.engine.batches import Batches, BatchReader, build_streams
from auxilia.engine.setup import Setup, build_setup, input_workers
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import create_backbone
from auxilia.ranks import Ranks

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "input_pipeline.json"
CIFAR = Path("/work/shared/data/cifar10-jpg")
BATCH, MODEL_BATCH, SEED = 128, 32, 0
METHODS = {"supervised": "supervised (1 view)", "cds": "cds (2 views)"}
WORKERS = (0, 1, 2)
MODELS = {  # key -> (label, auxilia model name, input side)
    "resnet18_32": ("ResNet-18, CIFAR stem (zoo `resnet18`)", "resnet18", 32),
    "resnet18_224": ("ResNet-18 (`timm/resnet18`)", "timm/resnet18", 224),
    "resnet50_224": ("ResNet-50 (`timm/resnet50`)", "timm/resnet50", 224),
}
# Published single-GPU training throughput (images/s): quoted, NOT measured here.
GPU_PUBLISHED = {
    # NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md,
    # "Training performance: NVIDIA DGX A100 (8x A100 80GB)", 1 GPU, mixed precision, 224 px,
    # pytorch-21.03 container: 2470 img/s.
    "resnet50_224": (2470, "2,470: ResNet-50 v1.5, AMP, 1x A100 80GB (NVIDIA "
                           "DeepLearningExamples)"),
    # libffcv/ffcv-imagenet README: ResNet-18, 16 epochs of ImageNet (1,281,167 images) on
    # 1x A100 in 35.0 min at 160-192 px (FFCV loader, evaluation included):
    # 1,281,167 * 16 / 2,100 s = 9,761 img/s.
    "resnet18_224": (9760, "9,760: ResNet-18, 1x A100, 160-192 px (FFCV ImageNet example, "
                           "16 epochs in 35.0 min)"),
}


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}"


def _upscale(job: tuple[str, str, int, int, int, int]) -> None:
    """One generated JPEG: ``src`` stretched to ``w`` x ``h`` (bicubic), then a random
    ``crop`` x ``crop`` square of it when ``crop`` (so that copies of one source differ)."""
    src, dst, w, h, crop, seed = job
    with Image.open(src) as im:
        big = im.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    if crop:
        rng = np.random.default_rng(seed)
        left, top = int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1))
        big = big.crop((left, top, left + crop, top + crop))
    big.save(dst, quality=90)


def make_folder(root: Path, per_class: dict[str, int], size: tuple[int, int], crop: int = 0
                ) -> None:
    """``root/<split>/<class>/`` of upscaled CIFAR-10 images, ``per_class[split]`` per class,
    each from a different source image."""
    jobs = []
    for split, n in per_class.items():
        for cls in sorted(p.name for p in (CIFAR / split).iterdir()):
            (root / split / cls).mkdir(parents=True)
            for i, name in enumerate(sorted(os.listdir(CIFAR / split / cls))[:n]):
                jobs.append((str(CIFAR / split / cls / name), str(root / split / cls / f"{i}.jpg"),
                             *size, crop, len(jobs)))
    with ProcessPoolExecutor(cpu_count()) as pool:
        list(pool.map(_upscale, jobs, chunksize=64))


def link_subset(big: Path, root: Path, per_class: int) -> None:
    """``root``: hard links to the first ``per_class`` training images of each class of
    ``big`` and to all its test images (no bytes copied, every file its own content)."""
    for path in sorted(big.rglob("*.jpg")):
        rel = path.relative_to(big)
        if rel.parts[0] == "train" and int(path.stem) >= per_class:
            continue
        (root / rel.parent).mkdir(parents=True, exist_ok=True)
        os.link(path, root / rel)


def data_config(root: Path, size: int, store: str, crop: str, extra: list[str] | None = None
                ) -> Config:
    return load_config(None, [
        "data.source=folder", f"data.root={root}", f"data.image_size={size}",
        f"data.storage={store}", f"data.crop={crop}", f"data.batch_size={BATCH}",
        "model.name=small_cnn", f"seed={SEED}", *(extra or [])])


def timed_load(config: Config) -> tuple[DatasetSplits, float]:
    start = time.perf_counter()
    data = load_dataset(config.data, seed=config.seed)
    return data, time.perf_counter() - start


def pipeline_rate(setup: Setup, steps: int, warmup: int) -> float:
    """Samples/s of ``Batches.next`` after ``warmup`` batches (worker start-up excluded)."""
    batches = Batches.build(setup)
    try:
        for step in range(warmup):
            batches.next(step)
        start = time.perf_counter()
        for step in range(warmup, warmup + steps):
            batches.next(step)
        elapsed = time.perf_counter() - start
    finally:
        batches.close()
    return steps * BATCH / elapsed


def host_rate(setup: Setup, steps: int) -> float:
    """Samples/s of the host half alone, in this process (a GPU run's worker: no views)."""
    reader = BatchReader(setup, Ranks(), views_here=False)
    streams = build_streams(setup)
    reader.host({name: next(s) for name, s in streams.items()}, 0)  # warm-up
    start = time.perf_counter()
    for step in range(1, steps + 1):
        reader.host({name: next(s) for name, s in streams.items()}, step)
    return steps * BATCH / (time.perf_counter() - start)


def measure_set(name: str, root: Path, size: int, stores: dict[str, tuple[str, list[str]]],
                args: argparse.Namespace, repeats: int, report: dict) -> None:
    """Every store, method and worker count of one image set (``stores``: store -> crop and
    extra overrides)."""
    for store, (crop, extra) in stores.items():
        config = data_config(root, size, store, crop, extra)
        data, first = timed_load(config)
        entry = {"set": name, "store": store, "crop": crop, "train": len(data.train),
                 "repeats": repeats,
                 "load_s": [first], "auto": input_workers(config.data, data, torch.device("cpu"))}
        if store == "files":  # the second load reads the index cache
            data, again = timed_load(config)
            entry["load_s"].append(again)
        print(f"{name} {store}: {len(data.train)} train, load {entry['load_s']} s", flush=True)
        entry["rates"] = {}
        for method in METHODS:
            for workers in WORKERS:
                cfg = data_config(root, size, store, crop, [*extra, f"method={method}",
                                                            f"data.num_workers={workers}"])
                setup = build_setup(cfg, data)
                rates = [pipeline_rate(setup, args.steps, args.warmup) for _ in range(repeats)]
                entry["rates"][f"{method}/{workers}"] = rates
                print(f"  {method} {workers} workers: {mean_std(rates)[0]:.0f} images/s",
                      flush=True)
                if store == "files" and method == "supervised" and workers == 0:
                    entry["host"] = [host_rate(setup, args.host_steps) for _ in range(repeats)]
        report["pipeline"].append(entry)
        del data


def model_rate(name: str, size: int, amp: bool, steps: int) -> list[float]:
    """Images/s of forward + backward + SGD step per timed step (one warm-up step first)."""
    backbone = create_backbone(name, in_chans=3, image_size=size)
    model = MultiExitModel(backbone, 10, init_seed=SEED).train()
    x = torch.randn(MODEL_BATCH, 3, size, size)
    y = torch.randint(0, 10, (MODEL_BATCH,))
    if amp:  # as train.amp=true with model.channels_last=true
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rates = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x)["final"]["logits"], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rates.append(MODEL_BATCH / (time.perf_counter() - start))
    return rates[1:]


def rss_child(root: str, store: str, steps: int, runs: str) -> None:
    """Trains in this (fresh) process and prints its peak resident memory as JSON."""
    from auxilia.engine import train
    config = data_config(Path(root), 64, store, "resize", [
        "data.num_workers=2", f"train.steps={steps}", f"train.eval_every={steps}",
        f"run.dir={runs}", "run.progress=off", "run.tensorboard=false", "run.plot=false"])
    start = time.perf_counter()
    train(config, overwrite=True)
    # ru_maxrss keeps the peak of the process that forked and exec'd this one (Linux carries
    # it over exec), here the benchmark's own gigabytes: VmHWM is this process image's peak.
    status = Path("/proc/self/status").read_text().splitlines()
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"rss_mib": hwm / 1024, "seconds": time.perf_counter() - start,
                      "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure_rss(tmp: Path, args: argparse.Namespace) -> list[dict]:
    base = args.rss_base // 10
    big = tmp / "rss_big"
    make_folder(big, {"train": base * max(args.multiples), "test": 10}, (288, 288), crop=256)
    rows = []
    for k in args.multiples:
        root = tmp / f"rss_x{k}"
        link_subset(big, root, base * k)
        files = sum(1 for _ in root.rglob("*.jpg"))
        for store in ("files", "memory"):
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", str(root), store,
                 str(args.rss_steps), str(tmp / "runs")], check=True, capture_output=True,
                text=True)
            row = {"multiple": k, "files": files, "store": store, "steps": args.rss_steps,
                   "decoded_mib": files * 3 * 64 * 64 / 2**20,
                   **json.loads(out.stdout.strip().splitlines()[-1])}
            print(row, flush=True)
            rows.append(row)
        shutil.rmtree(root)
    return rows


def run(args: argparse.Namespace) -> dict:
    report: dict = {"machine": machine(), "seed": SEED, "batch": BATCH, "steps": args.steps,
                    "warmup": args.warmup, "repeats": args.repeats, "model_batch": MODEL_BATCH,
                    "pipeline": [], "models": {}, "gpu_published": GPU_PUBLISHED}
    tmp = Path(tempfile.mkdtemp(prefix="auxilia-bench-input-"))
    os.environ["AUXILIA_CACHE_DIR"] = str(tmp / "cache")  # never the user's cache
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        measure_set("32 px CIFAR-10 JPEGs", CIFAR, 32, {
            "memory": ("resize", [f"data.train_subset={args.cifar_subset}"]),
            "files": ("resize", [f"data.train_subset={args.cifar_subset}"])}, args, args.repeats,
            report)
        large = tmp / "large"
        start = time.perf_counter()
        make_folder(large, {"train": args.large // 10, "test": args.large // 100}, (500, 375))
        report["large_make_s"] = time.perf_counter() - start
        measure_set("224 px from 500x375 JPEGs", large, 224, {
            "files": ("random_resized", []), "memory": ("resize", [])}, args, args.large_repeats,
            report)
        shutil.rmtree(large)
        for key, (_, name, size) in MODELS.items():
            report["models"][key] = {amp: model_rate(name, size, amp == "bf16", args.model_steps)
                                     for amp in ("fp32", "bf16")}
            print(key, {k: round(mean_std(v)[0], 1) for k, v in report["models"][key].items()},
                  flush=True)
        report["rss"] = measure_rss(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _ms(values: list[float], digits: int = 0) -> str:
    """``mean ± std``, or the one value measured."""
    m, s = mean_std(values)
    if len(values) == 1:
        return f"{m:,.{digits}f}"
    return f"{m:,.{digits}f} ± {s:,.{digits}f}"


def pipeline_tables(r: dict) -> str:
    lines = [f"Machine: {r['machine']}. Batch {r['batch']}, seed {r['seed']}; {r['warmup']} "
             f"warm-up + {r['steps']} timed batches per measurement, repeated "
             + ", ".join(sorted({f"{e['repeats']}x at {e['set'].split()[0]} px"
                                 for e in r["pipeline"]})) + " (mean ± std when repeated); "
             "images/s counts samples (cds builds two views of each). No model step.", "",
             "| images | store (crop) | method | 0 workers | 1 worker | 2 workers | "
             "default (`auto`) |", "|---|---|---|---|---|---|---|"]
    for e in r["pipeline"]:
        for method, label in METHODS.items():
            cells = [_ms(e["rates"][f"{method}/{w}"]) for w in WORKERS]
            lines.append(f"| {e['set']} ({e['train']:,} train) | {e['store']} ({e['crop']}) | "
                         f"{label} | {' | '.join(cells)} | {e['auto']} workers |")
    lines += ["", "`load_dataset` wall time (index cache cold → warm; the files' pages were in "
              "the OS cache both times): " + "; ".join(
                  f"{e['set']}, {e['store']}: " + " → ".join(f"{s:.1f} s" for s in e["load_s"])
                  for e in r["pipeline"]) + ".", "",
              f"Against a training step (forward + backward + SGD, batch {r['model_batch']}, on "
              "this CPU; bf16 = autocast + channels_last as `train.amp=true`), and published "
              "single-GPU training figures (quoted, **not measured**). The pipeline's rate is "
              "`supervised` at the default worker count; decode per core is the host half "
              "alone (files read and cropped, no view: what a worker does when the views run "
              "on the GPU), in one process.", "",
              "| images, store | model | CPU step fp32 | CPU step bf16 | pipeline (default "
              "workers) | pipeline faster than the CPU step? | published 1-GPU training | "
              "decode per core | cores to feed the GPU |", "|---|---|---|---|---|---|---|---|---|"]
    for key, (label, _, size) in MODELS.items():
        steps = r["models"][key]
        best = max(mean_std(v)[0] for v in steps.values())
        for e in (e for e in r["pipeline"] if e["set"].startswith(f"{size} px")):
            default = e["rates"][f"supervised/{e['auto']}"]
            pipe = mean_std(default)[0]
            verdict = f"yes ({pipe / best:,.0f}x)" if pipe > best else \
                f"**no** ({pipe / best:.2f}x: missed)"
            gpu, source = GPU_PUBLISHED.get(key, (None, "none quoted"))
            per_core = mean_std(e["host"])[0] if "host" in e else None
            cores = ("0 (gathered from memory)" if per_core is None else
                     f"{math.ceil(gpu / per_core)}" if gpu else "—")
            lines.append(
                f"| {e['set'].split(' from')[0]}, {e['store']} ({e['crop']}) | {label} | "
                f"{_ms(steps['fp32'], 1)} | {_ms(steps['bf16'], 1)} | "
                f"{_ms(default)} ({e['auto']}) | "
                f"{verdict} | {source} | "
                f"{'—' if per_core is None else f'{per_core:,.0f}'} | {cores} |")
    return "\n".join(lines)


def memory_table(r: dict) -> str:
    rows = {(x["multiple"], x["store"]): x for x in r["rss"]}
    lines = ["Peak resident memory of the training process (`VmHWM`, a fresh process per "
             "row, after `auxilia`'s `train`: data loaded, "
             f"{r['rss'][0].get('steps', 20)} steps of `small_cnn` at 64 px with "
             "`data.num_workers=2`, the final evaluation; its worker processes not counted), "
             "one run each; the images are 256x256 JPEGs (train + test; val is carved from "
             "train).", "",
             "| size | image files | file store (MiB) | memory store (MiB) | decoded at 64 px "
             "(MiB) |", "|---|---|---|---|---|"]
    for k in sorted({m for m, _ in rows}):
        f, m = rows[(k, "files")], rows[(k, "memory")]
        lines.append(f"| {k}x | {f['files']:,} | {f['rss_mib']:,.0f} | {m['rss_mib']:,.0f} | "
                     f"{f['decoded_mib']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-repeats", type=int, default=1,
                        help="repeats at 224 px (a measurement takes 10-30 s there)")
    parser.add_argument("--host-steps", type=int, default=10)
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument("--cifar-subset", type=int, default=5000)
    parser.add_argument("--large", type=int, default=2000, help="large training JPEGs")
    parser.add_argument("--rss-base", type=int, default=1000, help="training files at 1x")
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rss-steps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny counts; prints the tables, writes nothing")
    parser.add_argument("--table-only", action="store_true",
                        help="regenerate the docs' tables from the JSON results")
    parser.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        root, store, steps, runs = args.rss_child
        rss_child(root, store, int(steps), runs)
        return
    if args.smoke:
        args.steps, args.warmup, args.repeats, args.host_steps, args.model_steps = 2, 1, 2, 2, 1
        args.cifar_subset, args.large, args.rss_base, args.multiples = 500, 100, 50, [1, 2]
        args.rss_steps = 3
    if args.table_only:
        report = json.loads(RESULTS.read_text())
    else:
        start = time.perf_counter()
        report = run(args)
        report["total_s"] = time.perf_counter() - start
        if not args.smoke:
            RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    tables = pipeline_tables(report), memory_table(report)
    if not args.smoke:
        write_readme_section("input_pipeline", tables[0])
        write_readme_section("input_memory", tables[1])
    print(*tables, f"total {report.get('total_s', 0):.0f} s", sep="\n\n")


if __name__ == "__main__":
    main()
