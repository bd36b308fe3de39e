"""Deterministic, resumable index samplers over an in-memory split."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["IndexStream", "eval_batches"]

_EPOCH_MULTIPLIER = 1_000_003


class IndexStream:
    """Endless stream of shuffled index batches, epoch after epoch.

    The permutation of epoch ``e`` is
    ``torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + e))``: it
    depends on nothing but ``(n, seed, e)``, never on the global RNG. ``state_dict()`` /
    ``load_state_dict()`` resume with exactly the batch that would have come next.

    Args:
        n: number of samples in the split.
        batch_size: indices per batch.
        seed: seed of the shuffles.
        drop_last: drop the last incomplete batch of every epoch. When ``batch_size > n`` the
            single batch holds all ``n`` samples rather than nothing.

    Raises:
        ValueError: when ``n`` or ``batch_size`` is not positive.
    """

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool = True) -> None:
        if n < 1:
            raise ValueError(f"IndexStream needs at least one sample, got n={n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n = int(n)
        self.batch_size = min(int(batch_size), self.n)
        self.seed = int(seed)
        self.drop_last = drop_last
        self._epoch = 0
        self._position = 0
        self._perm: torch.Tensor | None = None

    @property
    def epoch(self) -> int:
        """Index of the current epoch (0-based)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Batches already consumed in the current epoch, ``< batches_per_epoch``."""
        return self._position

    @property
    def batches_per_epoch(self) -> int:
        """Number of batches in one epoch."""
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch``: an ``int64`` permutation of ``0..n-1``."""
        generator = torch.Generator().manual_seed(self.seed * _EPOCH_MULTIPLIER + int(epoch))
        return torch.randperm(self.n, generator=generator)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        if self._perm is None:
            self._perm = self.permutation(self._epoch)
        start = self._position * self.batch_size
        batch = self._perm[start : start + self.batch_size]
        self._position += 1
        if self._position >= self.batches_per_epoch:
            self._epoch += 1
            self._position = 0
            self._perm = None
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands: ``{"epoch", "position"}``."""
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes from a :meth:`state_dict`; the next batch is the one that was due.

        Raises:
            ValueError: when the state is malformed or does not fit this stream.
        """
        missing = {"epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"IndexStream state lacks {sorted(missing)}; got keys {sorted(state)}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.batches_per_epoch:
            raise ValueError(
                f"IndexStream state epoch={epoch}, position={position} does not fit a stream "
                f"of {self.batches_per_epoch} batches per epoch")
        self._epoch, self._position, self._perm = epoch, position, None


def eval_batches(n: int, batch_size: int) -> Iterator[slice]:
    """Contiguous batches over ``0..n-1`` in order, the last one possibly short.

    Args:
        n: number of samples.
        batch_size: samples per batch.

    Yields:
        ``slice(start, stop)`` objects; indexing a tensor with them gives a view, no copy.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
