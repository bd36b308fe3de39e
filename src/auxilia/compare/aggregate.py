"""Arithmetic of a comparison: mean ± std over seeds, median of the last k, paired differences.

Pure functions over plain numbers, so that every figure of ``results.md`` can be checked by
hand. The standard deviation is the sample one (``n - 1``), 0 for a single seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MeanStd", "Paired", "mean_std", "median_last_k", "paired"]


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation of ``n`` values (``n = 0``: both NaN)."""

    mean: float
    std: float
    n: int

    def format(self, digits: int = 2) -> str:
        """``"m ± s"``; ``"-"`` when there is no value."""
        if self.n == 0:
            return "-"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def mean_std(values: Sequence[float]) -> MeanStd:
    """Mean and sample standard deviation; NaN and None values are left out."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not kept:
        return MeanStd(math.nan, math.nan, 0)
    std = statistics.stdev(kept) if len(kept) > 1 else 0.0
    return MeanStd(statistics.fmean(kept), std, len(kept))


def median_last_k(values: Sequence[float], k: int) -> float:
    """Median of the last ``k`` values (all of them when there are fewer); NaN if none.

    A run's last evaluations fluctuate; their median is a steadier figure of where the run
    ended than the last one alone, and unlike the best one it is not chosen by looking.
    """
    if k < 1:
        raise ValueError(f"k={k}: the median needs at least one evaluation (k >= 1)")
    tail = [float(v) for v in values[-k:]]
    return statistics.median(tail) if tail else math.nan


@dataclass(frozen=True)
class Paired:
    """A variant against the baseline on matched seeds.

    Attributes:
        seeds: the seeds both have a value for, in order.
        differences: variant minus baseline, per seed.
        diff: mean ± std of the differences.
        improved: how many seeds the variant is strictly better on.
    """

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    diff: MeanStd
    improved: int

    def format(self, digits: int = 2) -> str:
        """``"+d ± s (i/n seeds better)"``; ``"-"`` without a matched seed."""
        if not self.seeds:
            return "-"
        return (f"{self.diff.mean:+.{digits}f} ± {self.diff.std:.{digits}f} "
                f"({self.improved}/{len(self.seeds)} better)")


def paired(variant: Mapping[int, float], baseline: Mapping[int, float]) -> Paired:
    """Per-seed differences ``variant[s] - baseline[s]`` over the seeds both have.

    Args:
        variant: seed -> the variant's figure at that seed.
        baseline: seed -> the baseline's figure at that seed.
    """
    seeds = tuple(sorted(s for s in variant if s in baseline
                         and not math.isnan(variant[s]) and not math.isnan(baseline[s])))
    diffs = tuple(float(variant[s]) - float(baseline[s]) for s in seeds)
    return Paired(seeds, diffs, mean_std(diffs), sum(1 for d in diffs if d > 0))
