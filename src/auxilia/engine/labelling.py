"""The labelling round: a teacher labels the unlabeled images (Noisy Student, Xie et al. 2020).

A round of its own kind (``kind: label`` in a pipeline file), not a branch in training: it
reads the round's config (its data, and its teacher: ``teacher.run={<teacher round>}``),
runs the teacher in eval mode over the **clean** unlabeled images (the evaluation view, no
augmentation), batched under no_grad, and writes ``pseudo_labels.npz`` and ``labels.json``
into its own folder. What it keeps and how it balances is
:func:`auxilia.data.pseudo_labels.select_and_balance`; the student round reads the file as
``data.pseudo_labels``.

The folder is owned like every folder auxilia writes (a ``.auxilia-labels`` marker, checked
before writing, locked while written). A folder whose ``labels.json`` records the same
request (config and settings) is finished: the round is skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from auxilia.atomic_files import atomic_write
from auxilia.config import Config, ConfigError
from auxilia.data.pseudo_labels import (
    FILE_NAME,
    PseudoLabels,
    pseudo_targets,
    select_and_balance,
    write_pseudo_labels,
)
from auxilia.data.sources import load_dataset
from auxilia.data.types import Split
from auxilia.engine.auto import resolve_for
from auxilia.engine.device import pick_device
from auxilia.engine.evaluate import Evaluator
from auxilia.engine.owned import OwnedFolder
from auxilia.engine.runfolder import RunFolderError
from auxilia.engine.setup import eval_view, input_workers
from auxilia.engine.teacher import build_teacher
from auxilia.seeding import derive_seed
from auxilia.strict import Strict

__all__ = ["LABELS_RECORD", "LabelResult", "LabelSettings", "check_label_folder",
           "label_status", "labels_folder", "read_record", "run_labelling"]

LABELS_RECORD = "labels.json"


class LabelSettings(Strict):
    """How a labelling round labels (the ``label:`` of a ``kind: label`` round).

    Defaults are the authors' scripts': soft labels at T = 1, confidence ≥ 0.3, classes
    balanced. ``per_class: auto`` balances to the mean count of confident images per class
    (the total stays about the same); an integer sets the count; null keeps every confident
    image once.
    """

    soft: bool = Field(default=True, description="softmax rows (true) or smoothed one-hot")
    temperature: float = Field(default=1.0, gt=0, description="softmax temperature T")
    min_confidence: float = Field(default=0.3, ge=0, le=1,
                                  description="images the teacher is less sure of are dropped")
    per_class: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        default="auto", description="balanced count per class")
    smoothing: float = Field(default=0.1, ge=0, lt=1,
                             description="label smoothing of hard labels")

    def count(self, confident: int, num_classes: int) -> int | None:
        """The per-class count ``per_class`` asks for, given the confident images."""
        if self.per_class == "auto":
            return max(1, round(confident / num_classes))
        return self.per_class


@dataclass(frozen=True)
class LabelResult:
    """What a labelling round wrote: its folder, the file and the record."""

    folder: Path
    file: Path
    record: dict[str, Any]


def labels_folder(path: Path) -> OwnedFolder:
    """The ownership rules of a labelling round's folder."""
    return OwnedFolder(path, "labels", hint="give the round another name or set run.dir")


def check_label_folder(name: str, path: Path) -> str | None:
    """Why a label round's folder could not be written when its turn comes, or None."""
    try:
        labels_folder(path).check()
    except RunFolderError as err:
        return f"round {name!r}: {err}"
    return None


def _request(config: Config, settings: LabelSettings) -> dict[str, Any]:
    """What decides the labels: the data and teacher settings, the seed and the settings."""
    return {"data": config.data.model_dump(mode="json"),
            "teacher": config.teacher.model_dump(mode="json") if config.teacher else None,
            "seed": config.seed, "label": settings.model_dump(mode="json")}


def label_status(config: Config, settings: LabelSettings, folder: Path
                 ) -> Literal["skipped", "trained"]:
    """``skipped`` when ``folder`` holds the labels of this very request, else ``trained``."""
    try:
        record = json.loads((folder / LABELS_RECORD).read_text())
    except (OSError, ValueError):
        return "trained"
    same = isinstance(record, dict) and record.get("request") == _request(config, settings)
    return "skipped" if same and (folder / FILE_NAME).is_file() else "trained"


def read_record(folder: Path) -> dict[str, Any]:
    """A labelling round's ``labels.json`` (empty when unreadable)."""
    try:
        record = json.loads((folder / LABELS_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def run_labelling(config: Config, settings: LabelSettings, folder: Path) -> LabelResult:
    """Label ``config``'s unlabeled images with its teacher into ``folder``.

    Raises:
        ConfigError: no teacher configured, or no unlabeled images.
        RunFolderError: ``folder`` is not auxilia's to write.
    """
    if config.teacher is None:
        raise ConfigError("a labelling round labels with a teacher: set teacher.run=<the "
                          "teacher's run folder> (in a pipeline: teacher.run={<round>})")
    owner = labels_folder(folder)
    owner.check()
    with owner.lock():
        owner.create()
        labels, record = _label(config, settings)
        sha = write_pseudo_labels(folder / FILE_NAME, labels)
        record = {**record, "file": FILE_NAME, "sha256": sha,
                  "request": _request(config, settings)}
        text = json.dumps(record, indent=1, sort_keys=True).encode() + b"\n"
        atomic_write(folder / LABELS_RECORD, lambda f: f.write(text))
    return LabelResult(folder, folder / FILE_NAME, record)


def _label(config: Config, settings: LabelSettings) -> tuple[PseudoLabels, dict[str, Any]]:
    device = pick_device(config.train.device)
    config = config.model_copy(update={"data": config.data.model_copy(
        update={"pseudo_labels": None})})  # the student's file is not the teacher's input
    config, _ = resolve_for(config, None, device)
    data = load_dataset(config.data, seed=config.seed)
    unlabeled = data.unlabeled
    if unlabeled is None or not len(unlabeled) or unlabeled.keys is None:
        raise ConfigError("a labelling round labels unlabeled images, and this data has none: "
                          "set data.unlabeled or data.labels_per_class")
    teacher = build_teacher(config.teacher, data, device)
    assert teacher is not None  # config.teacher is set
    evaluator = Evaluator(eval_view(data, device), config.data.eval_batch_size, device,
                          config.train.amp, getattr(torch, config.train.amp_dtype),
                          workers=input_workers(config.data, data, device))
    probs = evaluator.probabilities(teacher.model, unlabeled, settings.temperature)
    confidence, predicted = probs.max(1)
    k = data.num_classes
    confident = int((confidence >= settings.min_confidence).sum())
    if confident == 0:
        raise ConfigError(f"no unlabeled image reaches label.min_confidence="
                          f"{settings.min_confidence:g} (the teacher's highest confidence is "
                          f"{float(confidence.max()):.3f}): train the teacher longer or lower "
                          "label.min_confidence")
    per_class = settings.count(confident, k)
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "labelling"))
    rows = select_and_balance(confidence, predicted, k, settings.min_confidence, per_class,
                              generator)
    labels = PseudoLabels(unlabeled.keys[rows], _names(unlabeled, rows),
                          pseudo_targets(probs[rows], settings.soft, settings.smoothing),
                          predicted[rows], confidence[rows],
                          {"classes": list(data.classes),
                           "teacher": {"source": teacher.source, "sha256": teacher.sha256}})
    record = {**labels.record, "unlabeled": len(unlabeled), "confident": confident,
              "per_class": per_class, "entries": len(rows),
              "class_counts": torch.bincount(predicted[rows], minlength=k).tolist(),
              "accuracy": _accuracy(unlabeled, predicted, confidence >= settings.min_confidence,
                                    rows)}
    return labels, record


def _names(split: Split, rows: torch.Tensor) -> Any:
    if split.names is not None:
        return split.names[rows.numpy()]
    return [f"unlabeled[{int(i)}]" for i in rows]


def _accuracy(split: Split, predicted: torch.Tensor, confident: torch.Tensor,
              rows: torch.Tensor) -> dict[str, float | int] | None:
    """The pseudo-labels' top-1 (%) where the truth is known (reporting only): over every
    unlabeled image, the confident ones, and the written entries (duplicates counted)."""
    truth = split.true_labels
    if truth is None or not bool((truth >= 0).any()):
        return None
    known = truth >= 0
    out: dict[str, float | int] = {"known": int(known.sum())}
    for name, mask in (("all", known), ("confident", known & confident)):
        if mask.any():
            out[name] = 100.0 * float((predicted[mask] == truth[mask]).float().mean())
    entries = rows[known[rows]]
    if len(entries):
        out["entries"] = 100.0 * float((predicted[entries] == truth[entries]).float().mean())
    return out
