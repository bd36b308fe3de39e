"""Training runs for tests/engine/test_distributed.py, started by ``torchrun`` (several ranks)
or by ``python`` (one process): ``ddp_driver.py OUT RUNS.json``.

``RUNS.json`` lists runs, each ``{"name", "overrides", "resume", "stop_at", "nan_at",
"kill_at", "rank"}``: the run's config overrides; ``resume`` continues its folder; at step
``stop_at`` a SIGTERM is sent to rank ``rank`` (default 0), at ``nan_at`` that rank's batch gets
a NaN image, at ``kill_at`` that rank dies. One process group serves every run (torchrun's),
so several runs cost one start. Each rank writes ``OUT/<name>.w<world>.rank<r>.json``: the
losses its callbacks saw at every step, and whether the run was stopped.

BatchNorm is swapped for per-sample GroupNorm before any model is built, in this driver only:
BatchNorm normalises with the statistics of the rows a process holds, so with BatchNorm no
two-rank step can equal the one-process step.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn


class PerSampleNorm(nn.GroupNorm):
    """GroupNorm with one group: each sample normalised by its own statistics."""

    def __init__(self, channels: int, *args: object, **kwargs: object) -> None:
        super().__init__(1, channels)


def _poison(rank: int, at: int | None) -> None:
    """Rank ``rank``'s batch of step ``at`` gets a NaN image (None: no poison)."""
    from auxilia.engine import batches

    real = batches.__dict__.setdefault("_unpoisoned", batches.make_batch)
    if at is None:
        batches.make_batch = real
        return

    def make_batch(setup: Any, indices: Any, step: int = 0, ranks: Any = None) -> Any:
        batch = real(setup, indices, step, ranks)
        if step == at and int(os.environ.get("RANK", "0")) == rank:
            batch["x_lb"][0] = float("nan")
        return batch

    batches.make_batch = make_batch


def _callback(spec: dict[str, Any], losses: dict[int, dict[str, float]]) -> Any:
    me = int(os.environ.get("RANK", "0")) == spec.get("rank", 0)

    def seen(step: int, values: dict[str, float]) -> None:
        losses[step] = values
        if me and step == spec.get("stop_at"):
            signal.raise_signal(signal.SIGTERM)
        if me and step == spec.get("kill_at"):
            os._exit(9)

    return seen


def main() -> None:
    out, runs = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    nn.BatchNorm2d = nn.BatchNorm1d = PerSampleNorm  # type: ignore[misc]
    from auxilia.config import load_config
    from auxilia.engine import train

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo")  # one group for every run below
    rank = int(os.environ.get("RANK", "0"))
    for spec in runs:
        _poison(spec.get("rank", 0), spec.get("nan_at"))
        losses: dict[int, dict[str, float]] = {}
        stopped = False
        try:
            train(load_config(None, spec["overrides"]), resume=spec.get("resume", False),
                  callbacks=[_callback(spec, losses)])
        except KeyboardInterrupt:
            stopped = True
        world = int(os.environ.get("WORLD_SIZE", "1"))
        (out / f"{spec['name']}.w{world}.rank{rank}.json").write_text(
            json.dumps({"losses": losses, "stopped": stopped}))
    if torch.distributed.is_initialized():  # left alive, gloo's threads may abort at exit
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
