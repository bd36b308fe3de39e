"""Engine overhead and demo speed.

Measures, on this machine:
1. the default demo (``configs/demo.yaml``) end to end: wall time of ``auxilia train`` in a fresh
   process (imports, data, training, evaluation, plots) and training images/s;
2. the ratio of the engine's step time to a bare step of the same model on the same batches:
   the bare loop builds the same views, runs forward, the same weighted cross-entropies,
   backward and the optimizer step, with none of the engine's bookkeeping (objective and term
   dispatch, learning-rate schedule, loss accumulation, logging, the non-finite check).

Usage: ``python benchmarks/bench_engine.py [--repeats 3] [--steps 300]``; writes
``benchmarks/results/engine.json`` and ``engine.md``, and the table into docs/performance.md.
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
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from auxilia.config import load_config
from auxilia.data.streams import IndexStream
from auxilia.engine import train
from auxilia.engine.batches import make_batch
from auxilia.engine.optim import build_optimizer
from auxilia.engine.setup import build_setup

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
CASES = {  # name -> overrides of configs/demo.yaml
    "small_cnn + deep supervision (demo)": [],
    "small_cnn + supervised": ["method=supervised"],
    "resnet20 + deep supervision": ["model.name=resnet20"],
}


def demo_wall_time(tmp: Path) -> float:
    """Seconds for ``auxilia train configs/demo.yaml`` in a new process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "auxilia.cli", "train", str(ROOT / "configs/demo.yaml"),
                    f"run.dir={tmp}", "run.progress=off", "--overwrite"], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - start


def engine_seconds_per_step(overrides: list[str], steps: int, tmp: Path) -> tuple[float, dict]:
    """Training seconds per step of the real engine (evaluation excluded)."""
    config = load_config(ROOT / "configs/demo.yaml", [
        *overrides, f"run.dir={tmp}", "run.progress=off", "run.tensorboard=false",
        "run.plot=false", f"train.steps={steps}", f"train.eval_every={steps}"])
    result = train(config, overwrite=True)
    return result.summary["train_seconds"] / steps, result.summary


def bare_seconds_per_step(overrides: list[str], steps: int) -> float:
    """The same model, views, losses and optimizer, written as a bare loop."""
    config = load_config(ROOT / "configs/demo.yaml", overrides)
    setup = build_setup(config)
    optimizer = build_optimizer(setup.model, config.optim)
    stream = iter(IndexStream(len(setup.data.train), config.data.batch_size, seed=config.seed))
    weights = {name: (term.ref.exit, term.weight) for name, term in setup.objective.terms.items()}
    setup.model.train()
    start = time.perf_counter()
    for _ in range(steps):
        batch = make_batch(setup, next(stream))
        outs = setup.model(batch["x_lb"])
        loss = sum(w * F.cross_entropy(outs[e]["logits"], batch["y_lb"])
                   for e, w in weights.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows, report = [], {"machine": f"{platform.processor() or platform.machine()}, "
                                   f"{os.cpu_count()} cores, torch {torch.__version__}",
                        "repeats": args.repeats, "steps": args.steps, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        walls = [demo_wall_time(Path(tmp)) for _ in range(args.repeats)]
        for name, overrides in CASES.items():
            engine, bare, ips = [], [], []
            for _ in range(args.repeats):  # interleaved so drift hits both alike
                bare.append(bare_seconds_per_step(overrides, args.steps))
                seconds, summary = engine_seconds_per_step(overrides, args.steps, Path(tmp))
                engine.append(seconds)
                ips.append(summary["train_images_per_s"])
            ratios = [e / b for e, b in zip(engine, bare, strict=True)]
            report["cases"][name] = {"engine_ms": engine, "bare_ms": bare, "ratio": ratios,
                                     "images_per_s": ips}
            rows.append((name, mean_std([1e3 * x for x in bare]),
                         mean_std([1e3 * x for x in engine]), mean_std(ratios), mean_std(ips)))
    report["demo_wall_s"] = walls
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "engine.json").write_text(json.dumps(report, indent=2))
    lines = [f"Machine: {report['machine']}; {args.repeats} repeats of {args.steps} steps, "
             "seed 0, mean ± std.", "",
             f"Demo (`auxilia train configs/demo.yaml`, fresh process, 30 epochs): "
             f"{mean_std(walls)[0]:.1f} ± {mean_std(walls)[1]:.1f} s wall.", "",
             "| case | bare step (ms) | engine step (ms) | engine / bare | train images/s |",
             "|---|---|---|---|---|"]
    for name, b, e, r, i in rows:
        lines.append(f"| {name} | {b[0]:.2f} ± {b[1]:.2f} | {e[0]:.2f} ± {e[1]:.2f} | "
                     f"{r[0]:.3f} ± {r[1]:.3f} | {i[0]:.0f} ± {i[1]:.0f} |")
    (OUT / "engine.md").write_text("\n".join(lines) + "\n")
    write_readme_section("engine", "\n".join(lines))
    print("\n".join(lines))


def write_readme_section(name: str, text: str) -> None:
    """Replace the generated block ``<!-- bench:name -->...<!-- /bench:name -->`` in the docs.

    The block lives in ``docs/benchmarks.md`` or ``docs/performance.md`` (or the README).
    """
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    holding = [page for page in pages if start in page.read_text()]
    if not holding:
        return  # no such section in the docs: the results files are the record
    readme = holding[0]
    content = readme.read_text()
    head, _, rest = content.partition(start)
    _, _, tail = rest.partition(end)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


if __name__ == "__main__":
    main()
