"""Auxiliary heads: CDS SepConv projection, SimCLR MLP projection, BYOT shallow classifier."""

from __future__ import annotations

import pytest
import torch

from auxilia.models.backbone import Backbone
from auxilia.models.heads import (
    HEADS,
    BYOTHead,
    HeadSpec,
    SepConv,
    SepConvProjection,
    build_head,
    downsample_steps,
    sepconv_layout,
)
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import MODELS, create_backbone

NUM_CLASSES = 10


def _layout(model: Backbone, stage: str) -> int:
    last = model.last_stage
    return sepconv_layout(model.stage_channels[stage], model.stage_strides[stage],
                          model.num_features, model.stage_strides[last])


def _stage_heads(model: Backbone, stage: str) -> tuple[SepConvProjection, BYOTHead]:
    out = model.num_features
    proj = build_head(HeadSpec(stage, "proj", "sepconv_proj",
                               (("out_channels", out), ("blocks", _layout(model, stage)))),
                      model.stage_channels[stage], NUM_CLASSES)
    steps = downsample_steps(model.stage_strides[stage], model.stage_strides[model.last_stage])
    byot = build_head(HeadSpec(stage, "logits", "byot",
                               (("out_channels", out), ("downsample", steps))),
                      model.stage_channels[stage], NUM_CLASSES)
    assert isinstance(proj, SepConvProjection) and isinstance(byot, BYOTHead)
    return proj, byot


def _unit_rows(z: torch.Tensor) -> None:
    torch.testing.assert_close(z.norm(dim=1), torch.ones(z.shape[0]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_heads_on_every_stage_of_every_model(name: str) -> None:
    torch.manual_seed(0)
    model = create_backbone(name).eval()
    out = model.num_features
    final_side = 32 // model.stage_strides[model.last_stage]
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 32, 32))
        for stage in model.stage_names:
            proj, byot = (head.eval() for head in _stage_heads(model, stage))
            # the SepConv blocks land on the last stage's nominal resolution
            assert proj.body(feats[stage]).shape[-1] == final_side or proj.blocks == 0
            z = proj(feats[stage])
            assert z.shape == (2, out) and torch.isfinite(z).all()
            _unit_rows(z)
            result = byot(feats[stage])
            assert set(result) == {"logits", "hint"}
            assert result["logits"].shape == (2, NUM_CLASSES)
            assert result["hint"].shape == (2, out)
            assert all(torch.isfinite(t).all() for t in result.values())
        pooled = feats[model.last_stage].mean(dim=(2, 3))
        final = SepConvProjection(out, NUM_CLASSES, out_channels=out, blocks=0).eval()
        assert len(final.body) == 0
        torch.testing.assert_close(final(pooled), torch.nn.functional.normalize(pooled, dim=1))


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_cds_layout_for_imagenet_style_resnets(name: str) -> None:
    model = create_backbone(name)
    assert [_layout(model, s) for s in model.stage_names] == [3, 2, 1, 0]


def test_cds_resnet18_channel_progression_and_size() -> None:
    model = create_backbone("resnet18")
    widths = {}
    for stage in model.stage_names:
        proj, _ = _stage_heads(model, stage)
        widths[stage] = [b[-3].out_channels for b in proj.body if isinstance(b, SepConv)]
    assert widths == {"s1": [128, 256, 512], "s2": [256, 512], "s3": [512], "s4": []}
    # one SepConv block: 2 depthwise 3x3, 2 pointwise, 2 BN (weight + bias)
    assert sum(p.numel() for p in SepConv(64, 128).parameters()) == (
        2 * 64 * 9 + 64 * 64 + 64 * 128 + 2 * 64 + 2 * 128)


def test_layout_helpers() -> None:
    assert [downsample_steps(s, 8) for s in (1, 2, 4, 8)] == [3, 2, 1, 0]
    assert sepconv_layout(128, 4, 128, 4) == 0  # convnet13's s2 -> s3: pointwise adapter only
    with pytest.raises(ValueError, match="power-of-two"):
        downsample_steps(2, 6)
    with pytest.raises(ValueError, match="power-of-two"):
        downsample_steps(8, 4)
    with pytest.raises(ValueError, match="positive"):
        sepconv_layout(0, 1, 512, 8)


def test_same_stride_other_channels_uses_a_pointwise_adapter() -> None:
    head = SepConvProjection(256, NUM_CLASSES, out_channels=128, blocks=0).eval()
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.stride) for c in convs] == [((1, 1), (1, 1))]
    z = head(torch.randn(3, 256, 8, 8))
    assert z.shape == (3, 128)
    _unit_rows(z)
    assert head(torch.randn(3, 256)).shape == (3, 128)  # a pooled vector: a linear map
    with pytest.raises(ValueError, match="blocks=0"):
        SepConvProjection(64, NUM_CLASSES, out_channels=128, blocks=1)(torch.randn(2, 64))


def test_mlp_projection_shapes_and_norm() -> None:
    torch.manual_seed(0)
    head = build_head(HeadSpec("final", "proj", "mlp_proj"), 64, NUM_CLASSES)
    z = head(torch.randn(4, 64))
    assert z.shape == (4, 128)
    _unit_rows(z)
    small = HEADS["mlp_proj"](32, NUM_CLASSES, hidden=16, out_dim=8)
    z = small(torch.randn(4, 32, 8, 8))
    assert z.shape == (4, 8)
    _unit_rows(z)


def test_gradients_reach_heads_and_backbone() -> None:
    torch.manual_seed(0)
    model = create_backbone("resnet20").train()
    out = model.num_features
    heads = torch.nn.ModuleDict()
    for stage in model.stage_names:
        heads[f"{stage}_proj"], heads[f"{stage}_byot"] = _stage_heads(model, stage)
    heads["final_mlp"] = HEADS["mlp_proj"](out, NUM_CLASSES, hidden=32, out_dim=16)
    feats = model(torch.randn(4, 3, 32, 32))
    target = torch.randn(4, out)
    loss = heads["final_mlp"](feats[model.last_stage]).square().sum()
    for stage in model.stage_names:
        loss = loss + (heads[f"{stage}_proj"](feats[stage]) - target).square().sum()
        byot = heads[f"{stage}_byot"](feats[stage])
        loss = loss + byot["logits"].logsumexp(1).sum() + byot["hint"].square().sum()
    loss.backward()
    for key, head in heads.items():
        for pname, p in head.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{key}.{pname}"
    assert all(p.grad is not None for p in model.parameters())


def test_heads_through_multi_exit_model_and_strip() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("resnet8")
    specs = [HeadSpec(s, "proj", "sepconv_proj",
                      (("out_channels", 64), ("blocks", _layout(backbone, s))))
             for s in backbone.stage_names]
    specs += [HeadSpec("s1", "logits", "byot", (("out_channels", 64), ("downsample", 2))),
              HeadSpec("final", "proj", "mlp_proj", (("hidden", 32), ("out_dim", 16)))]
    model = MultiExitModel(backbone, NUM_CLASSES, specs).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 32, 32))
    assert all(outs[s]["proj"].shape == (2, 64) for s in backbone.stage_names)
    assert outs["s1"]["logits"].shape == (2, NUM_CLASSES) and outs["s1"]["hint"].shape == (2, 64)
    assert outs["final"]["proj"].shape == (2, 16)
    plain = model.strip()
    assert sum(p.numel() for p in plain.parameters()) == sum(
        p.numel() for p in model.parameters()) - sum(p.numel() for p in model.heads.parameters())
