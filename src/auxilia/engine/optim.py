"""Optimizers with parameter groups that can spare normalisation weights and biases from decay."""

from __future__ import annotations

import torch
from torch import nn

from auxilia.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool
                 ) -> list[dict[str, object]]:
    """Split trainable parameters into decayed and non-decayed groups.

    One-dimensional parameters (biases, BatchNorm/LayerNorm scales) skip decay when
    ``decay_norm_and_bias`` is false, as in most modern recipes.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over :func:`param_groups`."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
