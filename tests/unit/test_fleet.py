"""Waiting for the fleet: who was live when a change was written, who confirmed, who did not
(fake board and clock; the boards themselves are tested in tests/registry/test_fleet_boards.py)."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from proxy.cli.served import describe_served
from proxy.registry.fleet import BoardRead, Fleet, FleetError, FleetWait, ReplicaBeat, ReplicaView
from proxy.web import admin_models as api


def served(result: FleetWait) -> api.Served:
    """What a write answers once it waited for ``result``."""
    return api.Served.model_validate({"revision": 2, "here": True, "fleet": result.to_dict()})


def beat(name: str, revision: int) -> ReplicaBeat:
    return ReplicaBeat(name, "host", 1, "0.1.0", revision, 100.0, 0.2, True, "g1", "ok", 2)


class FakeBoard:
    """Replicas whose served revision moves as (fake) time passes."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        #: name -> (revision before, time it reaches the new one or None, new revision,
        #:          time of its last heartbeat or None for "beats now")
        self.replicas: dict[str, tuple[int, float | None, int, float | None]] = {}
        self.failing = False
        self.gone_at: dict[str, float] = {}

    def add(
        self,
        name: str,
        *,
        old: int = 1,
        new: int = 2,
        at: float | None = None,
        last_beat: float | None = None,
    ) -> None:
        self.replicas[name] = (old, at, new, last_beat)

    async def read(self) -> BoardRead:
        if self.failing:
            raise FleetError("board down")
        t = self.now()
        entries = []
        for name, (old, at, new, last_beat) in self.replicas.items():
            if name in self.gone_at and t >= self.gone_at[name]:
                continue
            revision = new if at is not None and t >= at else old
            entries.append((beat(name, revision), t if last_beat is None else last_beat))
        return BoardRead(t, entries)

    async def publish(self, b: ReplicaBeat) -> None:
        raise NotImplementedError

    async def remove(self, replica: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def board(clock: Clock) -> FakeBoard:
    return FakeBoard(clock)


def fleet(board: FakeBoard, clock: Clock, me: str = "a") -> Fleet:
    return Fleet(board, me, live_seconds=5.0, poll_seconds=0.01, clock=clock, sleep=clock.sleep)


async def test_waits_until_every_live_replica_serves_the_revision(
    board: FakeBoard, clock: Clock
) -> None:
    board.add("a", at=0.0)
    board.add("b", at=0.03)
    board.add("c", at=0.041)
    result = await fleet(board, clock).wait(2, 5.0, here=True)
    assert result.complete
    assert (len(result.confirmed), len(result.replicas)) == (3, 3)
    assert 0.041 <= result.elapsed < 0.06
    line, warnings = describe_served("v2", served(result))
    assert line == [f"v2 served by 3/3 replicas after {round(result.elapsed * 1000)} ms"]
    assert warnings == []


async def test_a_replica_that_does_not_confirm_is_named_after_the_timeout(
    board: FakeBoard, clock: Clock
) -> None:
    board.add("a", at=0.0)
    board.add("b", at=0.02)
    board.add("frozen", last_beat=-1.5)  # live (beat 1.5 s ago) but stuck on revision 1
    result = await fleet(board, clock).wait(2, 2.0, here=True)
    assert not result.complete
    assert result.confirmed == ("a", "b")
    assert [name for name, _ in result.missing] == ["frozen"]
    assert result.elapsed == pytest.approx(2.0)
    (line,), _ = describe_served("v2", served(result))
    assert line.startswith("v2 served by 2/3 replicas after 2000 ms; not confirmed within 2 s:")
    assert "frozen (serves revision 1, last heartbeat 3.5 s ago)" in line


async def test_replicas_not_live_when_the_change_was_written_are_not_waited_for(
    board: FakeBoard, clock: Clock
) -> None:
    board.add("a", at=0.0)
    board.add("dead", last_beat=-60.0)  # gone a minute ago, still on the board
    result = await fleet(board, clock).wait(2, 1.0, here=True)
    assert result.complete
    assert result.replicas == ("a",)
    assert result.elapsed == 0.0


async def test_a_replica_that_leaves_the_board_is_not_waited_for(
    board: FakeBoard, clock: Clock
) -> None:
    board.add("a", at=0.0)
    board.add("leaving")  # never serves 2, but shuts down cleanly at 0.1 s
    board.gone_at["leaving"] = 0.1
    result = await fleet(board, clock).wait(2, 5.0, here=True)
    assert result.complete
    assert result.replicas == ("a",)
    assert result.elapsed < 0.2


async def test_this_process_counts_from_what_it_knows_not_from_its_heartbeat(
    board: FakeBoard, clock: Clock
) -> None:
    board.add("a")  # its own heartbeat still says revision 1
    result = await fleet(board, clock).wait(2, 1.0, here=True)
    assert result.complete
    assert result.confirmed == ("a",)
    # Not serving it here (the store read failed after the write): its heartbeat decides.
    board.add("a", at=0.25)
    result = await fleet(board, clock).wait(2, 1.0, here=False)
    assert result.complete
    assert result.elapsed >= 0.25


async def test_a_board_that_cannot_be_read_is_reported_not_raised(
    board: FakeBoard, clock: Clock
) -> None:
    board.failing = True
    result = await fleet(board, clock).wait(2, 1.0, here=True)
    assert not result.complete
    assert result.error == "board down"
    out, warnings = describe_served("v2", served(result))
    assert out == []
    assert warnings == ["warning: could not check the replicas: board down"]


async def test_replicas_lists_every_entry_with_its_age_and_liveness(
    board: FakeBoard, clock: Clock
) -> None:
    clock.t = 10.0
    board.add("b", last_beat=9.0)
    board.add("a", last_beat=2.0)
    views = await fleet(board, clock).replicas()
    assert [(v.replica, v.age, v.live) for v in views] == [("a", 8.0, False), ("b", 1.0, True)]
    row = views[1].to_dict(store_revision=4, me="b", store_generation="g1")
    assert (row["behind"], row["this"], row["staleness_seconds"]) == (3, True, 1.2)


def test_a_process_that_does_not_serve_its_own_write_says_so() -> None:
    out, warnings = describe_served(
        "v2", api.Served.model_validate({"revision": 7, "here": False, "fleet": None})
    )
    assert out == []
    assert "does not serve this change yet" in warnings[0]


def test_beats_survive_a_round_trip_and_junk_is_ignored() -> None:
    b = beat("host:1:abc", 12)
    assert ReplicaBeat.from_json(b.to_json()) == b
    assert ReplicaBeat.from_json(b"{}") is None
    assert ReplicaBeat.from_json(b"not json") is None


async def test_this_replicas_row_shows_what_it_serves_now(board: FakeBoard, clock: Clock) -> None:
    clock.t = 10.0
    board.add("a", last_beat=9.5)  # its last heartbeat said revision 1
    board.add("b", last_beat=9.5)
    local = ReplicaBeat("a", "host", 1, "0.1.0", 2, 100.0, 0.1, True)
    listed = Fleet(board, "a", live_seconds=5.0, local=lambda: local, clock=clock)
    mine, theirs = await listed.replicas()
    assert (mine.beat.revision, mine.staleness) == (2, 0.1)
    assert (theirs.beat.revision, theirs.staleness) == (1, 0.7)  # 0.2 at the beat + 0.5 since


async def test_this_replica_is_listed_before_its_first_beat_reaches_the_board(
    board: FakeBoard, clock: Clock
) -> None:
    # Just started (or its board write failed): the process answering is live all the same.
    board.add("b", last_beat=0.0)
    local = ReplicaBeat("a", "host", 1, "0.1.0", 3, 100.0, 0.0, True)
    listed = Fleet(board, "a", live_seconds=5.0, local=lambda: local, clock=clock)
    mine, theirs = await listed.replicas()
    assert (mine.replica, mine.live, mine.beat.revision) == ("a", True, 3)
    assert theirs.replica == "b"


def _view(b: ReplicaBeat) -> ReplicaView:
    return ReplicaView(b, age=0.5, live=True, staleness=0.5)


def test_behind_counts_only_within_the_generation_the_store_holds() -> None:
    serving = ReplicaBeat(
        "a", "host", 1, "0.1.0", 40, 100.0, 0.2, False, generation="g1", state="replaced"
    )
    # After a FLUSHALL the store holds no generation and sits at revision 0: revision 40 of
    # the lost registry is not "0 behind".
    flushed = _view(serving).to_dict(store_revision=0, store_generation=None)
    assert flushed["behind"] is None
    assert (flushed["state"], flushed["generation"], flushed["healthy"]) == (
        "replaced",
        "g1",
        False,
    )
    # Another registry started in the store meanwhile: its revision 3 compares with nothing.
    assert _view(serving).to_dict(store_revision=3, store_generation="g2")["behind"] is None
    same = ReplicaBeat("b", "host", 1, "0.1.0", 40, 100.0, 0.2, True, generation="g1")
    assert _view(same).to_dict(store_revision=43, store_generation="g1")["behind"] == 3


def test_a_beat_of_an_older_version_still_reads() -> None:
    old = orjson.loads(beat("a", 3).to_json())
    for key in ("generation", "state", "prompts"):
        del old[key]
    read = ReplicaBeat.from_json(orjson.dumps(old))
    assert read is not None
    assert (read.revision, read.generation, read.state) == (3, None, "ok")
