"""What a checkpoint holds, and how a run is restored from one exactly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from auxilia import jsonio
from auxilia.engine.checkpoint import atomic_write, rng_state, save_checkpoint, set_rng_state

if TYPE_CHECKING:
    from auxilia.data.streams import IndexStream
    from auxilia.engine.loop import LoopState
    from auxilia.engine.setup import Setup

FORMAT_VERSION = 1

# Keys that may change between a run and its resumption without changing its results
# (run.dir and run.name locate the folder; a new data.root is checked by the data's fingerprint).
RESUMABLE_CHANGES = ("run.progress", "run.tensorboard", "run.plot", "run.dir", "run.name",
                     "train.log_every", "train.device", "data.num_workers",
                     "data.eval_batch_size", "data.root")


class IncompatibleResumeError(ValueError):
    """The config given on resume differs from the checkpoint's in keys that matter."""


def save(path: Path, setup: Setup, optimizer: torch.optim.Optimizer, stream: IndexStream,
         loop: LoopState) -> None:
    """Atomically write everything needed to continue exactly."""
    save_checkpoint({
        "format": FORMAT_VERSION,
        "model": setup.model.state_dict(),
        "objective": setup.objective.state_dict(),
        "optimizer": optimizer.state_dict(),
        "stream": stream.state_dict(),
        "rng": rng_state(),
        "loop": {"step": loop.step, "evals": loop.evals, "best": loop.best,
                 "skipped_steps": loop.skipped_steps, "train_seconds": loop.train_seconds,
                 "images": loop.images},
        "config": setup.config.to_dict(),
        "data": setup.data.identity,
    }, path)


def restore(checkpoint: dict[str, Any], setup: Setup, optimizer: torch.optim.Optimizer,
            stream: IndexStream, loop: LoopState) -> None:
    """Load model, objective, optimizer, sampler, RNG and counters from a checkpoint."""
    setup.model.load_state_dict(checkpoint["model"])
    setup.objective.load_state_dict(checkpoint["objective"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    stream.load_state_dict(checkpoint["stream"])
    counters = checkpoint["loop"]
    loop.step = counters["step"]
    loop.evals = list(counters["evals"])
    loop.best = counters["best"]
    loop.skipped_steps = counters["skipped_steps"]
    loop.train_seconds = counters["train_seconds"]
    # checkpoints written before the images counter existed: full batches every step
    loop.images = counters.get("images", loop.step * stream.batch_size)
    set_rng_state(checkpoint["rng"])


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def check_compatible(saved: dict[str, Any], given: dict[str, Any], path: Path) -> None:
    """Refuse to resume when the configs differ in anything but :data:`RESUMABLE_CHANGES`."""
    old, new = flatten(saved), flatten(given)
    # a key the saved config lacks was added to auxilia after the run started: it takes its
    # default, so it is not a difference
    differ = [k for k in sorted(set(old) | set(new))
              if k in old and old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)]
    if differ:
        lines = [f"  {k}: checkpoint has {old.get(k)!r}, config gives {new.get(k)!r}"
                 for k in differ]
        raise IncompatibleResumeError(
            f"cannot resume from {path}: the config differs in\n" + "\n".join(lines)
            + "\nresume with the run's own config (auxilia train --resume RUN_DIR) or start a "
              "new run (another run.name, or --overwrite)")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically write a strict JSON file (a non-finite number is written as ``null``)."""
    text = jsonio.dumps(data, indent=2).encode()
    atomic_write(path, lambda f: f.write(text))
