"""Rebuild a trained model from a run folder or a checkpoint file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from auxilia.config import Config, parse_config
from auxilia.data.raw import DataError
from auxilia.data.sources import load_dataset
from auxilia.data.types import DatasetSplits, Split
from auxilia.engine.checkpoint import CheckpointError, load_checkpoint
from auxilia.engine.datacheck import check_same_data
from auxilia.engine.evaluate import evaluate
from auxilia.engine.owned import folder_kind
from auxilia.engine.runfolder import MARKER
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
        found = runs_folder(p)
        if not candidate.exists() and found is not None:
            raise CheckpointError(f"{p} is a {found[0]} folder, not a run folder: give one of "
                                  f"its runs instead{for_example(found[1])}")
        if not candidate.exists():
            raise CheckpointError(f"{p} holds no checkpoints/{which}.pt; is it an auxilia run "
                                  "folder? (expected checkpoints/best.pt and checkpoints/last.pt)")
        return regular_file(candidate, "checkpoint", CheckpointError)
    if not p.exists():
        raise CheckpointError(f"no run folder or checkpoint at {p}")
    return regular_file(p, "checkpoint", CheckpointError)  # e.g. /dev/null or a FIFO


def runs_folder(path: Path) -> tuple[str, Path] | None:
    """``(kind, one run in it)`` for a sweep or pipeline folder (the run is None when it holds
    none yet), else None."""
    kind = folder_kind(path)
    if kind not in ("sweep", "pipeline"):
        return None
    return kind, example_run(path)


def example_run(folder: Path, depth: int = 3) -> Path | None:
    """The first run folder (sorted) up to ``depth`` levels below ``folder``, or None."""
    for level in range(1, depth + 1):
        for marker in sorted(folder.glob("/".join(["*"] * level) + f"/{MARKER}")):
            return marker.parent
    return None


def for_example(run: Path | None, prefix: str = "") -> str:
    """``, e.g. <prefix><run>``, or a note that the folder holds no run yet."""
    return f", e.g. {prefix}{run}" if run is not None else " (it holds no run yet)"


def load_run(path: str | Path, which: str = "best", device: str | None = None,
             data_root: str | Path | None = None) -> tuple[Setup, dict[str, Any]]:
    """Rebuild data, model and objective from a checkpoint's own config and load its weights.

    The data is checked against the fingerprint stored in the checkpoint, so that a run is
    never evaluated or exported with data other than its own: its train, val and test splits.
    ``data.unlabeled`` is not read (nothing here uses the unlabeled split), so a run whose
    unlabeled folder was deleted since still loads.

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
    unread = _unlabeled_count(checkpoint) if raw["data"].get("unlabeled") else None
    if unread is not None:  # never evaluated or exported: the folder may be gone since
        raw["data"]["unlabeled"] = None
    config = parse_config(raw)
    data = _load_data(config, data_root)
    stored = checkpoint.get("data")
    if unread is not None:  # only the labeled splits are checked, as only they were read
        stored, data.identity = labeled_only(stored), labeled_only(data.identity)
        _stand_in_unlabeled(data, unread)
    check_same_data({**checkpoint, "data": stored}, data, run_folder_of_checkpoint(ckpt_path),
                    "load this run")
    setup = build_setup(config, data, training=False)  # no training step: no step check
    setup.model.load_state_dict(checkpoint["model"])
    setup.model.eval()
    return setup, checkpoint


def _load_data(config: Config, data_root: str | Path | None) -> DatasetSplits:
    try:
        return load_dataset(config.data, seed=config.seed)
    except DataError as err:
        if data_root is not None:
            raise
        raise DataError(f"{err} (if the run's data moved, pass its new folder with "
                        "--data-root)") from None


def _unlabeled_count(checkpoint: dict[str, Any]) -> int | None:
    """The size of the run's unlabeled split by its data fingerprint (None: no fingerprint)."""
    stored = checkpoint.get("data")
    if not isinstance(stored, dict) or not isinstance(stored.get("splits"), dict):
        return None
    return int((stored["splits"].get("unlabeled") or {}).get("count", 0))


def _stand_in_unlabeled(data: DatasetSplits, count: int) -> None:
    """Blank images for the unlabeled split not read, as many as the run had: a
    semi-supervised method's build counts them (and refuses none); nothing reads them."""
    if data.unlabeled is not None or count <= 0:
        return  # labels hidden in train still make an unlabeled split
    c, h, w = data.image_shape
    blank = torch.zeros((1, c, h, w), dtype=torch.uint8).expand(count, c, h, w)
    data.unlabeled = Split(images=blank, labels=torch.full((count,), -1, dtype=torch.long))


def labeled_only(fingerprint: Any) -> Any:
    """A data fingerprint without its ``unlabeled`` split (train, val and test are kept)."""
    if not isinstance(fingerprint, dict) or not isinstance(fingerprint.get("splits"), dict):
        return fingerprint
    splits = {k: v for k, v in fingerprint["splits"].items() if k != "unlabeled"}
    return {**fingerprint, "splits": splits}


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
