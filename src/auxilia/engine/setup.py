"""Build everything a run needs from its config: data, model, objective, views, optimizer."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from auxilia.config import Config
from auxilia.data.sources import load_dataset
from auxilia.data.types import DatasetSplits
from auxilia.data.views import build_view
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import create_backbone
from auxilia.recipes import RecipeContext, build_objective
from auxilia.terms import Objective


@dataclass
class Setup:
    """The built pieces of a run."""

    config: Config
    device: torch.device
    data: DatasetSplits
    model: MultiExitModel
    objective: Objective
    train_views: dict[str, nn.Module]
    eval_view: nn.Module

    @property
    def amp_dtype(self) -> torch.dtype:
        return getattr(torch, self.config.train.amp_dtype)


def pick_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available; use train.device=cpu")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_setup(config: Config, data: DatasetSplits | None = None) -> Setup:
    """Load the data and build model, objective and views, seeded by ``config.seed``."""
    device = pick_device(config.train.device)
    if data is None:
        data = load_dataset(config.data, seed=config.seed)
    seed_everything(config.seed, config.train.deterministic)
    channels, height, _ = data.image_shape
    mcfg = config.model
    backbone = create_backbone(mcfg.name, in_chans=channels, image_size=height,
                               pretrained=mcfg.pretrained, weights=mcfg.weights, **mcfg.kwargs)
    ctx = RecipeContext(stages=backbone.stage_names, stage_channels=dict(backbone.stage_channels),
                        stage_strides=dict(backbone.stage_strides), num_classes=data.num_classes,
                        num_train=len(data.train))
    objective = build_objective(config.method, ctx)
    for key, recipe in config.data.views.items():
        if key not in objective.views:
            raise ValueError(f"data.views.{key}: the methods use no view {key!r}; they use "
                             f"{', '.join(objective.views)}")
        objective.views[key] = recipe
    model = MultiExitModel(backbone, data.num_classes, list(objective.heads.values()),
                           drop_rate=mcfg.drop_rate, probe=objective.probe,
                           freeze_backbone=mcfg.freeze_backbone)
    model.to(device)
    objective.to(device)
    if mcfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
    return Setup(config, device, data, model, objective, _views(config, data, objective, device),
                 _view("eval", data, device))


def _view(name: str, data: DatasetSplits, device: torch.device, augment: str = "auto"
          ) -> nn.Module:
    size = data.image_shape[1]
    return build_view(name, data.family, data.mean, data.std, size, augment).to(device)


def _views(config: Config, data: DatasetSplits, objective: Objective, device: torch.device
           ) -> dict[str, nn.Module]:
    views = {}
    for key, recipe in objective.views.items():
        if not key.startswith("x_lb"):
            raise ValueError(f"the objective asks for view {key!r}, which needs an unlabeled "
                             "stream; this version trains on labeled views (x_lb, x_lb2) only")
        views[key] = _view(recipe, data, device, config.data.augment)
    return views
