"""Statistics for rollout analysis, on pooled counts rather than raw samples.

Below both ``shadow`` (the divergence verdict) and ``analysis`` (the checks): pure
functions of counts, importing nothing of the proxy.

Pure Python on purpose: numpy and scipy would add tens of MB and a slow import to every
replica of a proxy that otherwise stays light; the few tests needed here fit in the
standard library. The test suite checks each function against scipy.

Replicas pool their observations as histograms (counts per bin, summed across processes in
Redis), so the tests take counts over ordered bins: every value in a bin ties with the
others, which is exactly what a rank test with tie correction handles, in O(bins).

Every p-value is one-sided, in the direction "the candidate is worse", and is 1.0 whenever
the test is undefined (empty sample, no variance): no evidence is never a failure.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z. ``erfc`` keeps precision far in the upper tail,
    where ``1 - cdf`` would round to 0."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclass(frozen=True, slots=True)
class MannWhitney:
    #: U of the second sample (y): pairs (x, y) with y > x, plus half the ties.
    u: float
    #: Standardised U (tie- and continuity-corrected); 0.0 when undefined.
    z: float
    #: One-sided p-value of H1 "y is stochastically greater than x".
    p_value: float
    #: Common-language effect size: P(Y > X) + 0.5 P(Y = X). 0.5 = no shift; 0.5 when empty.
    effect: float
    n_x: int
    n_y: int


def mann_whitney_greater(x_counts: Sequence[int], y_counts: Sequence[int]) -> MannWhitney:
    """One-sided Mann-Whitney U test on two samples binned over the same ordered bins.

    Same result as ``scipy.stats.mannwhitneyu(y, x, alternative="greater",
    method="asymptotic", use_continuity=True)`` on the expanded values, except that an
    undefined test (an empty sample, or every value in one bin) gives p = 1.0, not NaN.
    The normal approximation is the right one here: pooled samples are large and
    heavily tied, where the exact distribution does not apply anyway.
    """
    if len(x_counts) != len(y_counts):
        raise ValueError("both samples must be counted over the same bins")
    if any(c < 0 for c in x_counts) or any(c < 0 for c in y_counts):
        raise ValueError("counts must not be negative")
    n_x = sum(x_counts)
    n_y = sum(y_counts)
    if n_x == 0 or n_y == 0:
        return MannWhitney(u=0.0, z=0.0, p_value=1.0, effect=0.5, n_x=n_x, n_y=n_y)
    # Scanning the bins in order: every x in a lower bin is beaten by each y in this bin,
    # every x in the same bin ties with it.
    u = 0.0
    x_below = 0
    tie_term = 0
    for cx, cy in zip(x_counts, y_counts, strict=True):
        u += cy * (x_below + 0.5 * cx)
        x_below += cx
        t = cx + cy
        tie_term += t * t * t - t
    n = n_x + n_y
    effect = u / (n_x * n_y)
    variance = n_x * n_y / 12.0 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0.0:
        # All values tie: nothing separates the samples.
        return MannWhitney(u=u, z=0.0, p_value=1.0, effect=effect, n_x=n_x, n_y=n_y)
    z = (u - n_x * n_y / 2.0 - 0.5) / math.sqrt(variance)
    p = min(1.0, max(0.0, normal_sf(z)))
    return MannWhitney(u=u, z=z, p_value=p, effect=effect, n_x=n_x, n_y=n_y)


def mann_whitney_greater_values(x: Sequence[float], y: Sequence[float]) -> MannWhitney:
    """``mann_whitney_greater`` on raw values: each distinct value is its own bin."""
    bins = sorted(set(x) | set(y))
    if any(math.isnan(v) for v in bins):
        raise ValueError("values must not be NaN")
    count_x = Counter(x)
    count_y = Counter(y)
    return mann_whitney_greater([count_x[v] for v in bins], [count_y[v] for v in bins])


def two_proportion_greater(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided p-value of H1 "proportion k2/n2 is greater than k1/n1" (pooled z-test,
    no continuity correction; equal to the chi-square test of the 2x2 table halved, on
    the side of the alternative). 1.0 when undefined (an empty sample, or a pooled share
    of exactly 0 or 1, where the two samples cannot differ)."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    if not (0 <= k1 <= n1 and 0 <= k2 <= n2):
        raise ValueError("successes must lie between 0 and the sample size")
    pooled = (k1 + k2) / (n1 + n2)
    variance = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if variance <= 0.0:
        return 1.0
    z = (k2 / n2 - k1 / n1) / math.sqrt(variance)
    return normal_sf(z)


def fisher_less(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided p-value of Fisher's exact test that proportion ``k1/n1`` is lower than
    ``k2/n2``: the probability, with the margins fixed, of ``k1`` or fewer successes in the
    first sample. Exact, so honest at the few samples per case an eval takes (a z-test
    calls 1/3 against 3/3 significant; it is not). 1.0 when a sample is empty."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    if not (0 <= k1 <= n1 and 0 <= k2 <= n2):
        raise ValueError("successes must lie between 0 and the sample size")
    successes, total = k1 + k2, n1 + n2
    low = max(0, successes - n2)
    denominator = math.comb(total, n1)
    tail = sum(
        math.comb(successes, k) * math.comb(total - successes, n1 - k) for k in range(low, k1 + 1)
    )
    return min(1.0, tail / denominator)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k/n`` (95 % by default): unlike the
    normal approximation it stays inside [0, 1] and is honest at 0/n and n/n, which small
    eval samples hit all the time. (0, 1) when ``n`` is 0: nothing is known."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError("successes must lie between 0 and the sample size")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # Exact at the ends: rounding would leave 1 - 1e-16 where the interval reaches 1.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def _sample_variance(n: int, total: float, sumsq: float) -> float:
    # Running sums lose a little precision; a variance cannot be negative.
    return max(0.0, (sumsq - total * total / n) / (n - 1))


def mean_less(n1: int, sum1: float, sumsq1: float, n2: int, sum2: float, sumsq2: float) -> float:
    """One-sided p-value of H1 "the mean of sample 2 is below the mean of sample 1"
    (Welch's statistic with a normal reference: feedback counts are large, and only sums
    are pooled). Samples are given as count, sum and sum of squares. 1.0 when either
    sample has fewer than two values; with no variance at all the answer is certain:
    0.0 if mean 2 is lower, else 1.0."""
    if n1 < 2 or n2 < 2:
        return 1.0
    mean1 = sum1 / n1
    mean2 = sum2 / n2
    se2 = _sample_variance(n1, sum1, sumsq1) / n1 + _sample_variance(n2, sum2, sumsq2) / n2
    if se2 <= 0.0:
        return 0.0 if mean2 < mean1 else 1.0
    z = (mean2 - mean1) / math.sqrt(se2)
    return normal_sf(-z)


def quantile_from_histogram(
    upper_bounds: Sequence[float], counts: Sequence[int], q: float
) -> float | None:
    """The q-quantile of values counted in buckets, like Prometheus' histogram_quantile:
    linear interpolation inside the bucket holding the rank, the first bucket starting
    at 0 (or at its bound when that is not positive), and a last bucket with an infinite
    bound answered by the bound below it.

    ``counts`` are per bucket (not cumulative); ``upper_bounds`` ascending. None when
    there is no value."""
    if len(upper_bounds) != len(counts):
        raise ValueError("one count per bucket")
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must lie in [0, 1]")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, (upper, count) in enumerate(zip(upper_bounds, counts, strict=True)):
        # Empty buckets never hold the rank: Prometheus would divide 0 by 0 there.
        if count <= 0 or below + count < rank:
            below += max(count, 0)
            continue
        lower = upper_bounds[i - 1] if i > 0 else min(0.0, upper)
        if math.isinf(upper):
            return lower if i > 0 else None
        if i == 0 and upper <= 0.0:
            return upper
        return lower + (upper - lower) * (rank - below) / count
    return None  # unreachable with a positive total; keeps the type checker honest
