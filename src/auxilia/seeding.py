"""Seeds per purpose, the random generators' state, and switches of the global torch state that
are undone on exit.

A run draws random numbers for several purposes: the backbone's initialisation, the main
classifier's, each head's, each augmentation view, dropout. Drawn one after the other from one
global stream, every purpose would shift the ones after it (a head built first changes the
backbone of every later draw). Each purpose therefore draws from its own stream, seeded by
:func:`derive_seed` from the run's seed and the purpose's name, inside :func:`seeded`.

Nothing here creates a CUDA context: a CPU run on a machine with GPUs never starts CUDA
(CUDA generators are read only once CUDA is initialised, and written lazily otherwise).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
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


# --------------------------------------------------------------------------- generator state


def rng_state() -> dict[str, Any]:
    """Every random generator the run draws from, in a weights-only-loadable form.

    CUDA generators are saved only once CUDA is initialised: reading them would otherwise
    start CUDA (a context of several hundred MiB on every GPU) in a CPU run.
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "gauss": [int(np_state[3]), float(np_state[4])]},
    }
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured, CUDA generators as :func:`restore_cuda_rng`."""
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["gauss"][0], np_state["gauss"][1]))
    restore_cuda_rng(state.get("cuda", ()))


def restore_cuda_rng(states: Sequence[torch.Tensor]) -> int:
    """Restore the saved CUDA generators of the GPUs this machine has; returns how many.

    A checkpoint saved on 8 GPUs resumes on 1 (GPU 0 gets GPU 0's state, the others are
    dropped), one saved on 1 resumes on 8 (the others keep theirs), and one saved on a GPU
    resumes on the CPU (none restored). ``torch.cuda.set_rng_state_all`` would index a
    generator per saved state and fail on a machine with fewer GPUs. Before CUDA is
    initialised the states are queued by torch and applied when it starts, so no context is
    created here.

    Args:
        states: one ``ByteTensor`` per GPU of the saving machine, GPU 0 first.
    """
    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    restored = min(len(states), present)
    for index in range(restored):
        torch.cuda.set_rng_state(states[index], index)
    return restored


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple | list) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


# --------------------------------------------------------------------------- kernels


def reserve_cublas_workspace() -> bool:
    """Fix cuBLAS's workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``) before CUDA starts.

    cuBLAS allocates a workspace per handle and stream when it first runs, reading the
    variable then; set later, it changes nothing for the workspaces already made, and a
    deterministic run's matrix products may then differ between runs. So the variable is set
    as soon as auxilia is imported (this module is imported by every model and engine
    module), before anything could start CUDA; a value the user set is kept. The fixed
    workspace costs 32 MiB per stream, about what cuBLAS takes by default on recent GPUs.

    Returns:
        Whether the variable is in place before CUDA started (False: CUDA was initialised
        before auxilia was imported without the variable set).
    """
    if CUBLAS_WORKSPACE in os.environ:
        return True
    if torch.cuda.is_initialized():
        return False
    os.environ[CUBLAS_WORKSPACE] = DETERMINISTIC_CUBLAS_WORKSPACE
    return True


_WORKSPACE_BEFORE_CUDA = reserve_cublas_workspace()

_NONDETERMINISTIC = re.compile(r"^(\S+) does not have a deterministic implementation")
"""torch's warning under ``use_deterministic_algorithms(True, warn_only=True)`` (its
``alertNotDeterministic``), naming the kernel, e.g. ``adaptive_avg_pool2d_backward_cuda``."""


@dataclass
class Determinism:
    """What a run's kernels promise, for its summary.

    Attributes:
        deterministic: ``train.deterministic``.
        warned_ops: kernels without a deterministic version that ran (collected from torch's
            warnings during the run, so the list is what this run on this device used: on CUDA
            the backward of adaptive pooling and of bilinear interpolation, which the hint and
            dense heads run; none on the CPU).
        cublas_before_cuda: whether ``CUBLAS_WORKSPACE_CONFIG`` was in place before CUDA
            started (see :func:`reserve_cublas_workspace`).
        tf32: whether the run switched TF32 on (not deterministic, and the process had not
            chosen through torch's ``fp32_precision`` settings).
    """

    deterministic: bool
    warned_ops: list[str] = field(default_factory=list)
    cublas_before_cuda: bool = True
    tf32: bool = False

    def summary(self) -> dict[str, Any]:
        """``{"deterministic": ..., ...}`` for ``summary.json``."""
        if not self.deterministic:
            return {"deterministic": False, "cudnn_benchmark": True, "tf32": self.tf32}
        caveats = list(self.warned_ops)
        if not self.cublas_before_cuda and torch.cuda.is_initialized():
            caveats.append(f"cuBLAS ({CUBLAS_WORKSPACE} was unset when CUDA started; set it "
                           f"to {DETERMINISTIC_CUBLAS_WORKSPACE} before starting Python)")
        return {"deterministic": True, "mode": "warn_only", "nondeterministic_ops": caveats}


_ACTIVE: ContextVar[Determinism | None] = ContextVar("auxilia_determinism", default=None)


def determinism_summary() -> dict[str, Any]:
    """The :meth:`Determinism.summary` of the :func:`deterministic_mode` block this code runs
    in (``{}`` outside any)."""
    active = _ACTIVE.get()
    return active.summary() if active is not None else {}


@contextmanager
def deterministic_mode(enabled: bool) -> Iterator[Determinism]:
    """Switch torch's kernels for one run; restore every switch on exit.

    ``enabled``: ``torch.use_deterministic_algorithms(True, warn_only=True)``,
    ``cudnn.deterministic = True``, ``cudnn.benchmark = False`` and, unless already set,
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8``. A kernel without a deterministic version warns
    instead of failing (strict mode would stop every run with a hint or dense head on CUDA);
    each one that warns is recorded in :attr:`Determinism.warned_ops`, shown once, and
    listed in the run's summary, so the run says what it is.

    Not ``enabled``: the fast kernels: ``cudnn.benchmark = True`` (cuDNN times its algorithms
    per shape and keeps the fastest) and TF32 matrix products and convolutions on GPUs that
    have them (``torch.backends.cuda.matmul.allow_tf32``, ``cudnn.allow_tf32``; not
    ``torch.set_float32_matmul_precision``, which would also change the CPU's oneDNN
    products), unless the process chose TF32 through torch's ``fp32_precision`` settings.

    On exit each switch is put back exactly as it was (the variable unset if it was unset),
    so a run never changes the process it runs in.

    Yields:
        The run's :class:`Determinism`, also read by :func:`determinism_summary` inside.
    """
    record = Determinism(enabled, cublas_before_cuda=_WORKSPACE_BEFORE_CUDA)
    token = _ACTIVE.set(record)
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.deterministic, cudnn.benchmark, os.environ.get(CUBLAS_WORKSPACE))
    tf32 = _tf32_switches()
    try:
        if enabled:
            os.environ.setdefault(CUBLAS_WORKSPACE, DETERMINISTIC_CUBLAS_WORKSPACE)
            torch.use_deterministic_algorithms(True, warn_only=True)
            cudnn.deterministic, cudnn.benchmark = True, False
            with _recording_warned_ops(record.warned_ops):
                yield record
        else:
            cudnn.benchmark, record.tf32 = True, tf32 is not None
            for owner, _ in tf32 or ():
                owner.allow_tf32 = True
            yield record
    finally:
        algorithms, warn_only, cudnn.deterministic, cudnn.benchmark, workspace = saved
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        for owner, allowed in tf32 or ():
            owner.allow_tf32 = allowed
        if workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE, None)
        else:
            os.environ[CUBLAS_WORKSPACE] = workspace
        _ACTIVE.reset(token)


def _tf32_switches() -> list[tuple[Any, bool]] | None:
    """``(owner, allow_tf32)`` of the CUDA matmul and cuDNN TF32 switches, to restore; None
    when the process set TF32 through torch's newer ``fp32_precision`` settings (torch then
    refuses to read the ``allow_tf32`` ones: the user's own choice stands, untouched)."""
    try:
        return [(owner, bool(owner.allow_tf32))
                for owner in (torch.backends.cuda.matmul, torch.backends.cudnn)]
    except RuntimeError:
        return None


@contextmanager
def _recording_warned_ops(ops: list[str]) -> Iterator[None]:
    """Append to ``ops`` each kernel torch warns has no deterministic version, once; the
    first warning per kernel is shown as usual, later ones are not (they come every step).

    Backward kernels warn too: autograd replays its threads' warnings on the calling thread.
    """
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        match = _NONDETERMINISTIC.match(str(message))
        if match is not None:
            if match.group(1) in ops:
                return
            ops.append(match.group(1))
        shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():  # restores the filters and showwarning on exit
        # every occurrence reaches ``show``: Python's registry would hide a kernel that an
        # earlier run in this process already warned about
        warnings.filterwarnings("always", message=_NONDETERMINISTIC.pattern[1:])
        warnings.showwarning = show
        yield
