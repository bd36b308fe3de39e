"""Seeds per purpose, and switches of the global torch state that are undone on exit.

A run draws random numbers for several purposes: the backbone's initialisation, the main
classifier's, each head's, each augmentation view, dropout. Drawn one after the other from one
global stream, every purpose would shift the ones after it (a head built first changes the
backbone of every later draw). Each purpose therefore draws from its own stream, seeded by
:func:`derive_seed` from the run's seed and the purpose's name, inside :func:`seeded`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"
# cuBLAS is deterministic only with a fixed workspace configuration (CUDA >= 10.2); see
# https://docs.nvidia.com/cuda/cublas/index.html#results-reproducibility
DETERMINISTIC_CUBLAS_WORKSPACE = ":4096:8"

_SEED_BITS = 63  # a non-negative int64: torch.manual_seed and numpy (mod 2**32) both accept it


def derive_seed(seed: int, *purpose: str | int) -> int:
    """A seed for one purpose of a run, the same in every process and on every machine.

    Python's ``hash()`` of strings changes between processes (``PYTHONHASHSEED``), so the parts
    are hashed with BLAKE2b instead. Strings and integers are tagged, so ``("1",)`` and ``(1,)``
    give different seeds, and every part is length-prefixed, so ``("ab", "c")`` and
    ``("a", "bc")`` do too.

    Args:
        seed: the run's seed.
        *purpose: what the seed is for, e.g. ``("backbone",)`` or ``("view", "x_lb", 12)``.

    Returns:
        An integer in ``[0, 2**63)``.

    Raises:
        TypeError: a part of ``purpose`` is neither ``str`` nor ``int`` (``bool`` included: it
            would hash like 0 or 1).
    """
    digest = hashlib.blake2b(digest_size=8, person=b"auxilia-seed")
    for part in (seed, *purpose):
        digest.update(_encode(part))
    return int.from_bytes(digest.digest(), "big") >> (64 - _SEED_BITS)


def _encode(part: str | int) -> bytes:
    """``part`` as tagged, length-prefixed bytes."""
    if isinstance(part, bool) or not isinstance(part, str | int):
        raise TypeError(f"seed parts must be str or int, got {type(part).__name__}: {part!r}")
    if isinstance(part, str):
        tag, body = b"s", part.encode("utf-8")
    else:
        tag, body = b"i", str(part).encode("ascii")
    return tag + len(body).to_bytes(8, "big") + body


@contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Draw a fixed stream inside the block; leave the global RNG as it was outside.

    The CPU generator is always forked. CUDA generators are forked when ``device`` is a CUDA
    device or CUDA is already initialised; otherwise CUDA is left alone entirely (seeding it
    would queue a seed that lands when CUDA starts later, outside the block).

    Args:
        seed: the block's seed, e.g. ``derive_seed(run_seed, "backbone")``.
        device: the device the block draws on, if not only the CPU.
    """
    cuda = (device is not None and device.type == "cuda") or torch.cuda.is_initialized()
    # every CUDA device: torch.cuda.manual_seed_all seeds them all, so all are restored
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed_all(seed)
        yield


@contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Ask torch for deterministic kernels inside the block; restore every switch on exit.

    Sets ``torch.use_deterministic_algorithms(True, warn_only=True)`` (a kernel without a
    deterministic version warns instead of failing), ``cudnn.deterministic = True``,
    ``cudnn.benchmark = False`` and, unless already set, ``CUBLAS_WORKSPACE_CONFIG=:4096:8``.
    On exit each is put back exactly as it was (the variable unset if it was unset), so a run
    never changes the process it runs in.

    torch reads ``CUBLAS_WORKSPACE_CONFIG`` when it first creates a cuBLAS workspace; in a
    process that ran CUDA matrix products before the block, set it before those.

    Args:
        enabled: False leaves everything as it is (the block runs unchanged).
    """
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.deterministic, cudnn.benchmark, os.environ.get(CUBLAS_WORKSPACE))
    os.environ.setdefault(CUBLAS_WORKSPACE, DETERMINISTIC_CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        algorithms, warn_only, cudnn.deterministic, cudnn.benchmark, workspace = saved
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        if workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE, None)
        else:
            os.environ[CUBLAS_WORKSPACE] = workspace
