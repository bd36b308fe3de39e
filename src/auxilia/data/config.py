"""Configuration of the data section: which source, where, how to split and augment."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from auxilia.strict import Strict

DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.1
RESIZE_METHOD = "bilinear with antialiasing, stretched to a square (the aspect ratio is not kept)"
"""What ``data.image_size`` does to every image (PIL at decode time, torch for array sources)."""


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6,
          "mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12,
          "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """``"8GiB"``, ``"500MB"``, ``"1.5g"``, ``123`` → bytes.

    Raises:
        ValueError: not a positive size with a known unit.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a memory size; write e.g. 8GiB, 500MB or 2g")
    return int(float(match.group(1)) * _UNITS[unit])


class CsvFiles(Strict):
    """CSV files listing images, one per split (e.g. ``train_split.csv`` / ``val_split.csv``)."""

    train: str
    val: str | None = None
    test: str | None = None
    filename_column: str = "filename"
    label_column: str = "class"
    image_dir: str | None = Field(
        default=None,
        description="folder the file names are relative to (default: the CSV's folder)")


DENSE_AUGMENTS = ("crop", "flip", "rot90")
"""The joint geometric augmentations of dense data (:mod:`auxilia.data.dense_augment`)."""


class DenseFiles(Strict):
    """Dense targets (maps) read beside the images of a ``folder`` or ``csv`` source, and the
    geometric augmentations that move an image and its maps together
    (:mod:`auxilia.data.dense_files`, :mod:`auxilia.data.dense_augment`)."""

    fields: list[str] = Field(
        default_factory=list,
        description="the target maps, e.g. [pos, cos, sin, width]: field F of image <stem>.png "
                    "is <stem>.F.npy (float [H, W] or [C, H, W]) or <stem>.F.png (one channel); "
                    "a csv source lists them in columns named F")
    angle_fields: tuple[str, str] | None = Field(
        default=("cos", "sin"),
        description="the fields holding cos 2θ and sin 2θ of a grasp angle θ, transformed with "
                    "the flips and rotations; null: no angle fields")
    augment: list[Literal["crop", "flip", "rot90"]] = Field(
        default_factory=lambda: list(DENSE_AUGMENTS),
        description="joint augmentations of image and maps: crop (zero-padded random crop), "
                    "flip (horizontal), rot90 (a random multiple of 90°); data.augment=none "
                    "turns them all off")
    padding: int | None = Field(
        default=None, ge=0,
        description="the random crop's zero padding in pixels (default: the side // 8)")

    @field_validator("fields")
    @classmethod
    def _names(cls, fields: list[str]) -> list[str]:
        bad = [f for f in fields if not f or any(c in f for c in "./\\ ")]
        if bad or len(set(fields)) != len(fields):
            raise ValueError(f"data.dense.fields must be distinct names without '.', '/' or "
                             f"spaces, got {fields}")
        return fields

    @field_validator("angle_fields")
    @classmethod
    def _pair(cls, pair: tuple[str, str] | None) -> tuple[str, str] | None:
        if pair is not None and pair[0] == pair[1]:
            raise ValueError(f"data.dense.angle_fields names one field twice ({pair[0]!r}); "
                             "give the cos 2θ field, then the sin 2θ field")
        return pair


class DataConfig(Strict):
    """Where the images come from and how they are split.

    Fractions are of the training pool: ``val_fraction`` is carved from the official train set
    (stratified, seeded), or ``val_per_class`` images of every class; ``test_fraction`` is used
    only by sources without an official test split (``digits``, a ``folder`` without a ``test``
    subfolder, ``csv`` without a test file).
    The unlabeled split (:attr:`auxilia.data.types.DatasetSplits.unlabeled`) gathers the training
    samples whose labels ``labels_per_class`` or ``labels_fraction`` hide (all of train with
    ``unlabeled_includes_labeled``), the images of ``unlabeled`` and STL-10's unlabeled split
    (``stl10_unlabeled``).
    """

    source: str = "digits"
    root: str | None = None
    download: bool = False
    val_fraction: float = Field(default=DEFAULT_VAL_FRACTION, ge=0.0, lt=1.0)
    val_per_class: int | None = Field(
        default=None, ge=1,
        description="carve val from train with exactly this many images per class (seeded by "
                    "split_seed), e.g. as scarce as labels_per_class; instead of val_fraction. "
                    "Refused when the data has its own val split")
    test_fraction: float | None = Field(
        default=None, ge=0.0, lt=1.0,
        description="test carved from train when the source has no test split; default 0.2, "
                    "or no test split when the source has an official val split but no test")
    split_seed: int = Field(default=0, ge=0, le=2**32 - 1, strict=True)  # as config.SEED_MAX
    labels_per_class: int | None = Field(
        default=None, ge=1,
        description="keep this many labeled training samples per class (seeded by the run "
                    "seed); the rest of train becomes the unlabeled split, labels hidden")
    labels_fraction: float | None = Field(
        default=None, gt=0.0, lt=1.0,
        description="keep this stratified fraction of train labeled (at least one per class, "
                    "seeded by the run seed); the rest becomes the unlabeled split. Not with "
                    "labels_per_class")
    unlabeled_includes_labeled: bool = Field(
        default=False,
        description="the labeled training images are also in the unlabeled split, labels "
                    "hidden (as USB and FixMatch do)")
    unlabeled: str | None = Field(
        default=None,
        description="your own unlabeled images: a folder (every image file under it) or a "
                    ".csv with a filename column (relative to the CSV's folder); a relative "
                    "path is relative to data.root when that is set. Added to the unlabeled "
                    "split; files of the labeled data (data.root, a split or class folder) "
                    "are refused, and images identical to a val/test image dropped")
    pseudo_labels: str | None = Field(
        default=None,
        description="a labelling round's pseudo_labels.npz (Noisy Student): its entries label "
                    "this run's unlabeled images (looked up by content) and become the "
                    "'pseudo' split; the file's checksum is part of the data's fingerprint")
    train_subset: int | None = Field(
        default=None, ge=1,
        description="keep this many training samples (stratified), for quick runs")
    image_size: Annotated[int, Field(ge=4)] | Literal["auto", "native"] | None = Field(
        default="auto",
        description="resize every image to this square size (bilinear with antialiasing, the "
                    "aspect ratio not kept; folder/csv: at decode time); 'native' or null: "
                    "keep the images' size; 'auto': chosen with the model when model.name is "
                    "auto, else native")
    grayscale: bool = False
    on_bad_image: Literal["fail", "skip"] = "fail"
    duplicates: Literal["drop", "error", "keep"] = Field(
        default="drop",
        description="an image of val/test identical to a training image (or a test image "
                    "identical to a val one): drop it from val/test, refuse, or keep it")
    csv: CsvFiles | None = None
    dense: DenseFiles | None = Field(
        default=None,
        description="dense targets: maps read beside the images (folder or csv source), "
                    "augmented with them")
    stl10_unlabeled: bool = Field(
        default=False, description="stl10: also load the 100,000 unlabeled images as `unlabeled`")
    augment: Literal["auto", "none"] = "auto"
    views: dict[str, str] = Field(
        default_factory=dict,
        description="override the methods' augmentation per view, e.g. {x_lb2: color}")
    batch_size: int = Field(default=64, ge=1)
    eval_batch_size: int = Field(default=512, ge=1)
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        default="auto",
        description="worker processes of the input pipeline (they read, decode and prepare the "
                    "next batches while a step runs) and of the memory store's decoding; 0: "
                    "everything in the training process; auto: see docs/data.md. Results do "
                    "not depend on it")
    storage: Literal["auto", "memory", "files"] = Field(
        default="auto",
        description="memory: decode every image once and keep it in memory; files: keep image "
                    "files (folder, csv, data.unlabeled) on disk and decode them as batches "
                    "need them; auto: files when the decoded images would not fit "
                    "data.memory_budget")
    memory_budget: str | None = Field(
        default=None,
        description="the most memory the decoded images may take before auto storage picks "
                    "files, e.g. 8GiB or 500MB (default: half of the memory available)")
    crop: Literal["auto", "resize", "random_resized"] = Field(
        default="auto",
        description="how the file store makes a sample of a file: resize (the whole image "
                    "stretched to image_size, as the memory store), random_resized (training: "
                    "a random-resized crop drawn at full resolution; evaluation: resize + "
                    "centre crop); auto: random_resized when files are stored and the images "
                    "are at least twice image_size")
    crop_scale: tuple[float, float] = Field(
        default=(0.08, 1.0), description="random_resized: the crop's share of the image's area")
    crop_ratio: tuple[float, float] = Field(
        default=(3 / 4, 4 / 3), description="random_resized: the crop's aspect ratio (w / h)")
    center_crop: float = Field(
        default=0.875, gt=0.0, le=1.0,
        description="random_resized: evaluation's crop side over the resized shorter side")

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _range(cls, pair: tuple[float, float]) -> tuple[float, float]:
        if not 0 < pair[0] <= pair[1]:
            raise ValueError(f"must be (low, high) with 0 < low <= high, got {list(pair)}")
        return pair

    @field_validator("memory_budget")
    @classmethod
    def _budget(cls, text: str | None) -> str | None:
        if text is not None:
            parse_bytes(text)
        return text

    @property
    def size(self) -> int | None:
        """The square size images are resized to, or None to keep their native size."""
        return self.image_size if isinstance(self.image_size, int) else None

    @property
    def budget_bytes(self) -> int | None:
        """``memory_budget`` in bytes, or None for the default."""
        return None if self.memory_budget is None else parse_bytes(self.memory_budget)

    def test_fraction_for(self, has_val: bool) -> float:
        """The fraction carved as test from a source without a test split."""
        if self.test_fraction is not None:
            return self.test_fraction
        return 0.0 if has_val else DEFAULT_TEST_FRACTION
