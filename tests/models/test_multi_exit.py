"""The multi-exit contract: every exit in one forward, removable heads, a head-free strip()."""

from __future__ import annotations

import pytest
import torch

from auxilia.models.heads import HeadSpec
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import create_backbone


def _model(heads=()) -> MultiExitModel:
    torch.manual_seed(0)
    return MultiExitModel(create_backbone("resnet20", in_chans=3), 10, heads).eval()


def test_forward_returns_every_exit_in_one_pass() -> None:
    model = _model([HeadSpec("s2", "logits", "classifier")])
    outs = model(torch.randn(2, 3, 32, 32))
    assert list(outs) == ["s1", "s2", "s3", "final"]
    assert outs["s1"]["feat"].shape == (2, 16, 32, 32)
    assert outs["s2"]["logits"].shape == (2, 10)
    assert outs["final"]["feat"].shape == (2, 64) and outs["final"]["logits"].shape == (2, 10)
    assert "logits" not in outs["s1"]


def test_strip_gives_the_main_exit_without_heads() -> None:
    model = _model([HeadSpec("s1", "logits", "classifier", (("hidden", 32),)),
                    HeadSpec("s2", "logits", "classifier")])
    plain = model.strip()
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(plain(x), model(x)["final"]["logits"])
    head_params = sum(p.numel() for p in model.heads.parameters())
    assert head_params > 0
    assert sum(p.numel() for p in plain.parameters()) == (
        sum(p.numel() for p in model.parameters()) - head_params)


def test_heads_attach_and_are_removed_by_name() -> None:
    model = _model()
    model.attach(HeadSpec("s3", "logits", "classifier"))
    assert "logits" in model(torch.randn(1, 3, 32, 32))["s3"]
    with pytest.raises(ValueError, match="already has a 'logits' head"):
        model.attach(HeadSpec("s3", "logits", "classifier"))
    model.remove_head("s3", "logits")
    assert "logits" not in model(torch.randn(1, 3, 32, 32))["s3"]
    with pytest.raises(KeyError, match="no 'logits' head on exit 's3'"):
        model.remove_head("s3", "logits")
    with pytest.raises(ValueError, match="no exit 's9'; exits: s1, s2, s3, final"):
        model.attach(HeadSpec("s9", "logits", "classifier"))
    with pytest.raises(ValueError, match="unknown head kind 'mlp'"):
        model.attach(HeadSpec("s1", "proj", "mlp"))


def test_a_probe_head_is_the_classifier_on_detached_features() -> None:
    torch.manual_seed(0)
    model = MultiExitModel(create_backbone("resnet8", in_chans=3), 10,
                           [HeadSpec("final", "probe", "probe")])
    plain = MultiExitModel(create_backbone("resnet8", in_chans=3), 10)
    plain.load_state_dict(model.state_dict())  # the marker adds no keys: loads both ways
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert not list(model.heads.parameters())
    outs = model(torch.randn(2, 3, 32, 32))
    assert torch.equal(outs["final"]["probe"], outs["final"]["logits"])
    outs["final"]["probe"].sum().backward()
    assert model.classifier.weight.grad is not None
    assert all(p.grad is None for p in model.backbone.parameters())
    outs = model(torch.randn(2, 3, 32, 32))
    outs["final"]["logits"].sum().backward()  # the main logits still train the backbone
    assert all(p.grad is not None for p in model.backbone.parameters())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.strip()(x), model(x)["final"]["logits"])
    with pytest.raises(ValueError, match="'probe' head belongs on exit 'final', not 's1'"):
        model.attach(HeadSpec("s1", "probe", "probe"))


def test_frozen_backbone_keeps_batchnorm_statistics_in_training() -> None:
    model = MultiExitModel(create_backbone("resnet8", in_chans=3), 10, freeze_backbone=True)
    model.train()
    assert not model.backbone.training and model.classifier.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model(torch.randn(4, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
