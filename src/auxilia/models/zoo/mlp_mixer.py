"""MLP-Mixer for small images (Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for
Vision", NeurIPS 2021).

The image is cut into non-overlapping P x P patches by a P x P convolution with stride P (the
patch embedding), giving a grid of ``N = (S / P)^2`` tokens of ``C`` channels. Each Mixer block
is two residual MLPs on the token table ``[B, N, C]``: LayerNorm -> token mixing (an MLP across
the N tokens, the same for every channel) -> residual, then LayerNorm -> channel mixing (an MLP
across the C channels, the same for every token) -> residual. Token mixing is therefore a
depthwise step whose kernel spans the whole token grid with weights shared across channels, and
channel mixing is a pair of 1x1 convolutions (``tests/models/test_mlp_mixer.py`` checks both).

The blocks are cut into four groups, the stages ``s1`` .. ``s4``; each group's output is exposed
as a ``[B, C, S/P, S/P]`` map, so heads attach to it as to a CNN stage. The last stage passes
the final LayerNorm, as the paper's classifier input does. The token MLP's width depends on N,
so a model is built for one input side: ``image_size`` must be a multiple of the patch size.
timm's Mixers (``timm/mixer_b16_224``) are the large-image ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from auxilia.models.backbone import Backbone, StagedBackbone
from auxilia.models.scaled import scaled_channels, scaled_repeats
from auxilia.models.scaling import Scale
from auxilia.models.stochastic_depth import block_rates, drop_path

NUM_STAGES = 4
# timm's Mixer convention (and the paper's Mixer-S/B/L): token MLP 0.5 C wide, channel MLP 4 C.
TOKEN_RATIO, CHANNEL_RATIO = 0.5, 4.0


def _mlp(width: int, hidden: int) -> nn.Sequential:
    """Linear -> GELU -> Linear on the last axis, ``[..., width] -> [..., width]``."""
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


class MixerBlock(nn.Module):
    """One Mixer layer (Tolstikhin et al. 2021, Eq. 1) on a token table ``[B, N, C]``.

    Args:
        num_tokens: N, the tokens of the grid.
        dim: C, the channels of each token.
        token_hidden: hidden width of the token-mixing MLP (D_S).
        channel_hidden: hidden width of the channel-mixing MLP (D_C).
        drop_rate: stochastic depth of both residual branches (timm's Mixer drops each with the
            block's rate, independently).
    """

    def __init__(self, num_tokens: int, dim: int, token_hidden: int, channel_hidden: int,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop_path = drop_path(drop_rate)
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = _mlp(num_tokens, token_hidden)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = _mlp(dim, channel_hidden)

    def mix_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The token-mixing branch without its residual: ``[B, N, C] -> [B, N, C]``."""
        return self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)

    def mix_channels(self, x: torch.Tensor) -> torch.Tensor:
        """The channel-mixing branch without its residual: ``[B, N, C] -> [B, N, C]``."""
        return self.channel_mlp(self.norm2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + tokens(x)``, then ``+ channels(.)``: ``[B, N, C] -> [B, N, C]``."""
        x = x + self.drop_path(self.mix_tokens(x))
        return x + self.drop_path(self.mix_channels(x))


class MixerStage(nn.Module):
    """A group of Mixer blocks between two exits, on feature maps ``[B, C, H, W]``.

    The map is flattened into ``H * W`` tokens (row-major), mixed, and folded back, so that the
    stage's output is a CNN-like map. ``norm`` (the final LayerNorm, last stage only) is applied
    to the tokens after the blocks.
    """

    def __init__(self, blocks: list[MixerBlock], norm: nn.Module | None = None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        b, c, h, w = x.shape
        tokens = self.norm(self.blocks(x.flatten(2).transpose(1, 2)))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class MLPMixer(StagedBackbone):
    """MLP-Mixer cut into four stages of ``depth / 4`` blocks each.

    Args:
        image_size: input side S (square inputs); the token MLPs are built for it.
        patch_size: P, which must divide S with at least a 2x2 token grid.
        dim: C, the token width (the same at every stage).
        depth: number of Mixer blocks, a multiple of 4.
        in_chans: input channels.
        drop_path: stochastic depth of the last block, linear over the blocks.
        scale: compound scaling (Tan & Le 2019): blocks per stage ``ceil((depth / 4) * d)``,
            ``dim`` through ``scaled_channels`` (the MLPs' hidden widths follow it).

    ``forward`` maps ``[B, in_chans, S, S]`` to ``{"s1": [B, C, S/P, S/P], ..., "s4": ...}``.

    Raises:
        ValueError: a patch size that does not divide the image size, a grid under 2x2, or a depth
            that is not a positive multiple of 4.
    """

    family = "mlp_mixer"

    def __init__(self, image_size: int, patch_size: int, dim: int, depth: int,
                 in_chans: int = 3, drop_path: float = 0.0, scale: Scale | None = None
                 ) -> None:
        super().__init__()
        check_patch_size(image_size, patch_size)
        if depth < NUM_STAGES or depth % NUM_STAGES:
            raise ValueError(f"MLP-Mixer depth must be a positive multiple of {NUM_STAGES} "
                             f"(one group of blocks per stage), got depth={depth}")
        self.image_size = image_size
        grid = image_size // patch_size
        dim = scaled_channels(dim, scale)
        per = scaled_repeats(depth // NUM_STAGES, scale)
        rates = block_rates(drop_path, per * NUM_STAGES)
        self.stem = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        blocks = [MixerBlock(grid * grid, dim, int(TOKEN_RATIO * dim), int(CHANNEL_RATIO * dim),
                             rate) for rate in rates]
        self.stages = nn.ModuleList(
            MixerStage(blocks[i * per:(i + 1) * per],
                       nn.LayerNorm(dim) if i == NUM_STAGES - 1 else None)
            for i in range(NUM_STAGES)
        )
        self.stage_names = tuple(f"s{i + 1}" for i in range(NUM_STAGES))
        self.stage_channels = dict.fromkeys(self.stage_names, dim)
        self.stage_strides = dict.fromkeys(self.stage_names, patch_size)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's map, ``{"s1": [B, C, S/P, S/P], ...}``; other input sizes are refused
        (the token MLPs are built for S)."""
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"this MLP-Mixer was built for {self.image_size}x{self.image_size} inputs, got "
                f"{x.shape[-2]}x{x.shape[-1]}; set data.image_size={self.image_size} or rebuild "
                f"the model for the new size")
        return super().forward(x)


def _init(module: nn.Module) -> None:
    """Xavier-uniform linear weights with zero bias, LeCun-normal patch embedding, as the
    authors' JAX code and timm initialise Mixers (PyTorch's default Linear init is narrower)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_in = module.weight[0].numel()
        nn.init.trunc_normal_(module.weight, std=fan_in ** -0.5)
        nn.init.zeros_(module.bias)  # type: ignore[arg-type]


def check_patch_size(image_size: int, patch_size: int) -> None:
    """Refuse a patch size that does not tile the image into at least a 2x2 grid.

    Raises:
        ValueError: naming both numbers and the patch sizes that would work.
    """
    fits = [p for p in range(1, image_size // 2 + 1) if image_size % p == 0]
    if patch_size < 1 or image_size % patch_size or image_size // patch_size < 2:
        raise ValueError(
            f"MLP-Mixer patch_size={patch_size} does not tile image_size={image_size} into a "
            f"grid of at least 2x2; set model.kwargs={{patch_size: P}} with P in {fits}, or "
            f"data.image_size to a multiple of {patch_size} (at least {2 * patch_size})")


def default_patch_size(image_size: int) -> int:
    """The patch the paper's small-image setting suggests: 4 (8x8 tokens at 32 px, 7x7 at 28),
    and 2 under 16 px (4x4 tokens for 8x8 digits)."""
    return 4 if image_size >= 16 else 2


def _factory(dim: int, depth: int) -> Callable[..., Backbone]:
    """A registry factory ``(in_chans, image_size, patch_size=None) -> MLPMixer``; no
    ``patch_size`` takes :func:`default_patch_size`."""

    def build(*, in_chans: int = 3, image_size: int = 32, patch_size: int | None = None,
              drop_path: float = 0.0, scale: Scale | None = None) -> Backbone:
        patch = default_patch_size(image_size) if patch_size is None else patch_size
        return MLPMixer(image_size, patch, dim, depth, in_chans=in_chans, drop_path=drop_path,
                        scale=scale)

    return build


MODELS: dict[str, Callable[..., Backbone]] = {
    "mixer_nano": _factory(dim=96, depth=8),
    "mixer_tiny": _factory(dim=64, depth=4),
}
