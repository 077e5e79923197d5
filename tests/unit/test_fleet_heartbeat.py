"""The heartbeat: written on every tick and at once after a new snapshot; failures counted,
not raised; off the board on a clean exit. And the fleet keys' validation."""

from __future__ import annotations

import asyncio

import pytest

from proxy.config import ConfigError
from proxy.prompt_key import PromptKey
from proxy.registry.fleet import BoardRead, FleetError, ReplicaBeat
from proxy.registry.fleet_heartbeat import AppliedSignal, Heartbeat
from proxy.registry.models import RegistrySnapshot
from proxy.registry.snapshot import SnapshotHolder
from tests.support import make_settings


class RecordingBoard:
    def __init__(self) -> None:
        self.beats: list[ReplicaBeat] = []
        self.removed: list[str] = []
        self.failing = False
        self.published = asyncio.Event()

    async def publish(self, beat: ReplicaBeat) -> None:
        if self.failing:
            raise FleetError("redis went away")
        self.beats.append(beat)
        self.published.set()

    async def read(self) -> BoardRead:
        return BoardRead(0.0, [])

    async def remove(self, replica: str) -> None:
        self.removed.append(replica)

    async def close(self) -> None:
        pass


async def test_a_new_snapshot_is_reported_at_once_not_on_the_next_tick() -> None:
    board = RecordingBoard()
    signal = AppliedSignal(clock=lambda: 1234.5)
    holder = SnapshotHolder(lambda s: signal.applied(s.revision))
    heartbeat = Heartbeat(board, "me", holder, signal, interval=60.0)
    task = asyncio.create_task(heartbeat.run())
    try:
        await asyncio.wait_for(board.published.wait(), 5)
        assert board.beats[-1].revision == 0
        board.published.clear()
        holder.apply(RegistrySnapshot(7, {PromptKey("p"): {}}, {}))
        await asyncio.wait_for(board.published.wait(), 5)  # far sooner than the 60 s tick
        beat = board.beats[-1]
        assert (beat.replica, beat.revision, beat.served_at) == ("me", 7, 1234.5)
    finally:
        task.cancel()
    await heartbeat.leave()
    assert board.removed == ["me"]


async def test_a_failing_board_is_counted_and_the_beat_goes_on() -> None:
    board = RecordingBoard()
    board.failing = True
    errors: list[None] = []
    holder = SnapshotHolder()
    heartbeat = Heartbeat(
        board, "me", holder, AppliedSignal(), 60.0, on_error=lambda: errors.append(None)
    )
    assert not await heartbeat.publish()
    assert not await heartbeat.publish()
    assert len(errors) == 2
    board.failing = False
    assert await heartbeat.publish()
    assert len(board.beats) == 1


def test_live_seconds_must_span_two_heartbeats() -> None:
    with pytest.raises(ConfigError, match="live_seconds"):
        make_settings(**{"fleet.heartbeat_seconds": 2, "fleet.live_seconds": 3})
    settings = make_settings(**{"fleet.heartbeat_seconds": 0.5, "fleet.live_seconds": 1})
    assert settings.config.fleet.live_seconds == 1


def test_a_replica_whose_store_was_lost_reports_it() -> None:
    holder = SnapshotHolder()
    heartbeat = Heartbeat(RecordingBoard(), "me", holder, AppliedSignal(), 60.0)
    assert (heartbeat.beat().state, heartbeat.beat().generation) == ("empty", None)
    holder.apply(RegistrySnapshot(7, {PromptKey("p"): {}, PromptKey("q"): {}}, {}, generation="g1"))
    beat = heartbeat.beat()
    assert (beat.state, beat.generation, beat.prompts, beat.healthy) == ("ok", "g1", 2, True)
    # What the refresher does on a FLUSHALL: the store answers (no last_error), but it is
    # not the registry served.
    holder.replaced = "the registry store holds no generation (emptied)"
    beat = heartbeat.beat()
    assert (beat.state, beat.generation, beat.prompts, beat.healthy) == (
        "replaced",
        "g1",
        2,
        False,
    )
