"""A step's batch and its forwards: index batches from every stream, the views the objective
declared, and one forward per model slot over the concatenation of its views.

Every view draws its augmentation from its own stream, seeded by the run's seed, the view's key
and the step (:func:`auxilia.seeding.derive_seed`): at one seed every method sees the same
augmented ``x_lb`` at every step, and a view added by one method never shifts another's.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from auxilia.parts import LABELED, StreamSpec
from auxilia.seeding import derive_seed, seeded

if TYPE_CHECKING:
    from auxilia.engine.setup import Setup

Outputs = dict[tuple[str, str], Any]


def view_stream(key: str, streams: Mapping[str, StreamSpec]) -> str:
    """The stream a view key reads: the one whose ``x_<keys>`` is the longest prefix of it.

    Raises:
        ValueError: no stream yields the key.
    """
    matches = [(len(spec.keys), name) for name, spec in streams.items()
               if key.startswith(f"x_{spec.keys}")]
    if not matches:
        known = ", ".join(f"x_{s.keys}* ({n})" for n, s in streams.items())
        raise ValueError(f"view {key!r} belongs to no stream; streams yield {known}"
                         + ("; unlabeled views need a method that declares an unlabeled "
                            "stream" if key.startswith("x_ulb") else ""))
    return max(matches)[1]


def make_batch(setup: Setup, indices: Mapping[str, torch.Tensor] | torch.Tensor,
               step: int = 0) -> dict[str, torch.Tensor]:
    """Gather every stream's samples and build every view the objective asked for.

    Args:
        setup: the built run.
        indices: stream name → index batch (a tensor alone is the ``labeled`` stream's).
        step: the optimizer step the batch is for; it seeds the views' augmentation.

    Returns:
        ``{"x_lb": ..., "y_lb": ..., "idx_lb": ..., <other views and streams' keys>}`` on the
        training device.
    """
    if isinstance(indices, torch.Tensor):
        indices = {LABELED: indices}
    streams = setup.objective.streams
    device, cfg = setup.device, setup.config
    raw: dict[str, torch.Tensor] = {}
    batch: dict[str, torch.Tensor] = {}
    for name, idx in indices.items():
        spec = streams[name]
        split = getattr(setup.data, spec.split)
        raw[name] = split.images[idx].to(device, non_blocking=True)
        if split.labels is not None and spec.split != "unlabeled":
            batch[f"y_{spec.keys}"] = split.labels[idx].to(device)
        for field, target in (split.targets or {}).items():
            batch[f"target_{spec.keys}_{field}"] = target[idx].to(device, non_blocking=True)
        batch[f"idx_{spec.keys}"] = idx.to(device)
    for key, view in setup.train_views.items():
        with seeded(derive_seed(cfg.seed, "view", key, step), device):
            x = view(raw[view_stream(key, streams)])
        if cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batch[key] = x
    return batch


def forward_all(models: Mapping[str, nn.Module], wanted: Mapping[str, Sequence[str]],
                batch: Mapping[str, torch.Tensor], no_grad: Collection[str] = ()) -> Outputs:
    """One forward per model over the concatenation of its views, split back per view.

    Args:
        models: slot name → model.
        wanted: slot name → the views it runs on.
        batch: the step's batch.
        no_grad: slots that run without autograd (frozen and EMA teachers).

    Returns:
        ``outputs[(model, view)][exit][field]``.
    """
    outputs: Outputs = {}
    for name, views in wanted.items():
        sizes = [batch[v].shape[0] for v in views]
        x = batch[views[0]] if len(views) == 1 else torch.cat([batch[v] for v in views])
        with torch.no_grad() if name in no_grad else nullcontext():
            out = models[name](x)
        for i, view in enumerate(views):
            outputs[(name, view)] = {
                exit_name: {k: (t if len(views) == 1 else t.split(sizes)[i]) for k, t in f.items()}
                for exit_name, f in out.items()}
    return outputs
