"""``model.drop_path``: stochastic depth (Huang et al. 2016) in the zoo's residual families and
timm's ``drop_path_rate``, with timm's linear rule (block i of n drops with rate * i / (n - 1))."""

from __future__ import annotations

import pytest
import torch
from timm.layers import DropPath
from torch import nn

from auxilia.config import ConfigError, load_config
from auxilia.models.registry import create_backbone
from auxilia.models.stochastic_depth import block_rates
from auxilia.models.zoo.cifar_resnet import BasicBlock
from auxilia.models.zoo.mobilenetv2 import InvertedResidual

RESIDUAL = [("resnet20", 9), ("resnet18", 8), ("wrn_16_2", 6), ("mixer_tiny", 4),
            ("mobilenetv2", 17)]  # (model, residual-or-not blocks the rates run over)


def _drop_rates(model: nn.Module) -> list[float]:
    return [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]


def test_block_rates_follow_timms_linspace() -> None:
    assert block_rates(0.2, 5) == pytest.approx(torch.linspace(0, 0.2, 5).tolist())
    assert block_rates(0.2, 1) == [0.0]  # timm's rule: one block never drops
    with pytest.raises(ValueError, match="model.drop_path"):
        block_rates(1.0, 3)


@pytest.mark.parametrize(("name", "blocks"), RESIDUAL)
def test_each_block_gets_its_linear_rate(name: str, blocks: int) -> None:
    model = create_backbone(name, in_chans=3, image_size=32, drop_path=0.2)
    expected = block_rates(0.2, blocks)
    if name == "mobilenetv2":  # rates run over every block, only those with a skip drop
        skips = [m.use_residual for m in model.modules() if isinstance(m, InvertedResidual)]
        expected = [r for r, skip in zip(expected, skips, strict=True) if skip and r > 0]
    else:  # rate 0 is an identity, no DropPath module (a Mixer block's two branches share one)
        expected = expected[1:]
        assert max(_drop_rates(model)) == pytest.approx(0.2)  # the last block has a skip
    assert _drop_rates(model) == pytest.approx(expected)


@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2", "mixer_tiny", "mobilenetv2"])
def test_eval_mode_is_the_model_without_stochastic_depth(name: str) -> None:
    plain = create_backbone(name, image_size=32).eval()
    dropped = create_backbone(name, image_size=32, drop_path=0.5)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for stage, fmap in dropped.eval()(x).items():
            assert torch.equal(fmap, plain(x)[stage]), stage


def test_training_drops_whole_samples_residual_branches_at_the_rate() -> None:
    torch.manual_seed(0)
    block = BasicBlock(4, 4, drop_rate=0.3).train()
    seen: dict[str, torch.Tensor] = {}
    block.drop_path.register_forward_hook(
        lambda _m, inputs, out: seen.update(branch=inputs[0], out=out))
    block(torch.randn(4000, 4, 3, 3))
    branch, out = seen["branch"], seen["out"]
    zero = (out == 0).flatten(1).all(1)
    kept = torch.isclose(out, branch / 0.7, atol=1e-6).flatten(1).all(1)
    assert bool((zero | kept).all())  # a sample's branch is dropped whole or kept whole
    assert zero.float().mean().item() == pytest.approx(0.3, abs=0.03)


def test_gradient_reaches_every_block_through_stochastic_depth() -> None:
    torch.manual_seed(0)
    model = create_backbone("resnet20", image_size=16, drop_path=0.2).train()
    loss = model(torch.randn(16, 3, 16, 16))["s3"].square().mean()
    loss.backward()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in convs)


@pytest.mark.parametrize("name", ["small_cnn", "vgg8", "convnet13", "shufflenetv2"])
def test_models_without_residual_blocks_refuse_drop_path(name: str) -> None:
    with pytest.raises(ValueError, match=r"model.drop_path does not apply .*no residual"):
        create_backbone(name, image_size=32, drop_path=0.2)
    create_backbone(name, image_size=32, drop_path=0.0)  # unset is fine


def test_timm_models_get_it_as_drop_path_rate() -> None:
    model = create_backbone("timm/resnet10t", image_size=32, drop_path=0.2)
    rates = _drop_rates(model)
    assert rates and max(rates) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="drop_path_rate both"):
        create_backbone("timm/resnet10t", image_size=32, drop_path=0.2, drop_path_rate=0.1)


def test_config_validates_and_passes_drop_path() -> None:
    config = load_config(None, ["model.drop_path=0.2", "train.steps=1"])
    assert config.model.backbone_options() == {"drop_path": 0.2}
    assert load_config(None, ["train.steps=1"]).model.backbone_options() == {}
    with pytest.raises(ConfigError, match="model.drop_path"):
        load_config(None, ["model.drop_path=1", "train.steps=1"])
