"""Optimizers with parameter groups that can spare normalisation weights and biases from decay."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from auxilia.config import OptimConfig


def param_groups(model: nn.Module | Sequence[nn.Module], weight_decay: float,
                 decay_norm_and_bias: bool) -> list[dict[str, object]]:
    """Split the trainable parameters of one or several modules into decayed and non-decayed
    groups.

    One-dimensional parameters (biases, BatchNorm/LayerNorm scales) skip decay when
    ``decay_norm_and_bias`` is false, as in most modern recipes.
    """
    modules = [model] if isinstance(model, nn.Module) else list(model)
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over :func:`param_groups`."""
    return build_optimizer_over([model], cfg)


def build_optimizer_over(modules: Sequence[nn.Module], cfg: OptimConfig
                         ) -> torch.optim.Optimizer:
    """:func:`build_optimizer` over the trainable parameters of several modules."""
    groups = param_groups(modules, cfg.weight_decay, cfg.decay_norm_and_bias)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
