"""IndexStream: permutations per epoch, exact resume, independence from the global RNG."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from auxilia.data.streams import IndexStream, eval_batches


def _take(stream: IndexStream, k: int) -> list[torch.Tensor]:
    return list(islice(stream, k))


def test_each_epoch_is_a_permutation() -> None:
    stream = IndexStream(100, 10, seed=3)
    assert stream.batches_per_epoch == 10
    epochs = [torch.cat(_take(stream, 10)) for _ in range(3)]
    for perm in epochs:
        assert torch.equal(torch.sort(perm).values, torch.arange(100))
    assert not torch.equal(epochs[0], epochs[1])
    assert stream.epoch == 3 and stream.position == 0


def test_permutation_follows_the_documented_formula() -> None:
    stream = IndexStream(50, 8, seed=5)
    batches = _take(stream, 2 * stream.batches_per_epoch)
    for epoch in range(2):
        generator = torch.Generator().manual_seed(5 * 1_000_003 + epoch)
        expected = torch.randperm(50, generator=generator)
        got = torch.cat(batches[epoch * 6 : (epoch + 1) * 6])
        assert torch.equal(got, expected[:48])


def test_drop_last_false_covers_everything() -> None:
    stream = IndexStream(23, 5, seed=0, drop_last=False)
    assert stream.batches_per_epoch == 5
    batches = _take(stream, 5)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert torch.equal(torch.sort(torch.cat(batches)).values, torch.arange(23))


def test_batch_larger_than_split_gives_one_full_batch() -> None:
    stream = IndexStream(7, 64, seed=1, drop_last=True)
    assert stream.batches_per_epoch == 1
    b0, b1 = _take(stream, 2)
    assert len(b0) == 7 and torch.equal(torch.sort(b0).values, torch.arange(7))
    assert torch.equal(b1, IndexStream(7, 64, seed=1).permutation(1))
    assert stream.epoch == 2


def test_state_dict_resume_continues_identically() -> None:
    reference = IndexStream(37, 4, seed=11)
    full = _take(reference, 40)  # crosses several epochs
    for cut in (0, 3, 9, 17):
        first = IndexStream(37, 4, seed=11)
        _take(first, cut)
        state = first.state_dict()
        assert set(state) == {"epoch", "position"}
        resumed = IndexStream(37, 4, seed=11)
        resumed.load_state_dict(dict(state))
        for got, want in zip(_take(resumed, 40 - cut), full[cut:], strict=True):
            assert torch.equal(got, want)


def test_position_and_epoch_progress() -> None:
    stream = IndexStream(10, 3, seed=0)  # 3 batches per epoch
    _take(stream, 2)
    assert (stream.epoch, stream.position) == (0, 2)
    _take(stream, 1)
    assert (stream.epoch, stream.position) == (1, 0)


def test_independent_of_global_rng() -> None:
    torch.manual_seed(0)
    a = _take(IndexStream(64, 16, seed=2), 8)
    torch.manual_seed(12345)
    torch.rand(100)
    b = _take(IndexStream(64, 16, seed=2), 8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_bad_state_and_arguments() -> None:
    stream = IndexStream(10, 5, seed=0)
    with pytest.raises(ValueError, match="position"):
        stream.load_state_dict({"epoch": 0, "position": 2})
    with pytest.raises(ValueError, match="lacks"):
        stream.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError):
        IndexStream(0, 5, seed=0)


def test_eval_batches() -> None:
    slices = list(eval_batches(10, 4))
    assert slices == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert list(eval_batches(0, 4)) == []
    x = torch.arange(10)
    assert torch.equal(torch.cat([x[s] for s in slices]), x)
