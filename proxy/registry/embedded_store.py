"""``EmbeddedStore``: the single-machine registry store, one SQLite file, no server.

All sqlite work runs on one dedicated worker thread that owns the connection, so the event
loop never blocks and in-process calls are serialized. Several *processes* may share the
file: WAL lets readers proceed during a write, ``BEGIN IMMEDIATE`` takes the write lock up
front (waiting up to ``busy_timeout``), so concurrent pushes get distinct consecutive
numbers. Every write bumps the ``revision`` row in the same transaction; other processes
notice by polling it (``embedded_watch``: on the loop, reading it only when a commit
landed).

Identity (``proxy.registry.identity``): the file's generation is bound on first use, and
every write transaction checks it before writing. A file replaced or deleted under a running
process (a restored volume, a wrong mount) is noticed by its inode changing: the store
reopens the path and, finding another generation, refuses writes with ``StoreReplaced``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import orjson

from proxy.prompt_key import PromptKey
from proxy.registry import embedded_schema as sql
from proxy.registry import lifecycle
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.registry.backup import RegistryImage, RestoreRefused
from proxy.registry.embedded_watch import ChangeWatch
from proxy.registry.identity import IdentityGuard, describe
from proxy.registry.models import (
    AuditEntry,
    PromptVersion,
    RegistrySnapshot,
    Rollout,
    RolloutMode,
    RolloutSegment,
    Status,
    StickyKey,
    Tenant,
    VersionDraft,
    tenant_change,
)
from proxy.registry.store import (
    InvalidTransition,
    PromptNotFound,
    StoreReplaced,
    StoreUnavailable,
    TenantNotFound,
    VersionNotFound,
)

T = TypeVar("T")


class EmbeddedStore:
    def __init__(
        self, path: Path | str, *, busy_timeout: float = 5.0, poll_interval: float = 0.2
    ) -> None:
        """Cheap: the file is opened (and created/migrated) on first use or by ``open``."""
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._poll_interval = poll_interval
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-sqlite")
        self._conn: sqlite3.Connection | None = None  # touched only on the worker thread
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._closed = False
        self._identity = IdentityGuard()
        self._watch = ChangeWatch(self.path)
        self._watch_lock = asyncio.Lock()
        self._watched: int | None = None

    @classmethod
    async def open(
        cls, path: Path | str, *, busy_timeout: float = 5.0, poll_interval: float = 0.2
    ) -> EmbeddedStore:
        """Create the store and open/migrate the file now, so a bad path fails at startup."""
        store = cls(path, busy_timeout=busy_timeout, poll_interval=poll_interval)
        try:
            found = await store._read(lambda conn: (sql.generation(conn), sql.revision(conn)))
            store._identity.observe(*found)
        except BaseException:
            await store.close()
            raise
        return store

    # -- plumbing -------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreUnavailable(f"registry store {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._on_worker, fn)

    def _on_worker(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            if self._conn is not None and self._file != _file_id(self.path):
                # Replaced or deleted under us: reopen the path, so the identity check
                # sees what is there now rather than the old inode this connection holds.
                self._conn.close()
                self._conn = None
            if self._conn is None:
                self._conn = sql.connect(self.path, self._busy_timeout)
                self._file = _file_id(self.path)
            return fn(self._conn)
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise  # a bug in this module, not an unavailable store
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"registry database {self.path}: {exc}") from exc

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction; any exception rolls it back."""

        def txn(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._check_generation(conn)
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        try:
            return await self._run(txn)
        except StoreReplaced as exc:
            self._identity.lost = str(exc)
            raise

    def _check_generation(self, conn: sqlite3.Connection) -> None:
        """In the write transaction: the file is the registry this store is bound to."""
        self._identity.check_write(sql.generation(conn), sql.revision(conn))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one read transaction: a consistent view across several SELECTs."""

        def txn(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        return await self._run(txn)

    # -- reads ----------------------------------------------------------------------------

    async def get_version(self, key: PromptKey, version: int) -> PromptVersion:
        def read(conn: sqlite3.Connection) -> PromptVersion:
            row = conn.execute(
                "SELECT body, status FROM versions WHERE prompt_key = ? AND version = ?",
                (key.text, version),
            ).fetchone()
            if row is None:
                sql.require_key(conn, key)
                raise VersionNotFound(f"{key} has no version {version}")
            return sql.row_to_version(row[0], row[1])

        return await self._read(read)

    async def list_versions(self, key: PromptKey) -> Sequence[PromptVersion]:
        def read(conn: sqlite3.Connection) -> list[PromptVersion]:
            rows = conn.execute(
                "SELECT body, status FROM versions WHERE prompt_key = ? ORDER BY version",
                (key.text,),
            ).fetchall()
            if not rows:
                raise PromptNotFound(f"no prompt {key.text!r}")
            return [sql.row_to_version(body, status) for body, status in rows]

        return await self._read(read)

    async def list_keys(self) -> Sequence[PromptKey]:
        def read(conn: sqlite3.Connection) -> list[PromptKey]:
            rows = conn.execute("SELECT DISTINCT prompt_key FROM versions").fetchall()
            return sorted(PromptKey.parse(text) for (text,) in rows)

        return await self._read(read)

    async def audit(
        self, key: PromptKey | None = None, limit: int = 100, before_seq: int | None = None
    ) -> Sequence[AuditEntry]:
        if limit <= 0:
            return []
        where: list[str] = ["seq < ?"]
        params: list[int | str] = [before_seq if before_seq is not None else 2**63 - 1]
        if key is not None:
            where.append("prompt_key = ?")
            params.append(key.text)
        query = (
            f"SELECT {sql.AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(where)} "
            "ORDER BY seq DESC LIMIT ?"
        )

        def read(conn: sqlite3.Connection) -> list[AuditEntry]:
            return [sql.row_to_audit(row) for row in conn.execute(query, (*params, limit))]

        return await self._read(read)

    def expect_generation(self, generation: str) -> None:
        self._identity.expect(generation)

    async def generation(self) -> str | None:
        return await self._run(sql.generation)

    async def revision(self) -> int:
        return await self._run(sql.revision)

    async def snapshot(self) -> RegistrySnapshot:
        def read(conn: sqlite3.Connection) -> RegistrySnapshot:
            revision = sql.revision(conn)
            versions: dict[PromptKey, dict[int, PromptVersion]] = {}
            prod: dict[PromptKey, int] = {}
            for body, status in conn.execute("SELECT body, status FROM versions"):
                version = sql.row_to_version(body, status)
                versions.setdefault(version.key, {})[version.version] = version
                if version.status is Status.PROD:
                    prod[version.key] = version.version
            snapshot = RegistrySnapshot(
                revision=revision,
                versions=versions,
                prod=prod,
                rollouts=sql.all_rollouts(conn),
                generation=sql.generation(conn),
                tenants=sql.all_tenants(conn),
            )
            # On the worker thread, so reads and write checks are observed in the order
            # they were made (an older read observed late would look like going back).
            self._identity.observe(snapshot.generation, snapshot.revision)
            return snapshot

        return await self._read(read)

    async def list_tenants(self) -> Sequence[Tenant]:
        return list((await self._read(sql.all_tenants)).values())

    async def put_tenant(
        self, tenant: Tenant, actor: str, reason: str, at: float
    ) -> tuple[Tenant, AuditEntry | None]:
        def write(conn: sqlite3.Connection) -> tuple[Tenant, AuditEntry | None]:
            row = conn.execute("SELECT body FROM tenants WHERE id = ?", (tenant.id,)).fetchone()
            old = None if row is None else Tenant.from_dict(orjson.loads(row[0]))
            if old is not None and tenant.same_record(old):
                return old, None
            for digest in tenant.key_hashes:
                holder = conn.execute(
                    "SELECT tenant_id FROM tenant_keys WHERE key_sha256 = ?", (digest,)
                ).fetchone()
                if holder is not None and holder[0] != tenant.id:
                    raise InvalidTransition(
                        f"an API key given for tenant {tenant.id!r} already names tenant "
                        f"{holder[0]!r}"
                    )
            stored = dataclasses.replace(tenant, updated_at=at)
            sql.put_tenant_row(conn, stored)
            entry = sql.append_audit(
                conn,
                at=at,
                actor=actor,
                reason=reason,
                **tenant_change(stored, old),
            )
            return stored, entry

        return await self._write(write)

    async def delete_tenant(self, tenant_id: str, actor: str, reason: str, at: float) -> AuditEntry:
        def write(conn: sqlite3.Connection) -> AuditEntry:
            row = conn.execute("SELECT body FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
            if row is None:
                raise TenantNotFound(f"no tenant {tenant_id!r}")
            old = Tenant.from_dict(orjson.loads(row[0]))
            conn.execute("DELETE FROM tenant_keys WHERE tenant_id = ?", (tenant_id,))
            conn.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,))
            return sql.append_audit(
                conn,
                at=at,
                actor=actor,
                reason=reason,
                **tenant_change(None, old),
            )

        return await self._write(write)

    async def wait_for_change(self, known_revision: int, max_wait: float) -> int:
        """Looks every ``poll_interval`` on the loop (``ChangeWatch``), and reads the
        revision on the worker only when the file moved: an idle proxy makes no hops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, max_wait)
        while True:
            if self._closed:
                raise StoreUnavailable(f"registry store {self.path} is closed")
            current = await self._watched_revision()
            remaining = deadline - loop.time()
            if current != known_revision or remaining <= 0:
                return current
            await asyncio.sleep(min(self._poll_interval, remaining))

    async def _watched_revision(self) -> int:
        """The file's revision, read on the worker only if a commit landed since it was
        last read here. The lock keeps look and read paired: a slower read finishing after
        a newer one would otherwise leave the older revision as the one 'unchanged since'."""
        async with self._watch_lock:
            if self._watch.moved() or self._watched is None:
                self._watched = None  # a read that fails must be made again, not trusted
                self._watched = await self.revision()
            return self._watched

    # -- writes ---------------------------------------------------------------------------

    async def create_version(
        self, draft: VersionDraft, actor: str, created_at: float
    ) -> tuple[PromptVersion, bool]:
        sha = draft.content_sha256()

        def write(conn: sqlite3.Connection) -> tuple[PromptVersion, bool]:
            latest = conn.execute(
                "SELECT version, sha256, body, status FROM versions WHERE prompt_key = ? "
                "ORDER BY version DESC LIMIT 1",
                (draft.key.text,),
            ).fetchone()
            if latest is not None and latest[1] == sha:
                return sql.row_to_version(latest[2], latest[3]), False
            version = draft.to_version(1 if latest is None else latest[0] + 1, created_at)
            conn.execute(
                "INSERT INTO versions (prompt_key, version, sha256, created_at, body, status) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    version.key.text,
                    version.version,
                    sha,
                    created_at,
                    sql.version_body(version),
                    version.status.value,
                ),
            )
            sql.append_audit(
                conn,
                at=created_at,
                actor=actor,
                action=lifecycle.CREATE_ACTION,
                key=draft.key,
                version=version.version,
                from_status=None,
                to_status=Status.DRAFT,
                reason=draft.changelog,
            )
            return version, True

        return await self._write(write)

    async def promote(
        self, key: PromptKey, version: int, actor: str, reason: str, at: float
    ) -> AuditEntry:
        def write(conn: sqlite3.Connection) -> AuditEntry:
            current = sql.status_of(conn, key, version)
            lifecycle.check_promote(key, version, current)
            running = sql.running_rollout(conn, key)
            lifecycle.check_promote_during_rollout(
                key, version, None if running is None else running.candidate
            )
            return _promote(conn, key, version, current, running, actor, reason, at)

        return await self._write(write)

    async def rollback(self, key: PromptKey, actor: str, reason: str, at: float) -> AuditEntry:
        def write(conn: sqlite3.Connection) -> AuditEntry:
            sql.require_key(conn, key)
            events = conn.execute(
                "SELECT action, version FROM audit WHERE prompt_key = ? AND action IN (?, ?) "
                "ORDER BY seq",
                (key.text, lifecycle.PROMOTE_ACTION, lifecycle.ROLLBACK_ACTION),
            ).fetchall()
            stack = lifecycle.prod_stack(events)
            prod = sql.current_prod(conn, key)
            if prod is not None and (not stack or stack[-1] != prod):
                # Restored from a snapshot, which has no audit log: the history starts at
                # the restore, with the prod it had (as the Redis store's prod stack does).
                stack = [v for v in stack if v != prod] + [prod]
            current, target = lifecycle.rollback_pair(key, stack)
            target_status = sql.status_of(conn, key, target)
            sql.put_status(conn, key, current, Status.DEPRECATED)
            sql.put_status(conn, key, target, Status.PROD)
            return sql.append_audit(
                conn,
                at=at,
                actor=actor,
                action=lifecycle.ROLLBACK_ACTION,
                key=key,
                version=target,
                from_status=target_status,
                to_status=Status.PROD,
                reason=reason,
                previous_prod=current,
            )

        return await self._write(write)

    async def set_status(
        self, key: PromptKey, version: int, status: Status, actor: str, reason: str, at: float
    ) -> AuditEntry:
        def write(conn: sqlite3.Connection) -> AuditEntry:
            current = sql.status_of(conn, key, version)
            lifecycle.check_set_status(key, version, current, status)
            running = sql.running_rollout(conn, key)
            lifecycle.check_set_status_during_rollout(
                key, version, None if running is None else running.candidate
            )
            sql.put_status(conn, key, version, status)
            return sql.append_audit(
                conn,
                at=at,
                actor=actor,
                action=lifecycle.SET_STATUS_ACTION,
                key=key,
                version=version,
                from_status=current,
                to_status=status,
                reason=reason,
            )

        return await self._write(write)

    # -- rollouts -------------------------------------------------------------------------

    async def get_rollout(self, key: PromptKey) -> Rollout | None:
        return await self._read(lambda conn: sql.running_rollout(conn, key))

    async def start_rollout(
        self,
        key: PromptKey,
        rollout_id: str,
        candidate: int,
        mode: RolloutMode,
        basis_points: int,
        sticky: StickyKey,
        actor: str,
        reason: str,
        at: float,
        analysis: AnalysisPolicy | None = None,
        segment: RolloutSegment | None = None,
    ) -> tuple[Rollout, AuditEntry]:
        lifecycle.check_rollout_values(basis_points, rollout_id, sticky, analysis)

        def write(conn: sqlite3.Connection) -> tuple[Rollout, AuditEntry]:
            current = sql.status_of(conn, key, candidate)
            running = sql.running_rollout(conn, key)
            lifecycle.check_no_rollout(key, None if running is None else running.candidate)
            lifecycle.check_rollout_candidate(key, candidate, current)
            rollout = Rollout(
                key=key,
                id=rollout_id,
                candidate=candidate,
                mode=mode,
                basis_points=basis_points,
                sticky=sticky,
                started_at=at,
                updated_at=at,
                actor=actor,
                restore_status=current,
                analysis=analysis,
                segment=segment,
            )
            sql.put_status(conn, key, candidate, Status.CANDIDATE)
            sql.insert_rollout(conn, rollout)
            entry = sql.append_audit(
                conn,
                at=at,
                actor=actor,
                action=lifecycle.ROLLOUT_START_ACTION,
                key=key,
                version=candidate,
                from_status=current,
                to_status=Status.CANDIDATE,
                reason=reason,
                detail=rollout.audit_detail(),
            )
            return rollout, entry

        return await self._write(write)

    async def update_rollout(
        self, key: PromptKey, rollout_id: str, basis_points: int, actor: str, reason: str, at: float
    ) -> tuple[Rollout, AuditEntry]:
        lifecycle.check_rollout_values(basis_points)

        def write(conn: sqlite3.Connection) -> tuple[Rollout, AuditEntry]:
            before = _require_rollout(conn, key, rollout_id)
            rollout = dataclasses.replace(before, basis_points=basis_points, updated_at=at)
            sql.put_rollout_percentage(conn, rollout)
            entry = sql.append_audit(
                conn,
                at=at,
                actor=actor,
                action=lifecycle.ROLLOUT_UPDATE_ACTION,
                key=key,
                version=rollout.candidate,
                from_status=None,
                to_status=None,
                reason=reason,
                detail={**rollout.audit_detail(), "from_percent": before.percent},
            )
            return rollout, entry

        return await self._write(write)

    async def abort_rollout(self, key: PromptKey, actor: str, reason: str, at: float) -> AuditEntry:
        def write(conn: sqlite3.Connection) -> AuditEntry:
            rollout = _require_rollout(conn, key)
            current = sql.status_of(conn, key, rollout.candidate)
            restored = rollout.restore_status if current is Status.CANDIDATE else current
            sql.delete_rollout(conn, key)  # first: the file keeps a running candidate's status
            sql.put_status(conn, key, rollout.candidate, restored)
            return sql.append_audit(
                conn,
                at=at,
                actor=actor,
                action=lifecycle.ROLLOUT_ABORT_ACTION,
                key=key,
                version=rollout.candidate,
                from_status=current,
                to_status=restored,
                reason=reason,
                detail=rollout.audit_detail(),
            )

        return await self._write(write)

    async def promote_rollout(
        self, key: PromptKey, actor: str, reason: str, at: float
    ) -> AuditEntry:
        def write(conn: sqlite3.Connection) -> AuditEntry:
            rollout = _require_rollout(conn, key)
            current = sql.status_of(conn, key, rollout.candidate)
            lifecycle.check_promote(key, rollout.candidate, current)
            return _promote(conn, key, rollout.candidate, current, rollout, actor, reason, at)

        return await self._write(write)

    # -- restore --------------------------------------------------------------------------

    async def restore(
        self,
        image: RegistryImage,
        expect: str | None,
        after_revision: int,
        actor: str,
        reason: str,
        at: float,
        *,
        overwrite: bool = False,
    ) -> int:
        """Write ``image`` into the file, if it holds generation ``expect`` and no versions,
        or an older copy of the same registry (same generation, lower revision: its versions
        are a prefix of the image's; their statuses, the new versions and the rollouts come
        from the image, its audit log stays and the restore's entries follow it). A file
        with other prompts is refused even with ``overwrite``: its history cannot be
        deleted, the operator moves it away first."""

        def txn(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                revision = _restore(conn, image, expect, after_revision, actor, reason, at)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return revision

        revision = await self._run(txn)
        self._identity.restored(image.generation, revision)
        return revision

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._watch.close()

        def close_conn() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, close_conn)
        finally:
            self._executor.shutdown(wait=False)


def _restore(
    conn: sqlite3.Connection,
    image: RegistryImage,
    expect: str | None,
    after_revision: int,
    actor: str,
    reason: str,
    at: float,
) -> int:
    found = sql.generation(conn)
    if found != expect:
        raise InvalidTransition(
            f"the store holds {describe(found)}, not {describe(expect)} as when the restore "
            "was asked for: look again before restoring"
        )
    stored_revision = sql.revision(conn)
    held = {
        (PromptKey.parse(text), number): sha
        for text, number, sha in conn.execute("SELECT prompt_key, version, sha256 FROM versions")
    }
    older_copy = (
        bool(held)
        and found == image.generation
        and stored_revision < max(image.revision, after_revision)
    )
    if held and not older_copy:
        raise RestoreRefused(
            "The registry file holds prompts, and its history cannot be deleted (not even "
            "with overwrite): move the file away (keep it), then restore into the new empty "
            "file. If the configured path is wrong, fix it and restart instead."
        )
    after_seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0]
    if older_copy:
        _bring_forward(conn, image, held)
    for numbered in image.versions.values():
        for version in numbered.values():
            if (version.key, version.version) in held:
                continue
            conn.execute(
                "INSERT INTO versions (prompt_key, version, sha256, created_at, body, status) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    version.key.text,
                    version.version,
                    version.sha256,
                    version.created_at,
                    sql.version_body(version),
                    version.status.value,
                ),
            )
    for rollout in image.rollouts.values():
        sql.insert_rollout(conn, rollout)
    conn.execute("DELETE FROM tenant_keys")
    conn.execute("DELETE FROM tenants")
    for tenant in image.tenants.values():
        sql.put_tenant_row(conn, tenant)
    entries = image.restore_entries(actor, reason, at, after_seq)
    for entry in [*(e for e in image.audit if e.seq > after_seq), *entries]:
        sql.insert_audit(conn, entry)
    revision = max(image.revision, after_revision, stored_revision) + 1
    conn.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (revision,))
    conn.execute("UPDATE identity SET generation = ? WHERE singleton = 1", (image.generation,))
    return revision


def _bring_forward(
    conn: sqlite3.Connection, image: RegistryImage, held: dict[tuple[PromptKey, int], str]
) -> None:
    """Statuses of the versions an older copy holds, as the image has them; its rollouts go
    (the image's are inserted after). Refused if the copy holds a version the image does not
    have with the same content: then it is not an older copy of this registry."""
    for (key, number), sha in held.items():
        version = image.versions.get(key, {}).get(number)
        if version is None or version.sha256 != sha:
            raise RestoreRefused(
                f"The registry file holds {key} v{number}, which the restored registry "
                "does not have with the same content: it is not an older copy of it. Move "
                "the file away (keep it), then restore into a new empty file."
            )
    conn.execute("DELETE FROM rollouts")
    moves = [
        (version.status, key, number)
        for key, number in held
        if (version := image.versions[key][number]).status is not sql.status_of(conn, key, number)
    ]
    # Demotions first: the file allows one prod per prompt at every step.
    for status, key, number in sorted(moves, key=lambda m: m[0] is Status.PROD):
        sql.put_status(conn, key, number, status)


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


# -- write steps shared by several operations, run inside their transaction -----------------


def _require_rollout(
    conn: sqlite3.Connection, key: PromptKey, rollout_id: str | None = None
) -> Rollout:
    sql.require_key(conn, key)
    running = sql.running_rollout(conn, key)
    lifecycle.check_rollout_running(key, None if running is None else running.id, rollout_id)
    assert running is not None  # check_rollout_running refused otherwise
    return running


def _promote(
    conn: sqlite3.Connection,
    key: PromptKey,
    version: int,
    current: Status,
    running: Rollout | None,
    actor: str,
    reason: str,
    at: float,
) -> AuditEntry:
    """Make ``version`` prod, the former prod deprecated; ``running`` (the rollout of this
    very version, if any) ends with it. The caller has checked the move is allowed."""
    detail = None
    if running is not None:
        detail = {**running.audit_detail(), lifecycle.ROLLOUT_PROMOTED_DETAIL: True}
        sql.delete_rollout(conn, key)  # first: the file keeps a running candidate's status
    previous = sql.current_prod(conn, key)
    if previous is not None:
        sql.put_status(conn, key, previous, Status.DEPRECATED)
    sql.put_status(conn, key, version, Status.PROD)
    return sql.append_audit(
        conn,
        at=at,
        actor=actor,
        action=lifecycle.PROMOTE_ACTION,
        key=key,
        version=version,
        from_status=current,
        to_status=Status.PROD,
        reason=reason,
        previous_prod=previous,
        detail=detail,
    )
