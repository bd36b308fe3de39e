"""The comparison plots: drawn from synthetic run records, skipped when there is nothing to draw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import pytest

from auxilia.compare.collect import Collection, RunRecord
from auxilia.compare.plots import (
    PLOTS,
    merge_exits,
    plot_anytime,
    plot_exit_bars,
    plot_learning_curves,
    write_plots,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXITS = ["s1", "s2", "s3", "final"]
MFLOPS = {"s1": 5e6, "s2": 20e6, "s3": 60e6, "final": 120e6}


def make_record(variant: str, seed: int, exits: list[str], *, base: float = 70.0,
                steps: tuple[int, ...] = (10, 20, 30), flops: bool = True,
                seconds: float = 100.0) -> RunRecord:
    """A finished run whose top-1 grows with the step, the depth of the exit and the seed."""
    def top1(step: int, depth: int) -> float:
        return base + step / 10 + 3 * depth + 0.5 * seed

    evals = [{"step": s, **{f"{split}/{e}/top1": top1(s, d) - (split == "test")
                            for split in ("val", "test") for d, e in enumerate(exits)}}
             for s in steps]
    best = {"step": steps[-1],
            "val": {f"{e}/top1": evals[-1][f"val/{e}/top1"] for e in exits},
            "test": {f"{e}/top1": evals[-1][f"test/{e}/top1"] for e in exits}}
    summary: dict[str, Any] = {
        "exits": exits, "best_val": best, "train_seconds": seconds + 7 * seed,
        "last": {k: v for k, v in evals[-1].items() if k != "step"},
    }
    if flops:
        summary["flops"] = {"trained": 300_000_000, "deployed": int(MFLOPS[exits[-1]]),
                            "exits": {e: int(MFLOPS[e]) for e in exits}}
    return RunRecord(Path(f"/runs/{variant}-{seed}"), variant, seed, "finished",
                     {"seed": seed}, evals, summary)


def failed(variant: str, seed: int) -> RunRecord:
    return RunRecord(Path(f"/runs/{variant}-{seed}-failed"), variant, seed, "failed",
                     error="RuntimeError: CUDA out of memory")


@pytest.fixture
def collection() -> Collection:
    """Two multi-exit variants of three seeds, a single-exit one, and a failed run."""
    records = [make_record("baseline", s, EXITS) for s in range(3)]
    records += [make_record("cds", s, EXITS, base=72.0, seconds=150.0) for s in range(3)]
    records += [make_record("plain", s, ["final"], base=71.0, seconds=80.0) for s in range(2)]
    records.append(failed("cds", 3))
    return Collection(records, ["baseline", "cds", "plain"], baseline="baseline")


def assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= 300 and image.shape[1] >= 500


def test_write_plots_writes_every_png(collection: Collection, tmp_path: Path) -> None:
    out = tmp_path / "plots" / "nested"
    written = write_plots(collection, out)
    assert written == [out / name for name in PLOTS]
    assert [p.name for p in written] == ["curves.png", "exits.png", "accuracy_vs_time.png",
                                         "anytime.png"]
    for path in written:
        assert_png(path)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_nothing_finished_draws_nothing(tmp_path: Path) -> None:
    records = [failed("a", 0), failed("b", 1),
               RunRecord(tmp_path / "c-0", "c", 0, "incomplete",
                         evals=[{"step": 10, "val/final/top1": 50.0}])]
    empty = Collection(records, ["a", "b", "c"])
    for name, plot in PLOTS.items():
        assert plot(empty, tmp_path / name) is None
    assert write_plots(empty, tmp_path / "out") == []
    assert list((tmp_path / "out").iterdir()) == []
    assert write_plots(Collection([], []), tmp_path / "none") == []


def test_anytime_needs_flops(tmp_path: Path) -> None:
    records = [make_record(v, s, EXITS, flops=False) for v in ("a", "b") for s in range(2)]
    records.append(make_record("c", 0, ["final"], flops=False))
    old = Collection(records, ["a", "b", "c"])
    assert plot_anytime(old, tmp_path / "anytime.png") is None
    assert not (tmp_path / "anytime.png").exists()
    written = write_plots(old, tmp_path)
    assert [p.name for p in written] == ["curves.png", "exits.png", "accuracy_vs_time.png"]


def test_anytime_skips_runs_without_flops(tmp_path: Path) -> None:
    records = [make_record("a", 0, EXITS, flops=False), make_record("b", 0, ["final"])]
    records[1].summary["flops"] = {"error": "RuntimeError: cannot trace"}
    assert plot_anytime(Collection(records, ["a", "b"]), tmp_path / "x.png") is None
    records.append(make_record("a", 1, EXITS))
    assert_png(plot_anytime(Collection(records, ["a", "b"]), tmp_path / "y.png"))


def test_unshared_steps_do_not_crash(tmp_path: Path) -> None:
    partly = [make_record("partly", 0, EXITS, steps=(10, 20, 30)),
              make_record("partly", 1, EXITS, steps=(10, 25, 30))]
    apart = [make_record("apart", 0, ["final"], steps=(10, 20)),
             make_record("apart", 1, ["final"], steps=(15, 25, 35))]
    lonely = [make_record("lonely", 0, ["s1", "final"], steps=(10,))]
    mixed = Collection(partly + apart + lonely, ["partly", "apart", "lonely"])
    path = tmp_path / "curves.png"
    assert plot_learning_curves(mixed, path) == path
    assert_png(path)


def test_exit_bars_with_missing_exits(tmp_path: Path) -> None:
    records = [make_record("deep", 0, ["s2", "s3", "final"]),
               make_record("shallow", 0, ["s1", "final"]),
               make_record("shallow", 1, ["s1", "final"])]
    assert_png(plot_exit_bars(Collection(records, ["deep", "shallow"]), tmp_path / "e.png"))


def test_merge_exits_keeps_depth_order() -> None:
    assert merge_exits([["s2", "s3", "final"], ["s1", "final"]]) == ["s1", "s2", "s3", "final"]
    assert merge_exits([["final"], ["s1", "s2", "final"]]) == ["s1", "s2", "final"]
    assert merge_exits([["a", "c"], ["a", "b", "c"]]) == ["a", "b", "c"]
    assert merge_exits([]) == []
