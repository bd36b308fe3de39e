"""Several processes (``torchrun``): the process group, the global batch's share of each rank,
the models wrapped for DDP's gradient reduction, and the decisions all ranks share.

``torchrun --nproc_per_node=N -m auxilia train ...`` starts N processes; each joins the process
group here (:func:`session`), trains on its contiguous share of every global batch
(``data.batch_size`` is the global batch), and averages its gradients with the others' through
:class:`~torch.nn.parallel.DistributedDataParallel`. Rank 0 writes the run's files; every rank
evaluates the same weights (their buffers are rank 0's, :func:`same_buffers`) so that every
rank selects the same checkpoint; decisions (a non-finite step, a stop request) are agreed by
all ranks at the same step (:func:`auxilia.ranks.all_true`, :func:`any_rank`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from auxilia.config import Config
from auxilia.config_errors import ConfigError
from auxilia.ranks import Ranks, current

TIMEOUT_S = 300
"""Seconds a collective waits for every rank before the job ends with an error (a rank that
died or hangs): never a hang. ``AUXILIA_DIST_TIMEOUT`` overrides it."""


class RankError(RuntimeError):
    """Another rank failed: this one stops too, naming it."""


def launched() -> bool:
    """Whether torchrun (or another launcher setting ``WORLD_SIZE``) started several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def session(device: torch.device) -> Iterator[Ranks]:
    """Join the launcher's process group for the block (NCCL on CUDA, gloo otherwise), and
    leave it after; a single process (or a group someone else started) passes through."""
    if not launched() or dist.is_initialized():
        yield current()
        return
    timeout = timedelta(seconds=float(os.environ.get("AUXILIA_DIST_TIMEOUT", TIMEOUT_S)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timeout)
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def local_device(device: torch.device, ranks: Ranks) -> torch.device:
    """The GPU of this rank on its machine (``cuda:LOCAL_RANK``); other devices as given."""
    if device.type == "cuda" and ranks.several and device.index is None:
        return torch.device("cuda", ranks.local_rank)
    return device


def check_global_batch(stream: str, size: int, ranks: Ranks) -> None:
    """Refuse a global batch that does not split evenly over the ranks, naming the numbers."""
    if size % ranks.world:
        below, above = size - size % ranks.world, size + ranks.world - size % ranks.world
        what = "data.batch_size" if stream == "labeled" else f"the {stream} stream's batch"
        raise ValueError(f"{what}={size} does not split over {ranks.world} processes "
                         f"(data.batch_size is the global batch): use a multiple of "
                         f"{ranks.world}, e.g. {below or above} or {above}")


def wrap_for_backward(models: Mapping[str, nn.Module], trained: set[str], ranks: Ranks
                      ) -> dict[str, nn.Module]:
    """The models a step forwards: the trained ones wrapped in DDP (their gradients averaged
    over ranks during the backward), the others (EMA models, teachers, frozen slots) as they
    are. The run's own ``models`` stay unwrapped, for checkpoints and evaluation.

    Buffers are not synchronised at each forward (``forward_sync_buffers=False``, the former
    ``broadcast_buffers=False``): a model may run several forwards in one step (MixMatch's
    guess, then its mixed batch); rank 0's buffers are copied to every rank before each
    evaluation and checkpoint instead (:func:`same_buffers`).
    """
    if not ranks.several:
        return dict(models)
    wrapped: dict[str, nn.Module] = {}
    for name, model in models.items():
        if name in trained and any(p.requires_grad for p in model.parameters()):
            device = next(model.parameters()).device
            wrapped[name] = DistributedDataParallel(
                model, device_ids=[device] if device.type == "cuda" else None,
                forward_sync_buffers=False)
        else:
            wrapped[name] = model
    return wrapped


@torch.no_grad()
def average_gradients(params: list[nn.Parameter], ranks: Ranks) -> None:
    """Average the gradients of parameters outside DDP (the terms' own) over ranks."""
    if not ranks.several:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= ranks.world


@torch.no_grad()
def same_buffers(models: Mapping[str, nn.Module], ranks: Ranks) -> None:
    """Every model's buffers (BatchNorm statistics, EMA averages) made rank 0's on every rank,
    so that every rank evaluates, selects and checkpoints the same model."""
    if not ranks.several:
        return
    for model in models.values():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def any_rank(flag: bool, device: torch.device, ranks: Ranks) -> bool:
    """Whether ``flag`` holds on any rank (a stop request on one stops all, at one step)."""
    if not ranks.several:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class Ready:
    """Rank 0's word to the other ranks, said once: ready to train (the folder is checked,
    locked and written; :meth:`go`), or why it stopped first (:meth:`fail`), so that they
    never wait for a rank 0 that will not come."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks, self.said = ranks, False

    def go(self, batch: int, notes: list[str]) -> None:
        """Say ready; with several ranks, add to ``notes`` how ``batch`` is shared."""
        if self.ranks.several and not self.said:
            notes.append(
                f"{self.ranks.world} processes: each trains on {batch // self.ranks.world} "
                f"images of every global batch of {batch} (data.batch_size)")
        self._say(None)

    def fail(self, reason: str) -> None:
        self._say(reason)

    def _say(self, message: str | None) -> None:
        if self.ranks.several and not self.said:
            dist.broadcast_object_list([message], src=0)
        self.said = True


def check_distributable(config: Config, device: torch.device) -> None:
    """Refuse what several processes cannot do (yet), naming the fix."""
    if config.train.time is not None:
        raise ConfigError("train.time is not supported with several processes yet (each "
                          "rank would time its own steps): give train.steps or train.epochs")
    if config.model.sync_bn and device.type != "cuda":
        raise ConfigError(f"model.sync_bn=true needs GPUs (torch's SyncBatchNorm runs on "
                          f"CUDA only), and this run trains on {device.type}: drop it")


def sync_batchnorm(models: dict[str, nn.Module], trained: set[str], ranks: Ranks) -> None:
    """``model.sync_bn``: the trained models' BatchNorm layers normalise with the whole global
    batch's statistics (each model is converted in place; its top module is never a norm)."""
    if ranks.several:
        for name in trained & set(models):
            models[name] = nn.SyncBatchNorm.convert_sync_batchnorm(models[name])


@torch.no_grad()
def mean_over_ranks(record: dict[str, Any], ranks: Ranks, device: torch.device
                    ) -> dict[str, Any]:
    """A training log record's numbers averaged over ranks (each rank's are its share's)."""
    if not ranks.several:
        return record
    keys = sorted(k for k, v in record.items() if k.startswith("train/")
                  and isinstance(v, float))
    values = torch.tensor([record[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {**record, **dict(zip(keys, (values / ranks.world).tolist(), strict=True))}


def wait_for_rank0(ranks: Ranks) -> None:
    """The other ranks wait until rank 0 has checked, locked and written the run folder.

    Raises:
        RankError: rank 0 stopped before training, with its reason.
    """
    message: list[str | None] = [None]
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise RankError(f"rank 0 stopped before training: {message[0]}")


def barrier(ranks: Ranks) -> None:
    if ranks.several:
        dist.barrier()
