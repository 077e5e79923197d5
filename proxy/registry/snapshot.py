"""The in-process registry snapshot the request path reads, and the task that refreshes it.

The request path never waits on the store: it reads ``SnapshotHolder.current``, a frozen
value replaced whole. ``SnapshotRefresher`` waits for the store to report a change
(notification, with polling as the fallback), loads a new snapshot and swaps it in. When the
store is unreachable the last good snapshot keeps serving; a snapshot that suddenly reads
empty never replaces a non-empty one (a FLUSHALL or a wrong database must not wipe prompts).
A store that reads as another registry than the one served (``StoreReplaced``: emptied,
replaced, put back to an older copy; see ``identity``) is not applied either: the holder
records it in ``replaced`` (readiness and a metric report it) until a read finds the served
registry again, after an operator's restore.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from proxy.log import APP_LOGGER
from proxy.registry.composition import carry_over
from proxy.registry.models import RegistrySnapshot
from proxy.registry.store import PromptStore, StoreReplaced, StoreUnavailable

_log = logging.getLogger(APP_LOGGER)

EMPTY = RegistrySnapshot(revision=0, versions={}, prod={})


class SnapshotHolder:
    """What the hot path reads. Replaced whole, never mutated."""

    __slots__ = (
        "_on_apply",
        "bootstrap_pending",
        "confirmed_at",
        "current",
        "last_error",
        "loaded",
        "replaced",
    )

    def __init__(self, on_apply: Callable[[RegistrySnapshot], None] | None = None) -> None:
        self.current: RegistrySnapshot = EMPTY
        self.loaded = False
        #: monotonic time the snapshot was last known to match the store
        self.confirmed_at = time.monotonic()
        self.last_error: str | None = None
        #: Why the store is not the registry being served (None while it is).
        self.replaced: str | None = None
        #: A bootstrap deferred by a cold start has not finished: its writes already load
        #: snapshots here (read your writes), but a prompt pushed and not yet promoted has
        #: no prod version, so the replica must not take traffic before the bootstrap ends.
        self.bootstrap_pending = False
        self._on_apply = on_apply

    def apply(self, snapshot: RegistrySnapshot) -> bool:
        """Swap in ``snapshot``; refuse an empty one over a non-empty one."""
        if snapshot.empty and not self.current.empty:
            _log.warning(
                "registry read empty at revision %d; keeping the last good snapshot (revision %d)",
                snapshot.revision,
                self.current.revision,
            )
            return False
        carry_over(self.current, snapshot)
        self.current = snapshot
        self.loaded = True
        self.confirm()
        if self._on_apply is not None:
            self._on_apply(snapshot)
        return True

    def confirm(self) -> None:
        self.confirmed_at = time.monotonic()
        self.last_error = None

    @property
    def staleness(self) -> float:
        return time.monotonic() - self.confirmed_at

    @property
    def healthy(self) -> bool:
        return self.last_error is None

    @property
    def ready(self) -> bool:
        """A snapshot is loaded and no deferred bootstrap is still writing into it."""
        return self.loaded and not self.bootstrap_pending


class SnapshotRefresher:
    """Keeps a ``SnapshotHolder`` in step with the store until cancelled."""

    def __init__(
        self,
        store: PromptStore,
        holder: SnapshotHolder,
        *,
        max_wait: float = 1.0,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._holder = holder
        self._max_wait = max_wait
        self._on_error = on_error
        #: Last revision read from the store, applied or refused. Waiting on the served
        #: snapshot's revision instead would spin after a refused (empty) read.
        self._seen_revision = -1
        #: Held from a snapshot read to its apply. The loop and ``serve`` (after an admin
        #: write) both load; unserialized, a read started before a write could be applied
        #: after one that includes it, and the process would serve the older state again.
        self._loading = asyncio.Lock()

    async def load_once(self) -> bool:
        """Load a snapshot now; False (and the holder marked stale) if the store failed."""
        return await self._load_reporting()

    async def serve(self, revision: int) -> bool:
        """Make the holder serve ``revision`` (or a later one) now, loading if it does not
        yet: True once it does, False if the store failed or the read was refused."""
        if self._holder.current.revision >= revision:
            return True
        # After a write that worked: a failed read is reported, never raised.
        await self._load_reporting(unless_at=revision)
        return self._holder.current.revision >= revision

    async def _load_reporting(self, unless_at: int | None = None) -> bool:
        """Load and apply (unless the holder already serves ``unless_at``); a store failure
        or a refused read is recorded on the holder and returns False."""
        try:
            async with self._loading:
                if unless_at is None or self._holder.current.revision < unless_at:
                    self._apply(await self._store.snapshot())
        except StoreUnavailable as exc:
            self._failed("snapshot", exc)
            return False
        except StoreReplaced as exc:
            self._lost(exc)
            return False
        return True

    async def _load(self) -> None:
        async with self._loading:
            self._apply(await self._store.snapshot())

    def _apply(self, snapshot: RegistrySnapshot) -> None:
        self._seen_revision = snapshot.revision
        if self._holder.replaced is not None:
            _log.warning("registry store holds the served registry again (restored)")
            self._holder.replaced = None
        if not self._holder.apply(snapshot):
            self._holder.confirm()  # we did reach the store; the refusal is logged

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                if not self._holder.loaded and not await self.load_once():
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                known = self._seen_revision
                revision = await self._store.wait_for_change(known, self._max_wait)
                # ``serve`` may have loaded it meanwhile; then there is nothing to do.
                if revision != self._seen_revision:
                    await self._load()
                else:
                    self._holder.confirm()
                backoff = 0.1
            except StoreUnavailable as exc:
                self._failed("refresh", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except StoreReplaced as exc:
                # Reachable, but not the registry we serve: keep serving, say so, and look
                # again (a restore brings it back). Not confirmed, so staleness grows.
                self._lost(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as exc:
                # A client-library bug must not end this loop: a replica whose refresher
                # died would serve its old snapshot forever and ignore every rollback.
                _log.exception("registry refresher hit an unexpected error; retrying")
                self._failed("refresh", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _lost(self, exc: StoreReplaced) -> None:
        message = str(exc)
        if self._holder.replaced != message:
            _log.error(
                "registry store lost: %s; serving the last good snapshot (revision %d), admin "
                "writes refused until an operator restores it (docs/operations.md)",
                message,
                self._holder.current.revision,
            )
        self._holder.replaced = message
        self._holder.last_error = None  # the store answers; what is wrong is ``replaced``

    def _failed(self, op: str, exc: Exception) -> None:
        message = str(exc) or type(exc).__name__
        if self._holder.last_error != message:
            _log.warning("registry %s failed, serving the last good snapshot: %s", op, message)
        self._holder.last_error = message
        if self._on_error is not None:
            self._on_error(op)
