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
from auxilia.data.file_images import FileImages
from auxilia.data.streams import IndexStream
from auxilia.data.types import Split
from auxilia.data.view_shards import Shard
from auxilia.engine.distributed import check_global_batch
from auxilia.engine.prefetch import Prefetch
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
                 ranks: Ranks | None = None, workers: int = 0) -> None:
        self.setup = setup
        self.streams = streams
        self.ranks = ranks or Ranks()
        self.workers = workers
        for name, stream in streams.items():
            check_global_batch(name, stream.batch_size, self.ranks)
        # a CPU run's views are built in the workers too; on a GPU, on the GPU
        self.reader = BatchReader(setup, self.ranks, views_here=bool(workers)
                                  and setup.device.type == "cpu")
        self._ahead: Prefetch | None = None

    @classmethod
    def build(cls, setup: Setup) -> Batches:
        """The objective's streams over their splits (:func:`build_streams`), sharded over
        the process group's ranks when there are several, prepared ahead by the run's input
        workers (:attr:`~auxilia.engine.setup.Setup.workers`)."""
        return cls(setup, build_streams(setup), current(), setup.workers)

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
        host = self._prefetched(step) if self.workers else None
        indices, edges = {}, {}
        for name, stream in self.streams.items():
            starts = stream.position == 0
            indices[name] = next(stream)
            edges[self.setup.objective.streams[name].keys] = (starts, stream.position == 0)
        if host is None:  # in this process, between steps
            batch = make_batch(self.setup, indices, step, self.ranks)
        else:
            batch = self.reader.finish(host, step, self.setup.device)
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
        self.close()  # what was prepared ahead came from the old position
        for name, stream_state in state.items():
            self.streams[name].load_state_dict(dict(stream_state))

    def _prefetched(self, step: int) -> dict[str, Any]:
        """Step ``step``'s host batch from the workers, started at the streams' position when
        they are not running or prepared another step (a caller that skipped or went back)."""
        if self._ahead is None or self._ahead.step != step:
            self.close()
            self._ahead = Prefetch(self.reader.host, self.streams, step, self.workers,
                                   pin=self.setup.device.type == "cuda")
        return self._ahead.next()

    def close(self) -> None:
        """Stops the input workers, if any (they start again at the next batch)."""
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None


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
    reader = BatchReader(setup, ranks or Ranks(), views_here=False)
    return reader.finish(reader.host(indices, step), step, setup.device)


class BatchReader:
    """What a step's batch is made from, apart from the model: the splits, the streams' specs,
    the views. Its :meth:`host` half (samples gathered or decoded, dense maps augmented, and,
    with ``views_here``, the views built on the CPU) runs in the input pipeline's worker
    processes (:mod:`auxilia.engine.prefetch`); :meth:`finish` moves the result to the training
    device and builds the views there when the workers did not.

    Every random draw is seeded by the run's seed, a purpose, the step and (for a file's
    crop) the sample, never by a worker: the batch of a step is the same with any number of
    workers.
    """

    def __init__(self, setup: Setup, ranks: Ranks, views_here: bool) -> None:
        self.data = setup.data
        self.config = setup.config
        self.streams = setup.objective.streams
        self.views = setup.train_views
        self.ranks = ranks
        self.views_here = views_here

    def host(self, indices: Mapping[str, torch.Tensor], step: int) -> dict[str, Any]:
        """This rank's samples of every stream on the CPU (and the views, ``views_here``)."""
        cfg = self.config
        out: dict[str, Any] = {"raw": {}, "shards": {}, "batch": {}}
        for name, idx in indices.items():
            spec = self.streams[name]
            shard = None
            if self.ranks.several:
                rows = self.ranks.rows(len(idx))
                shard = Shard(rows.start, len(idx))
                idx = idx[rows]
            split = getattr(self.data, spec.split)
            raw = _pixels(split.images, idx, cfg.seed, spec.keys, step)
            batch = out["batch"]
            if split.labels is not None and spec.split != "unlabeled":
                batch[f"y_{spec.keys}"] = split.labels[idx]
            targets = {f: t[idx] for f, t in (split.targets or {}).items()}
            joint = joint_augmentation(cfg.data, list(targets), raw.shape[-1])
            if targets and joint is not None:  # image and maps move together (data.dense)
                with seeded(derive_seed(cfg.seed, "dense", spec.keys, step)):
                    raw, targets = joint(raw, targets, shard)
            batch.update({f"target_{spec.keys}_{f}": t for f, t in targets.items()})
            batch[f"idx_{spec.keys}"] = idx
            out["raw"][name], out["shards"][name] = raw, shard
        if self.views_here:
            out["batch"].update(self._views(out["raw"], out["shards"], step))
            out["raw"] = {}
        return out

    def finish(self, host: Mapping[str, Any], step: int, device: torch.device
               ) -> dict[str, torch.Tensor]:
        """The step's batch on ``device``: :meth:`host`'s result moved, its views built."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)
        batch = {k: move(v) for k, v in host["batch"].items()}
        if host["raw"]:
            raw = {name: move(x) for name, x in host["raw"].items()}
            batch.update(self._views(raw, host["shards"], step))
        return batch

    def _views(self, raw: Mapping[str, torch.Tensor], shards: Mapping[str, Shard | None],
               step: int) -> dict[str, torch.Tensor]:
        out = {}
        for key, view in self.views.items():
            stream = view_stream(key, self.streams)
            with seeded(derive_seed(self.config.seed, "view", key, step)):  # on the CPU
                x = view(raw[stream], shards[stream])
            if self.config.model.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out[key] = x
        return out


def _pixels(images: torch.Tensor | FileImages, idx: torch.Tensor, seed: int, keys: str,
            step: int) -> torch.Tensor:
    """The ``uint8`` samples ``idx`` of a split's store. A file's random-resized crop is drawn
    from a generator seeded by (seed, ``crop``, the stream, the step, the sample)."""
    if not isinstance(images, FileImages):
        return images[idx]
    seeds = None
    if images.decoding.crop == "random_resized":
        seeds = [derive_seed(seed, "crop", keys, step, int(i)) for i in idx]
    return images.read(idx, seeds)
