"""One process against two (torchrun, gloo) on this CPU: a proxy for several GPUs.

Measures training images/s of the same run, same global batch, three ways:
1. one process of ``--threads`` threads (``OMP_NUM_THREADS=threads``);
2. ``torchrun --nproc_per_node=2``, each rank one thread (the same cores, split);
and reports the ratio two-process / one-process. The target (issue 21): at least 0.90 on the
demo and on ResNet-20 + CDS. It is a CPU proxy only: gloo's all-reduce goes through shared
memory of one machine, and two processes of one thread compete for the same memory bandwidth
as one process of two threads; NCCL on GPUs is measured by benchmarks/gpu_check.py.

Usage: ``python benchmarks/bench_ddp.py [--repeats 3] [--steps 200]``; writes
``benchmarks/results/ddp.json`` and the table (mean ± std over repeats) into the
``<!-- bench:ddp -->`` block of docs/gpus.md; ``--table-only`` rewrites that block from the
saved results without training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_engine import write_readme_section

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
CASES = {  # name -> overrides of configs/demo.yaml
    "demo (small_cnn + deep supervision, batch 64)": [],
    "resnet20 + cds, digits at 32 px, batch 64": ["model.name=resnet20", "method=cds",
                                                   "data.image_size=32"],
}


def images_per_s(overrides: list[str], steps: int, processes: int, threads: int,
                 run_dir: Path, name: str) -> float:
    """Training images/s of the global batch (evaluation excluded), from the run's summary."""
    args = ["train", str(ROOT / "configs/demo.yaml"), *overrides, f"run.dir={run_dir}",
            f"run.name={name}", "run.progress=off", "run.tensorboard=false", "run.plot=false",
            f"train.steps={steps}", f"train.eval_every={steps}", "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={processes}", "-m", "auxilia"] if processes > 1
                else [sys.executable, "-m", "auxilia"])
    subprocess.run([*launcher, *args], check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    summary = json.loads((run_dir / name / "summary.json").read_text())
    return float(summary["train_images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the docs table from benchmarks/results/ddp.json")
    args = parser.parse_args()
    if args.table_only:
        report = json.loads((OUT / "ddp.json").read_text())
        write_readme_section("ddp", table(report))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, overrides in CASES.items():
            one, two = [], []
            for i in range(args.repeats):  # interleaved: drift in the machine hits both
                one.append(images_per_s(overrides, args.steps, 1, args.threads, Path(tmp),
                                        f"{len(rows)}-one{i}"))
                two.append(images_per_s(overrides, args.steps, 2, 1, Path(tmp),
                                        f"{len(rows)}-two{i}"))
            ratios = [b / a for a, b in zip(one, two, strict=True)]
            rows.append({"case": case, "one_process": one, "two_processes": two,
                         "ratio": ratios})
    machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "threads_one_process": args.threads, "steps": args.steps,
               "repeats": args.repeats, "seed": 0}
    report = {"machine": machine, "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ddp.json").write_text(json.dumps(report, indent=2))
    write_readme_section("ddp", table(report))
    print(table(report))


def table(report: dict) -> str:
    """The Markdown table of a report: images/s of the global batch and their ratio."""
    m = report["machine"]
    lines = [f"Machine: {m['processor']}, {m['cpus']} cores; gloo; {m['steps']} steps, "
             f"{m['repeats']} repeats interleaved, seed {m['seed']}, mean ± std; images/s of "
             "the global batch, evaluation excluded.", "",
             f"| case | 1 process × {m['threads_one_process']} threads (img/s) | 2 processes "
             "× 1 thread (img/s) | ratio (each repeat) |", "|---|---|---|---|"]
    for row in report["rows"]:
        each = ", ".join(f"{r:.2f}" for r in row["ratio"])
        lines.append(f"| {row['case']} | {_ms(row['one_process'])} | "
                     f"{_ms(row['two_processes'])} | {_ms(row['ratio'], 2)} ({each}) |")
    return "\n".join(lines)


def _ms(values: list[float], digits: int = 0) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


if __name__ == "__main__":
    main()
