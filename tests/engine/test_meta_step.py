"""A training step of every recipe on the ``meta`` device: tensors there have shapes and no
data, so an operation that mixes devices fails as it would on a GPU (a CPU tensor meeting a
CUDA one), and so does every read of a value on the host (``.item()``, ``float()``, ``if
tensor``): the step of every recipe is checked free of both without a GPU.

The run is built on the CPU, then its models, objective and views are moved to ``meta``; the
data stays on the CPU, as a GPU run's does, and the batch is assembled from it.
"""

from __future__ import annotations

import copy

import pytest
import torch

from auxilia.config import Config, load_config
from auxilia.data.types import DatasetSplits
from auxilia.engine.context import build_run
from auxilia.engine.setup import build_setup
from auxilia.engine.stepper import Stepper
from auxilia.parts import Progress
from auxilia.recipes import RECIPES

META = torch.device("meta")
CLASSIFIERS = sorted(set(RECIPES) - {"dense"})  # dense regression: another task's data


def recipe_config(method: str, *extra: str) -> Config:
    return load_config(None, [f"method={method}", "data.batch_size=16", "train.device=cpu",
                              "data.labels_per_class=30", *extra])


@pytest.fixture(scope="module")
def digits(pseudo_labelled) -> DatasetSplits:
    """Digits with 30 labels per class and the rest unlabeled (64 of them pseudo-labelled, for
    Noisy Student), loaded once."""
    return pseudo_labelled(build_setup(recipe_config("supervised")).data)


@pytest.fixture(scope="module")
def teacher(digits: DatasetSplits) -> torch.nn.Module:
    """A CDS-shaped teacher (projection heads on every stage) for the distillation recipes."""
    return build_setup(recipe_config("cds", "seed=7"), digits).model.eval()
# recipes whose step still reads the device once, with the read named (each is one host sync
# per step on a GPU; they fail on meta at exactly that read)
READS: dict[str, str] = {}


@pytest.mark.parametrize("method", CLASSIFIERS)
def test_a_step_of_every_recipe_runs_on_the_meta_device(
        method: str, digits: DatasetSplits, teacher: torch.nn.Module) -> None:
    setup = build_setup(recipe_config(method), digits, teacher=copy.deepcopy(teacher))
    run = build_run(setup)
    for model in run.models.values():
        model.to(META)
    setup.objective.to(META)
    for view in setup.train_views.values():
        view.to(META)
    setup.device = META
    stepper = Stepper(run)
    if method in READS:
        with pytest.raises((NotImplementedError, RuntimeError), match="meta"):
            stepper.step(run.batches.next(0), Progress(0, 10, 5))
        return
    outcome = stepper.step(run.batches.next(0), Progress(0, 10, 5))
    assert outcome.committed
    assert all(p.device == META for m in run.models.values() for p in m.parameters())
