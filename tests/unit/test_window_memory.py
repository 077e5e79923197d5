"""What the analysis window costs (docs/operations.md, "Memory"): counters bounded by their
bins, never by the number of requests; per second and arm about a kilobyte.

Byte bounds are measured on CPython 3.11 and pass with room; each fails at twice the
measured cost."""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from proxy.analysis.pool import MemoryStatsPool
from proxy.analysis.window import LATENCY_BOUNDS, ArmStats, WindowRecorder
from proxy.prompt_key import PromptKey

KEY = PromptKey("support")
START = 1_000_000.0


@contextmanager
def traced() -> Iterator[Callable[[], int]]:
    gc.collect()
    tracemalloc.start()
    # Only what the window's own code allocated: in a full test run other threads (and
    # finalizers of earlier tests' objects) allocate meanwhile too, and were counted.
    window_code = [tracemalloc.Filter(True, "*/proxy/analysis/*")]

    def held() -> int:
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(window_code)
        return sum(stat.size for stat in snapshot.statistics("filename"))

    try:
        yield held
    finally:
        tracemalloc.stop()


def call(stats: ArmStats, duration: float, stream: bool = False) -> None:
    stats.add_call(
        failed=False,
        duration=duration,
        ttft=duration / 3 if stream else None,
        output_tokens=200,
        finish_reason="stop",
    )


def test_an_arm_with_every_bin_filled_stays_under_28_kib() -> None:
    """The most one arm of one second can cost, whatever the traffic (measured 19.6 KiB)."""
    with traced() as held:
        stats = ArmStats()
        for i, bound in enumerate(LATENCY_BOUNDS):
            for _ in range(300):  # counts past the small-int cache
                call(stats, bound * 0.99, stream=True)
            stats.add_feedback(f"name-{i % 5}", 1.0)
        size = held()
    assert len(stats.latency) == len(LATENCY_BOUNDS)
    assert size < 28 * 1024, size


def test_an_arm_does_not_grow_with_the_number_of_requests() -> None:
    """Each bin is one int: past the small-int cache (256) it stays 28 bytes up to 2**30."""
    durations = [0.05 * 1.1**i for i in range(20)]
    with traced() as held:
        stats = ArmStats()
        for i in range(6_000):
            call(stats, durations[i % 20], stream=True)
            stats.add_feedback("thumbs_up", 1.0)
        after_6k = held()
        for i in range(100_000):
            call(stats, durations[i % 20], stream=True)
            stats.add_feedback("thumbs_up", 1.0)
        after_106k = held()
    assert stats.requests == 106_000
    assert after_6k > 1000, after_6k  # the bins themselves are counted
    assert after_106k - after_6k < 64, (after_6k, after_106k)


def record(recorder: WindowRecorder, clock: list[float], rng: random.Random, rps: int) -> None:
    """One second of traffic split over stable and canary, latencies around 300 ms."""
    second = clock[0]
    for i in range(rps):
        clock[0] = second + i / rps
        recorder.observe_call(
            KEY,
            "ro-1",
            "canary" if i % 2 else "stable",
            failed=False,
            duration=rng.lognormvariate(-1.2, 0.5),
            ttft=None,
            output_tokens=200,
            finish_reason="stop",
        )
    clock[0] = second + 1


async def test_the_memory_pool_holds_about_a_kilobyte_per_second_and_arm() -> None:
    """The embedded store keeps `interval + 120` one-second slots per rollout: the window's
    cost grows with time up to that, never with requests (measured about 1.2 KiB per slot
    and arm at 100 requests/s)."""
    interval = 60
    rng = random.Random(7)
    clock = [START]
    recorder = WindowRecorder(lambda: clock[0])
    with traced() as held:
        pool = MemoryStatsPool()
        for second in range(interval + 120 + 60):
            record(recorder, clock, rng, rps=100)
            if second % 2:
                await pool.add(recorder.drain(), keep_seconds=interval)
        size = held()
    held_slots = interval + 120 + 1
    window = await pool.read(KEY, "ro-1", START, clock[0])
    assert window.arm("stable").requests == 50 * held_slots
    per_slot_and_arm = size / (held_slots * 2)
    assert per_slot_and_arm < 2400, f"{per_slot_and_arm:.0f} bytes per slot and arm"


def test_a_drained_recorder_holds_nothing() -> None:
    rng = random.Random(7)
    clock = [START]
    recorder = WindowRecorder(lambda: clock[0])
    with traced() as held:
        for _ in range(2):
            record(recorder, clock, rng, rps=1000)
        assert held() > 2048
        batches = recorder.drain()
        assert batches
        del batches
        assert held() < 512
