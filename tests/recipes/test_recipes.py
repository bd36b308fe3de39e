"""Every term of every registered recipe is non-zero and sends gradient where it must."""

from __future__ import annotations

import pytest
import torch

from auxilia.config import load_config
from auxilia.engine.loop import forward_all, make_batch
from auxilia.engine.setup import build_setup
from auxilia.recipes import RECIPES
from auxilia.terms import Progress

# Terms that must NOT reach the backbone: a linear probe trains on detached features.
PROBES = {"ce_probe"}


def build(method: str, *extra: str):
    config = load_config(None, [f"method={method}", "data.batch_size=32", "train.device=cpu",
                                *extra])
    setup = build_setup(config)
    batch = make_batch(setup, torch.arange(32))
    outputs = forward_all({"student": setup.model}, setup.objective.inputs(), batch)
    return setup, batch, outputs


@pytest.mark.parametrize("method", sorted(RECIPES))
def test_every_term_is_nonzero_and_reaches_the_student(method: str) -> None:
    setup, batch, outputs = build(method)
    where = Progress(30, 100, 10)
    for name, term in setup.objective.terms.items():
        setup.model.zero_grad(set_to_none=True)
        value = term.compute(outputs, batch, where)
        assert torch.isfinite(value) and value.item() > 0, name
        value.backward(retain_graph=True)
        grads = {n: p.grad for n, p in setup.model.named_parameters()}
        reached = {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}
        assert reached, f"{method}.{name} sends no gradient at all"
        backbone = any(n.startswith("backbone.") for n in reached)
        assert backbone == (name not in PROBES), f"{method}.{name}: backbone gradient {backbone}"


@pytest.mark.parametrize("methods", [
    "[cds, deep_supervision]", "[{name: cds, ce_weight: 0.9}, byot]",
    "[ddgsd, {name: cds, ce_views: both}]", "[{name: cds, ce_weight: 0}, ps_kd]"])
def test_combinations_run_one_forward_per_model(methods: str) -> None:
    setup, batch, outputs = build(methods)
    assert set(setup.objective.inputs()) == {"student"}
    calls = []
    handle = setup.model.register_forward_hook(lambda *a: calls.append(1))
    outputs = forward_all({"student": setup.model}, setup.objective.inputs(), batch)
    handle.remove()
    assert len(calls) == 1  # every view of every term in one concatenated forward
    losses = setup.objective(outputs, batch, Progress(0, 10, 5))
    assert torch.isfinite(losses["loss"])
    assert len(losses) - 1 == len(setup.objective.terms)


def test_cds_uses_the_papers_views_and_head_layout() -> None:
    setup, _, _ = build("[{name: cds}]", "model.name=resnet18", "data.image_size=32")
    assert setup.objective.views == {"x_lb": "cutout", "x_lb2": "color"}
    blocks = {s.exit: dict(s.options)["blocks"] for s in setup.objective.heads.values()}
    assert blocks == {"s1": 3, "s2": 2, "s3": 1, "s4": 0}
    assert set(setup.objective.terms) == {"ce", "supcon_s1", "supcon_s2", "supcon_s3",
                                          "supcon_s4"}
    assert all(t.weight == pytest.approx(0.1) for n, t in setup.objective.terms.items()
               if n.startswith("supcon"))


def test_cds_and_byot_disagreeing_on_ce_weight_fail_loudly() -> None:
    with pytest.raises(ValueError, match="term 'ce' differently.*ce_weight"):
        build("[cds, byot]")


def test_views_can_be_overridden_in_the_config() -> None:
    setup, _, _ = build("cds", "data.views={x_lb2: weak}")
    assert setup.objective.views["x_lb2"] == "weak"
    with pytest.raises(ValueError, match="data.views.x_ulb_s: the methods use no view"):
        build("cds", "data.views={x_ulb_s: color}")
