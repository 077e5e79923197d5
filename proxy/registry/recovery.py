"""Operator recovery of a lost registry store: restore it from this replica's snapshot, or
export and import the whole registry (``backup.RegistryImage``). Shared by the admin API
and, through it, the CLI.

The restore keeps the registry's generation, so every replica that served it accepts the
store again by itself (see ``identity``); numbers, hashes, statuses and rollouts come back
as they were, and numbering continues (version numbers never restart).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from proxy.errors import Conflict, ServiceUnavailable
from proxy.registry.backup import RegistryImage, RestoreRefused
from proxy.registry.fleet import Fleet, FleetError, ReplicaView
from proxy.registry.models import AuditEntry, PromptVersion, Status
from proxy.registry.safety_gate import refuse_import
from proxy.registry.service import store_errors
from proxy.registry.snapshot import SnapshotHolder
from proxy.registry.store import PromptStore, StoreReplaced
from proxy.safety import SafetyPolicy

_AUDIT_PAGE = 500
_EXPORT_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class RestoreResult:
    source: str
    generation: str
    revision: int
    prompts: int
    versions: int
    unchanged: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "generation": self.generation,
            "revision": self.revision,
            "prompts": self.prompts,
            "versions": self.versions,
            "unchanged": self.unchanged,
        }


class RegistryRecovery:
    def __init__(
        self,
        store: PromptStore,
        holder: SnapshotHolder,
        clock: Callable[[], float] = time.time,
        *,
        fleet: Fleet | None = None,
        serve: Callable[[int], Awaitable[bool]] | None = None,
        safety: SafetyPolicy | None = None,
    ) -> None:
        """``serve``: loads a revision here (``SnapshotRefresher.serve``), so a restore is
        served (and ``status`` says ok) as soon as it is answered. ``safety``: the policy
        an import's serving versions must pass (the built-in defaults unless given); a
        restore from a replica's snapshot puts back what served and is not checked."""
        self._safety = SafetyPolicy() if safety is None else safety
        self._store = store
        self._holder = holder
        self._clock = clock
        self._fleet = fleet
        self._serve = serve

    def status(self) -> dict[str, Any]:
        served = self._holder.current
        return {
            "state": "replaced" if self._holder.replaced is not None else "ok",
            "problem": self._holder.replaced,
            "generation": served.generation,
            "revision": served.revision,
            "prompts": len(served.versions),
        }

    async def restore_from_snapshot(
        self, actor: str, reason: str, *, overwrite: bool = False
    ) -> RestoreResult:
        """Write this replica's served snapshot into the store, which must be lost. A store
        holding prompts is refused unless it is an older copy of this registry, or
        ``overwrite`` (see ``backup.restore_keeps_audit``)."""
        if self._holder.replaced is None:
            raise Conflict(
                "The registry store is the registry this replica serves: there is nothing to "
                "restore (restoring would overwrite newer changes).",
                code="registry_not_lost",
            )
        served = self._holder.current
        if served.generation is None or (served.empty and not served.tenants):
            raise Conflict(
                "This replica has no snapshot of the registry to restore from: ask a replica "
                "that served it, or import an export file.",
                code="no_snapshot",
            )
        image = RegistryImage.from_snapshot(served)
        floor = await self._fleet_floor(served.generation, served.revision)
        note = reason or "the store was emptied or replaced"
        with store_errors(), _refusals():
            found = await self._store.generation()
            revision = await self._store.restore(
                image,
                found,
                floor,
                actor,
                f"restored from the snapshot of a replica (revision {served.revision}): {note}",
                self._clock(),
                overwrite=overwrite,
            )
        await self._serve_restored(revision)
        return _result("snapshot", image, revision)

    async def _fleet_floor(self, generation: str, revision: int) -> int:
        """The highest revision any replica on the fleet board served: the restore goes
        above it, so no revision number names two states. Refuses when a live replica of
        this registry served a newer one than this replica: restoring this older snapshot
        would hand out again the version numbers it has seen (restore from it instead)."""
        if self._fleet is None:
            return revision
        try:
            views = await self._fleet.replicas()
        except FleetError as exc:
            raise ServiceUnavailable(
                f"The fleet board cannot be read now ({exc}), so whether another replica "
                "served a newer snapshot cannot be checked; retry when it answers.",
                code="fleet_unavailable",
            ) from None
        fresher = sorted(
            (v for v in views if v.live and v.replica != self._fleet.me and _same(v, generation)),
            key=lambda v: -v.beat.revision,
        )
        if fresher and fresher[0].beat.revision > revision:
            best = fresher[0].beat
            raise Conflict(
                f"Replica {best.replica} serves a newer snapshot of this registry (revision "
                f"{best.revision}) than this one (revision {revision}): restoring this one "
                "would lose changes and reuse version numbers. Restore from that replica "
                "(--admin-url of it).",
                code="fresher_replica",
            )
        return max([revision, *(v.beat.revision for v in views)])

    async def _serve_restored(self, revision: int) -> None:
        if self._serve is not None:
            await self._serve(revision)  # never raises; the refresher catches up otherwise

    async def _board_floor(self, revision: int) -> int:
        """``revision`` or the highest on the fleet board (an import goes above every
        revision a replica served); without a readable board, ``revision``."""
        if self._fleet is None:
            return revision
        try:
            views = await self._fleet.replicas()
        except FleetError:
            return revision
        return max([revision, *(v.beat.revision for v in views)])

    async def export(self) -> RegistryImage:
        """The snapshot and the audit log of one revision: read both, then the revision
        again; a write in between (every write bumps it) means read again."""
        for _ in range(_EXPORT_ATTEMPTS):
            with store_errors(reading=True):
                snapshot = await self._store.snapshot()
                audit = await self._full_audit()
                if await self._store.revision() != snapshot.revision:
                    continue
            if snapshot.generation is None:
                raise Conflict(
                    "The registry store has never been written to: there is nothing to export.",
                    code="registry_empty",
                )
            return RegistryImage(
                snapshot.generation,
                snapshot.revision,
                snapshot.versions,
                snapshot.rollouts,
                tuple(reversed(audit)),
                snapshot.tenants,
            )
        raise ServiceUnavailable(
            f"The registry changed during each of {_EXPORT_ATTEMPTS} attempts to export it; "
            "retry when it is quieter.",
            code="registry_busy",
        )

    async def import_image(
        self, image: RegistryImage, actor: str, reason: str, *, overwrite: bool = False
    ) -> RestoreResult:
        """Write an export into an empty (or lost) store; the same content again is a no-op;
        a store holding other prompts is refused unless it is an older copy of this
        registry, or ``overwrite`` (see ``backup.restore_keeps_audit``)."""
        with store_errors(), _refusals():
            try:
                current = RegistryImage.from_snapshot(await self._store.snapshot())
            except StoreReplaced:
                current = None  # lost: the store decides below what it may overwrite
            except ValueError:
                current = None  # never initialised
            if current is not None and not current.empty:
                if current.content() == image.content():
                    return _result("file", image, current.revision, unchanged=True)
                if not overwrite:
                    raise Conflict(
                        f"The registry store already holds {len(current.versions)} prompts "
                        f"and {len(current.tenants)} tenants: an import only goes into an "
                        "empty store (or one holding the same content); pass overwrite "
                        "(`--overwrite`) to replace them.",
                        code="registry_not_empty",
                    )
            refuse_import(self._safety, _serving(image))
            self._refuse_reused_numbers(image)
            found = await self._store.generation()
            revision = await self._store.restore(
                image,
                found,
                await self._board_floor(self._holder.current.revision),
                actor,
                f"imported from an export (revision {image.revision})"
                + (f": {reason}" if reason else ""),
                self._clock(),
                overwrite=overwrite,
            )
        await self._serve_restored(revision)
        return _result("file", image, revision)

    def _refuse_reused_numbers(self, image: RegistryImage) -> None:
        """An export older than what this replica served would hand out again numbers that
        already named other content (version numbers never restart)."""
        served = self._holder.current
        if served.generation != image.generation:
            return
        behind = sorted(
            f"{key} v{max(numbered)} (export: v{max(image.versions.get(key, {0: None}))})"
            for key, numbered in served.versions.items()
            if numbered and max(numbered) > max(image.versions.get(key, {0: None}))
        )
        if behind:
            raise Conflict(
                "The export is older than the registry this replica served ("
                + ", ".join(behind)
                + "): importing it would reuse version numbers. Restore from a replica's "
                "snapshot instead (`promptproxy registry restore --from-replica`).",
                code="export_older_than_served",
            )

    async def _full_audit(self) -> list[AuditEntry]:
        entries: list[AuditEntry] = []
        before: int | None = None
        while True:
            page = await self._store.audit(None, _AUDIT_PAGE, before)
            entries.extend(page)
            if len(page) < _AUDIT_PAGE:
                return entries
            before = page[-1].seq


def _serving(image: RegistryImage) -> list[PromptVersion]:
    """The versions an import of ``image`` makes serve: each key's prod, and the candidate
    of each running rollout."""
    serving = [v for numbered in image.versions.values() for v in numbered.values()]
    serving = [v for v in serving if v.status is Status.PROD]
    for key, rollout in image.rollouts.items():
        candidate = image.versions.get(key, {}).get(rollout.candidate)
        if candidate is not None and candidate.status is not Status.PROD:
            serving.append(candidate)
    return serving


@contextmanager
def _refusals() -> Iterator[None]:
    try:
        yield
    except RestoreRefused as exc:
        raise Conflict(str(exc), code="registry_not_empty") from None


def _same(view: ReplicaView, generation: str) -> bool:
    """Whether ``view`` serves ``generation``; a beat that does not say is counted as
    serving it (a refusal names the replica, which the operator can check)."""
    served = getattr(view.beat, "generation", None)
    return served is None or served == generation


def _result(
    source: str, image: RegistryImage, revision: int, *, unchanged: bool = False
) -> RestoreResult:
    return RestoreResult(
        source=source,
        generation=image.generation,
        revision=revision,
        prompts=len(image.versions),
        versions=sum(len(v) for v in image.versions.values()),
        unchanged=unchanged,
    )
