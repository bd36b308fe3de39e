"""Memory a run will need, estimated before anything large is allocated.

An image size or batch size that does not fit makes the process allocate until the machine
swaps or the kernel kills it, losing whatever was not saved. Both memory users are checked
up front against what is available, with a one-line error naming the keys to lower:

* the decoded dataset (:func:`check_decoded_size`): every split is held in memory as ``uint8``
  ``N x C x H x W``;
* one training step (:func:`check_step_memory`): the model's forward is run on the ``meta``
  device (shapes only, no data, milliseconds) and the bytes of every tensor it creates are
  summed, then scaled by the batch, the views and the autograd factor below.

An estimate that cannot be made (a model whose forward fails on ``meta``, a device whose free
memory is unknown) skips the check: it never stops a run that might fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from auxilia.config import Config, ConfigError
from auxilia.data.raw import DataError

GiB = 2**30

AUTOGRAD_FACTOR = 1.5
"""Peak memory of a training step per byte of forward output. Autograd keeps (nearly) every
forward output for the backward pass; the backward adds the gradients of the activations, alive
a few layers at a time, and the allocator rounds and caches. Checked against measured peaks in
``tests/engine/test_memory.py``."""

EVAL_FACTOR = 3
"""Under ``no_grad`` only a layer's input, its output and a residual branch are alive at once:
an evaluation batch needs about this many times its largest layer output."""

CGROUP = Path("/sys/fs/cgroup")
"""The cgroup v2 folder of this process: in a container, its memory limit is the real one."""


@dataclass(frozen=True)
class ForwardBytes:
    """What one sample's forward pass creates.

    Attributes:
        total: bytes of every tensor the forward creates (views and in-place results, which
            share memory, excluded): what autograd keeps for the backward pass.
        largest: bytes of the largest of them.
    """

    total: int
    largest: int


class _CountOutputs(TorchDispatchMode):
    """Sums the bytes of every new tensor an operator returns (views and in-place excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        out = func(*args, **(kwargs or {}))
        results = out if isinstance(out, tuple) else (out,)
        for spec, value in zip(func._schema.returns, results, strict=False):
            if spec.alias_info is not None:  # a view or an in-place result: no new memory
                continue
            for t in tree_leaves(value):
                if isinstance(t, torch.Tensor):
                    size = t.numel() * t.element_size()
                    self.total += size
                    self.largest = max(self.largest, size)
        return out


def forward_bytes(model: nn.Module, image_shape: tuple[int, int, int]) -> ForwardBytes | None:
    """Bytes one sample's forward creates, measured on the ``meta`` device (nothing allocated).

    The model's own weights are untouched: the forward runs on ``meta`` copies of them
    (``torch.func.functional_call``), so BatchNorm statistics do not move either.

    Args:
        model: the model, in the mode (train or eval) to measure.
        image_shape: ``(C, H, W)`` of one input.

    Returns:
        Per-sample bytes, or None when the forward fails on ``meta`` (e.g. a model that builds
        tensors on a fixed device inside its forward).
    """
    probe = 2  # BatchNorm in training refuses a batch of one; the result is divided back
    try:
        tensors = {name: torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)
                   for name, t in [*model.named_parameters(), *model.named_buffers()]}
        x = torch.empty((probe, *image_shape), device="meta")
        with _CountOutputs() as counter:
            functional_call(model, tensors, (x,), strict=False)
    except Exception:  # any failure only means there is no estimate
        return None
    return ForwardBytes(counter.total // probe, counter.largest // probe)


def optimizer_copies(config: Config, device: torch.device) -> int:
    """Copies of the trainable parameters a step holds beyond the weights already in memory.

    The gradient, SGD's momentum buffer (none without momentum) or AdamW's two moments, and
    the weights themselves on an accelerator (on the CPU they are already allocated).
    """
    optim = config.optim
    states = 2 if optim.name == "adamw" else int(optim.momentum > 0)
    return 1 + states + int(device.type != "cpu")


def step_bytes(per_sample: ForwardBytes, image_shape: tuple[int, int, int], batch: int,
               views: int, parameter_bytes: int, copies: int) -> int:
    """Peak bytes of one training step: activations, inputs and parameter copies.

    Args:
        per_sample: what one sample's forward creates (:func:`forward_bytes`).
        image_shape: ``(C, H, W)`` of one input.
        batch: samples per view (``data.batch_size``).
        views: views run through the model together (concatenated) per step.
        parameter_bytes: bytes of the trainable parameters.
        copies: parameter copies held by the step (:func:`optimizer_copies`).
    """
    inputs = 4 * _numel(image_shape) + _numel(image_shape)  # float views and the uint8 batch
    per_image = per_sample.total * AUTOGRAD_FACTOR + inputs
    return int(batch * views * per_image) + parameter_bytes * copies


def eval_bytes(per_sample: ForwardBytes, image_shape: tuple[int, int, int], batch: int) -> int:
    """Peak bytes of one evaluation batch (``no_grad``): a few layer outputs alive at once."""
    return int(batch * (per_sample.largest * EVAL_FACTOR + 5 * _numel(image_shape)))


def available_bytes(device: torch.device, cgroup: Path = CGROUP) -> int | None:
    """Memory free for this process on ``device``, or None when it cannot be told.

    CPU: ``MemAvailable`` of ``/proc/meminfo`` (else ``os.sysconf``), lowered to what the
    cgroup's limit leaves (containers; reclaimable page cache counts as free). CUDA: the
    device's free memory plus what PyTorch's allocator caches without using.

    Args:
        device: where the memory is needed.
        cgroup: the cgroup v2 folder to read the limit from.
    """
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        except RuntimeError:  # a CUDA error here is for the run to report, not the estimate
            return None
        return int(free + cached)
    if device.type != "cpu":
        return None  # e.g. MPS: unified memory with no free-memory query
    candidates = [n for n in (_meminfo_available(), _cgroup_available(cgroup)) if n is not None]
    return min(candidates) if candidates else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_available(cgroup: Path) -> int | None:
    """``memory.max`` minus the unreclaimable part of ``memory.current``; None if unlimited."""
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((cgroup / "memory.current").read_text())
        stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
        return max(0, int(limit) - used + int(stat.get("inactive_file", 0)))
    except (OSError, ValueError):
        return None


def check_step_memory(config: Config, model: nn.Module, image_shape: tuple[int, int, int],
                      views: int, device: torch.device, *, training: bool = True) -> None:
    """Refuses a run whose training step or evaluation batch would not fit on ``device``.

    Args:
        config: the run's config (batch sizes, optimizer, AMP, the image size key).
        model: the built model, not yet moved to ``device``.
        image_shape: ``(C, H, W)`` of the model's inputs.
        views: views concatenated into one forward per step (the objective's inputs).
        device: the training device.
        training: False when the model is only evaluated or exported: then only an
            evaluation batch has to fit, not a training step.

    Raises:
        ConfigError: one line with the estimate, what is available and the keys to lower.
    """
    per_sample = forward_bytes(model, image_shape)
    free = available_bytes(device) if per_sample is not None else None
    if per_sample is None or free is None:
        return
    if config.train.amp:  # convolutions and matrix products, most of the bytes, in 16 bits
        per_sample = ForwardBytes(per_sample.total // 2, per_sample.largest // 2)
    data = config.data
    size = (f"data.image_size={data.size}" if data.size is not None
            else f"{image_shape[1]}x{image_shape[2]} images")
    where = "CPU memory" if device.type == "cpu" else f"on {device}"
    available = f"but {_gib(free)} is available ({where})"
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    need = step_bytes(per_sample, image_shape, data.batch_size, views, params,
                      optimizer_copies(config, device))
    if training and need > free:
        raise ConfigError(
            f"{size} with data.batch_size={data.batch_size} and {views} view"
            f"{'s' if views != 1 else ''} needs about {_gib(need)} for one training step "
            f"(estimated), {available}; lower data.image_size or data.batch_size")
    need = eval_bytes(per_sample, image_shape, data.eval_batch_size)
    if need > free:
        raise ConfigError(
            f"{size} with data.eval_batch_size={data.eval_batch_size} needs about {_gib(need)} "
            f"for one evaluation batch (estimated), {available}; lower data.eval_batch_size or "
            "data.image_size")


def check_decoded_size(n_images: int, channels: int, height: int, width: int, what: str, *,
                       working_bytes: int = 0) -> None:
    """Refuses to decode images whose ``uint8`` array would not fit in CPU memory.

    Call it before allocating the ``N x C x H x W`` array (decoding, resizing). When the free
    memory cannot be read, nothing is checked.

    Args:
        n_images: images to hold.
        channels, height, width: shape of one decoded image.
        what: what is decoded, with the keys that size it, e.g.
            ``"digits resized to data.image_size=4096"``.
        working_bytes: memory needed on top while the array is produced (e.g. a float32
            buffer of the images being resized).

    Raises:
        DataError: ``<what>: 1,797 images of 1x4096x4096 need 28 GiB in memory as uint8, but
            21 GiB is available; lower data.image_size (or load fewer images)``.
    """
    need = n_images * channels * height * width
    free = available_bytes(torch.device("cpu")) if need + working_bytes else None
    if free is None or need + working_bytes <= free:
        return
    extra = f" (and {_gib(working_bytes)} more while converting)" if working_bytes else ""
    raise DataError(f"{what}: {n_images:,} images of {channels}x{height}x{width} need "
                    f"{_gib(need)} in memory as uint8{extra}, but {_gib(free)} is available; "
                    "lower data.image_size (or load fewer images)")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _gib(n: int | float) -> str:
    """``0.3 GiB``, ``21 GiB``, ``1,234 GiB``."""
    gib = n / GiB
    return f"{gib:,.1f} GiB" if gib < 10 else f"{gib:,.0f} GiB"
