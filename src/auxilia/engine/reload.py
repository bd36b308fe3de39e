"""Rebuild a trained model from a run folder or a checkpoint file (found by
:func:`~auxilia.engine.checkpoint.resolve_checkpoint`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from auxilia.config import Config, parse_config
from auxilia.data.pseudo_labels import PSEUDO_FIELD
from auxilia.data.raw import DataError
from auxilia.data.sources import load_dataset
from auxilia.data.types import DatasetSplits, Split
from auxilia.engine.checkpoint import load_checkpoint, resolve_checkpoint, run_folder_of_checkpoint
from auxilia.engine.datacheck import check_same_data
from auxilia.engine.device import run_device
from auxilia.engine.setup import Setup, build_setup


def load_run(path: str | Path, which: str = "best", device: str | None = None,
             data_root: str | Path | None = None, notes: list[str] | None = None
             ) -> tuple[Setup, dict[str, Any]]:
    """Rebuild data, model and objective from a checkpoint's own config and load its weights.

    The data is checked against the fingerprint stored in the checkpoint, so that a run is
    never evaluated or exported with data other than its own: its train, val and test splits.
    ``data.unlabeled`` is not read (nothing here uses the unlabeled split), so a run whose
    unlabeled folder was deleted since still loads.

    Args:
        path: a run folder or a checkpoint file.
        which: ``"best"`` or ``"last"`` for a run folder.
        device: where to load it (``--device``); by default the run's ``train.device``,
            or the best device here when this machine lacks it
            (:func:`auxilia.engine.device.run_device`). The weights are read onto the CPU
            and copied to it, so a run trained on any GPU loads anywhere.
        data_root: the data's new ``data.root`` when it moved since training; accepted only
            when the data there has the run's fingerprint.
        notes: receives what was decided for the user (the device fallback's note).

    Raises:
        ConfigError: ``device`` is not a device of this machine.
        CheckpointError: no such checkpoint, or an unreadable one.
        DataError: the data is missing (the message suggests ``--data-root``).
        DataChangedError: the data differs from the run's.
    """
    ckpt_path = resolve_checkpoint(path, which)
    checkpoint = load_checkpoint(ckpt_path)
    raw = checkpoint["config"]
    chosen, note = run_device(device, raw["train"]["device"])
    raw["train"]["device"] = str(chosen)
    if note is not None and notes is not None:
        notes.append(note)
    if data_root is not None:
        raw["data"]["root"] = str(data_root)
    # never evaluated or exported: the unlabeled folder and the pseudo-label file may be gone
    unread = _split_count(checkpoint, "unlabeled") if raw["data"].get("unlabeled") else None
    if unread is not None:
        raw["data"]["unlabeled"] = None
    unread_pseudo = (_split_count(checkpoint, "pseudo") if raw["data"].get("pseudo_labels")
                     else None)
    if unread_pseudo is not None:
        raw["data"]["pseudo_labels"] = None
    config = parse_config(raw)
    data = _load_data(config, data_root)
    stored = checkpoint.get("data")
    if unread is not None or unread_pseudo is not None:  # only what was read is checked
        stored, data.identity = labeled_only(stored), labeled_only(data.identity)
        _stand_in_unlabeled(data, unread or 0, unread_pseudo or 0)
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


def _split_count(checkpoint: dict[str, Any], split: str) -> int | None:
    """The size of one of the run's splits by its data fingerprint (None: no fingerprint)."""
    stored = checkpoint.get("data")
    if not isinstance(stored, dict) or not isinstance(stored.get("splits"), dict):
        return None
    return int((stored["splits"].get(split) or {}).get("count", 0))


def _stand_in_unlabeled(data: DatasetSplits, count: int, pseudo: int = 0) -> None:
    """Blank images for the unlabeled (and pseudo-labelled) splits not read, as many as the
    run had: a semi-supervised method's build counts them (and refuses none); nothing reads
    them."""
    c, h, w = data.image_shape
    if data.unlabeled is None and count > 0:  # labels hidden in train still make one
        blank = torch.zeros((1, c, h, w), dtype=torch.uint8).expand(count, c, h, w)
        data.unlabeled = Split(images=blank, labels=torch.full((count,), -1, dtype=torch.long))
    if pseudo > 0:
        blank = torch.zeros((1, c, h, w), dtype=torch.uint8).expand(pseudo, c, h, w)
        data.pseudo = Split(blank, torch.zeros(pseudo, dtype=torch.long),
                            targets={PSEUDO_FIELD: torch.zeros(pseudo, data.num_classes)})


def labeled_only(fingerprint: Any) -> Any:
    """A data fingerprint without its ``unlabeled`` and ``pseudo`` splits and pseudo-label
    record (train, val and test are kept)."""
    if not isinstance(fingerprint, dict) or not isinstance(fingerprint.get("splits"), dict):
        return fingerprint
    splits = {k: v for k, v in fingerprint["splits"].items() if k not in ("unlabeled", "pseudo")}
    return {**{k: v for k, v in fingerprint.items() if k != "pseudo_labels"}, "splits": splits}


def evaluate_run(path: str | Path, which: str = "best", splits: tuple[str, ...] = ("val", "test")
                 ) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Per-split, per-exit accuracy of a saved model. Returns (metrics, checkpoint)."""
    setup, checkpoint = load_run(path, which)
    results = {}
    for name in splits:
        split = getattr(setup.data, name)
        if len(split):
            results[name] = setup.evaluator.metrics(setup.model, split)
    return results, checkpoint
