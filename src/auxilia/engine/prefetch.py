"""The input pipeline's worker processes: the next batches are prepared while a step runs.

A :class:`Prefetch` runs a ``torch.utils.data.DataLoader`` whose sampler replays the run's
index streams from a saved position (copies of them: the run's own streams advance only when
a batch is consumed, so a checkpoint saves the position of the batches the steps used, never
of those prepared ahead) and whose dataset builds a step's batch on the host
(:meth:`~auxilia.engine.batches.BatchReader.host`: samples gathered from memory or decoded
from files, and on a CPU run the views too). Up to ``prefetch`` batches per worker are ready
before the step asks; on CUDA they come in pinned memory and move with non-blocking copies.

Nothing a worker draws depends on the worker: each batch is seeded by its step, so a run is
the same with 0, 2 or 8 workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from auxilia.data.errors import DataError
from auxilia.data.file_images import quiet_worker, worker_context
from auxilia.data.streams import IndexStream

__all__ = ["PREFETCH", "Prefetch"]

PREFETCH = 2
"""Batches each worker prepares ahead (the DataLoader's ``prefetch_factor``)."""


class _Steps(Sampler):
    """``(step, {stream: index batch})`` from ``first`` on, drawn from copies of the streams."""

    def __init__(self, streams: Mapping[str, IndexStream], first: int) -> None:
        self.states = {name: (s.n, s.batch_size, s.seed, s.drop_last, s.state_dict())
                       for name, s in streams.items()}
        self.first = first

    def __iter__(self) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        copies = {}
        for name, (n, size, seed, drop_last, state) in self.states.items():
            copies[name] = IndexStream(n, size, seed, drop_last)
            copies[name].load_state_dict(state)
        step = self.first
        while True:
            yield step, {name: next(stream) for name, stream in copies.items()}
            step += 1


class _StepBatches(Dataset):
    """Item ``(step, indices)`` is that step's batch on the host (``build(indices, step)``)."""

    def __init__(self, build: Any) -> None:
        self.build = build

    def __getitem__(self, item: tuple[int, dict[str, torch.Tensor]]) -> Any:
        step, indices = item
        return self.build(indices, step)


class Prefetch:
    """Batches from step ``first`` on, prepared by ``workers`` processes.

    Args:
        build: ``(indices, step) -> host batch``, run in the workers.
        streams: the run's streams at the position of step ``first`` (copied, not advanced).
        first: the step of the first batch.
        workers: worker processes (at least one).
        pin: return batches in pinned memory (training on CUDA).
    """

    def __init__(self, build: Any, streams: Mapping[str, IndexStream], first: int,
                 workers: int, pin: bool = False) -> None:
        self.step = first
        loader = DataLoader(_StepBatches(build), batch_size=None, sampler=_Steps(streams, first),
                            num_workers=workers, prefetch_factor=PREFETCH, pin_memory=pin,
                            multiprocessing_context=worker_context(), worker_init_fn=quiet_worker)
        self._batches: Iterator[Any] | None = iter(loader)

    def next(self) -> Any:
        """The host batch of step :attr:`step` (then the step after)."""
        assert self._batches is not None, "Prefetch used after close()"
        try:
            batch = next(self._batches)
        except RuntimeError as exc:
            if "DataLoader worker" not in str(exc):
                raise
            raise DataError(f"an input worker process died ({exc}), e.g. out of memory or a "
                            "crash in an image decoder; set data.num_workers=0 to prepare "
                            "batches in the training process and find the file") from None
        self.step += 1
        return batch

    def close(self) -> None:
        """Stops the workers (the batches prepared ahead are dropped)."""
        batches, self._batches = self._batches, None
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
