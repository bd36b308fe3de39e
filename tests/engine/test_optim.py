from __future__ import annotations

import torch
from torch import nn

from auxilia.config import OptimConfig
from auxilia.engine.optim import build_optimizer


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_norm_and_bias_can_skip_weight_decay() -> None:
    opt = build_optimizer(_net(), OptimConfig(weight_decay=0.1, decay_norm_and_bias=False))
    decayed, spared = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and spared["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"])
    assert len(spared["params"]) == 4  # conv bias, BN weight and bias, linear bias


def test_sgd_nesterov_and_adamw() -> None:
    sgd = build_optimizer(_net(), OptimConfig(name="sgd", nesterov=True, momentum=0.9))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    adamw = build_optimizer(_net(), OptimConfig(name="adamw", lr=1e-3, betas=(0.8, 0.99)))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.99)
