"""The pure-Python tests of proxy.stats against scipy on the same data."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats as sp

from proxy.stats import (
    fisher_less,
    mann_whitney_greater,
    mann_whitney_greater_values,
    mean_less,
    quantile_from_histogram,
    two_proportion_greater,
    wilson_interval,
)


def scipy_mwu(x: list[float], y: list[float]) -> float:
    result = sp.mannwhitneyu(y, x, alternative="greater", method="asymptotic", use_continuity=True)
    return float(result.pvalue)


def expand(counts: list[int]) -> list[float]:
    return [float(i) for i, c in enumerate(counts) for _ in range(c)]


@pytest.mark.parametrize("seed", range(20))
def test_binned_mann_whitney_matches_scipy_on_the_expanded_values(seed: int) -> None:
    rng = random.Random(seed)
    bins = rng.choice([2, 5, 50])
    shift = rng.choice([0, 0, 1, 3])
    x = [rng.randint(0, 40) if rng.random() < 0.7 else 0 for _ in range(bins)]
    y = [rng.randint(0, 40) if rng.random() < 0.7 else 0 for _ in range(bins)]
    y = [0] * min(shift, bins - 1) + y[: bins - min(shift, bins - 1)]
    if sum(x) == 0 or sum(y) == 0:
        x[0] += 1
        y[-1] += 1
    ours = mann_whitney_greater(x, y)
    xs, ys = expand(x), expand(y)
    reference = sp.mannwhitneyu(
        ys, xs, alternative="greater", method="asymptotic", use_continuity=True
    )
    assert ours.u == pytest.approx(float(reference.statistic))
    assert ours.p_value == pytest.approx(float(reference.pvalue), rel=1e-9, abs=1e-300)
    assert ours.effect == pytest.approx(float(reference.statistic) / (len(xs) * len(ys)))
    assert (ours.n_x, ours.n_y) == (len(xs), len(ys))


@pytest.mark.parametrize("seed", range(10))
def test_raw_value_mann_whitney_matches_scipy_with_and_without_ties(seed: int) -> None:
    rng = random.Random(100 + seed)
    n_x, n_y = rng.randint(5, 300), rng.randint(5, 300)
    if seed % 2:  # continuous: no ties
        x = [rng.gauss(0, 1) for _ in range(n_x)]
        y = [rng.gauss(0.2, 1) for _ in range(n_y)]
    else:  # rounded: many ties
        x = [round(rng.gauss(0, 1), 1) for _ in range(n_x)]
        y = [round(rng.gauss(0.3, 1), 1) for _ in range(n_y)]
    ours = mann_whitney_greater_values(x, y)
    assert ours.p_value == pytest.approx(scipy_mwu(x, y), rel=1e-9)
    assert ours.z == pytest.approx(sp.norm.isf(ours.p_value), rel=1e-6)


def test_mann_whitney_p_is_tiny_for_a_clear_shift_and_large_the_other_way() -> None:
    x = [90, 10, 0, 0]
    y = [0, 10, 40, 50]
    assert mann_whitney_greater(x, y).p_value < 1e-30
    assert mann_whitney_greater(y, x).p_value > 0.999999
    assert mann_whitney_greater(x, y).effect > 0.9


@pytest.mark.parametrize(
    ("x", "y"),
    [([0, 0, 0], [1, 2, 3]), ([1, 2, 3], [0, 0, 0]), ([0, 0], [0, 0]), ([0, 7, 0], [0, 3, 0])],
    ids=["x-empty", "y-empty", "both-empty", "all-tied"],
)
def test_undefined_mann_whitney_is_no_evidence_not_nan(x: list[int], y: list[int]) -> None:
    result = mann_whitney_greater(x, y)
    assert result.p_value == 1.0
    assert result.effect == 0.5
    assert not math.isnan(result.z)


def test_mann_whitney_rejects_mismatched_or_negative_counts() -> None:
    with pytest.raises(ValueError, match="same bins"):
        mann_whitney_greater([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="negative"):
        mann_whitney_greater([1, -2], [1, 2])


@pytest.mark.parametrize("seed", range(15))
def test_two_proportions_match_the_chi_square_test_on_the_2x2_table(seed: int) -> None:
    rng = random.Random(200 + seed)
    n1, n2 = rng.randint(20, 5000), rng.randint(20, 5000)
    k1, k2 = rng.randint(1, n1 - 1), rng.randint(1, n2 - 1)
    table = np.array([[k1, n1 - k1], [k2, n2 - k2]])
    _, p_two, _, _ = sp.chi2_contingency(table, correction=False)
    # The pooled z-test is the square root of the uncorrected chi-square, signed.
    expected = p_two / 2 if k2 / n2 > k1 / n1 else 1 - p_two / 2
    assert two_proportion_greater(k1, n1, k2, n2) == pytest.approx(expected, rel=1e-9)


def test_two_proportions_detects_a_higher_error_rate_and_is_one_when_undefined() -> None:
    assert two_proportion_greater(4, 1000, 102, 1000) < 1e-15
    assert two_proportion_greater(102, 1000, 4, 1000) > 0.999
    assert two_proportion_greater(0, 0, 3, 10) == 1.0
    assert two_proportion_greater(0, 100, 0, 100) == 1.0
    assert two_proportion_greater(100, 100, 10, 10) == 1.0
    with pytest.raises(ValueError, match="successes"):
        two_proportion_greater(11, 10, 0, 10)


@pytest.mark.parametrize("seed", range(15))
def test_mean_less_matches_welch_statistic_from_scipy(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    a = rng.normal(0.7, 0.3, size=int(rng.integers(5, 2000)))
    b = rng.normal(0.68, 0.5, size=int(rng.integers(5, 2000)))
    welch = sp.ttest_ind(b, a, equal_var=False, alternative="less")
    ours = mean_less(
        len(a), float(a.sum()), float((a * a).sum()), len(b), float(b.sum()), float((b * b).sum())
    )
    # Same statistic; a normal instead of a t reference distribution.
    assert ours == pytest.approx(float(sp.norm.cdf(welch.statistic)), rel=1e-7)


def test_mean_less_on_thumbs_feedback() -> None:
    # Stable: 800 thumbs up of 1000; canary: 150 of 250.
    assert mean_less(1000, 800, 800, 250, 150, 150) < 1e-6
    assert mean_less(250, 150, 150, 1000, 800, 800) > 0.999
    assert mean_less(1, 1, 1, 100, 0, 0) == 1.0
    assert mean_less(10, 10, 10, 10, 0, 0) == 0.0  # all up against all down: certain
    assert mean_less(10, 10, 10, 10, 10, 10) == 1.0


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    bounds = [0.1, 0.5, 1.0, math.inf]
    counts = [10, 30, 50, 10]
    # rank 50 falls 10 into the third bucket's 50 values: 0.5 + 0.5 * 10/50.
    assert quantile_from_histogram(bounds, counts, 0.5) == pytest.approx(0.6)
    assert quantile_from_histogram(bounds, counts, 0.05) == pytest.approx(0.05)
    assert quantile_from_histogram(bounds, counts, 0.95) == 1.0  # in +Inf: the bound below
    assert quantile_from_histogram(bounds, [0, 0, 0, 0], 0.5) is None
    assert quantile_from_histogram([0.1, 0.2, 0.3], [0, 4, 0], 0.0) == pytest.approx(0.1)
    assert quantile_from_histogram([0.1, 0.2, 0.3], [0, 4, 0], 1.0) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="q must"):
        quantile_from_histogram(bounds, counts, 1.5)


def test_histogram_quantile_approaches_the_sample_quantile_on_fine_buckets() -> None:
    rng = np.random.default_rng(7)
    values = rng.gamma(2.0, 0.3, size=20_000)
    bounds = [round(0.01 * (i + 1), 2) for i in range(400)] + [math.inf]
    counts = list(np.histogram(values, bins=[0.0, *bounds[:-1], np.inf])[0])
    for q in (0.5, 0.9, 0.95, 0.99):
        estimate = quantile_from_histogram(bounds, [int(c) for c in counts], q)
        assert estimate is not None
        assert estimate == pytest.approx(float(np.quantile(values, q)), abs=0.01)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 10), (3, 10), (9, 10), (10, 10), (47, 120)])
def test_wilson_bounds_are_where_the_score_test_rejects(k: int, n: int) -> None:
    # The Wilson interval is the set of p whose score test does not reject at 5 %: check
    # each bound is where the two-sided score test's p-value is 0.05, with scipy's normal.
    low, high = wilson_interval(k, n)
    for bound, inside in ((low, low > 0), (high, high < 1)):
        if inside:
            z = (k / n - bound) / math.sqrt(bound * (1 - bound) / n)
            assert 2 * sp.norm.sf(abs(z)) == pytest.approx(0.05, abs=1e-4)
    assert 0.0 <= low <= k / n <= high <= 1.0
    if k == 0:
        assert low == 0.0
    if k == n:
        assert high == 1.0


def test_wilson_interval_of_nothing_is_everything() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2"),
    [
        (0, 3, 3, 3),
        (1, 3, 3, 3),
        (0, 4, 4, 4),
        (1, 6, 6, 6),
        (5, 6, 6, 6),
        (3, 10, 2, 10),
        (0, 0, 1, 1),
    ],
)
def test_fisher_less_matches_scipy(k1: int, n1: int, k2: int, n2: int) -> None:
    if n1 == 0:
        assert fisher_less(k1, n1, k2, n2) == 1.0
        return
    expected = sp.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="less").pvalue
    assert fisher_less(k1, n1, k2, n2) == pytest.approx(expected, rel=1e-9)
