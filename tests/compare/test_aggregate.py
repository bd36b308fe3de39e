"""The arithmetic of a comparison against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from auxilia.compare.aggregate import mean_std, median_last_k, paired


def test_mean_and_sample_std() -> None:
    ms = mean_std([1.0, 2.0, 3.0, 4.0])
    assert ms.mean == 2.5
    # sample variance: (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    assert ms.std == pytest.approx(math.sqrt(5 / 3))
    assert ms.n == 4
    assert ms.format() == "2.50 ± 1.29"


def test_one_value_has_zero_std_and_missing_values_are_left_out() -> None:
    assert mean_std([7.0]) == mean_std([7.0, math.nan])
    assert mean_std([7.0]).std == 0.0
    empty = mean_std([])
    assert empty.n == 0 and math.isnan(empty.mean) and empty.format() == "-"


def test_median_of_the_last_k() -> None:
    values = [5.0, 1.0, 3.0, 9.0, 7.0]
    assert median_last_k(values, 3) == 7.0          # median of 3, 9, 7
    assert median_last_k(values, 2) == 8.0          # median of 9, 7
    assert median_last_k(values, 10) == 5.0         # all five: 1 3 5 7 9
    assert median_last_k(values, 1) == 7.0
    assert math.isnan(median_last_k([], 3))
    with pytest.raises(ValueError, match="k >= 1"):
        median_last_k(values, 0)


def test_paired_differences_over_matched_seeds_only() -> None:
    variant = {0: 60.0, 1: 61.0, 2: 59.0, 5: 99.0}   # seed 5 has no baseline
    baseline = {0: 58.0, 1: 62.0, 2: 57.0, 3: 10.0}  # seed 3 has no variant
    p = paired(variant, baseline)
    assert p.seeds == (0, 1, 2)
    assert p.differences == (2.0, -1.0, 2.0)
    assert p.diff.mean == 1.0
    # deviations 1, -2, 1: sample variance (1 + 4 + 1) / 2 = 3
    assert p.diff.std == pytest.approx(math.sqrt(3))
    assert p.improved == 2
    assert p.format() == "+1.00 ± 1.73 (2/3 better)"


def test_a_tie_is_not_an_improvement_and_no_match_formats_as_dash() -> None:
    assert paired({0: 50.0}, {0: 50.0}).improved == 0
    assert paired({0: 50.0}, {1: 50.0}).format() == "-"
