"""Compound scaling arithmetic (Tan & Le 2019): multipliers, rounding, the B0–B7 table."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from timm.layers.helpers import make_divisible
from timm.models import efficientnet as timm_efficientnet
from timm.models._efficientnet_builder import decode_arch_def
from timm.models._efficientnet_builder import round_channels as timm_round_channels

from auxilia.models.scaling import (
    B_TABLE,
    Preset,
    Scale,
    compound,
    flops_factor,
    implied_phi,
    round_channels,
    round_repeats,
    round_resolution,
)

# EfficientNet-B0's stages (Table 1 of the paper): output channels and block repeats.
B0_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
B0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
# the same stages as timm writes them, to decode with timm's own builder
B0_ARCH_DEF = [
    ["ds_r1_k3_s1_e1_c16_se0.25"],
    ["ir_r2_k3_s2_e6_c24_se0.25"],
    ["ir_r2_k5_s2_e6_c40_se0.25"],
    ["ir_r3_k3_s2_e6_c80_se0.25"],
    ["ir_r3_k5_s1_e6_c112_se0.25"],
    ["ir_r4_k5_s2_e6_c192_se0.25"],
    ["ir_r1_k3_s1_e6_c320_se0.25"],
]

PUBLISHED = {  # (width, depth, resolution, dropout), the paper's / TF reference's rows
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


def test_compound_is_powers_of_the_constants() -> None:
    assert compound(0) == Scale(depth=1.0, width=1.0, resolution=1.0)
    two = compound(2)
    assert two.depth == pytest.approx(1.44)
    assert two.width == pytest.approx(1.21)
    assert two.resolution == pytest.approx(1.3225)
    custom = compound(3, alpha=2.0, beta=1.5, gamma=1.0)
    assert (custom.depth, custom.width, custom.resolution) == pytest.approx((8.0, 3.375, 1.0))
    down = compound(-1)
    assert down.depth == pytest.approx(1 / 1.2)


def test_paper_constants_roughly_double_flops_per_phi() -> None:
    assert flops_factor() == pytest.approx(1.92, abs=0.005)
    scale = compound(3)
    assert scale.depth * scale.width**2 * scale.resolution**2 == pytest.approx(flops_factor() ** 3)


@pytest.mark.parametrize("name", ["alpha", "beta", "gamma"])
@pytest.mark.parametrize("bad", [0, -1.2, math.inf, math.nan])
def test_compound_refuses_non_positive_constants(name: str, bad: float) -> None:
    with pytest.raises(ValueError, match=name):
        compound(1, **{name: bad})
    with pytest.raises(ValueError, match=name):
        flops_factor(**{name: bad})


def test_compound_refuses_bad_phi_and_non_numbers() -> None:
    with pytest.raises(ValueError, match="phi"):
        compound(math.nan)
    with pytest.raises(ValueError, match="phi"):
        compound("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="beta"):
        compound(1, beta="1.1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("channels", "width", "expected"),
    [
        (32, 1.0, 32),    # unchanged
        (32, 1.1, 32),    # 35.2: nearest multiple of 8 is 32, 32 >= 0.9 * 35.2
        (40, 1.1, 48),    # 44.0: the tie rounds up
        (16, 1.4, 24),    # 22.4 -> 24
        (24, 1.2, 32),    # 28.8 -> 32
        (3, 1.0, 8),      # never below the divisor
        (1280, 2.0, 2560),
    ],
)
def test_round_channels_hand_worked(channels: int, width: float, expected: int) -> None:
    assert round_channels(channels, width) == expected


def test_round_channels_bumps_when_rounding_loses_ten_percent() -> None:
    # divisor 16: 11 * 2 = 22 rounds to 16, which is below 0.9 * 22 = 19.8, so one divisor up
    assert round_channels(11, 2.0, divisor=16) == 32
    # 100 * 1.0 with divisor 64: 128 is nearest (132 // 64), no bump needed
    assert round_channels(100, 1.0, divisor=64) == 128
    # 90 with divisor 64: nearest is 64 < 81, bumped to 128
    assert round_channels(90, 1.0, divisor=64) == 128


@pytest.mark.parametrize("divisor", [4, 8, 16])
def test_round_channels_matches_timm_on_a_grid(divisor: int) -> None:
    widths = [0.25, 0.5, 0.75, 1.0, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 3.1, 4.3]
    for channels in range(1, 400, 3):
        for width in widths:
            ours = round_channels(channels, width, divisor=divisor)
            assert ours == timm_round_channels(channels, width, divisor=divisor), (channels, width)
            assert ours == make_divisible(channels * width, divisor), (channels, width)
            assert ours % divisor == 0 and ours >= 0.9 * channels * width


@pytest.mark.parametrize(
    ("repeats", "depth", "expected"),
    [(1, 1.0, 1), (1, 1.1, 2), (2, 1.2, 3), (3, 1.4, 5), (4, 1.8, 8), (4, 3.1, 13), (3, 0.5, 2)],
)
def test_round_repeats_rounds_up(repeats: int, depth: float, expected: int) -> None:
    assert round_repeats(repeats, depth) == expected


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_repeats_and_channels_match_timm(name: str) -> None:
    preset = B_TABLE[name]
    stages = decode_arch_def(B0_ARCH_DEF, preset.depth)
    assert [round_repeats(r, preset.depth) for r in B0_REPEATS] == [len(s) for s in stages]
    assert [round_channels(c, preset.width) for c in B0_CHANNELS] == [
        timm_round_channels(c, preset.width) for c in B0_CHANNELS
    ]


@pytest.mark.parametrize(
    ("size", "resolution", "divisor", "expected"),
    [
        (224, 1.0, 8, 224),
        (224, 1.15, 8, 256),   # 257.6 -> 256
        (224, 1.15, 4, 256),   # 257.6 -> 256 (258 is not a multiple of 4)
        (224, 1.3225, 32, 288),  # 296.24 -> 288
        (32, 1.15, 8, 40),     # 36.8 -> 40
        (28, 1.15, 4, 32),     # 32.2 -> 32
        (20, 1.0, 8, 24),      # 20: the tie rounds up
        (8, 0.1, 8, 8),        # never below the divisor
    ],
)
def test_round_resolution(size: int, resolution: float, divisor: int, expected: int) -> None:
    assert round_resolution(size, resolution, divisor=divisor) == expected


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: round_channels(0, 1.0), "channels"),
        (lambda: round_channels(16, 0.0), "width"),
        (lambda: round_channels(16, 1.0, divisor=0), "divisor"),
        (lambda: round_channels(16.0, 1.0), "channels"),  # type: ignore[arg-type]
        (lambda: round_repeats(0, 1.2), "repeats"),
        (lambda: round_repeats(2, -1.2), "depth"),
        (lambda: round_resolution(-32, 1.15), "size"),
        (lambda: round_resolution(32, 0), "resolution"),
        (lambda: round_resolution(32, 1.15, divisor=True), "divisor"),
    ],
)
def test_rounding_refuses_bad_inputs(call: Callable[[], int], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()


def test_b_table_is_the_published_one() -> None:
    assert list(B_TABLE) == list(PUBLISHED)
    for name, (width, depth, resolution, dropout) in PUBLISHED.items():
        preset = B_TABLE[name]
        assert (preset.width, preset.depth, preset.resolution, preset.dropout) == (
            width, depth, resolution, dropout,
        )
        assert preset.timm_name == f"efficientnet_{name}"


def test_b_table_matches_timm_source() -> None:
    # timm's _gen_efficientnet docstring lists the rows as "'efficientnet-bN': (w, d, r, p),"
    doc = timm_efficientnet._gen_efficientnet.__doc__ or ""
    for name, preset in B_TABLE.items():
        row = f"'efficientnet-{name}': ({preset.width}, {preset.depth}, {preset.resolution}, "
        assert f"{row}{preset.dropout})" in doc, name
        assert callable(getattr(timm_efficientnet, preset.timm_name))


def test_b_table_does_not_follow_one_phi() -> None:
    phis = {name: implied_phi(preset) for name, preset in B_TABLE.items()}
    assert phis["b0"] == (0.0, 0.0, 0.0)
    # B2 is close to one phi (~1), B1 already is not: width stays 1.0 while depth and
    # resolution imply about 0.5
    assert phis["b2"].spread < 0.1
    assert phis["b1"].width == 0.0
    assert phis["b1"].depth == pytest.approx(0.52, abs=0.01)
    assert phis["b1"].resolution == pytest.approx(0.49, abs=0.01)
    worst = max(phis.values(), key=lambda p: p.spread)
    assert worst is phis["b7"]
    assert worst == pytest.approx((6.21, 7.27, 7.05), abs=0.01)
    assert worst.spread == pytest.approx(1.07, abs=0.01)


def test_implied_phi_inverts_compound() -> None:
    scale = compound(2.5)
    # a real-valued side, so that the inversion is exact rather than off by the rounding
    preset = Preset(width=scale.width, depth=scale.depth,
                    resolution=224 * scale.resolution,  # type: ignore[arg-type]
                    dropout=0.0, timm_name="")
    assert tuple(implied_phi(preset)) == pytest.approx((2.5, 2.5, 2.5))
    with pytest.raises(ValueError, match="gamma"):
        implied_phi(preset, gamma=1.0)
