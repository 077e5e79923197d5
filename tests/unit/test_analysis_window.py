"""Per-arm window counters: what a replica counts, how it travels to the pool in flat form,
how counts of replicas and seconds add up, and how precise a p95 read off the bins is."""

from __future__ import annotations

import math
import random
from typing import Any, TypedDict

import pytest

from proxy.analysis.pool import MemoryStatsPool, _split
from proxy.analysis.window import (
    LATENCY_BOUNDS,
    ArmStats,
    Moments,
    RolloutBatch,
    WindowRecorder,
    latency_bin,
    merge_arms,
    split_tier_arm,
)
from proxy.exchange.outcome import Exchange
from proxy.models import Route
from proxy.prompt_key import PromptKey
from proxy.shadow.compare import Divergence, DivergenceCounts


class Call(TypedDict):
    failed: bool
    duration: float | None
    ttft: float | None
    output_tokens: int | None
    finish_reason: str | None


CALLS: list[Call] = [
    {"failed": False, "duration": 0.8, "ttft": 0.2, "output_tokens": 120, "finish_reason": "stop"},
    {
        "failed": False,
        "duration": 2.5,
        "ttft": None,
        "output_tokens": 512,
        "finish_reason": "length",
    },
    {"failed": True, "duration": 0.1, "ttft": None, "output_tokens": None, "finish_reason": None},
    {
        "failed": False,
        "duration": 1.1,
        "ttft": 0.4,
        "output_tokens": 300,
        "finish_reason": "max_output_tokens",
    },
    {"failed": False, "duration": None, "ttft": None, "output_tokens": None, "finish_reason": None},
    {
        "failed": False,
        "duration": 0.05,
        "ttft": 0.01,
        "output_tokens": 7,
        "finish_reason": "tool_calls",
    },
]
FEEDBACK: list[tuple[str, float]] = [
    ("thumbs_up", 1.0),
    ("thumbs_up", 0.0),
    ("rating", 0.3),
    ("rating", 0.7),
    ("rating", -1.25),
    ("ns:score.v2", 0.1),
]


def add_calls(stats: ArmStats, calls: list[Call]) -> ArmStats:
    for call in calls:
        stats.add_call(**call)
    return stats


def sample_arm() -> ArmStats:
    stats = add_calls(ArmStats(), CALLS)
    for name, value in FEEDBACK:
        stats.add_feedback(name, value)
    return stats


def divergence(text: float) -> Divergence:
    return Divergence(
        text_distance=text,
        length_drift=text / 2,
        json_invalid=None,
        tool_calls_differ=None,
        finish_reason_changed=0.0,
    )


# -- ArmStats --------------------------------------------------------------------------------


def test_add_call_counts_requests_errors_truncation_latency_and_tokens() -> None:
    stats = sample_arm()

    assert stats.requests == 6
    assert stats.errors == 1
    # A failed call counts for nothing else: no latency, no finish reason, no tokens.
    assert stats.finished == 4
    assert stats.truncated == 2  # "length" and the Responses API's "max_output_tokens"
    assert sum(stats.latency.values()) == 4
    assert sum(stats.ttft.values()) == 3
    assert stats.answer_tokens == Moments(4, 120 + 512 + 300 + 7, 120**2 + 512**2 + 300**2 + 49)
    assert stats.error_rate == pytest.approx(1 / 6)
    assert stats.truncated_share == pytest.approx(0.5)
    assert stats.feedback["rating"].n == 3
    assert stats.feedback["rating"].mean == pytest.approx((0.3 + 0.7 - 1.25) / 3)


def test_an_empty_arm_has_no_rates() -> None:
    stats = ArmStats()
    assert stats.error_rate is None
    assert stats.truncated_share is None
    assert stats.quantile(0.95) is None
    assert stats.to_fields() == {}


def test_flat_fields_round_trip_with_feedback_and_fractional_sums() -> None:
    stats = sample_arm()
    fields = stats.to_fields()

    # Only non-zero counters travel; the fractional sums survive as they are.
    assert all(value != 0 for value in fields.values())
    assert fields["fb:rating:s"] == pytest.approx(0.3 + 0.7 - 1.25)
    assert ArmStats.from_fields(fields) == stats
    # Redis hands values back as strings (or bytes decoded to strings): same result.
    as_text: dict[str, Any] = {k: repr(v) for k, v in fields.items()}
    assert ArmStats.from_fields(as_text) == stats


def test_from_fields_skips_what_it_does_not_know() -> None:
    fields = {**sample_arm().to_fields(), "lat:9999": 3.0, "lat:x": 1.0, "future": 4.0}
    assert ArmStats.from_fields(fields) == sample_arm()


def test_merge_equals_counting_everything_in_one_arm() -> None:
    half = len(CALLS) // 2
    first = add_calls(ArmStats(), CALLS[:half])
    second = add_calls(ArmStats(), CALLS[half:])
    first.add_feedback("rating", 0.25)
    second.add_feedback("rating", 0.5)
    second.add_feedback("thumbs_up", 1.0)

    first.merge(second)

    whole = add_calls(ArmStats(), CALLS)
    whole.add_feedback("rating", 0.25)
    whole.add_feedback("rating", 0.5)
    whole.add_feedback("thumbs_up", 1.0)
    assert first == whole
    # Merging does not alias the other arm's containers.
    second.add_feedback("rating", 100.0)
    second.latency[0] = second.latency.get(0, 0) + 50
    assert first == whole


def test_merge_arms_adds_up_per_arm() -> None:
    a = {"stable": add_calls(ArmStats(), CALLS[:2]), "canary": add_calls(ArmStats(), CALLS[2:3])}
    b = {"stable": add_calls(ArmStats(), CALLS[2:]), "shadow": add_calls(ArmStats(), CALLS[:1])}

    total = merge_arms([a, b])

    assert total["stable"] == add_calls(ArmStats(), CALLS)
    assert total["canary"].requests == 1
    assert total["shadow"].requests == 1


# -- latency bins ----------------------------------------------------------------------------


def test_latency_bins_are_monotone_and_within_ten_percent() -> None:
    values = sorted(10 ** random.Random(7).uniform(-3, 2.7) for _ in range(5000))
    bins = [latency_bin(v) for v in values]

    assert bins == sorted(bins)
    for value, b in zip(values, bins, strict=True):
        upper = LATENCY_BOUNDS[b]
        lower = LATENCY_BOUNDS[b - 1] if b else 0.0
        assert lower < value <= upper * (1 + 1e-12), (value, b)
        assert upper / value <= 1.1 + 1e-9


def test_every_bound_falls_in_its_own_bin_and_extremes_are_clamped() -> None:
    for i, bound in enumerate(LATENCY_BOUNDS):
        assert latency_bin(bound) == i
    assert latency_bin(0.0) == 0
    assert latency_bin(0.0005) == 0
    assert latency_bin(3600.0) == len(LATENCY_BOUNDS) - 1
    assert LATENCY_BOUNDS[-1] > 600  # ten minutes fit


@pytest.mark.parametrize(
    ("mu", "sigma"), [(math.log(0.8), 0.5), (math.log(0.05), 1.0), (math.log(20.0), 0.3)]
)
def test_p95_of_a_lognormal_read_off_the_bins_is_within_ten_percent(
    mu: float, sigma: float
) -> None:
    rng = random.Random(11)
    values = [rng.lognormvariate(mu, sigma) for _ in range(20_000)]
    stats = ArmStats()
    for v in values:
        stats.add_call(failed=False, duration=v, ttft=v / 4, output_tokens=None, finish_reason=None)

    for q in (0.5, 0.95, 0.99):
        exact = sorted(values)[int(q * len(values))]
        assert stats.quantile(q) == pytest.approx(exact, rel=0.10)
        assert stats.quantile(q, "ttft") == pytest.approx(exact / 4, rel=0.10)
    # And against the distribution itself: p95 = exp(mu + 1.645 sigma).
    assert stats.quantile(0.95) == pytest.approx(math.exp(mu + 1.6449 * sigma), rel=0.10)


# -- WindowRecorder --------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def observe(recorder: WindowRecorder, arm: str, *, failed: bool = False, slug: str = "s") -> None:
    recorder.observe_call(
        slug,
        "r1",
        arm,
        failed=failed,
        duration=0.5,
        ttft=None,
        output_tokens=10,
        finish_reason="stop",
    )


def test_the_recorder_counts_per_rollout_slot_and_arm_and_drain_empties_it() -> None:
    clock = FakeClock(1000.2)
    recorder = WindowRecorder(clock)
    observe(recorder, "stable")
    observe(recorder, "canary", failed=True)
    clock.now = 1000.9  # same one-second slot
    observe(recorder, "stable")
    clock.now = 1003.0
    observe(recorder, "stable")
    recorder.observe_feedback("s", "r1", "canary", "rating", 0.5)
    observe(recorder, "stable", slug="other")
    recorder.observe_divergence("s", "r1", True, divergence(0.1))
    recorder.observe_divergence("s", "r1", False, divergence(0.6))

    batches = recorder.drain()

    assert set(batches) == {("s", "r1"), ("other", "r1")}
    batch = batches[("s", "r1")]
    assert sorted(batch.slots) == [1000, 1003]
    assert batch.slots[1000]["stable"].requests == 2
    assert batch.slots[1000]["canary"].errors == 1
    assert batch.slots[1003]["stable"].requests == 1
    assert batch.slots[1003]["canary"].feedback["rating"].n == 1
    assert batch.noise.total("text_distance") == 1
    # Bins are 1/50 wide and read back as i/49: within 0.02 of the value.
    assert batch.candidate.mean("text_distance") == pytest.approx(0.6, abs=0.02)
    assert recorder.drain() == {}


def test_restore_puts_back_recent_slots_and_divergence_and_drops_old_slots() -> None:
    clock = FakeClock(100.0)
    recorder = WindowRecorder(clock)
    for now in (100.0, 101.0, 105.0):
        clock.now = now
        observe(recorder, "stable")
    clock.now = 100.0
    observe(recorder, "stable", slug="old-only")
    recorder.observe_divergence("div-only", "r1", False, divergence(0.3))
    failed_flush = recorder.drain()

    # Meanwhile the replica keeps counting.
    clock.now = 105.5
    observe(recorder, "canary")
    recorder.restore(failed_flush, oldest_slot=101)

    again = recorder.drain()
    assert ("old-only", "r1") not in again  # nothing left worth keeping
    batch = again[("s", "r1")]
    assert sorted(batch.slots) == [101, 105]
    assert batch.slots[105]["stable"].requests == 1
    assert batch.slots[105]["canary"].requests == 1
    # Divergence counts are cumulative, not slotted: never too old to keep.
    assert again[("div-only", "r1")].candidate.total("text_distance") == 1
    assert again[("div-only", "r1")].slots == {}


# -- RolloutBatch ----------------------------------------------------------------------------


def test_rollout_batch_merge_adds_slots_arms_and_divergence_without_aliasing() -> None:
    a = RolloutBatch()
    add_calls(a.arm(10, "stable"), CALLS[:2])
    a.noise.add(divergence(0.1))
    b = RolloutBatch()
    add_calls(b.arm(10, "stable"), CALLS[2:])
    add_calls(b.arm(11, "canary"), CALLS[:1])
    b.noise.add(divergence(0.2))
    b.candidate.add(divergence(0.9))

    a.merge(b)

    assert a.slots[10]["stable"] == add_calls(ArmStats(), CALLS)
    assert a.slots[11]["canary"].requests == 1
    assert a.noise.total("text_distance") == 2
    assert a.candidate.total("text_distance") == 1
    # b is unchanged and shares nothing with a.
    add_calls(b.arm(11, "canary"), CALLS)
    b.candidate.add(divergence(0.9))
    assert a.slots[11]["canary"].requests == 1
    assert a.candidate.total("text_distance") == 1
    assert b.slots[10]["stable"] == add_calls(ArmStats(), CALLS[2:])


def test_an_empty_batch_is_empty_until_anything_is_counted() -> None:
    assert RolloutBatch().empty
    with_divergence = RolloutBatch()
    with_divergence.candidate.add(divergence(0.5))
    assert not with_divergence.empty
    with_slot = RolloutBatch()
    with_slot.arm(3, "stable")
    assert not with_slot.empty


# -- MemoryStatsPool -------------------------------------------------------------------------


def batch_with(
    slots: dict[int, dict[str, int]], noise: int = 0, candidate: int = 0
) -> RolloutBatch:
    batch = RolloutBatch()
    for slot, arms in slots.items():
        for arm, count in arms.items():
            for _ in range(count):
                batch.arm(slot, arm).add_call(
                    failed=False,
                    duration=0.3,
                    ttft=None,
                    output_tokens=5,
                    finish_reason="stop",
                )
    for _ in range(noise):
        batch.noise.add(divergence(0.1))
    for _ in range(candidate):
        batch.candidate.add(divergence(0.5))
    return batch


async def test_the_memory_pool_reads_a_window_of_slots_and_divergence_so_far() -> None:
    pool = MemoryStatsPool()
    key = ("s", "r1")
    # Two replicas flush, then flush again later.
    await pool.add({key: batch_with({99: {"stable": 5}, 100: {"stable": 1, "canary": 2}})}, 60)
    await pool.add({key: batch_with({100: {"stable": 3}, 104: {"canary": 4}}, noise=2)}, 60)
    await pool.add(
        {
            key: batch_with({105: {"stable": 7}}, candidate=3),
            ("s", "r0"): batch_with({100: {"stable": 50}}),
        },
        60,
    )

    # [100, 105): slots 100..104; 99 and 105 are outside, as is the other rollout.
    window = await pool.read("s", "r1", 100.0, 105.0)
    assert window.arm("stable").requests == 4
    assert window.arm("canary").requests == 6
    assert window.arm("shadow").requests == 0  # absent arms read as empty
    # Fractional bounds cover the slots they touch from the start, up to the end's slot.
    assert (await pool.read("s", "r1", 99.5, 100.5)).arm("stable").requests == 5
    # Divergence is cumulative over the rollout, whatever the window.
    empty = await pool.read("s", "r1", 0.0, 10.0)
    assert empty.arms == {}
    assert empty.noise.total("text_distance") == 2
    assert empty.candidate.total("text_distance") == 3
    assert (await pool.read("s", "unknown", 0.0, 200.0)).arms == {}


async def test_the_memory_pool_drops_slots_older_than_the_longest_window_and_ended_rollouts() -> (
    None
):
    pool = MemoryStatsPool()
    key = ("s", "r1")
    await pool.add({key: batch_with({1000: {"stable": 1}})}, keep_seconds=10)
    await pool.add({key: batch_with({2000: {"stable": 1}})}, keep_seconds=10)

    assert (await pool.read("s", "r1", 0, 3000)).arm("stable").requests == 1
    pool.forget(set())
    assert (await pool.read("s", "r1", 0, 3000)).arms == {}


async def test_the_memory_pool_keeps_an_ended_rollout_as_long_as_redis_would() -> None:
    """Its charts still show what happened after an abort, then it is gone: a slot ages out
    ``keep_seconds`` + 120 s after it was counted, as a Redis key or PostgreSQL row does."""
    now = [2000.0]
    pool = MemoryStatsPool(lambda: now[0])
    key = ("s", "r1")
    await pool.add({key: batch_with({2000: {"stable": 3}})}, keep_seconds=900)

    pool.forget(set())  # ended
    assert len(await pool.read_buckets("s", "r1", 0, 3000)) == 1
    now[0] = 2000.0 + 900 + 120
    pool.forget({key})  # still running: kept, however old
    assert (await pool.read("s", "r1", 0, 3000)).arm("stable").requests == 3
    pool.forget(set())
    assert (await pool.read("s", "r1", 0, 3000)).arm("stable").requests == 3
    now[0] += 1
    pool.forget(set())
    assert await pool.read_buckets("s", "r1", 0, 3000) == {}


# -- divergence bins -------------------------------------------------------------------------


def test_a_divergence_mean_is_within_the_documented_hundredth() -> None:
    for value in (0.0, 0.25, 0.6, 0.98, 1.0):
        counts = DivergenceCounts.of([divergence(value)])
        mean = counts.mean("text_distance")
        assert mean is not None
        assert abs(mean - value) <= 0.01, (value, mean)


# -- tiers ------------------------------------------------------------------------------------


def exchange(arm: str, tier: str | None, *, shadow_kind: str | None = None) -> Exchange:
    return Exchange(
        request_id="req-1",
        method="POST",
        route=Route.CHAT,
        started=0.0,
        key=PromptKey("support"),
        version="2",
        arm=arm,
        tier=tier,
        status=200,
        duration=0.4,
        output_tokens=12,
        finish_reason="length",
        rollout_id="ro-1",
        pair_id=None if shadow_kind is None else "req-1",
        shadow_kind=shadow_kind,
    )


def counted(recorder: WindowRecorder) -> dict[str, int]:
    (batch,) = recorder.drain().values()
    (arms,) = batch.slots.values()
    return {arm: stats.requests for arm, stats in arms.items()}


def test_a_tenant_with_a_tier_is_counted_under_its_arm_and_its_tier_arm() -> None:
    recorder = WindowRecorder(FakeClock(50.0), tiers=("free", "pro", "enterprise"))
    recorder.finished(exchange("canary", "enterprise"))
    recorder.finished(exchange("canary", "enterprise"))
    recorder.finished(exchange("stable", "free"))
    recorder.finished(exchange("stable", None))  # no tenant, or one without a tier
    recorder.finished(exchange("stable", ""))

    arms = counted(recorder)

    assert arms == {"canary": 2, "canary@enterprise": 2, "stable": 3, "stable@free": 1}
    assert split_tier_arm("canary@enterprise") == ("canary", "enterprise")
    assert split_tier_arm("canary") == ("canary", None)


def test_shadow_calls_count_per_tier_but_stable_reruns_do_not() -> None:
    recorder = WindowRecorder(FakeClock(50.0))
    recorder.finished(exchange("shadow", "pro", shadow_kind="candidate"))
    recorder.finished(exchange("shadow", "pro", shadow_kind="stable"))

    # Reruns feed the noise calibration of the whole; nothing judges them per tier.
    assert counted(recorder) == {"shadow": 1, "shadow@pro": 1, "rerun": 1}


def test_a_tier_the_config_does_not_list_counts_in_the_whole_only() -> None:
    recorder = WindowRecorder(FakeClock(50.0), tiers=("free", "pro"))
    recorder.finished(exchange("canary", "platinum"))  # a tenant record older than the config

    assert counted(recorder) == {"canary": 1}


async def test_tier_arms_travel_through_the_pools_flat_forms() -> None:
    recorder = WindowRecorder(FakeClock(50.0))
    recorder.finished(exchange("canary", "enterprise"))
    batches = recorder.drain()
    (batch,) = batches.values()
    stats = batch.slots[50]["canary@enterprise"]

    # Redis: one hash field per arm and counter, split on the first `|`.
    fields = {f"canary@enterprise|{name}": value for name, value in stats.to_fields().items()}
    assert _split(fields)["canary@enterprise"].truncated == 1
    # In memory.
    pool = MemoryStatsPool()
    await pool.add(batches, keep_seconds=60)
    window = await pool.read(PromptKey("support"), "ro-1", 50, 51)
    assert window.arm("canary@enterprise").requests == 1
    assert window.arm("canary").requests == 1
