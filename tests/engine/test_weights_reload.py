"""A run's checkpoint as ``model.weights``: backbone and main classifier, zoo and timm alike."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from auxilia.config import Config, load_config
from auxilia.data.sources import load_dataset
from auxilia.engine import train
from auxilia.engine.evaluate import evaluate
from auxilia.engine.setup import Setup, build_setup
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import create_backbone, load_model_weights
from auxilia.models.weights import read_weights

# timm's own test model (about 0.1 M parameters): a timm run that trains in seconds on a CPU
TIMM_MODEL = "timm/test_efficientnet"


def _val(setup: Setup) -> dict[str, float]:
    """The main exit's val top-1 and loss, evaluated as the loop evaluates."""
    cfg = setup.config
    metrics = evaluate(setup.model, setup.data.val, setup.eval_view,
                       batch_size=cfg.data.eval_batch_size, device=setup.device,
                       amp=cfg.train.amp, amp_dtype=setup.amp_dtype,
                       channels_last=cfg.model.channels_last)
    return {k: metrics[k] for k in ("final/top1", "loss")}


def _config(*overrides: str) -> Config:
    return load_config(None, ["run.progress=off", "run.tensorboard=false", "run.plot=false",
                              "train.device=cpu", "data.batch_size=64", *overrides])


Run = Callable[[str], tuple[Path, dict[str, float]]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """``trained(model)``: a few steps of deep supervision (once per model in this module);
    the run's best checkpoint and its recorded val top-1 and loss there."""
    runs: dict[str, tuple[Path, dict[str, float]]] = {}

    def run(model: str) -> tuple[Path, dict[str, float]]:
        if model not in runs:
            result = train(_config(f"run.dir={tmp_path_factory.mktemp('runs')}",
                                   f"model.name={model}", "method=deep_supervision",
                                   "train.steps=6", "train.eval_every=3"))
            val = result.summary["best_val"]["val"]
            runs[model] = (result.run_dir / "checkpoints" / "best.pt",
                           {k: val[k] for k in ("final/top1", "loss")})
        return runs[model]

    return run


@pytest.mark.parametrize("model", ["small_cnn", TIMM_MODEL])
def test_a_runs_checkpoint_reloads_with_the_runs_val_accuracy(trained: Run, model: str) -> None:
    best, recorded = trained(model)
    assert read_weights(best).from_run
    # another method: its heads are new, the backbone and classifier are the run's
    setup = build_setup(_config(f"model.name={model}", "method=supervised",
                                f"model.weights={best}"))
    assert _val(setup) == recorded
    saved = torch.load(best, weights_only=True)["model"]
    for name, value in setup.model.classifier.state_dict().items():
        assert torch.equal(value, saved[f"classifier.{name}"]), name


def test_another_class_count_loads_the_backbone_and_says_the_classifier_is_skipped(
        trained: Run) -> None:
    best, _ = trained("small_cnn")
    saved = torch.load(best, weights_only=True)["model"]
    config = _config("model.name=small_cnn", f"model.weights={best}")
    digits = load_dataset(config.data, seed=config.seed)
    five = dataclasses.replace(digits, classes=digits.classes[:5])  # a 5-class task
    with pytest.warns(UserWarning, match=r"best\.pt.*backbone only.*10 classes.*5 classes"):
        setup = build_setup(config, five)
    for name, value in setup.model.backbone.state_dict().items():
        assert torch.equal(value, saved[f"backbone.{name}"]), name
    fresh = MultiExitModel(create_backbone("small_cnn", in_chans=1, image_size=8), 5,
                           init_seed=config.seed)
    assert torch.equal(setup.model.classifier.weight, fresh.classifier.weight)  # as initialised
    model = MultiExitModel(create_backbone("small_cnn", in_chans=1, image_size=8), 5)
    with pytest.warns(UserWarning, match="backbone only"):  # a slot's loader says so too
        load_model_weights(model, best)
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, saved[f"backbone.{name}"]), name


def test_a_plain_state_dict_still_loads_as_before(tmp_path: Path) -> None:
    source = create_backbone("small_cnn", in_chans=1, image_size=8)
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    weights = read_weights(path)
    assert not weights.from_run and not weights.classifier
    model = MultiExitModel(create_backbone("small_cnn", in_chans=1, image_size=8,
                                           weights=path), 10)
    load_model_weights(model, path)  # no classifier in the file: nothing more, no warning
    for name, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value), name
