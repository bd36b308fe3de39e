"""Pseudo-labels written by a labelling round and read by a student (Noisy Student).

Noisy Student (Xie et al., "Self-training with Noisy Student improves ImageNet
classification", CVPR 2020) trains a student on labeled data plus unlabeled images that a
teacher labelled. Labelling is its own round (:mod:`auxilia.engine.labelling`); what it
decides is here, as pure functions:

* :func:`select_and_balance`: keep the images whose teacher confidence reaches
  ``min_confidence`` (0.3 in the authors' filter), then balance the classes to ``per_class``
  images each: a class with more is trimmed (each image kept with probability
  ``per_class / n_c``), a class with fewer is duplicated (``per_class / n_c`` copies of each
  image, the fraction rounded stochastically), as the authors' data balancing does.
* :func:`pseudo_targets`: soft labels (the teacher's softmax at temperature T, 1 in every
  shipped script) or hard ones (one-hot with label smoothing 0.1).
* the file (:func:`write_pseudo_labels`, :func:`read_pseudo_labels`): one ``.npz`` with every
  kept entry's content key (the unlabeled image it labels), name, target row, teacher class
  and confidence, plus a JSON record of the teacher's checksum, the settings and the counts.
* :func:`attach_pseudo_labels`: a student's ``data.pseudo_labels`` becomes the ``pseudo``
  split: the student's own unlabeled images, looked up by content key, with the file's
  targets. An entry whose image is not among them is refused, so a pseudo-labelled image is
  always one of the student's cleaned unlabeled images (never a val or test image), and the
  file's checksum (which covers the teacher's) is part of the student's data fingerprint.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auxilia.atomic_files import atomic_write
from auxilia.data.errors import DataError
from auxilia.data.types import DatasetSplits, Split

__all__ = ["FILE_NAME", "FORMAT", "PSEUDO_FIELD", "PseudoLabels", "attach_pseudo_labels",
           "file_sha256", "pseudo_targets", "read_pseudo_labels", "select_and_balance",
           "write_pseudo_labels"]

FILE_NAME = "pseudo_labels.npz"
"""The file a labelling round writes in its folder."""
FORMAT = 1
PSEUDO_FIELD = "pseudo"
"""The target field of the ``pseudo`` split: batches carry it as ``target_<keys>_pseudo``."""


def select_and_balance(confidence: torch.Tensor, predicted: torch.Tensor, num_classes: int,
                       min_confidence: float, per_class: int | None,
                       generator: torch.Generator) -> torch.Tensor:
    """The entries of a labelled set: indices into the unlabeled images, repeats allowed.

    Args:
        confidence: ``[N]`` the teacher's top softmax probability per image.
        predicted: ``[N]`` int64, the teacher's class per image.
        num_classes: K.
        min_confidence: images below it are dropped.
        per_class: the balanced count per class; None keeps every confident image once.
        generator: the CPU generator the trimming and the stochastic rounding draw from.

    Returns:
        ``[M]`` int64 indices, class by class (0..K−1), each class's in ascending order with
        an image's copies adjacent. A class with no confident image stays empty.
    """
    chosen = []
    for c in range(num_classes):
        idx = torch.nonzero((predicted == c) & (confidence >= min_confidence)).flatten()
        n = len(idx)
        if per_class is None or n == 0 or n == per_class:
            chosen.append(idx)
        elif n > per_class:  # trim: keep each with probability per_class / n
            keep = torch.rand(n, generator=generator) < per_class / n
            chosen.append(idx[keep])
        else:  # duplicate: per_class / n copies, the fraction rounded stochastically
            share = per_class / n
            extra = (torch.rand(n, generator=generator) < share - int(share)).long()
            chosen.append(idx.repeat_interleave(int(share) + extra))
    return torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.int64)


def pseudo_targets(probs: torch.Tensor, soft: bool, smoothing: float) -> torch.Tensor:
    """Target rows ``[N, K]``: ``probs`` as they are (soft), or the one-hot of their argmax
    smoothed to ``(1 − ε)·onehot + ε/K`` (hard)."""
    if soft:
        return probs.float()
    k = probs.shape[1]
    onehot = torch.nn.functional.one_hot(probs.argmax(1), k).float()
    return onehot * (1.0 - smoothing) + smoothing / k


@dataclass(frozen=True)
class PseudoLabels:
    """A labelling round's output.

    Attributes:
        keys: ``[M]`` int64 content keys of the labelled unlabeled images (repeats allowed).
        names: ``[M]`` where each image came from.
        targets: ``[M, K]`` float32 target rows.
        teacher_class: ``[M]`` int64 the teacher's class.
        confidence: ``[M]`` float32 the teacher's top probability.
        record: the teacher (source, ``sha256``), the classes, the settings, the counts.
    """

    keys: torch.Tensor
    names: np.ndarray
    targets: torch.Tensor
    teacher_class: torch.Tensor
    confidence: torch.Tensor
    record: dict[str, Any]


def write_pseudo_labels(path: Path, labels: PseudoLabels) -> str:
    """Write ``labels`` atomically to ``path``; returns the file's sha256."""
    buffer = io.BytesIO()
    meta = json.dumps({"format": FORMAT, **labels.record}, sort_keys=True).encode()
    np.savez(buffer, keys=labels.keys.numpy(), names=np.asarray(labels.names, dtype=str),
             targets=labels.targets.numpy().astype(np.float32),
             teacher_class=labels.teacher_class.numpy(),
             confidence=labels.confidence.numpy().astype(np.float32),
             record=np.frombuffer(meta, dtype=np.uint8))
    data = buffer.getvalue()
    atomic_write(path, lambda file: file.write(data))
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_pseudo_labels(path: str | Path) -> PseudoLabels:
    """Read a file :func:`write_pseudo_labels` wrote.

    Raises:
        DataError: the file is missing or is not a pseudo-label file, naming it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data.pseudo_labels={path}: no such file; give the {FILE_NAME} of a "
                        "labelling round (in a pipeline: data.pseudo_labels={<label round>}/"
                        f"{FILE_NAME})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            record = json.loads(npz["record"].tobytes().decode())
            labels = PseudoLabels(torch.from_numpy(npz["keys"]), npz["names"],
                                  torch.from_numpy(npz["targets"]),
                                  torch.from_numpy(npz["teacher_class"]),
                                  torch.from_numpy(npz["confidence"]), record)
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"data.pseudo_labels={path} is not a pseudo-label file written by a "
                        f"labelling round ({err}); relabel with the pipeline's label round"
                        ) from None
    if record.get("format") != FORMAT:
        raise DataError(f"data.pseudo_labels={path} has format {record.get('format')}, this "
                        f"auxilia reads format {FORMAT}; run the labelling round again")
    return labels


def attach_pseudo_labels(data: DatasetSplits, path: str | Path) -> DatasetSplits:
    """``data`` with its ``pseudo`` split built from the file at ``path``.

    The split's images are the student's unlabeled images the file's keys name, its labels
    the teacher's classes, its ``targets[pseudo]`` the file's rows and its ``true_labels``
    those of the unlabeled images (for reporting the pseudo-labels' accuracy only).

    Raises:
        DataError: the data has no unlabeled split, the classes differ, or entries label
            images that are not among the unlabeled ones.
    """
    labels = read_pseudo_labels(path)
    classes = labels.record.get("classes")
    if classes != list(data.classes):
        raise DataError(f"data.pseudo_labels={path} labels the classes {classes}, this data has "
                        f"{list(data.classes)}: label with a teacher of these classes")
    unlabeled = data.unlabeled
    if unlabeled is None or unlabeled.keys is None or not len(unlabeled):
        raise DataError(f"data.pseudo_labels={path} labels unlabeled images, and this data has "
                        "none: give the labelling round's data settings (data.unlabeled, "
                        "data.labels_per_class) to the student too")
    rows = _rows_of(unlabeled.keys, labels.keys)
    missing = int((rows < 0).sum())
    if missing:
        raise DataError(f"data.pseudo_labels={path}: {missing} of its {len(rows)} entries label "
                        "images that are not among this run's unlabeled images; the student "
                        "must read the same data (data.* settings) as the labelling round")
    split = unlabeled.take(rows)
    pseudo = Split(split.images, labels.teacher_class.clone(), split.keys, split.names,
                   {PSEUDO_FIELD: labels.targets.float()}, split.true_labels)
    origins = {**data.origins, "pseudo": f"{len(pseudo)} entries of {path} (teacher "
               f"{labels.record.get('teacher', {}).get('sha256', '?')[:12]})"}
    return replace(data, pseudo=pseudo, origins=origins,
                   pseudo_record={"sha256": file_sha256(Path(path).expanduser()),
                                  "teacher": labels.record.get("teacher", {}).get("sha256")})


def _rows_of(keys: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """For each wanted key, a row of ``keys`` holding it (the first), or −1."""
    order = torch.argsort(keys, stable=True)
    sorted_keys = keys[order]
    pos = torch.searchsorted(sorted_keys, wanted).clamp(max=max(0, len(keys) - 1))
    found = sorted_keys[pos] == wanted if len(keys) else torch.zeros_like(wanted, dtype=torch.bool)
    return torch.where(found, order[pos], torch.full_like(wanted, -1))
