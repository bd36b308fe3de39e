"""Build everything a run needs from its config: data, model, objective, views, optimizer."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from auxilia.config import Config
from auxilia.data.config import DataConfig
from auxilia.data.file_images import FileImages
from auxilia.data.files import cpu_count
from auxilia.data.sources import load_dataset
from auxilia.data.types import DatasetSplits, Split
from auxilia.data.views import build_view
from auxilia.engine.auto import resolve_for
from auxilia.engine.device import pick_device
from auxilia.engine.distributed import local_device
from auxilia.engine.evaluate import Evaluator
from auxilia.engine.memory import check_step_memory, model_batches
from auxilia.engine.teacher import build_teacher
from auxilia.models.backbone import Backbone
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import create_backbone
from auxilia.models.weights import load_run_classifier
from auxilia.parts import view_stream
from auxilia.ranks import current
from auxilia.recipes import RecipeContext, build_objective
from auxilia.seeding import derive_seed, seeded
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
    unlabeled_monitor: Split | None = None
    """Up to :data:`MONITOR_SAMPLES` unlabeled samples whose labels are known, on which every
    evaluation measures the pseudo-labels' quality (never used for training or selection)."""
    workers: int = 0
    """The input pipeline's worker processes (:func:`input_workers`)."""

    @property
    def amp_dtype(self) -> torch.dtype:
        return getattr(torch, self.config.train.amp_dtype)

    @property
    def evaluator(self) -> Evaluator:
        """The run's evaluation settings (view, batch size, device, precision), bound once."""
        cfg = self.config
        return Evaluator(self.eval_view, cfg.data.eval_batch_size, self.device,
                         cfg.train.amp, self.amp_dtype, cfg.model.channels_last, self.workers)


def seed_everything(seed: int, purpose: str = "build") -> None:
    """Seed Python and NumPy with ``seed``, and torch's global RNG for ``purpose``.

    Deterministic kernels are not switched on here: :func:`auxilia.seeding.deterministic_mode`
    does that around a run, and undoes it after.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(derive_seed(seed, purpose))


def build_setup(config: Config, data: DatasetSplits | None = None, *, training: bool = True,
                teacher: nn.Module | None = None) -> Setup:
    """Load the data and build model, objective and views, seeded by ``config.seed``.

    The backbone, the main classifier and each head are initialised from their own streams
    (:func:`auxilia.seeding.derive_seed`), so at one seed every method starts from the same
    backbone and classifier, and a head's initial weights do not depend on the other heads.
    A run's checkpoint as ``model.weights`` also gives the main classifier when it fits.

    Args:
        config: the run's config.
        data: already loaded splits; by default loaded from ``config.data``.
        training: False to only evaluate or export: the memory check then asks for an
            evaluation batch to fit, not a training step.
        teacher: a teacher module from the Python API (instead of ``config.teacher``).

    Raises:
        ConfigError: an unknown device, or a step that would not fit in memory
            (:func:`auxilia.engine.memory.check_step_memory`).
    """
    device = local_device(pick_device(config.train.device), current())  # a rank's own GPU
    config, _ = resolve_for(config, data, device)  # ``auto`` left (``train`` resolves first)
    if data is None:
        data = load_dataset(config.data, seed=config.seed)
    # Whatever the build draws outside its own streams is still seeded (and no earlier run in
    # this process leaks into it); training reseeds below, so it never depends on the build.
    seed_everything(config.seed)
    mcfg = config.model
    backbone = _backbone(config, data)
    loaded = build_teacher(config.teacher, data, device, teacher)
    ctx = RecipeContext(stages=backbone.stage_names, stage_channels=dict(backbone.stage_channels),
                        stage_strides=dict(backbone.stage_strides), num_classes=data.num_classes,
                        num_train=len(data.train), image_shape=data.image_shape,
                        num_unlabeled=len(data.unlabeled) if data.unlabeled is not None else 0,
                        num_pseudo=len(data.pseudo) if data.pseudo is not None else 0,
                        seed=config.seed, teacher=loaded,
                        targets={k: tuple(v.shape[1:]) for k, v in
                                 (data.train.targets or {}).items()} or None)
    objective = build_objective(config.method, ctx)
    for key, recipe in config.data.views.items():
        if key not in objective.views:
            raise ValueError(f"data.views.{key}: the methods use no view {key!r}; they use "
                             f"{', '.join(objective.views)}")
        objective.views[key] = recipe
    model = MultiExitModel(backbone, data.num_classes, objective.heads_of("student"),
                           drop_rate=mcfg.drop_rate,
                           freeze_backbone=mcfg.freeze_backbone, init_seed=config.seed)
    if mcfg.weights is not None:
        load_run_classifier(model.classifier, mcfg.weights)
    views = _views(config, data, objective, device)
    # Before the model moves to the device and the loop allocates: a step that cannot fit is
    # refused here, not by the kernel's OOM killer half-way into training.
    check_step_memory(config, model, data.image_shape,
                      step_views(objective, config.data.batch_size) or len(views), device,
                      training=training, objective=objective)
    model.to(device)
    objective.to(device)
    if mcfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
    torch.manual_seed(derive_seed(config.seed, "train"))  # dropout & co., whatever was built
    return Setup(config, device, data, model, objective, views, eval_view(data, device),
                 unlabeled_monitor(data, config.data.split_seed),
                 input_workers(config.data, data, device))


def input_workers(cfg: DataConfig, data: DatasetSplits, device: torch.device) -> int:
    """The input pipeline's worker processes: ``data.num_workers``, or for ``auto`` every
    core up to :data:`MAX_AUTO_WORKERS` when images are read from files (decoding is the
    work), :data:`MEMORY_WORKERS` otherwise (indexing and views only). Batches are the same
    with any number (:mod:`auxilia.engine.prefetch`)."""
    if cfg.num_workers != "auto":
        return cfg.num_workers
    if isinstance(data.train.images, FileImages):
        return min(cpu_count(), MAX_AUTO_WORKERS)
    return MEMORY_WORKERS[device.type == "cuda"]


MAX_AUTO_WORKERS = 8
MEMORY_WORKERS = (0, 2)
"""``auto`` workers of the memory store, on the CPU and on a GPU."""


def step_views(objective: Objective, batch_size: int) -> int:
    """Batches of ``data.batch_size`` images one step forwards (an unlabeled view at μ = 7
    counts 7; views a step strategy makes, such as MixMatch's mixed batch, count 1)."""
    return math.ceil(sum(model_batches(objective, model, batch_size)
                         for model in objective.inputs()))


MONITOR_SAMPLES = 2000
"""Unlabeled samples with known labels on which pseudo-label quality is measured."""


def unlabeled_monitor(data: DatasetSplits, seed: int) -> Split | None:
    """A fixed, seeded draw of up to :data:`MONITOR_SAMPLES` unlabeled samples whose labels
    are known (``true_labels >= 0``), or None when there are none."""
    split = data.unlabeled
    if split is None or split.true_labels is None:
        return None
    known = torch.nonzero(split.true_labels >= 0).flatten()
    if not len(known):
        return None
    order = torch.randperm(len(known), generator=torch.Generator().manual_seed(seed))
    return split.take(known[order[:MONITOR_SAMPLES]].sort().values)


def _backbone(config: Config, data: DatasetSplits) -> Backbone:
    """The configured backbone, initialised from its own stream: the same for every method.

    Weights from ``model.weights`` or ``model.pretrained`` are loaded over that initialisation.
    """
    channels, height, _ = data.image_shape
    mcfg = config.model
    with seeded(derive_seed(config.seed, "backbone")):
        return create_backbone(mcfg.name, in_chans=channels, image_size=height,
                               pretrained=mcfg.pretrained, weights=mcfg.weights,
                               **mcfg.backbone_options())


def _view(name: str, data: DatasetSplits, device: torch.device, augment: str = "auto"
          ) -> nn.Module:
    size = data.image_shape[1]
    return build_view(name, data.family, data.mean, data.std, size, augment).to(device)


def eval_view(data: DatasetSplits, device: torch.device) -> nn.Module:
    """The view every evaluation of ``data`` reads its images through (no augmentation)."""
    return _view("eval", data, device)


def _views(config: Config, data: DatasetSplits, objective: Objective, device: torch.device
           ) -> dict[str, nn.Module]:
    views = {}
    for key, recipe in objective.views.items():
        view_stream(key, objective.streams)  # names the streams when none yields the key
        views[key] = _view(recipe, data, device, config.data.augment)
    return views
