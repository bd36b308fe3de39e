"""Evaluation: top-1/top-5 accuracy of every exit that carries logits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from auxilia.data.file_images import pixel_batches
from auxilia.data.types import Split
from auxilia.losses import topk_correct


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype
             ) -> contextlib.AbstractContextManager[None]:
    """Mixed precision on the given device, or a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def batches(split: Split, batch_size: int, workers: int = 0
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Contiguous (images, labels) batches of a split, in order (:func:`pixel_batches`)."""
    for rows, images in pixel_batches(split.images, batch_size, workers):
        yield images, split.labels[rows]


def _forwards(model: nn.Module, split: Split, view: nn.Module, batch_size: int,
              device: torch.device, amp: bool, amp_dtype: torch.dtype, channels_last: bool,
              workers: int = 0) -> Iterator[tuple[slice, dict]]:
    """``(rows, outputs)`` of ``model`` in eval mode over ``split`` in order, through ``view``;
    the model's mode is restored at the end."""
    was_training = model.training
    model.eval()
    try:
        for rows, images in pixel_batches(split.images, batch_size, workers):
            x = view(images.to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp, amp_dtype):
                outs = model(x)
            yield rows, outs
    finally:
        model.train(was_training)


def _dense_errors(outs: dict, targets: dict[str, torch.Tensor], sums: dict[str, torch.Tensor]
                  ) -> None:
    """Add each exit's summed squared error on every target field to ``sums``."""
    for exit_name, fields in outs.items():
        for field, target in targets.items():
            if field in fields:
                key = f"{exit_name}/{field}_mse"
                err = (fields[field].float() - target.float()).square().sum()
                sums[key] = sums.get(key, 0) + err


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, view: nn.Module, *, batch_size: int,
             device: torch.device, amp: bool = False, amp_dtype: torch.dtype = torch.bfloat16,
             channels_last: bool = False, workers: int = 0) -> dict[str, float]:
    """Accuracy of every exit with logits on a split; for a split with dense targets
    (``Split.targets``), every exit's mean squared error on each target field instead.

    Returns:
        ``{"<exit>/top1": %, "<exit>/top5": %, "loss": mean CE of the final exit}``, or with
        dense targets ``{"<exit>/<field>_mse": ..., "loss": Σ_fields MSE at the deepest exit
        giving them}``.
    """
    correct: dict[str, torch.Tensor] = {}
    dense: dict[str, torch.Tensor] = {}
    loss_sum = torch.zeros((), device=device)
    for rows, outs in _forwards(model, split, view, batch_size, device, amp, amp_dtype,
                                channels_last, workers):
        y = split.labels[rows].to(device)
        if split.targets is not None:
            _dense_errors(outs, {k: v[rows].to(device) for k, v in split.targets.items()},
                          dense)
            continue
        for exit_name, fields in outs.items():
            if "logits" not in fields:
                continue
            logits = fields["logits"].float()
            for k, hits in topk_correct(logits, y).items():
                key = f"{exit_name}/top{k}"
                correct[key] = correct.get(key, 0) + hits
            if exit_name == "final":
                loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    n = max(1, len(split))
    if split.targets is not None:
        return _dense_metrics(dense, split)
    metrics = {key: 100.0 * float(v) / n for key, v in sorted(correct.items())}
    metrics["loss"] = float(loss_sum) / n
    return metrics


def _dense_metrics(sums: dict[str, torch.Tensor], split: Split) -> dict[str, float]:
    """Mean squared errors per element; ``loss`` sums the fields at the deepest exit."""
    assert split.targets is not None
    sizes = {f: max(1, t.numel()) for f, t in split.targets.items()}
    metrics = {key: float(v) / sizes[key.split("/")[1][:-4]] for key, v in sums.items()}
    exits = list(dict.fromkeys(key.split("/")[0] for key in metrics))
    deepest = "final" if "final" in exits else (exits[-1] if exits else None)
    metrics["loss"] = sum(v for k, v in metrics.items() if k.split("/")[0] == deepest)
    return dict(sorted(metrics.items()))


@torch.no_grad()
def pseudo_label_quality(model: nn.Module, split: Split, view: nn.Module, threshold: float, *,
                         batch_size: int, device: torch.device, amp: bool = False,
                         amp_dtype: torch.dtype = torch.bfloat16, channels_last: bool = False,
                         workers: int = 0) -> dict[str, float]:
    """How good the main exit's pseudo-labels are on unlabeled samples whose labels are known
    (``split.true_labels``; an unlabeled split carved from a labeled source).

    Returns:
        ``{"top1": % of argmax predictions that are right, "above_threshold": % of samples
        whose confidence (max softmax) reaches ``threshold``, "top1_above_threshold": % right
        among those}`` (the last omitted when no sample reaches the threshold).
    """
    truth = split.true_labels
    if truth is None:
        return {}
    right = above = right_above = 0
    for rows, outs in _forwards(model, split, view, batch_size, device, amp, amp_dtype,
                                channels_last, workers):
        confidence, guess = outs["final"]["logits"].float().softmax(1).max(1)
        hit = guess.cpu() == truth[rows]
        sure = (confidence >= threshold).cpu()
        right += int(hit.sum())
        above += int(sure.sum())
        right_above += int((hit & sure).sum())
    n = max(1, len(split))
    metrics = {"top1": 100.0 * right / n, "above_threshold": 100.0 * above / n}
    if above:
        metrics["top1_above_threshold"] = 100.0 * right_above / above
    return metrics


@torch.no_grad()
def probabilities(model: nn.Module, split: Split, view: nn.Module, temperature: float = 1.0, *,
                  batch_size: int, device: torch.device, amp: bool = False,
                  amp_dtype: torch.dtype = torch.bfloat16, channels_last: bool = False,
                  workers: int = 0) -> torch.Tensor:
    """``softmax(logits / T)`` of the main exit over ``split``, in eval mode, in order:
    ``[N, K]`` float32 on the CPU (a teacher labelling unlabeled images, Noisy Student)."""
    rows_out = []
    for _rows, outs in _forwards(model, split, view, batch_size, device, amp, amp_dtype,
                                 channels_last, workers):
        rows_out.append((outs["final"]["logits"].float() / temperature).softmax(1).cpu())
    return torch.cat(rows_out) if rows_out else torch.zeros(0, 0)


@dataclass(frozen=True)
class Evaluator:
    """A run's evaluation settings, bound once: the eval view, the batch size, the device and
    the precision and memory layout the run trains with. Every evaluation of a run (during
    training, of its teacher and peers, of a saved run, and the time budget's timing) goes
    through the run's one evaluator (:attr:`auxilia.engine.setup.Setup.evaluator`)."""

    view: nn.Module
    batch_size: int
    device: torch.device
    amp: bool = False
    amp_dtype: torch.dtype = torch.bfloat16
    channels_last: bool = False
    workers: int = 0
    """Processes decoding the file store's images ahead of the forwards (none for tensors)."""

    def metrics(self, model: nn.Module, split: Split) -> dict[str, float]:
        """:func:`evaluate` of ``model`` on ``split``."""
        return evaluate(model, split, self.view, batch_size=self.batch_size, device=self.device,
                        amp=self.amp, amp_dtype=self.amp_dtype, channels_last=self.channels_last,
                        workers=self.workers)

    def pseudo_labels(self, model: nn.Module, split: Split, threshold: float
                      ) -> dict[str, float]:
        """:func:`pseudo_label_quality` of ``model`` on ``split``."""
        return pseudo_label_quality(model, split, self.view, threshold,
                                    batch_size=self.batch_size, device=self.device,
                                    amp=self.amp, amp_dtype=self.amp_dtype,
                                    channels_last=self.channels_last, workers=self.workers)

    def probabilities(self, model: nn.Module, split: Split, temperature: float = 1.0
                      ) -> torch.Tensor:
        """:func:`probabilities` of ``model`` on ``split``."""
        return probabilities(model, split, self.view, temperature, batch_size=self.batch_size,
                             device=self.device, amp=self.amp, amp_dtype=self.amp_dtype,
                             channels_last=self.channels_last, workers=self.workers)
