"""MLP-Mixer for small images (Tolstikhin et al. 2021): size, exits, refusals, and its
equivalence with convolutions: patch embedding = P x P conv with stride P (it is one), token
mixing = a depthwise step whose kernel spans the whole token grid with weights shared across
channels, channel mixing = 1x1 convs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from auxilia.models.heads import HeadSpec
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import create_backbone
from auxilia.models.zoo.mlp_mixer import MixerBlock, MLPMixer


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mixer_nano_has_about_0_7_million_parameters_at_32_px() -> None:
    count = _params(create_backbone("mixer_nano", in_chans=3, image_size=32))
    assert 600_000 <= count <= 800_000
    assert count == 651_680  # dim 96, 8 blocks, 64 tokens: the size docs/models.md reports
    assert _params(create_backbone("mixer_tiny", in_chans=3, image_size=32)) < count / 3


@pytest.mark.parametrize(("name", "in_chans", "size", "grid"),
                         [("mixer_nano", 3, 32, 8), ("mixer_nano", 1, 28, 7),
                          ("mixer_nano", 1, 8, 4), ("mixer_tiny", 1, 28, 7)])
def test_exits_at_every_stage_with_the_promised_shapes(
    name: str, in_chans: int, size: int, grid: int
) -> None:
    model = create_backbone(name, in_chans=in_chans, image_size=size).eval()
    assert model.stage_names == ("s1", "s2", "s3", "s4")
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, size, size))
    assert tuple(out) == model.stage_names
    for stage, fmap in out.items():
        assert fmap.shape == (2, model.stage_channels[stage], grid, grid)
        assert size // model.stage_strides[stage] == grid
    # the stages differ (each exit is a further group of blocks), and only s4 is normalised
    assert not torch.allclose(out["s1"], out["s2"])
    last = out["s4"].flatten(2)
    torch.testing.assert_close(last.mean(1), torch.zeros_like(last[:, 0]), atol=1e-5, rtol=0)


def test_heads_train_on_every_exit_and_every_parameter_gets_a_gradient() -> None:
    backbone = create_backbone("mixer_tiny", in_chans=1, image_size=8)
    heads = [HeadSpec(s, "logits", "classifier") for s in ("s1", "s2", "s3")]
    model = MultiExitModel(backbone, num_classes=10, heads=heads).train()
    outs = model(torch.randn(4, 1, 8, 8))
    loss = sum(outs[e]["logits"].logsumexp(1).mean() for e in ("s1", "s2", "s3", "final"))
    loss.backward()
    assert all(p.grad is not None for p in backbone.parameters())
    assert backbone.stem.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("size", "patch", "numbers"),
                         [(32, 5, "patch_size=5.*image_size=32"),
                          (28, 8, "patch_size=8.*image_size=28"),
                          (8, 8, "patch_size=8.*image_size=8.*2x2")])
def test_a_patch_size_that_does_not_tile_the_image_is_refused(
    size: int, patch: int, numbers: str
) -> None:
    with pytest.raises(ValueError, match=numbers):
        create_backbone("mixer_nano", in_chans=1, image_size=size, patch_size=patch)
    with pytest.raises(ValueError, match=r"patch_size=4 .*image_size=30.*\[1, 2, 3, 5"):
        create_backbone("mixer_nano", image_size=30)  # the default patch, 4, does not divide 30


def test_other_input_sizes_and_depths_are_refused() -> None:
    model = create_backbone("mixer_tiny", image_size=32)
    with pytest.raises(ValueError, match=r"built for 32x32 inputs, got 28x28.*image_size=32"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="multiple of 4.*depth=6"):
        MLPMixer(32, 4, dim=16, depth=6)


def _block(tokens: int = 16, dim: int = 12) -> MixerBlock:
    torch.manual_seed(0)
    block = MixerBlock(tokens, dim, token_hidden=6, channel_hidden=20).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so nothing cancels by accident
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return block


def test_token_mixing_is_a_depthwise_conv_spanning_the_grid_with_weights_shared_by_channels(
) -> None:
    b, c, h, w = 2, 12, 4, 4
    block = _block(h * w, c)
    x = torch.randn(b, c, h, w)
    tokens = x.flatten(2).transpose(1, 2)  # [B, N, C], row-major tokens as MixerStage cuts them
    expected = block.mix_tokens(tokens).transpose(1, 2).reshape(b, c, h, w)

    fc1, fc2 = block.token_mlp[0], block.token_mlp[2]
    d = fc1.out_features
    normed = block.norm1(tokens).transpose(1, 2).reshape(b, c, h, w)
    # Layer 1: a depthwise conv (groups = C) whose kernel is the whole h x w grid (no padding,
    # one output position), each channel's D kernels the SAME fc1 rows: [C * D, 1, h, w].
    kernel1 = fc1.weight.reshape(d, 1, h, w).repeat(c, 1, 1, 1)
    hidden = F.conv2d(normed, kernel1, fc1.bias.repeat(c), groups=c)  # [B, C * D, 1, 1]
    assert hidden.shape == (b, c * d, 1, 1)
    # Layer 2: the transposed depthwise conv back onto the grid, again shared by channels.
    kernel2 = fc2.weight.t().reshape(d, 1, h, w).repeat(c, 1, 1, 1)
    conv_out = F.conv_transpose2d(F.gelu(hidden), kernel2, groups=c)
    conv_out = conv_out + fc2.bias.reshape(1, 1, h, w)
    torch.testing.assert_close(conv_out, expected, rtol=1e-5, atol=1e-5)

    # The same computation as an explicit einsum over the token grid.
    k1, k2 = fc1.weight.reshape(d, h, w), fc2.weight.t().reshape(d, h, w)
    z = F.gelu(torch.einsum("bchw,dhw->bcd", normed, k1) + fc1.bias)
    einsum_out = torch.einsum("bcd,dhw->bchw", z, k2) + fc2.bias.reshape(1, 1, h, w)
    torch.testing.assert_close(einsum_out, expected, rtol=1e-5, atol=1e-5)

    # Shared across channels (what separates it from a per-channel depthwise kernel): the token
    # MLP commutes with any permutation of the channels.
    perm = torch.randperm(c)
    rows = normed.flatten(2)  # [B, C, N]
    torch.testing.assert_close(block.token_mlp(rows[:, perm]), block.token_mlp(rows)[:, perm])


def test_channel_mixing_is_two_1x1_convs() -> None:
    b, c, h, w = 2, 12, 4, 4
    block = _block(h * w, c)
    x = torch.randn(b, c, h, w)
    tokens = x.flatten(2).transpose(1, 2)
    expected = block.mix_channels(tokens).transpose(1, 2).reshape(b, c, h, w)

    fc1, fc2 = block.channel_mlp[0], block.channel_mlp[2]
    normed = block.norm2(tokens).transpose(1, 2).reshape(b, c, h, w)
    hidden = F.conv2d(normed, fc1.weight[:, :, None, None], fc1.bias)  # 1x1 conv, C -> D_C
    conv_out = F.conv2d(F.gelu(hidden), fc2.weight[:, :, None, None], fc2.bias)  # D_C -> C
    torch.testing.assert_close(conv_out, expected, rtol=1e-5, atol=1e-5)


def test_patch_embedding_is_a_p_by_p_conv_with_stride_p() -> None:
    model = create_backbone("mixer_tiny", in_chans=1, image_size=28, patch_size=7)
    stem = model.stem
    assert isinstance(stem, torch.nn.Conv2d)
    assert stem.kernel_size == (7, 7) and stem.stride == (7, 7) and stem.padding == (0, 0)
    # one patch's embedding is a linear map of its flattened pixels
    x = torch.randn(1, 1, 28, 28)
    patch = x[0, 0, 7:14, 14:21].reshape(-1)
    linear = stem.weight.reshape(stem.out_channels, -1) @ patch + stem.bias
    torch.testing.assert_close(stem(x)[0, :, 1, 2], linear, rtol=1e-5, atol=1e-5)
