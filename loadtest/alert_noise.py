"""How often the rollout alerts of deploy/prometheus/alerts.yaml fire on noise, and on a real
regression: the figures of docs/metrics.md ("How the rollout alerts tell a regression from
noise"), reproducible.

    .venv/bin/python -m loadtest.alert_noise          # ~30 s on one core

Not a test and not PromQL: the rules' conditions written with NumPy over simulated traffic
(steady requests per minute per arm, errors binomial, latencies log-normal in the proxy's
doubling buckets), evaluated every minute on 5-minute windows, with `for:` as consecutive
evaluations. Exact per-window chances come from binomial sums (SciPy). Needs the `test`
extra (SciPy, NumPy).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from scipy.stats import binom

from proxy.metrics import LATENCY_BUCKETS

RUN_MINUTES = 30
WINDOW = 5
Z = 3.0
RELATIVE = 1.25
_EDGES = np.array([*LATENCY_BUCKETS, math.inf])

Array = NDArray[np.float64]


def fires(condition: NDArray[np.bool_], evaluations: int) -> float:
    """Share of runs where ``condition`` held for ``evaluations`` evaluations in a row."""
    run = np.zeros(condition.shape[0])
    fired = np.zeros(condition.shape[0], dtype=bool)
    for t in range(condition.shape[1]):
        run = np.where(condition[:, t], run + 1, 0)
        fired |= run >= evaluations
    return float(fired.mean())


def windows(per_minute: Array) -> Array:
    """5-minute sums along axis 1, one per evaluation."""
    total = np.cumsum(per_minute, axis=1)
    total = np.concatenate([np.zeros_like(total[:, :1]), total], axis=1)
    return total[:, WINDOW:] - total[:, :-WINDOW]


def error_rule(
    rng: np.random.Generator, per_minute: int, stable: float, canary: float, old: bool, runs: int
) -> float:
    requests = np.full((runs, RUN_MINUTES), float(per_minute))
    n_c = windows(requests)
    n_s = n_c
    e_c = windows(rng.binomial(per_minute, canary, size=requests.shape).astype(float))
    e_s = windows(rng.binomial(per_minute, stable, size=requests.shape).astype(float))
    p_c, p_s = e_c / n_c, e_s / n_s
    if old:
        condition = (p_c - p_s > 0.02) & (n_c >= 50)
    else:
        pooled = (e_c + e_s) / (n_c + n_s)
        stderr = np.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_s))
        condition = (
            (p_c - p_s > 0.02)
            & (p_c - p_s > Z * stderr)
            & (p_c > RELATIVE * p_s)
            & (n_c >= 100)
            & (n_s >= 100)
        )
    return fires(condition, evaluations=6)  # for: 5m


def window_chance(n: int, share: float) -> float:
    """Exact chance that one window of two equal arms passes the new share conditions."""
    pmf = binom.pmf(np.arange(n + 1), n, share)
    total = 0.0
    for i in range(n + 1):
        for j in range(n + 1):
            p_c, p_s = i / n, j / n
            pooled = (i + j) / (2 * n)
            stderr = math.sqrt(pooled * (1 - pooled) * 2 / n)
            if p_c - p_s > 0.02 and p_c > RELATIVE * p_s and p_c - p_s > Z * stderr:
                total += pmf[i] * pmf[j]
    return total


def p95(counts: Array) -> Array:
    """Prometheus' histogram_quantile(0.95) of per-bucket counts (runs x buckets)."""
    cumulative = np.cumsum(counts, axis=1)
    rank = 0.95 * cumulative[:, -1]
    index = np.argmax(cumulative >= rank[:, None], axis=1)
    rows = np.arange(len(index))
    below = np.where(index == 0, 0.0, cumulative[rows, np.maximum(index - 1, 0)])
    lower = np.where(index == 0, 0.0, _EDGES[np.maximum(index - 1, 0)])
    upper = _EDGES[index]
    upper = np.where(np.isinf(upper), lower, upper)
    inside = np.maximum(cumulative[rows, index] - below, 1e-12)
    result: Array = lower + (upper - lower) * (rank - below) / inside
    return result


def latency_rule(
    rng: np.random.Generator, per_minute: int, slower: float, sigma: float, runs: int
) -> float:
    def arm(median: float) -> Array:
        seconds = rng.lognormal(math.log(median), sigma, size=(runs, RUN_MINUTES, per_minute))
        bucket = np.searchsorted(_EDGES[:-1], seconds, side="left")
        counts = np.stack([(bucket == k).sum(axis=2) for k in range(len(_EDGES))], axis=2)
        total = np.cumsum(counts, axis=1)
        total = np.concatenate([np.zeros_like(total[:, :1, :]), total], axis=1)
        window: Array = (total[:, WINDOW:, :] - total[:, :-WINDOW, :]).astype(float)
        return np.stack([p95(window[:, t, :]) for t in range(window.shape[1])], axis=1)

    stable, canary = arm(1.0), arm(slower)
    n = per_minute * WINDOW
    condition = (canary / stable > 1.5) & (canary - stable > 0.25) & (n >= 200)
    return fires(condition, evaluations=11)  # for: 10m


def table(title: str, rows: list[tuple[str, Callable[[], float]]]) -> None:
    print(title)
    for label, compute in rows:
        print(f"  {label:<52} {compute():8.2%}")


def main() -> None:
    rng = np.random.default_rng(16)
    runs = 20_000
    table(
        "Error alert on equal 5 % arms: share of 30-minute runs that fire",
        [
            (f"{rule} rule, {n} requests per arm per 5 m", fn)
            for n in (50, 100, 200, 500)
            for rule, fn in (
                ("old", lambda n=n: error_rule(rng, n // WINDOW, 0.05, 0.05, True, runs)),
                ("new", lambda n=n: error_rule(rng, n // WINDOW, 0.05, 0.05, False, runs)),
            )
        ],
    )
    table(
        "Error alert, new rule: one window of equal 5 % arms passes (exact)",
        [(f"{n} requests per arm", lambda n=n: window_chance(n, 0.05)) for n in (100, 200, 500)],
    )
    table(
        "Error alert, new rule, real regressions: share of runs that fire",
        [
            (
                f"stable {s:.0%} -> canary {c:.0%}, {n} per arm per 5 m",
                lambda s=s, c=c, n=n: error_rule(rng, n // WINDOW, s, c, False, runs),
            )
            for s, c, n in (
                (0.01, 0.10, 100),
                (0.01, 0.10, 200),
                (0.05, 0.10, 500),
                (0.01, 0.05, 500),
                (0.05, 0.10, 5000),
            )
        ],
    )
    table(
        "Latency alert, new rule (log-normal, median 1 s): share of runs that fire",
        [
            (
                f"canary x{slower:g}, sigma {sigma:g}, {n} per arm per 5 m",
                lambda slower=slower, sigma=sigma, n=n: latency_rule(
                    rng, n // WINDOW, slower, sigma, 1000
                ),
            )
            for slower, sigma, n in ((1.0, 0.6, 200), (1.0, 1.0, 200), (2.0, 0.6, 200))
        ],
    )


if __name__ == "__main__":
    main()
