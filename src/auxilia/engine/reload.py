"""Rebuild a trained model from a run folder or a checkpoint file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auxilia.config import parse_config
from auxilia.data.raw import DataError
from auxilia.data.sources import load_dataset
from auxilia.engine.checkpoint import CheckpointError, load_checkpoint
from auxilia.engine.datacheck import check_same_data
from auxilia.engine.evaluate import evaluate
from auxilia.engine.setup import Setup, build_setup
from auxilia.paths import regular_file


def resolve_checkpoint(path: str | Path, which: str = "best",
                       advice: str = "use --checkpoint {which} for {path}") -> Path:
    """A checkpoint file, or ``<run>/checkpoints/{best,last}.pt`` for a run folder.

    Args:
        path: a run folder or a checkpoint file.
        which: ``"best"`` or ``"last"`` for a run folder.
        advice: the fix when only the other checkpoint exists, in the caller's terms (a flag
            of ``eval``/``export``, a config key of a teacher); ``{which}`` and ``{path}`` name
            the other checkpoint.

    Raises:
        CheckpointError: no such checkpoint, naming the other one when it exists.
    """
    p = Path(path)
    if p.is_dir():
        candidate = p / "checkpoints" / f"{which}.pt"
        other = p / "checkpoints" / ("last.pt" if which == "best" else "best.pt")
        if not candidate.exists() and other.exists():
            why = ("no evaluation selected a best checkpoint (e.g. the validation loss was "
                   "never finite, or the run stopped before its first evaluation)"
                   if which == "best" else "last.pt is missing")
            raise CheckpointError(f"{p} has no checkpoints/{which}.pt: {why}; "
                                  + advice.format(which=other.stem, path=other))
        if not candidate.exists():
            raise CheckpointError(f"{p} holds no checkpoints/{which}.pt; is it an auxilia run "
                                  "folder? (expected checkpoints/best.pt and checkpoints/last.pt)")
        return regular_file(candidate, "checkpoint", CheckpointError)
    if not p.exists():
        raise CheckpointError(f"no run folder or checkpoint at {p}")
    return regular_file(p, "checkpoint", CheckpointError)  # e.g. /dev/null or a FIFO


def load_run(path: str | Path, which: str = "best", device: str | None = None,
             data_root: str | Path | None = None) -> tuple[Setup, dict[str, Any]]:
    """Rebuild data, model and objective from a checkpoint's own config and load its weights.

    The data is checked against the fingerprint stored in the checkpoint, so that a run is
    never evaluated or exported with data other than its own.

    Args:
        path: a run folder or a checkpoint file.
        which: ``"best"`` or ``"last"`` for a run folder.
        device: overrides the run's ``train.device``.
        data_root: the data's new ``data.root`` when it moved since training; accepted only
            when the data there has the run's fingerprint.

    Raises:
        CheckpointError: no such checkpoint, or an unreadable one.
        DataError: the data is missing (the message suggests ``--data-root``).
        DataChangedError: the data differs from the run's.
    """
    ckpt_path = resolve_checkpoint(path, which)
    checkpoint = load_checkpoint(ckpt_path)
    raw = checkpoint["config"]
    if device is not None:
        raw["train"]["device"] = device
    if data_root is not None:
        raw["data"]["root"] = str(data_root)
    config = parse_config(raw)
    try:
        data = load_dataset(config.data, seed=config.seed)
    except DataError as err:
        if data_root is not None:
            raise
        raise DataError(f"{err} (if the run's data moved, pass its new folder with "
                        "--data-root)") from None
    check_same_data(checkpoint, data, run_folder_of_checkpoint(ckpt_path), "load this run")
    setup = build_setup(config, data, training=False)  # no training step: no step check
    setup.model.load_state_dict(checkpoint["model"])
    setup.model.eval()
    return setup, checkpoint


def run_folder_of_checkpoint(path: Path) -> Path | None:
    """The run folder of ``RUN/checkpoints/<name>.pt``, or None for a loose checkpoint file."""
    return path.parent.parent if path.parent.name == "checkpoints" else None


def evaluate_run(path: str | Path, which: str = "best", splits: tuple[str, ...] = ("val", "test")
                 ) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Per-split, per-exit accuracy of a saved model. Returns (metrics, checkpoint)."""
    setup, checkpoint = load_run(path, which)
    cfg = setup.config
    results = {}
    for name in splits:
        split = getattr(setup.data, name)
        if len(split):
            results[name] = evaluate(
                setup.model, split, setup.eval_view, batch_size=cfg.data.eval_batch_size,
                device=setup.device, amp=cfg.train.amp, amp_dtype=setup.amp_dtype,
                channels_last=cfg.model.channels_last)
    return results, checkpoint
