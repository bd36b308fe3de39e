"""Stochastic depth for the zoo's residual blocks (Huang et al., "Deep Networks with Stochastic
Depth", ECCV 2016).

In training, each sample's residual branch is dropped (zeroed) with probability ``p`` and kept,
scaled by ``1 / (1 - p)``, otherwise; the shortcut always passes. At evaluation the block is
deterministic. The module doing it is timm's ``DropPath``; this module only decides the rate of
each block and builds the module.

The rate grows linearly with depth, as Noisy Student (Xie et al., CVPR 2020) uses it with 0.2 at
the last block. We follow timm's convention (its ResNet, Mixer and ViT):
``torch.linspace(0, rate, n)``, so block ``i`` of ``n`` (counted from 0 over the whole network)
drops with ``rate * i / (n - 1)``: the first block never, the last with ``rate``. A network of
one block gets rate 0 there, as in timm.
"""

from __future__ import annotations

import math

from torch import nn


def check_drop_path(rate: float) -> float:
    """``rate`` if it is a probability in ``[0, 1)``.

    Raises:
        ValueError: naming ``model.drop_path`` and its range.
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (
            math.isfinite(rate) and 0 <= rate < 1):
        raise ValueError(f"model.drop_path={rate!r}: give a rate in [0, 1), e.g. "
                         "model.drop_path=0.2 (the last block's drop probability)")
    return float(rate)


def block_rates(rate: float, blocks: int) -> list[float]:
    """Each block's drop probability, ``rate * i / (blocks - 1)`` for ``i = 0 .. blocks - 1``
    (timm's ``linspace(0, rate, blocks)``).

    Args:
        rate: the last block's drop probability (``model.drop_path``).
        blocks: residual blocks in the network, counted in depth order.

    Raises:
        ValueError: a rate outside ``[0, 1)`` or fewer than one block.
    """
    check_drop_path(rate)
    if blocks < 1:
        raise ValueError(f"stochastic depth needs at least one block, got {blocks}")
    if blocks == 1:
        return [0.0]
    return [rate * i / (blocks - 1) for i in range(blocks)]


def drop_path(p: float) -> nn.Module:
    """timm's ``DropPath(p)`` on a residual branch ``[B, ...] -> [B, ...]``, or an identity for
    ``p == 0`` (so that a model without stochastic depth never imports timm, 1-2 s)."""
    if p == 0:
        return nn.Identity()
    from timm.layers import DropPath  # import cost only where stochastic depth is asked for

    return DropPath(p)
