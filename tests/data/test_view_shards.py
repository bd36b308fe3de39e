"""Views on shards of a batch (one rank's rows under DDP) and on the CPU generator: the shards of
a batch concatenate to the whole batch's output, the whole batch is augmented as before shards
existed, and every draw is made on the CPU whatever the images' device."""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch
from torch import nn

from auxilia.data.randaugment import FIXMATCH_OPS, OPS, RandAugment
from auxilia.data.view_shards import augment, kornia_parameters
from auxilia.data.views import (
    FAMILIES,
    NOISE_STD,
    VIEWS,
    ColorAugment,
    Cutout,
    GaussianNoise,
    Shard,
    Staged,
    View,
    build_view,
)
from auxilia.seeding import seeded

MEAN3, STD3 = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
BATCH, SIZE = 12, 16
SPLITS = [(6, 6), (4, 4, 4), (5, 7), (1, 10, 1), (0, 12)]


def _stats(family: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return ((0.1307,), (0.3081,)) if family == "digits" else (MEAN3, STD3)


def _images(family: str, n: int = BATCH, seed: int = 0) -> torch.Tensor:
    channels = 1 if family == "digits" else 3
    return torch.randint(0, 256, (n, channels, SIZE, SIZE), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def _sharded(view: nn.Module, x: torch.Tensor, splits: tuple[int, ...], seed: int
             ) -> torch.Tensor:
    """Each shard augmented in its own seeded block, as each rank does, then concatenated."""
    parts, start = [], 0
    for rows in splits:
        with seeded(seed):
            parts.append(view(x[start : start + rows], Shard(start, x.shape[0])))
        start += rows
    return torch.cat(parts)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(VIEWS))
def test_shards_concatenate_to_the_whole_batch(name: str, family: str) -> None:
    view = build_view(name, family, *_stats(family), image_size=SIZE)
    x = _images(family)
    for seed in (0, 1):
        with seeded(seed):
            whole = view(x)
        for splits in SPLITS:
            assert torch.equal(_sharded(view, x, splits, seed), whole), (splits, seed)


def test_shards_of_a_composed_view() -> None:
    """Any nesting of nn.Sequential, Staged, kornia and ShardAware modules honours shards."""
    before = nn.Sequential(nn.Sequential(K.RandomCrop((SIZE, SIZE), padding=2),
                                         K.RandomHorizontalFlip()),
                           ColorAugment(), RandAugment(n_ops=3))
    view = View(Staged(before, nn.Sequential(Cutout(5, random_size=True), GaussianNoise(0.1))),
                MEAN3, STD3, name="composed")
    x = _images("natural")
    with seeded(3):
        whole = view(x)
    for splits in SPLITS:
        assert torch.equal(_sharded(view, x, splits, 3), whole), splits


# --- the whole batch draws exactly what it drew before shards, in the same order ---


def _square(cy: torch.Tensor, cx: torch.Tensor, side: torch.Tensor | int) -> torch.Tensor:
    """``[B, 1, H, W]`` squares of side ``side`` at ``(cy, cx)`` (each ``[B, 1]``)."""
    grid = torch.arange(SIZE).unsqueeze(0)
    top, left = cy - side // 2, cx - side // 2
    rows = (grid >= top) & (grid < top + side)
    cols = (grid >= left) & (grid < left + side)
    return (rows.unsqueeze(2) & cols.unsqueeze(1)).unsqueeze(1)


def _old_cutout(x: torch.Tensor, side: int, random_size: bool) -> torch.Tensor:
    size: torch.Tensor | int = side
    if random_size:
        size = torch.randint(1, side + 1, (x.shape[0],)).view(-1, 1)
    cy = torch.randint(0, SIZE, (x.shape[0], 1))
    cx = torch.randint(0, SIZE, (x.shape[0], 1))
    return x.masked_fill(_square(cy, cx, size), 0.0)


def _old_randaugment(augment: RandAugment, x: torch.Tensor) -> torch.Tensor:
    """Before shards: ops, uniforms and signs drawn in this order for the batch."""
    shape = (x.shape[0], augment.n_ops)
    choice = torch.randint(len(augment.ops), shape)
    u = torch.rand(shape)
    sign = torch.randint(0, 2, shape) * 2 - 1
    table = [OPS[name] for name in augment.ops]
    low, high = (torch.tensor([getattr(op, k) for op in table])[choice] for k in ("low", "high"))
    symmetric, integer = (torch.tensor([getattr(op, k) for op in table])[choice]
                          for k in ("symmetric", "integer"))
    magnitude = low + u * (high - low + integer.float())
    magnitude = torch.where(integer, magnitude.floor().minimum(high), magnitude)
    return augment.apply(x, choice, torch.where(symmetric, magnitude * sign, magnitude))


def _reference(name: str, family: str, view: View, x: torch.Tensor) -> torch.Tensor:
    """The view as it ran before shards: kornia modules called plainly (drawing their own
    parameters), our draws written out."""
    mean, std = view.mean, view.std
    u = x.float() / 255
    if name in ("eval", "none"):
        return (u - mean) / std
    weak = VIEWS["weak"](family, SIZE)  # the same kornia modules, called the plain way
    u = weak(u)
    if name == "color":
        u = view.augment[1].rgb(u) if u.shape[1] == 3 else view.augment[1].other(u)
    if name == "strong":
        u = _old_randaugment(view.augment.before[1], u)
    if name == "randaugment":  # Noisy Student's: the strong view without Cutout
        u = _old_randaugment(view.augment[1], u)
    z = (u - mean) / std
    if name == "cutout":
        z = _old_cutout(z, SIZE // 2, random_size=False)
    if name == "strong":
        z = _old_cutout(z, SIZE // 2, random_size=True)
    if name == "noisy":
        z = z + NOISE_STD * torch.randn_like(z)
    return z


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(VIEWS))
def test_whole_batch_is_augmented_as_before_shards(name: str, family: str) -> None:
    view = build_view(name, family, *_stats(family), image_size=SIZE)
    x = _images(family)
    with seeded(11):
        out = view(x)
    with seeded(11):
        expected = _reference(name, family, view, x)
    assert torch.equal(out, expected)


# Produced by the views before shards existed (the code of this test's parent commit), each
# view built with _stats(family) at image_size 16 and run under seeded(1234) on _images(family):
# (sum of out * linspace(-1, 1) over the flattened output, sum of |out|), in float64.
GOLDEN = {
    "eval/digits": (-11.5548, 3754.0248), "eval/natural": (150.8018, 9231.3773),
    "weak/digits": (41.2081, 3466.83), "weak/natural": (124.5954, 9264.1988),
    "weak/natural_noflip": (124.6544, 9264.1988),
    "cutout/digits": (44.3, 2869.5145), "cutout/natural": (115.2541, 7519.2502),
    "cutout/natural_noflip": (100.3107, 7671.4014),
    "color/digits": (-64.6714, 3201.1052), "color/natural": (-823.4996, 8430.8781),
    "color/natural_noflip": (-237.7233, 8362.6943),
    "strong/digits": (133.0478, 2411.4685), "strong/natural": (-394.9514, 7689.5071),
    "strong/natural_noflip": (588.3002, 6993.117),
    "noisy/digits": (39.8484, 3488.4899), "noisy/natural": (132.6622, 9293.1122),
    "noisy/natural_noflip": (118.4278, 9317.3108),
}


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_whole_batch_matches_the_checksums_from_before_shards(key: str) -> None:
    name, family = key.split("/")
    with seeded(1234):
        out = build_view(name, family, *_stats(family), image_size=SIZE)(_images(family))
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=torch.float64).view_as(out)
    checksum = (float((out.double() * weights).sum()), float(out.double().abs().sum()))
    assert checksum == pytest.approx(GOLDEN[key], abs=2e-3)  # a changed draw moves it by >> 1


# --- RandAugment on shards ---


def test_randaugment_shards_equal_the_whole_batch() -> None:
    x = _images("natural", 24).float() / 255
    augment = RandAugment()
    with seeded(2):
        whole = augment(x)
    for splits in ((12, 12), (8, 8, 8), (1, 22, 1), (7, 17)):
        assert torch.equal(_sharded(augment, x, splits, 2), whole), splits


def test_randaugment_lone_row_of_a_shared_op_matches_the_batch() -> None:
    """A CPU convolution of one one-channel image rounds differently from a batch of them:
    a shard's lone Sharpness row must still equal its row of the whole batch."""
    x = _images("digits", 8).float() / 255
    augment = RandAugment(n_ops=1, ops=("Sharpness",))
    with seeded(4):
        whole = augment(x)
    assert torch.equal(_sharded(augment, x, (1,) * 8, 4), whole)


def test_a_shard_draws_for_the_whole_batch() -> None:
    augment = RandAugment(n_ops=1, ops=("Rotate",))
    x = _images("natural", 4).float() / 255
    with seeded(5):
        whole = augment(torch.cat([x, x]))
    with seeded(5):
        second = augment(x, Shard(4, 8))
    with seeded(5):
        alone = augment(x)
    assert torch.equal(second, whole[4:])
    assert not torch.equal(alone, whole[4:])  # drawn for 4 rows: the first half's rotations


# --- every draw on the CPU generator, no read of device data ---


def _cpu_stream_after(fn: object) -> torch.Tensor:
    with seeded(6):
        fn()  # type: ignore[operator]
        return torch.rand(4)  # where the CPU stream stands after the view


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(VIEWS))
def test_views_draw_on_the_cpu_generator_whatever_the_device(name: str, family: str) -> None:
    """On the meta device (mixed-device operations and reads of device data fail there as on a
    GPU), a view draws exactly the CPU numbers it draws for CPU images."""
    view = build_view(name, family, *_stats(family), image_size=SIZE)
    x = _images(family)
    on_cpu = _cpu_stream_after(lambda: view(x[4:8], Shard(4, BATCH)))
    view.to("meta")
    assert view.mean.device.type == "meta"
    out = view(x[4:8].to("meta"), Shard(4, BATCH))
    assert out.device.type == "meta" and out.shape == (4, *x.shape[1:])
    assert torch.equal(_cpu_stream_after(lambda: view(x[4:8].to("meta"), Shard(4, BATCH))),
                       on_cpu)
    assert torch.equal(_cpu_stream_after(lambda: view(x.to("meta"))),
                       _cpu_stream_after(lambda: build_view(name, family, *_stats(family),
                                                            SIZE)(x)))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", FIXMATCH_OPS)
def test_randaugment_ops_read_no_device_data(op: str, channels: int) -> None:
    augment = RandAugment(n_ops=2, ops=(op,)).to("meta")
    out = augment(torch.rand(6, channels, SIZE, SIZE, device="meta"), Shard(3, 9))
    assert out.device.type == "meta" and out.shape == (6, channels, SIZE, SIZE)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("name", ["weak", "cutout", "color", "strong", "noisy"])
def test_one_seed_gives_the_same_images_on_cpu_and_gpu(name: str) -> None:
    """The same draws on both devices; only the image arithmetic may round differently (a
    nearest-neighbour rotation or a threshold can flip at a tie), so nearly every pixel, not
    every one, must agree. Draws made on the GPU would move most pixels."""
    view = build_view(name, "natural", MEAN3, STD3, image_size=SIZE)
    x = _images("natural")
    with seeded(8):
        on_cpu = view(x)
    view.to("cuda")
    with seeded(8):
        on_gpu = view(x.cuda(), Shard(0, BATCH)).cpu()
    assert ((on_gpu - on_cpu).abs() <= 1e-4).float().mean() > 0.99


@needs_cuda
@pytest.mark.parametrize("name", sorted(VIEWS))
def test_views_do_not_synchronise_with_the_gpu(name: str) -> None:
    view = build_view(name, "natural", MEAN3, STD3, image_size=SIZE).to("cuda")
    x = _images("natural").cuda()
    view(x[:6], Shard(0, BATCH))  # warm-up: kernels load outside the checked call
    torch.cuda.synchronize()
    with seeded(9):  # forking the RNG states is the caller's business: outside the check
        torch.cuda.set_sync_debug_mode("error")
        try:
            view(x[6:], Shard(6, BATCH))
        finally:
            torch.cuda.set_sync_debug_mode("default")


# --- refusals ---


def test_bad_shards_are_refused() -> None:
    with pytest.raises(ValueError, match="start >= 0"):
        Shard(-1, 4)
    with pytest.raises(ValueError, match="total >= 1"):
        Shard(0, 0)
    view = build_view("weak", "natural", MEAN3, STD3, image_size=SIZE)
    with pytest.raises(ValueError, match="5 rows from row 8 does not fit a batch of 12"):
        view(_images("natural", 5), Shard(8, 12))


def test_a_module_that_cannot_shard_is_refused_on_a_shard_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(VIEWS, "dropout", lambda family, size: nn.Dropout(0.5))
    view = build_view("dropout", "natural", MEAN3, STD3, image_size=SIZE)
    assert view(_images("natural")).shape == (BATCH, 3, SIZE, SIZE)  # the whole batch: fine
    with pytest.raises(ValueError, match="Dropout cannot augment a shard.*ShardAware"):
        view(_images("natural", 6), Shard(0, BATCH))


def test_an_unknown_kornia_parameter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    flip = K.RandomHorizontalFlip()
    drawn = flip.forward_parameters

    def with_a_global(shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        return {**drawn(shape), "mystery": torch.zeros(3)}

    monkeypatch.setattr(flip, "forward_parameters", with_a_global)
    x = torch.rand(4, 3, SIZE, SIZE)
    assert "mystery" in kornia_parameters(flip, x, None)  # the whole batch is left as drawn
    with pytest.raises(RuntimeError, match="'mystery' of shape \\(3,\\), not one per row of 8"):
        augment(flip, x, Shard(0, 8))
