"""Where every replica stands: the registry revision each one serves, and waiting for a change
to reach them all.

Each replica's heartbeat (``fleet_heartbeat``) writes a ``ReplicaBeat`` into a board in the
shared store (``fleet_redis``, ``fleet_embedded``), stamped with the board's own clock so ages
compare across machines. ``Fleet`` reads the board: which replicas are live (a heartbeat within
``live_seconds``), what they serve, and ``wait`` polls it until every replica that was live
when a change was written serves a revision at least as new, or the timeout passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson


class FleetError(Exception):
    """The board could not be read or written (the shared store failed)."""


@dataclass(frozen=True, slots=True)
class ReplicaBeat:
    """What one replica reports about itself."""

    replica: str
    host: str
    pid: int
    version: str
    #: registry revision of the snapshot it serves
    revision: int
    #: wall time it started serving that revision (None before its first snapshot)
    served_at: float | None
    #: seconds since its snapshot was last known to match the store, at the heartbeat
    staleness: float
    #: whether its last store read worked and found the registry it serves
    healthy: bool
    #: the registry generation of the snapshot it serves (None: none loaded)
    generation: str | None = None
    #: ``ok``; ``replaced`` (the store no longer holds the registry it serves: lost);
    #: ``empty`` (it serves no prompt, e.g. no snapshot yet)
    state: str = "ok"
    #: prompts in the snapshot it serves
    prompts: int = 0

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "replica": self.replica,
                "host": self.host,
                "pid": self.pid,
                "version": self.version,
                "revision": self.revision,
                "served_at": self.served_at,
                "staleness": self.staleness,
                "healthy": self.healthy,
                "generation": self.generation,
                "state": self.state,
                "prompts": self.prompts,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> ReplicaBeat | None:
        """None for an entry that is not one (another version's, or damaged)."""
        try:
            data = orjson.loads(raw)
            return cls(
                replica=str(data["replica"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                version=str(data["version"]),
                revision=int(data["revision"]),
                served_at=None if data["served_at"] is None else float(data["served_at"]),
                staleness=float(data["staleness"]),
                healthy=bool(data["healthy"]),
                # Absent from a replica of an older version (a rolling upgrade).
                generation=None if data.get("generation") is None else str(data["generation"]),
                state=str(data.get("state", "ok")),
                prompts=int(data.get("prompts", 0)),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class BoardRead:
    #: the board's clock (seconds) when it was read
    now: float
    #: each entry with the board time of its last heartbeat
    entries: Sequence[tuple[ReplicaBeat, float]]


class FleetBoard(Protocol):
    async def publish(self, beat: ReplicaBeat) -> None: ...

    async def read(self) -> BoardRead: ...

    async def remove(self, replica: str) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ReplicaView:
    beat: ReplicaBeat
    #: seconds since its last heartbeat
    age: float
    live: bool
    #: seconds since its snapshot was last known to match the store, now
    staleness: float

    @property
    def replica(self) -> str:
        return self.beat.replica

    def to_dict(
        self,
        store_revision: int | None = None,
        me: str | None = None,
        store_generation: str | None = None,
    ) -> dict[str, Any]:
        """``behind`` only counts revisions of the generation the store holds: a revision of
        another registry (a lost one, or the store after a FLUSHALL) compares with nothing."""
        b = self.beat
        behind = None
        if (
            store_revision is not None
            and store_generation is not None
            and b.generation == store_generation
        ):
            behind = max(store_revision - b.revision, 0)
        return {
            "replica": b.replica,
            "host": b.host,
            "pid": b.pid,
            "version": b.version,
            "revision": b.revision,
            "generation": b.generation,
            "state": b.state,
            "prompts": b.prompts,
            "behind": behind,
            "served_at": b.served_at,
            "staleness_seconds": round(self.staleness, 3),
            "heartbeat_age_seconds": round(self.age, 3),
            "healthy": b.healthy,
            "live": self.live,
            "this": b.replica == me,
        }


@dataclass(frozen=True, slots=True)
class FleetWait:
    """How a change reached the replicas that were live when it was written."""

    revision: int
    #: replicas waited for
    replicas: tuple[str, ...]
    confirmed: tuple[str, ...]
    #: the ones that did not confirm in time, as last seen (None: never seen on the board)
    missing: tuple[tuple[str, ReplicaView | None], ...]
    #: seconds from the write to the last confirmation (or the timeout)
    elapsed: float
    timeout: float
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.error is None and not self.missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "replicas": len(self.replicas),
            "confirmed": len(self.confirmed),
            "complete": self.complete,
            "elapsed_ms": round(self.elapsed * 1000),
            "timeout_seconds": self.timeout,
            "missing": [
                {
                    "replica": name,
                    "revision": None if view is None else view.beat.revision,
                    "heartbeat_age_seconds": None if view is None else round(view.age, 3),
                }
                for name, view in self.missing
            ],
            "error": self.error,
        }


class Fleet:
    """Reads the board; ``me`` is this process's replica id, and ``local`` what its next
    heartbeat will say (its own row shows that, not the beat a few ms old)."""

    def __init__(
        self,
        board: FleetBoard,
        me: str,
        live_seconds: float,
        *,
        local: Callable[[], ReplicaBeat] | None = None,
        poll_seconds: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.board = board
        self.me = me
        self._live_seconds = live_seconds
        self._local = local
        self._poll = poll_seconds
        self._clock = clock
        self._sleep = sleep

    async def replicas(self) -> list[ReplicaView]:
        """Every replica on the board, live or not, by id."""
        read = await self.board.read()
        views = []
        for beat, beat_at in read.entries:
            age = max(read.now - beat_at, 0.0)
            staleness = beat.staleness + age
            if beat.replica == self.me and self._local is not None:
                beat = self._local()
                staleness = beat.staleness
            views.append(ReplicaView(beat, age, age <= self._live_seconds, staleness))
        if self._local is not None and all(v.replica != self.me for v in views):
            # This process answers, so it is live, whether or not its first beat has reached
            # the board yet (a fresh start, or a board write that failed).
            beat = self._local()
            views.append(ReplicaView(beat, 0.0, True, beat.staleness))
        return sorted(views, key=lambda v: v.replica)

    async def wait(
        self, revision: int, within: float, here: bool, started: float | None = None
    ) -> FleetWait:
        """Wait until every replica live now serves ``revision`` or later, at most
        ``within`` seconds from ``started`` (a ``clock`` reading taken before the write; by
        default now). ``here``: this process already serves it (known locally, so its own
        heartbeat need not be read back)."""
        if started is None:
            started = self._clock()
        try:
            views = {v.replica: v for v in await self.replicas()}
        except FleetError as exc:
            return FleetWait(revision, (), (), (), self._clock() - started, within, str(exc))
        waited = {name for name, view in views.items() if view.live} | {self.me}
        error: str | None = None
        while True:
            # A replica that left the board (a clean shutdown) serves nothing any more.
            waited = {name for name in waited if name in views or name == self.me}
            confirmed = {
                name
                for name in waited
                if (name == self.me and here)
                or (name in views and views[name].beat.revision >= revision)
            }
            elapsed = self._clock() - started
            if confirmed == waited or elapsed >= within:
                break
            await self._sleep(min(self._poll, within - elapsed))
            try:
                views = {v.replica: v for v in await self.replicas()}
                error = None
            except FleetError as exc:
                error = str(exc)  # keep the last good read; maybe the next one works
        missing = tuple((name, views.get(name)) for name in sorted(waited - confirmed))
        return FleetWait(
            revision,
            tuple(sorted(waited)),
            tuple(sorted(confirmed)),
            missing,
            elapsed,
            within,
            error if missing else None,
        )
