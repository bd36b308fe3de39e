"""Supervised training and deep supervision."""

from __future__ import annotations

import pytest
import torch

from auxilia.config import load_config
from auxilia.engine.batches import make_batch
from auxilia.engine.setup import build_setup
from auxilia.engine.stepper import forward_all
from auxilia.terms import Progress


def _setup(method: str):
    config = load_config(None, [f"method={method}", "data.batch_size=32", "train.device=cpu"])
    return build_setup(config)


def test_auxiliary_term_trains_its_head_and_earlier_stages_only() -> None:
    setup = _setup("[{name: deep_supervision, exits: {s1: 0.5}}]")
    batch = make_batch(setup, torch.arange(32))
    outputs = forward_all({"student": setup.model}, setup.objective.inputs(), batch)
    setup.objective.terms["ce_s1"].compute(outputs, batch, Progress(0, 1, 1)).backward()
    grads = {n: p.grad for n, p in setup.model.named_parameters()}
    assert grads["heads.s1__logits.fc.weight"].abs().sum() > 0
    assert grads["classifier.weight"] is None
    touched = {n.split(".")[1] for n, g in grads.items()
               if n.startswith("backbone.") and g is not None}
    assert touched, "no backbone gradient from the auxiliary classifier"


def test_deep_supervision_default_exits_are_all_but_the_last_stage() -> None:
    setup = _setup("deep_supervision")
    stages = setup.model.backbone.stage_names
    assert set(setup.objective.terms) == {"ce", *(f"ce_{s}" for s in stages[:-1])}
    assert sorted(setup.model.head_specs) == sorted(f"{s}__logits" for s in stages[:-1])


def test_unknown_exit_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="not exits of this model; valid: s1, s2, s3"):
        _setup("[{name: deep_supervision, exits: {s7: 0.5}}]")
