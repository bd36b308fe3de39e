"""What a source loader returns (:class:`RawData`) and the error every data problem raises.

Kept apart from :mod:`auxilia.data.sources` so that the source modules (e.g.
:mod:`auxilia.data.files`) can use them without importing the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from auxilia.data.errors import DataError
from auxilia.data.storage import StoreChoice
from auxilia.data.types import Split

__all__ = ["DataError", "RawData"]


@dataclass
class RawData:
    """What a source loader returns: official splits, before the common pipeline.

    ``val`` / ``test`` are None when the source has no such official split (they are then
    carved from ``train``); ``stats`` is None when it must be computed from the training split.
    """

    train: Split
    classes: list[str]
    family: str
    val: Split | None = None
    test: Split | None = None
    unlabeled: Split | None = None
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    notes: list[str] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)
    """Where each split came from (``"folder train/"``, ``"carved from train (...)"``)."""
    files: dict[str, list[str]] = field(default_factory=dict)
    """The image files each split was read from, as listed (undecodable ones too), for the
    image-file sources; empty for the others. ``data.unlabeled`` is checked against them
    (:mod:`auxilia.data.unlabeled_paths`)."""
    store: StoreChoice | None = None
    """Where the image files' pixels live (:func:`~auxilia.data.storage.choose_store`); None
    for array sources (always in memory)."""
