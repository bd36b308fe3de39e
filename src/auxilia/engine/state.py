"""What a checkpoint holds, and how a run is restored from one exactly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from auxilia import jsonio
from auxilia.atomic_files import atomic_write
from auxilia.engine.checkpoint import save_checkpoint
from auxilia.parts import STUDENT
from auxilia.run_names import RESULT_NEUTRAL_KEYS
from auxilia.seeding import rng_state, set_rng_state
from auxilia.teachers import teacher_record

if TYPE_CHECKING:
    from auxilia.engine.context import RunContext

FORMAT_VERSION = 2
"""2: slots, optimizers and streams saved by name, and the gradient scaler; version-1
checkpoints (one optimizer, one stream) are read as ``main`` and ``labeled``."""

# Keys that may change between a run and its resumption without changing its results
# (run.dir and run.name locate the folder; a new data.root is checked by the data's fingerprint);
# the same keys default run names leave out
RESUMABLE_CHANGES = RESULT_NEUTRAL_KEYS


class IncompatibleResumeError(ValueError):
    """The config given on resume differs from the checkpoint's in keys that matter."""


def save(path: Path, run: RunContext) -> None:
    """Atomically write :func:`checkpoint_state` to ``path`` where the run writes its files
    (:attr:`RunIO.writes <auxilia.engine.runio.RunIO.writes>`: not on a distributed run's
    ranks but 0, which hold the same state)."""
    if run.io.writes:
        save_checkpoint(checkpoint_state(run), path)


def checkpoint_state(run: RunContext) -> dict[str, Any]:
    """Everything needed to continue exactly, as a checkpoint holds it.

    ``model`` is the run's deployed model (what ``eval``, ``export``, ``model.weights`` and a
    ``teacher.run`` read): the student, or the slot the objective deploys (Mean Teacher's EMA
    model), named by ``deployed``; every other model whose weights change (the student
    included, when it is not deployed) is under ``slots`` by name; frozen slots are rebuilt
    from their source on resume. ``teacher`` records the teacher's source and weights
    checksum, so that a resume refuses a teacher retrained since the first start.
    ``loop.derived_steps`` is the total a ``train.time`` run derived (its measurements in
    ``loop.time_budget``): a resume continues with it and never measures again.
    """
    loop = run.loop
    deployed = run.objective.deployed
    slots = {name: run.models[name].state_dict() for name, slot in run.slots.items()
             if slot.stateful and name != deployed}
    if deployed != STUDENT:
        slots[STUDENT] = run.student.state_dict()
    return {
        "format": FORMAT_VERSION,
        "model": run.models[deployed].state_dict(),
        "deployed": deployed,
        "slots": slots,
        "objective": run.objective.state_dict(),
        "optimizers": {name: opt.torch.state_dict() for name, opt in run.optimizers.items()},
        "streams": run.batches.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
        "rng": rng_state(),
        "loop": {"step": loop.step, "evals": loop.evals, "best": loop.best,
                 "skipped_steps": loop.skipped_steps, "train_seconds": loop.train_seconds,
                 "images": loop.images, "scaler_skips": loop.scaler_skips,
                 "wall_seconds": loop.wall_seconds, "derived_steps": loop.derived_steps,
                 "time_budget": loop.time_budget},
        "config": run.config.to_dict(),
        "data": run.setup.data.identity,
        "run": run.io.folder.identity() if run.io.folder is not None else {},  # on resume
        "teacher": teacher_record(run.slots),
    }


def restore(checkpoint: dict[str, Any], run: RunContext) -> None:
    """Load every slot, the objective, optimizers, streams, scaler, RNG and counters."""
    deployed = checkpoint.get("deployed", STUDENT)
    if deployed != run.objective.deployed:
        raise IncompatibleResumeError(f"the checkpoint's model is {deployed!r}, this run "
                                      f"deploys {run.objective.deployed!r}")
    run.models[deployed].load_state_dict(checkpoint["model"])
    for name, state in _named(checkpoint, "slots", None, {}).items():
        if name not in run.models:
            raise IncompatibleResumeError(f"the checkpoint holds slot {name!r}, which this "
                                          f"run does not declare")
        run.models[name].load_state_dict(state)
    run.objective.load_state_dict(checkpoint["objective"])
    for name, state in _named(checkpoint, "optimizers", "optimizer", run.optimizers).items():
        run.optimizers[name].torch.load_state_dict(state)
    run.batches.load_state_dict(_named(checkpoint, "streams", "stream", run.streams))
    if checkpoint.get("scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(checkpoint["scaler"])
    counters, loop = checkpoint["loop"], run.loop
    loop.step = counters["step"]
    loop.evals = list(counters["evals"])
    loop.best = counters["best"]
    loop.skipped_steps = counters["skipped_steps"]
    loop.train_seconds = counters["train_seconds"]
    # checkpoints written before the images counter existed: full batches every step
    loop.images = counters.get("images", loop.step * run.labeled.batch_size)
    loop.scaler_skips = counters.get("scaler_skips", 0)
    # checkpoints written before these existed: no time budget, wall time as training time
    loop.wall_seconds = counters.get("wall_seconds", loop.train_seconds)
    loop.derived_steps = counters.get("derived_steps")
    loop.time_budget = counters.get("time_budget")
    set_rng_state(checkpoint["rng"])


def _named(checkpoint: dict[str, Any], key: str, old_key: str | None,
           expected: dict[str, Any]) -> dict[str, Any]:
    """The ``key`` entries by name (a version-1 checkpoint's single ``old_key`` entry is the
    first expected name's), checked against what the run declares."""
    if key in checkpoint:
        found = dict(checkpoint[key])
    elif old_key is not None and old_key in checkpoint:
        found = {next(iter(expected)): checkpoint[old_key]}
    else:
        found = {}
    if expected and set(found) != set(expected):
        raise IncompatibleResumeError(
            f"the checkpoint holds {key} {sorted(found)}, this run has {sorted(expected)}")
    return found


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
