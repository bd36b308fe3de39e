"""The prepared GPU check: one command that exercises every CUDA path and prints digits.

On a GPU machine (no network needed: the data is scikit-learn's bundled digits, resized to
32x32, trained with ResNet-20), in about 5 minutes on an H100::

    python benchmarks/gpu_check.py

1. every recipe family (supervised, deep_supervision, cds, byot, kd from a teacher trained
   first, dml, mean_teacher, fixmatch, mixmatch, temporal_ensembling) for 20 steps in fp32,
   bf16, fp16 with the gradient scaler and channels_last, under
   ``torch.cuda.set_sync_debug_mode("warn")``: host syncs per step (the warnings counted
   between two callbacks; step 1 and the step after each logging step are reported apart,
   as their syncs belong to warm-up and logging), images/s, and the peak memory
   (``torch.cuda.max_memory_allocated``) against the memory estimate;
2. two deterministic runs compared bit for bit;
3. a straight run against one interrupted half-way and resumed, bit for bit;
4. ``auxilia eval --device cpu`` of a GPU-trained run against the same eval on the GPU;
5. ``pytest -m gpu``.

It writes ``gpu_check.json`` under ``$OUT`` when set (the GPU machine's result folder), else
under ``benchmarks/results/``. A reduced form runs anywhere, e.g. on a laptop's CPU::

    python benchmarks/gpu_check.py --device cpu --steps 3 --recipes supervised --no-pytest

(``tests/test_gpu_check.py`` runs it smaller still: 8x8 digits and a small CNN.)

It uses the Python API (``auxilia.engine.train``, for its callbacks), the command line
(``auxilia eval``) and the memory estimate (:mod:`auxilia.engine.memory`), never the engine's
step internals.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout, suppress
from io import StringIO
from pathlib import Path
from typing import Any

import torch

from auxilia.cli import main as cli
from auxilia.config import load_config
from auxilia.engine import train as engine_train
from auxilia.engine.memory import estimate_step
from auxilia.engine.setup import build_setup, step_views

ROOT = Path(__file__).resolve().parents[1]
SEMI = {"data.labels_per_class": 20}
FAMILIES: dict[str, dict[str, Any]] = {
    "supervised": {}, "deep_supervision": {}, "cds": {}, "byot": {}, "kd": {}, "dml": {},
    "mean_teacher": SEMI, "fixmatch": SEMI, "mixmatch": SEMI, "temporal_ensembling": SEMI}
PRECISIONS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "bf16": {"train.amp": True, "train.amp_dtype": "bfloat16"},
    "fp16": {"train.amp": True, "train.amp_dtype": "float16"},  # with the gradient scaler
    "channels_last": {"model.channels_last": True},
}
LOG_EVERY = 10
SYNC = "synchroniz"  # torch's warning: "called a synchronizing CUDA operation"


def settings(args: argparse.Namespace, folder: Path, name: str, **extra: Any) -> dict[str, Any]:
    """A run's dotted settings: digits (32x32, ResNet-20 by default), one evaluation at the
    end."""
    return {"run.dir": str(folder), "run.name": name, "run.progress": "off",
            "run.tensorboard": False, "run.plot": False, "train.device": args.device,
            "train.steps": args.steps, "train.eval_every": args.steps,
            "train.log_every": LOG_EVERY, "train.deterministic": False,
            "data.batch_size": args.batch_size, "data.eval_batch_size": 256,
            "data.image_size": args.image_size, "model.name": args.model, **extra}


def items(run: dict[str, Any], teacher: Path | None = None) -> list[str]:
    """Dotted settings as the command line's ``key=value`` items."""
    found = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in run.items()]
    return [*found, f"teacher.run={teacher}"] if teacher else found


def train(run: dict[str, Any], teacher: Path | None = None, **kwargs: Any) -> Any:
    """``auxilia.engine.train`` (the Python API, with callbacks) of dotted settings."""
    return engine_train(load_config(None, items(run, teacher)), **kwargs)


class SyncCounter:
    """Host syncs per step, from the warnings of ``torch.cuda.set_sync_debug_mode("warn")``
    counted between two callbacks (a step's work, its callback's conversions and whatever the
    loop did after the previous step: logging, evaluation)."""

    def __init__(self) -> None:
        self.counting = False
        self.per_step: dict[int, int] = {}
        self._log: list[warnings.WarningMessage] = []
        self._seen = 0

    @contextmanager
    def active(self, cuda: bool) -> Iterator[SyncCounter]:
        if not cuda:  # no sync to count on the CPU
            yield self
            return
        with warnings.catch_warnings(record=True) as log:
            warnings.filterwarnings("always", message=f".*{SYNC}")
            self._log, self.counting = log, True
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield self
            finally:
                torch.cuda.set_sync_debug_mode(0)

    def __call__(self, step: int, losses: dict[str, float]) -> None:
        if not self.counting:
            return
        new = self._log[self._seen:]
        self._seen = len(self._log)
        self.per_step[step] = sum(SYNC in str(w.message) for w in new)

    def figures(self) -> dict[str, Any]:
        """Median and max over the steps free of warm-up and logging, and those apart."""
        marked = {s for s in self.per_step if s == 1 or (s - 1) % LOG_EVERY == 0}
        clean = [n for s, n in self.per_step.items() if s not in marked]
        return {"median": statistics.median(clean) if clean else None,
                "max": max(clean) if clean else None,
                "marked_max": max((self.per_step[s] for s in marked), default=None),
                "per_step": self.per_step}


def estimate_mib(run: dict[str, Any], teacher: Path | None) -> float | None:
    """The step's memory estimate (every model counted), in MiB."""
    setup = build_setup(load_config(None, items(run, teacher)))
    estimate = estimate_step(setup.config, setup.model, setup.data.image_shape,
                             step_views(setup.objective, setup.config.data.batch_size),
                             setup.device, setup.objective)
    del setup
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None if estimate is None else estimate.total / 2**20


def recipe_row(args: argparse.Namespace, folder: Path, recipe: str, precision: str,
               teacher: Path | None) -> dict[str, Any]:
    """One recipe in one precision: syncs, speed, memory against the estimate."""
    cuda = torch.device(args.device).type == "cuda"
    run = settings(args, folder, f"{recipe}-{precision}", method=recipe, **FAMILIES[recipe],
                   **PRECISIONS[precision])
    estimate = estimate_mib(run, teacher)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    counter = SyncCounter()
    with counter.active(cuda):
        result = train(run, teacher if recipe == "kd" else None, callbacks=[counter])
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    summary = result.summary
    return {"recipe": recipe, "precision": precision, "steps": summary["steps"],
            "skipped": summary["skipped_steps"], "images_per_s": summary["train_images_per_s"],
            "syncs": counter.figures(), "peak_mib": peak, "estimate_mib": estimate,
            "estimate_over_peak": estimate / peak if peak and estimate else None}


def checkpoint_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """The models of ``last.pt`` (deployed model and slots), flattened by name."""
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    flat = {f"model.{k}": v for k, v in state["model"].items()}
    for slot, tensors in state.get("slots", {}).items():
        flat.update({f"{slot}.{k}": v for k, v in tensors.items()})
    return flat


def differing(a: Path, b: Path) -> list[str]:
    """Names of the checkpoint tensors that are not bit for bit equal."""
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    return sorted(k for k in ta if k not in tb or not torch.equal(ta[k], tb[k]))


def determinism(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Two deterministic runs (CDS by default: contrastive loss, auxiliary heads), bit for
    bit."""
    recipe = args.determinism_recipe
    runs = [train(settings(args, folder, f"deterministic-{i}", method=recipe,
                           **FAMILIES[recipe], **{"train.deterministic": True}))
            for i in range(2)]
    return {"differing": differing(runs[0].run_dir, runs[1].run_dir),
            "nondeterministic_ops": runs[0].summary["determinism"]["nondeterministic_ops"]}


def resumption(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """A run (Mean Teacher by default: an EMA model, two streams) straight, and interrupted
    half-way then resumed."""
    recipe = args.resume_recipe
    common = {"method": recipe, **FAMILIES[recipe], "train.deterministic": True}
    straight = train(settings(args, folder, "straight", **common))
    half = max(1, args.steps // 2)

    def interrupt(step: int, losses: dict[str, float]) -> None:
        if step == half:
            signal.raise_signal(signal.SIGINT)

    resumed_run = settings(args, folder, "resumed", **common)
    with suppress(KeyboardInterrupt):  # the interruption, with last.pt written
        train(resumed_run, callbacks=[interrupt])
    resumed = train(resumed_run, resume=True)
    return {"interrupted_at": half, "differing": differing(straight.run_dir, resumed.run_dir),
            "run": str(straight.run_dir)}


def eval_on_cpu(run_dir: Path) -> dict[str, Any]:
    """``auxilia eval`` on the run's own device and with ``--device cpu``: final top-1."""
    top1 = {}
    for device in ("run", "cpu"):
        extra = ["--device", "cpu"] if device == "cpu" else []
        with redirect_stdout(StringIO()):
            code = cli(["eval", str(run_dir), "--split", "test", "--latency-batch", "8",
                        *extra])
        report = json.loads((run_dir / "anytime.json").read_text())
        top1[device] = {"code": code, "device": report["device"],
                        "top1": report["exits"]["final"]["test"]["top1"]}
    return top1


def gpu_tests() -> dict[str, Any]:
    """``pytest -m gpu``: its exit status and its last line."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"],
                          cwd=ROOT, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {"code": done.returncode, "last_line": lines[-1] if lines else ""}


def machine(device: str) -> dict[str, Any]:
    name = (torch.cuda.get_device_name(torch.device(device))
            if torch.device(device).type == "cuda" else "cpu")
    return {"device": device, "name": name, "torch": torch.__version__,
            "cuda": torch.version.cuda}


def run_check(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Every part of the check; the figures as a JSON-ready dict."""
    results: dict[str, Any] = {"machine": machine(args.device), "steps": args.steps,
                               "timings_s": {}}

    def timed(name: str, fn: Any, *fn_args: Any) -> Any:
        start = time.perf_counter()
        value = fn(*fn_args)
        results["timings_s"][name] = round(time.perf_counter() - start, 1)
        return value

    teacher = None
    if "kd" in args.recipes:  # the teacher: a supervised run trained first
        teacher = timed("teacher", train, settings(args, folder, "teacher")).run_dir
    results["recipes"] = [timed(f"{r}-{p}", recipe_row, args, folder, r, p, teacher)
                          for r in args.recipes for p in args.precisions]
    results["determinism"] = timed("determinism", determinism, args, folder)
    resumed = timed("resumption", resumption, args, folder)
    results["resumption"] = resumed
    results["eval_on_cpu"] = timed("eval", eval_on_cpu, Path(resumed.pop("run")))
    if args.pytest:
        results["pytest_gpu"] = timed("pytest", gpu_tests)
    return results


def table(results: dict[str, Any]) -> str:
    """The figures as a Markdown table and a few lines."""
    lines = [f"device: {results['machine']['name']} ({results['machine']['device']}), torch "
             f"{results['machine']['torch']}, {results['steps']} steps per run", "",
             "| recipe | precision | img/s | syncs/step median | max | warm-up/log max | "
             "peak MiB | estimate MiB | estimate/peak |", "|---|---|---|---|---|---|---|---|---|"]
    for row in results["recipes"]:
        s = row["syncs"]
        cells = [row["recipe"], row["precision"], f"{row['images_per_s']:.0f}",
                 *(_num(s[k]) for k in ("median", "max", "marked_max")),
                 _num(row["peak_mib"]), _num(row["estimate_mib"]),
                 _num(row["estimate_over_peak"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    det, res, ev = results["determinism"], results["resumption"], results["eval_on_cpu"]
    lines += ["", f"deterministic runs: {len(det['differing'])} tensors differ; ops that only "
                  f"warn: {', '.join(det['nondeterministic_ops']) or 'none'}",
              f"straight vs resumed at step {res['interrupted_at']}: "
              f"{len(res['differing'])} tensors differ",
              f"eval test top-1 on {ev['run']['device']}: {ev['run']['top1']:.2f}, on "
              f"{ev['cpu']['device']}: {ev['cpu']['top1']:.2f}"]
    if "pytest_gpu" in results:
        lines.append(f"pytest -m gpu: exit {results['pytest_gpu']['code']}, "
                     f"{results['pytest_gpu']['last_line']}")
    return "\n".join(lines)


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (reduced checks)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32, help="digits resized to this")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--determinism-recipe", default="cds", choices=list(FAMILIES),
                        help="the recipe run twice and compared bit for bit")
    parser.add_argument("--resume-recipe", default="mean_teacher", choices=list(FAMILIES),
                        help="the recipe run straight and interrupted-then-resumed")
    parser.add_argument("--recipes", type=lambda t: t.split(","), default=list(FAMILIES),
                        help=f"comma-separated, of {', '.join(FAMILIES)}")
    parser.add_argument("--precisions", type=lambda t: t.split(","), default=list(PRECISIONS),
                        help=f"comma-separated, of {', '.join(PRECISIONS)}")
    parser.add_argument("--no-pytest", dest="pytest", action="store_false",
                        help="skip pytest -m gpu")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for gpu_check.json (default: $OUT, else benchmarks/results)")
    args = parser.parse_args(argv)
    unknown = [r for r in args.recipes if r not in FAMILIES] + \
        [p for p in args.precisions if p not in PRECISIONS]
    if unknown:
        parser.error(f"unknown recipe or precision {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the check, print its table, write its JSON; returns the figures."""
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        results = run_check(args, Path(tmp))
    print(table(results), flush=True)
    out = args.out or Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out / 'gpu_check.json'}")
    return results


if __name__ == "__main__":
    main()
