"""A step's inputs in one object: the index streams, the views and the batch assembly.

:class:`Batches` owns every stream the objective declares (``labeled`` and a method's own),
draws an index batch from each per step, gathers the ``uint8`` samples and builds every
declared view (:func:`make_batch`). Its state is the streams' (two integers each), saved in the
checkpoint by name.

Every view draws its augmentation from its own stream, seeded by the run's seed, the view's key
and the step (:func:`auxilia.seeding.derive_seed`): at one seed every method sees the same
augmented ``x_lb`` at every step, and a view added by one method never shifts another's.

With several processes every rank draws the same global index batch from each stream (the
same seed, the same per-epoch permutation) and takes its contiguous share of its rows; its
views draw the random parameters of the whole global batch on the CPU generator and apply
those of its rows (:class:`~auxilia.data.view_shards.Shard`). So a rank's share of a step is
exactly those rows of the one-process step: the same images, the same augmentations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from auxilia.config import SEED_MAX
from auxilia.data.dense_augment import joint_augmentation
from auxilia.data.streams import IndexStream
from auxilia.data.types import Split
from auxilia.data.view_shards import Shard
from auxilia.engine.distributed import check_global_batch
from auxilia.engine.setup import Setup
from auxilia.parts import LABELED, StreamSpec, view_stream
from auxilia.ranks import Ranks, current
from auxilia.seeding import derive_seed, seeded


class Batches:
    """Every stream's index batches, turned into the step's batch of samples and views.

    Args:
        setup: the built run (data, objective, views, device).
        streams: stream name → its :class:`IndexStream` (``labeled`` first), of global batches.
        ranks: this process's rank (its share of every global batch).
    """

    def __init__(self, setup: Setup, streams: dict[str, IndexStream],
                 ranks: Ranks | None = None) -> None:
        self.setup = setup
        self.streams = streams
        self.ranks = ranks or Ranks()
        for name, stream in streams.items():
            check_global_batch(name, stream.batch_size, self.ranks)

    @classmethod
    def build(cls, setup: Setup) -> Batches:
        """The objective's streams over their splits (:func:`build_streams`), sharded over
        the process group's ranks when there are several."""
        return cls(setup, build_streams(setup), current())

    @property
    def labeled(self) -> IndexStream:
        return self.streams[LABELED]

    @property
    def steps_per_epoch(self) -> int:
        """An epoch is one pass over the labeled split."""
        return self.labeled.batches_per_epoch

    def next(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of optimizer step ``step``: an index batch from every stream, its samples
        and every declared view (:func:`make_batch`), and for each stream whether this batch
        starts or ends one of its epochs (``epoch_start_<keys>``, ``epoch_end_<keys>``: host
        booleans, so a term that acts at a stream's epoch never reads the device)."""
        indices, edges = {}, {}
        for name, stream in self.streams.items():
            starts = stream.position == 0
            indices[name] = next(stream)
            edges[self.setup.objective.streams[name].keys] = (starts, stream.position == 0)
        batch = make_batch(self.setup, indices, step, self.ranks)
        for keys, (starts, ends) in edges.items():
            batch[f"epoch_start_{keys}"] = torch.tensor(starts)
            batch[f"epoch_end_{keys}"] = torch.tensor(ends)
        return batch

    def images(self, batch: Mapping[str, torch.Tensor]) -> int:
        """Samples the step drew, over every stream (one per sample, whatever its views) and
        every rank: ``batch`` holds this rank's equal share of each global batch."""
        return self.ranks.world * sum(int(batch[f"idx_{spec.keys}"].shape[0])
                                      for spec in self.setup.objective.streams.values())

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {name: stream.state_dict() for name, stream in self.streams.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        for name, stream_state in state.items():
            self.streams[name].load_state_dict(dict(stream_state))


def build_streams(setup: Setup) -> dict[str, IndexStream]:
    """One :class:`IndexStream` per declared stream; ``labeled`` keeps ``config.seed`` (its
    order is the same for every method), the others draw from their own seeds."""
    cfg = setup.config
    streams = {}
    for name, spec in setup.objective.streams.items():
        split = _stream_split(setup, name, spec)
        n, size = len(split), spec.size(cfg.data.batch_size)
        if size > n and name == LABELED:
            setup.data.notes.append(f"data.batch_size={size} is larger than the {n} training "
                                    f"images: every batch holds all {n}")
        # a seed in config.seed's range: IndexStream mixes it with the epoch in 64 bits
        seed = cfg.seed if name == LABELED else derive_seed(cfg.seed, "stream", name) % SEED_MAX
        streams[name] = IndexStream(n, size, seed=seed)
    return streams


def _stream_split(setup: Setup, name: str, spec: StreamSpec) -> Split:
    split = getattr(setup.data, spec.split, None)
    if split is None or not len(split):
        gives = ("data.pseudo_labels=<a labelling round's pseudo_labels.npz>"
                 if spec.split == "pseudo" else "data.unlabeled")
        raise ValueError(f"stream {name!r} reads the {spec.split!r} split, which this dataset "
                         f"does not have ({gives} gives one)")
    return split


def make_batch(setup: Setup, indices: Mapping[str, torch.Tensor] | torch.Tensor,
               step: int = 0, ranks: Ranks | None = None) -> dict[str, torch.Tensor]:
    """Gather every stream's samples and build every view the objective asked for.

    Args:
        setup: the built run.
        indices: stream name → index batch (a tensor alone is the ``labeled`` stream's).
        step: the optimizer step the batch is for; it seeds the views' augmentation.
        ranks: with several, ``indices`` are global batches and this rank's share is built.

    Returns:
        ``{"x_lb": ..., "y_lb": ..., "idx_lb": ..., <other views and streams' keys>}`` on the
        training device.
    """
    if isinstance(indices, torch.Tensor):
        indices = {LABELED: indices}
    streams = setup.objective.streams
    device, cfg = setup.device, setup.config
    ranks = ranks or Ranks()
    raw: dict[str, torch.Tensor] = {}
    shards: dict[str, Shard | None] = {}
    batch: dict[str, torch.Tensor] = {}
    for name, idx in indices.items():
        spec = streams[name]
        shards[name] = None
        if ranks.several:
            rows = ranks.rows(len(idx))
            shards[name] = Shard(rows.start, len(idx))
            idx = idx[rows]
        split = getattr(setup.data, spec.split)
        raw[name] = split.images[idx].to(device, non_blocking=True)
        if split.labels is not None and spec.split != "unlabeled":
            batch[f"y_{spec.keys}"] = split.labels[idx].to(device, non_blocking=True)
        targets = {f: t[idx].to(device, non_blocking=True) for f, t in
                   (split.targets or {}).items()}
        joint = joint_augmentation(cfg.data, list(targets), raw[name].shape[-1])
        if targets and joint is not None:  # image and maps move together (data.dense)
            with seeded(derive_seed(cfg.seed, "dense", spec.keys, step)):  # drawn on the CPU
                raw[name], targets = joint(raw[name], targets, shards[name])
        batch.update({f"target_{spec.keys}_{f}": t for f, t in targets.items()})
        batch[f"idx_{spec.keys}"] = idx.to(device, non_blocking=True)
    for key, view in setup.train_views.items():
        stream = view_stream(key, streams)
        with seeded(derive_seed(cfg.seed, "view", key, step)):  # views draw on the CPU
            x = view(raw[stream], shards[stream])
        if cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batch[key] = x
    return batch
