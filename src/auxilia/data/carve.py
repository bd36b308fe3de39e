"""Carving test and val out of train where a source has none, and counting the labels a run uses.

Val is carved from train by ``data.val_fraction`` (a stratified share) or ``data.val_per_class``
(exactly that many images of every class, as scarce as ``labels_per_class`` if need be: the
realistic protocol of Oliver et al. 2018, where selecting on a val split larger than the
labeled set would use labels the method is said not to have). Both draws are seeded by
``data.split_seed``, so val stays fixed across run seeds. :func:`labeled_line` counts the labeled
images a run trains and selects on, together.
"""

from __future__ import annotations

import torch

from auxilia.data.config import DEFAULT_VAL_FRACTION, DataConfig
from auxilia.data.raw import DataError, RawData
from auxilia.data.splits import SplitError, per_class_split, stratified_split
from auxilia.data.types import Split

__all__ = ["check_val_settings", "labeled_line", "official_to_splits"]


def check_val_settings(cfg: DataConfig) -> None:
    """Refuse ``val_per_class`` with a ``val_fraction`` other than the default: two sizes of val.

    Raises:
        DataError: naming both keys.
    """
    if cfg.val_per_class is not None and cfg.val_fraction != DEFAULT_VAL_FRACTION:
        raise DataError(f"data.val_per_class={cfg.val_per_class} and data.val_fraction="
                        f"{cfg.val_fraction} both size the val split; keep one of them")


def _carve(pool: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    keep, take = stratified_split(pool.labels, fraction, seed)
    return pool.take(keep), pool.take(take)


def _carve_per_class(pool: Split, cfg: DataConfig, classes: list[str]) -> tuple[Split, Split]:
    """``(train, val)``: ``val_per_class`` images of every class drawn from ``pool``.

    Raises:
        DataError: a class too small for val and what training needs of it (its
            ``labels_per_class``, else one image), naming the class and the counts.
    """
    per_class = int(cfg.val_per_class or 0)
    keep = cfg.labels_per_class or 1
    given = (f"data.val_per_class={per_class} with data.labels_per_class={keep}"
             if cfg.labels_per_class else f"data.val_per_class={per_class}")
    kept = f"{keep} to train" if cfg.labels_per_class else "at least 1 to train"
    try:
        take, rest = per_class_split(
            pool.labels, per_class, cfg.split_seed, classes,
            setting=f"{given} needs {per_class + keep} images of every class ({per_class} to "
                    f"val, {kept})",
            fix="lower data.val_per_class to at most {most}", keep_at_least=keep)
    except SplitError as exc:
        raise DataError(str(exc)) from exc
    return pool.take(rest), pool.take(take)


def official_to_splits(raw: RawData, cfg: DataConfig) -> tuple[Split, Split, Split]:
    """Carves test, then val, from train where the source lacks them.

    A source with an official val split but no test split gets no test split unless
    ``data.test_fraction`` asks for one: carving test from train then would shrink the
    training split behind the user's back. ``data.val_per_class`` is refused when the source
    has its own val split (it would otherwise change nothing, silently).

    Raises:
        DataError: impossible fractions, ``val_per_class`` with an official val split, a
            class too small for ``val_per_class``.
    """
    train, val, test = raw.train, raw.val, raw.test
    check_val_settings(cfg)
    if val is not None and cfg.val_per_class is not None:
        raise DataError(f"data.val_per_class={cfg.val_per_class} carves val from train, but "
                        f"the data has its own val split ({raw.origins.get('val', 'given')}); "
                        "unset data.val_per_class to use that split")
    carve_test = test is None
    test_fraction = cfg.test_fraction_for(has_val=val is not None)
    val_fraction = 0.0 if cfg.val_per_class is not None else cfg.val_fraction
    if carve_test and val is None and val_fraction + test_fraction >= 1:
        raise DataError(f"data.val_fraction + data.test_fraction must be < 1, got "
                        f"{cfg.val_fraction} + {test_fraction}")
    if test is None and test_fraction == 0:
        test = train.take(torch.zeros(0, dtype=torch.int64))
        raw.notes.append("no test split: the data has train and val but no test; results are "
                         "val only (add a test split, or set data.test_fraction to carve one "
                         "from train)" if val is not None else "no test split "
                         "(data.test_fraction=0)")
        raw.origins["test"] = "none"
    elif test is None:
        train, test = _carve(train, test_fraction, cfg.split_seed)
        raw.origins["test"] = (f"carved from train (test_fraction={test_fraction}, "
                               f"split_seed={cfg.split_seed})")
    if val is None and cfg.val_per_class is not None:
        train, val = _carve_per_class(train, cfg, raw.classes)
        raw.origins["val"] = (f"carved from train (val_per_class={cfg.val_per_class}, "
                              f"split_seed={cfg.split_seed})")
    elif val is None:
        fraction = cfg.val_fraction / (1 - test_fraction) if carve_test else cfg.val_fraction
        train, val = _carve(train, fraction, cfg.split_seed)
        raw.origins["val"] = (f"carved from train (val_fraction={cfg.val_fraction}, "
                              f"split_seed={cfg.split_seed})")
    return train, val, test


def _per_class(split: Split, num_classes: int) -> str:
    """``"10 per class"``, or ``"3 to 12 per class"`` when the classes differ."""
    counts = torch.bincount(split.labels[split.labels >= 0], minlength=num_classes)
    low, high = int(counts.min()), int(counts.max())
    return f"{low} per class" if low == high else f"{low} to {high} per class"


def labeled_line(train: Split, val: Split, classes: list[str], cfg: DataConfig) -> str | None:
    """How many labeled images the run trains and selects on, together, when labels are
    scarce by choice (``labels_per_class``, ``labels_fraction`` or ``val_per_class``): the
    labels a method uses are those of train *and* val, since the checkpoint is chosen on val.

    Args:
        train: the final labeled training split.
        val: the final val split.
        classes: the class names.
        cfg: the data section.

    Returns:
        ``"labeled images: 100 to train (10 per class) + 100 to select on (val, 10 per
        class) = 200"``, or None for a run on every label of its data.
    """
    if cfg.labels_per_class is None and cfg.labels_fraction is None and cfg.val_per_class is None:
        return None
    n_train = int((train.labels >= 0).sum())
    on_val = f"val, {_per_class(val, len(classes))}" if len(val) else "no val"
    return (f"labeled images: {n_train:,} to train ({_per_class(train, len(classes))}) + "
            f"{len(val):,} to select on ({on_val}) = {n_train + len(val):,}")
