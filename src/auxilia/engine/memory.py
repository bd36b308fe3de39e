"""Memory a training step will need, estimated before anything large is allocated.

A batch size or image size that does not fit makes the process allocate until the machine
swaps or the kernel kills it (or CUDA runs out of memory), losing whatever was not saved. One
training step (:func:`check_step_memory`) is checked up front against what is available, with a
one-line error naming the numbers and the keys to lower. The model's forward is run on the
``meta`` device (shapes only, no data, milliseconds) and the bytes of every tensor it creates
are summed, then scaled by the batch, the views and the autograd factor below. Every model of
the step is counted (:func:`estimate_step`): the student, each slot (teacher, EMA model, peer:
its weights; a trained slot its gradient and optimizer state and autograd's activations; a slot
without gradient only its forward under ``no_grad``) and the terms' state (the prediction banks
of Temporal Ensembling and PS-KD, ``N x classes`` floats). The decoded dataset is checked by
:func:`auxilia.data.host_memory.check_decoded_size` before it is decoded.

An estimate that cannot be made (a model whose forward fails on ``meta``, a device whose free
memory is unknown) skips the check: it never stops a run that might fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from auxilia.config import Config, ConfigError
from auxilia.data.host_memory import CGROUP, GiB, cpu_available_bytes
from auxilia.data.host_memory import gib as _gib
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import create_backbone
from auxilia.parts import STUDENT, EMASlot, ModuleSlot, Slot, view_stream
from auxilia.terms import Objective

__all__ = ["AUTOGRAD_FACTOR", "EVAL_FACTOR", "ForwardBytes", "GiB", "StepEstimate",
           "available_bytes", "check_step_memory", "estimate_step", "eval_bytes",
           "forward_bytes", "model_batches", "optimizer_copies", "step_bytes"]

AUTOGRAD_FACTOR = 1.5
"""Peak memory of a training step per byte of forward output. Autograd keeps (nearly) every
forward output for the backward pass; the backward adds the gradients of the activations, alive
a few layers at a time, and the allocator rounds and caches. Checked against measured peaks in
``tests/engine/test_memory.py``."""

EVAL_FACTOR = 3
"""Under ``no_grad`` only a layer's input, its output and a residual branch are alive at once:
an evaluation batch needs about this many times its largest layer output."""


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


def forward_bytes(model: nn.Module, image_shape: tuple[int, int, int], grad: bool = True
                  ) -> ForwardBytes | None:
    """Bytes one sample's forward creates, measured on the ``meta`` device (nothing allocated).

    The model's own weights are untouched: the forward runs on ``meta`` copies of them
    (``torch.func.functional_call``), so BatchNorm statistics do not move either.

    Args:
        model: the model, in the mode (train or eval) to measure.
        image_shape: ``(C, H, W)`` of one input.
        grad: measure with autograd on (False: under ``no_grad``, as a frozen teacher or an
            EMA model runs; a user's teacher module is never called with gradient).

    Returns:
        Per-sample bytes, or None when the forward fails on ``meta`` (e.g. a model that builds
        tensors on a fixed device inside its forward).
    """
    probe = 2  # BatchNorm in training refuses a batch of one; the result is divided back
    try:
        tensors = {name: torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)
                   for name, t in [*model.named_parameters(), *model.named_buffers()]}
        x = torch.empty((probe, *image_shape), device="meta")
        with _CountOutputs() as counter, torch.set_grad_enabled(grad):
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

    CPU: :func:`auxilia.data.host_memory.cpu_available_bytes` (the cgroup's limit included).
    CUDA: the device's free memory plus what PyTorch's allocator caches without using.

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
    return cpu_available_bytes(cgroup)


def model_batches(objective: Objective, model: str, batch_size: int) -> float:
    """Batches of ``data.batch_size`` images one step forwards through ``model`` (an unlabeled
    view at μ = 7 counts 7; a view a step strategy makes, such as MixMatch's mixed batch, 1)."""
    total = 0.0
    for key in objective.inputs().get(model, ()):
        try:
            spec = objective.streams[view_stream(key, objective.streams)]
        except ValueError:
            total += 1
            continue
        total += spec.size(batch_size) / batch_size
    return total


@dataclass(frozen=True)
class StepEstimate:
    """Peak bytes of one training step, by part.

    Attributes:
        parts: ``student``, each slot by name, and ``term state`` (the terms' banks and
            parameters), each the bytes it adds to what is already allocated.
    """

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def estimate_step(config: Config, model: nn.Module, image_shape: tuple[int, int, int],
                  views: int, device: torch.device, objective: Objective | None = None
                  ) -> StepEstimate | None:
    """What one training step needs on ``device``, every model of the objective counted.

    Weights already allocated are not counted: on the CPU the built student and the terms'
    state (they move to an accelerator after this check, so count there), and a teacher
    module everywhere (it is loaded onto the device before). A slot that cannot be estimated
    (a model that fails on ``meta``) adds nothing: the estimate stays a lower bound.

    Args:
        config: the run's config (batch size, optimizer, AMP).
        model: the student, built, not yet moved to ``device``.
        image_shape: ``(C, H, W)`` of the inputs.
        views: batches the student forwards per step when ``objective`` is None.
        device: the training device.
        objective: the run's objective: its slots, their views and the terms' state.

    Returns:
        The estimate, or None when the student's forward fails on ``meta``.
    """
    per_sample = forward_bytes(model, image_shape)
    if per_sample is None:
        return None
    per_sample = _at_precision(config, per_sample)
    batch, resident = config.data.batch_size, device.type == "cpu"
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    student_views = (math.ceil(model_batches(objective, STUDENT, batch)) or views
                     if objective is not None else views)
    parts = {STUDENT: step_bytes(per_sample, image_shape, batch, student_views, params,
                                 optimizer_copies(config, device))}
    if objective is None:
        return StepEstimate(parts)
    for name, slot in objective.slots.items():
        size = _slot_bytes(config, name, slot, objective, model, per_sample, image_shape,
                           device)
        if size is not None:
            parts[name] = size
    state = sum(t.numel() * t.element_size() for t in (*objective.parameters(),
                                                      *objective.buffers()))
    trained = sum(p.numel() * p.element_size() for p in objective.parameters()
                  if p.requires_grad)
    parts["term state"] = (0 if resident else state) + trained * _state_copies(config)
    return StepEstimate(parts)


def _at_precision(config: Config, per_sample: ForwardBytes) -> ForwardBytes:
    """Activations under AMP: convolutions and matrix products, most of the bytes, in 16 bits."""
    if not config.train.amp:
        return per_sample
    return ForwardBytes(per_sample.total // 2, per_sample.largest // 2)


def _state_copies(config: Config) -> int:
    """Gradient and optimizer state per trainable parameter (the weights not included)."""
    return optimizer_copies(config, torch.device("cpu"))


def _slot_bytes(config: Config, name: str, slot: Slot, objective: Objective,
                student: nn.Module, student_sample: ForwardBytes,
                image_shape: tuple[int, int, int], device: torch.device) -> int | None:
    """Bytes one slot adds to a step: its weights (unless already loaded), then

    * trained (a peer): gradient and optimizer state, and autograd's activations;
    * not trained (a frozen teacher, an EMA model): its forward under ``no_grad``, where
      only a few layer outputs are alive at once (:data:`EVAL_FACTOR`).
    """
    proxy = _slot_model(slot, objective, student, image_shape)
    if proxy is None:
        return None
    sample = (student_sample if proxy is student
              else forward_bytes(proxy, image_shape, grad=slot.grad))
    if sample is None:
        return None
    sample = sample if proxy is student else _at_precision(config, sample)
    tensors = [*proxy.parameters(), *proxy.buffers()]
    weights = 0 if isinstance(slot, ModuleSlot) else sum(t.numel() * t.element_size()
                                                         for t in tensors)
    images = config.data.batch_size * model_batches(objective, name, config.data.batch_size)
    if slot.grad:
        # its inputs are the student's views, already counted with the student
        trainable = sum(p.numel() * p.element_size() for p in proxy.parameters())
        return int(weights + trainable * _state_copies(config) * int(slot.trained)
                   + images * sample.total * AUTOGRAD_FACTOR)
    return int(weights + images * sample.largest * EVAL_FACTOR)


def _slot_model(slot: Slot, objective: Objective, student: nn.Module,
                image_shape: tuple[int, int, int], depth: int = 0) -> nn.Module | None:
    """The model a slot builds, or one of the same size: the student itself when the slot
    has the student's architecture (a frozen copy, an EMA of it, a peer of the same model;
    its heads are the student's, a small difference), a ``meta`` build of another
    architecture (no memory, no download), the teacher module itself."""
    if isinstance(slot, ModuleSlot):
        return slot.model
    if isinstance(slot, EMASlot):
        source = objective.slots.get(slot.of)
        if slot.of == STUDENT or source is None or depth > len(objective.slots):
            return student
        return _slot_model(source, objective, student, image_shape, depth + 1)
    architecture = getattr(slot, "architecture", None)
    if architecture is None:
        return student
    classes = getattr(getattr(student, "classifier", None), "out_features", None)
    try:
        with torch.device("meta"):
            backbone = create_backbone(architecture, in_chans=image_shape[0],
                                       image_size=image_shape[1])
            return MultiExitModel(backbone, classes or 1)
    except Exception:  # any failure only means this slot has no estimate
        return None


def check_step_memory(config: Config, model: nn.Module, image_shape: tuple[int, int, int],
                      views: int, device: torch.device, *, training: bool = True,
                      objective: Objective | None = None) -> None:
    """Refuses a run whose training step or evaluation batch would not fit on ``device``.

    Args:
        config: the run's config (batch sizes, optimizer, AMP, the image size key).
        model: the built model, not yet moved to ``device``.
        image_shape: ``(C, H, W)`` of the model's inputs.
        views: batches of ``data.batch_size`` every model forwards per step, together (the
            message names it; :func:`auxilia.engine.setup.step_views`).
        device: the training device.
        training: False when the model is only evaluated or exported: then only an
            evaluation batch has to fit, not a training step.
        objective: the run's objective; its slots and terms' state are counted
            (:func:`estimate_step`). None counts the student alone.

    Raises:
        ConfigError: one line with the estimate (by model when there are several), what is
            available and the keys to lower.
    """
    per_sample = forward_bytes(model, image_shape)
    free = available_bytes(device) if per_sample is not None else None
    if per_sample is None or free is None:
        return
    data = config.data
    size = (f"data.image_size={data.size}" if data.size is not None
            else f"{image_shape[1]}x{image_shape[2]} images")
    where = "CPU memory" if device.type == "cpu" else f"on {device}"
    available = f"but {_gib(free)} is available ({where})"
    estimate = estimate_step(config, model, image_shape, views, device, objective) \
        if training else None
    if estimate is not None and estimate.total > free:
        counted = {k: v for k, v in estimate.parts.items() if v}
        parts = (": " + ", ".join(f"{k} {_gib(v)}" for k, v in counted.items())
                 if set(counted) != {STUDENT} else "")
        raise ConfigError(
            f"{size} with data.batch_size={data.batch_size} and {views} view"
            f"{'s' if views != 1 else ''} needs about {_gib(estimate.total)} for one training "
            f"step (estimated{parts}), {available}; lower data.image_size or data.batch_size")
    need = eval_bytes(_at_precision(config, per_sample), image_shape, data.eval_batch_size)
    if need > free:
        raise ConfigError(
            f"{size} with data.eval_batch_size={data.eval_batch_size} needs about {_gib(need)} "
            f"for one evaluation batch (estimated), {available}; lower data.eval_batch_size or "
            "data.image_size")


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
