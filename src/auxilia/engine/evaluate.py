"""Evaluation: top-1/top-5 accuracy of every exit that carries logits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from auxilia.data.streams import eval_batches
from auxilia.data.types import Split
from auxilia.losses import topk_correct


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype
             ) -> contextlib.AbstractContextManager[None]:
    """Mixed precision on the given device, or a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Contiguous (images, labels) batches of a split, in order."""
    for rows in eval_batches(len(split), batch_size):
        yield split.images[rows], split.labels[rows]


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, view: nn.Module, *, batch_size: int,
             device: torch.device, amp: bool = False, amp_dtype: torch.dtype = torch.bfloat16,
             channels_last: bool = False) -> dict[str, float]:
    """Accuracy of every exit with logits on a split.

    Returns:
        ``{"<exit>/top1": %, "<exit>/top5": %, "loss": mean CE of the final exit}``.
    """
    was_training = model.training
    model.eval()
    correct: dict[str, torch.Tensor] = {}
    loss_sum = torch.zeros((), device=device)
    for images, labels in batches(split, batch_size):
        x = view(images.to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels.to(device)
        with autocast(device, amp, amp_dtype):
            outs = model(x)
        for exit_name, fields in outs.items():
            if "logits" not in fields:
                continue
            logits = fields["logits"].float()
            for k, hits in topk_correct(logits, y).items():
                key = f"{exit_name}/top{k}"
                correct[key] = correct.get(key, 0) + hits
            if exit_name == "final":
                loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    model.train(was_training)
    n = max(1, len(split))
    metrics = {key: 100.0 * float(v) / n for key, v in sorted(correct.items())}
    metrics["loss"] = float(loss_sum) / n
    return metrics
