"""``PostgresStore``: the registry store on PostgreSQL, for many replicas.

Every write is one transaction that starts by locking the single ``registry_state`` row
(``postgres_schema``): writes from every replica are serialized there, so version numbers,
audit seqs and revisions are handed out without gaps or duplicates and in commit order,
whatever the concurrency, and never by retrying. Inside it, the write checks the registry's
identity (``identity``), makes its change, appends its audit entry, bumps the revision and
NOTIFYs the schema's channel, all committed together. Registry writes are human-paced
(pushes, promotes, ramps), so one lock for all of them costs nothing that matters.

Reads that span tables run in one ``REPEATABLE READ`` read-only transaction, so a snapshot
is the registry at one instant. ``wait_for_change`` is woken by LISTEN/NOTIFY
(``postgres_notify``) and polls the revision while the listener is down.

The pool is the caller's (the backend shares it with its other parts and closes it);
``close`` closes what the store opened itself: its LISTEN connection. Failure policy as the
Redis store's: every call is bounded (``op_timeout``) and a server that cannot be used
raises ``StoreUnavailable`` (``proxy.pg.session`` says which calls are retried first). A
write that fails that way did not apply, unless its message says its outcome is unknown
(the answer to its COMMIT was lost); pushing the same content again is safe either way
(creates are idempotent by content).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from proxy.pg.connect import check_schema_name, describe_url
from proxy.pg.session import PgSession, PostgresUnavailable
from proxy.prompt_key import PromptKey
from proxy.registry import lifecycle
from proxy.registry import postgres_schema as schema_sql
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.registry.backup import RegistryImage, overwrite_keeps_audit, restore_keeps_audit
from proxy.registry.identity import IdentityGuard, describe, new_generation
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
from proxy.registry.postgres_notify import ChangeListener
from proxy.registry.postgres_schema import (
    AUDIT_COLUMNS,
    ROLLOUT_COLUMNS,
    SELECT_TENANTS,
    TENANT_COLUMNS,
    VERSION_COLUMNS,
    row_to_audit,
    row_to_rollout,
    row_to_tenant,
    row_to_version,
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

#: Rows a restore writes per second, at the least (COPY; measured far faster): sizes its
#: deadline to the image, as a large import outlasts ``op_timeout``.
_RESTORE_ROWS_PER_S = 5_000
#: While the listener is up, waiters still re-read the revision this often: a hint only.
_TRUSTED_WAIT_S = 5.0


class PostgresStore:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        url: str,
        schema: str,
        poll_interval: float = 0.5,
        op_timeout: float = 2.0,
    ) -> None:
        """No I/O: use ``open``, which also brings the tables up to date."""
        check_schema_name(schema)
        self.schema = schema
        self.channel = schema_sql.change_channel(schema)
        self._where = describe_url(url)
        self.session = PgSession(
            pool,
            schema_sql.PART,
            schema=schema,
            deadline=op_timeout,
            what=f"the prompt registry ({self._where}, schema {schema})",
        )
        self._poll_interval = poll_interval
        self.listener = ChangeListener(
            url, schema=schema, channel=self.channel, op_timeout=op_timeout
        )
        self._identity = IdentityGuard()
        self._observing = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls,
        pool: AsyncConnectionPool,
        *,
        url: str,
        schema: str,
        poll_interval: float = 0.5,
        op_timeout: float = 2.0,
    ) -> PostgresStore:
        """The store on ``pool`` (connections bound to ``schema``); runs the registry's
        migrations. ``url``: the same server, for the LISTEN connection made outside the
        pool. A server that cannot be reached does not fail this (a cold start waits for
        it: the migrations run at the first call that reaches it); ``SchemaTooNew`` if a
        newer promptproxy wrote the schema, ``StoreUnavailable`` if the server refuses
        (permissions, a wrong database)."""
        store = cls(
            pool, url=url, schema=schema, poll_interval=poll_interval, op_timeout=op_timeout
        )
        try:
            await store.session.prepare()
        except PostgresUnavailable as exc:
            raise StoreUnavailable(str(exc)) from exc
        return store

    # -- plumbing -------------------------------------------------------------------------

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._closed:
            raise StoreUnavailable("registry store is closed")
        try:
            return await call()
        except PostgresUnavailable as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def _read(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``work`` in one read-only transaction: one consistent view."""
        return await self._run(lambda: self.session.read(work, snapshot=True))

    async def _one(self, query: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        async def read(conn: AsyncConnection) -> tuple[Any, ...] | None:
            cur = await conn.execute(query, params)
            return await cur.fetchone()

        return await self._run(lambda: self.session.read(read))

    async def _write(self, work: Callable[[_Txn], Awaitable[T]], *, texts: Sequence[str] = ()) -> T:
        """Run ``work`` in one write transaction, after locking the state row and checking
        the identity there (see ``identity``): a store holding another generation or none,
        or a lower revision than this instance read, refuses before anything is written."""
        _check_text(texts)
        await self._bound_generation()

        async def txn(conn: AsyncConnection) -> T:
            cur = await conn.execute(
                "SELECT generation, revision, audit_seq FROM registry_state FOR UPDATE"
            )
            row = await cur.fetchone()
            generation, revision, audit_seq = row if row is not None else (None, 0, 0)
            self._check_write(generation, int(revision))
            return await work(_Txn(conn, int(audit_seq), self.channel))

        try:
            return await self._run(lambda: self.session.write(txn))
        except StoreReplaced as exc:
            self._identity.lost = str(exc)
            raise

    def _check_write(self, generation: str | None, revision: int) -> None:
        """Refuse a write into a store that is not the bound registry. Reads alone raise
        the highest revision seen (``observe``, serialized with snapshots): a write's view,
        taken concurrently with a snapshot read, could otherwise make that read look like
        the store going back."""
        guard = self._identity
        if guard.generation is None or generation != guard.generation or revision < guard.revision:
            guard.check_write(generation, revision)  # binds when unbound, else raises

    async def _bound_generation(self) -> None:
        """Never read a generation: a fresh store gets one now (unless another process has
        just stamped it: the row keeps the first), and this instance binds to it."""
        if self._identity.generation is not None:
            return
        fresh = new_generation()

        async def stamp(conn: AsyncConnection) -> str:
            cur = await conn.execute(
                "INSERT INTO registry_state (singleton, generation) VALUES (true, %s) "
                "ON CONFLICT (singleton) DO UPDATE "
                "SET generation = coalesce(registry_state.generation, EXCLUDED.generation) "
                "RETURNING generation",
                (fresh,),
            )
            row = await cur.fetchone()
            assert row is not None  # an upsert always returns its row
            return str(row[0])

        self._identity.bind(await self._run(lambda: self.session.write(stamp)))

    # -- reads ----------------------------------------------------------------------------

    async def get_version(self, key: PromptKey, version: int) -> PromptVersion:
        async def read(conn: AsyncConnection) -> PromptVersion:
            cur = await conn.execute(
                "SELECT body, status FROM registry_versions WHERE prompt_key = %s AND version = %s",
                (key.text, version),
            )
            row = await cur.fetchone()
            if row is None:
                await _require_key(conn, key)
                raise VersionNotFound(f"{key} has no version {version}")
            return row_to_version(row[0], row[1])

        return await self._read(read)

    async def list_versions(self, key: PromptKey) -> Sequence[PromptVersion]:
        async def read(conn: AsyncConnection) -> list[PromptVersion]:
            cur = await conn.execute(
                "SELECT body, status FROM registry_versions WHERE prompt_key = %s ORDER BY version",
                (key.text,),
            )
            rows = await cur.fetchall()
            if not rows:
                raise PromptNotFound(f"no prompt {key.text!r}")
            return [row_to_version(body, status) for body, status in rows]

        return await self._read(read)

    async def list_keys(self) -> Sequence[PromptKey]:
        async def read(conn: AsyncConnection) -> list[PromptKey]:
            cur = await conn.execute("SELECT DISTINCT prompt_key FROM registry_versions")
            return sorted(PromptKey.parse(text) for (text,) in await cur.fetchall())

        return await self._run(lambda: self.session.read(read))

    async def audit(
        self, key: PromptKey | None = None, limit: int = 100, before_seq: int | None = None
    ) -> Sequence[AuditEntry]:
        if limit <= 0:
            return []
        where = ["seq < %s"]
        params: list[int | str] = [before_seq if before_seq is not None else 2**63 - 1]
        if key is not None:
            where.append("prompt_key = %s")
            params.append(key.text)
        query = (
            f"SELECT {AUDIT_COLUMNS} FROM registry_audit WHERE {' AND '.join(where)} "
            "ORDER BY seq DESC LIMIT %s"
        )

        async def read(conn: AsyncConnection) -> list[AuditEntry]:
            cur = await conn.execute(query, (*params, limit))
            return [row_to_audit(row) for row in await cur.fetchall()]

        return await self._run(lambda: self.session.read(read))

    def expect_generation(self, generation: str) -> None:
        self._identity.expect(generation)

    async def generation(self) -> str | None:
        row = await self._one("SELECT generation FROM registry_state")
        return None if row is None or row[0] is None else str(row[0])

    async def revision(self) -> int:
        row = await self._one("SELECT revision FROM registry_state")
        return 0 if row is None else int(row[0])

    async def snapshot(self) -> RegistrySnapshot:
        # Serialized, so reads are observed in the order they were made: a slower, older
        # read observed after a newer one would look like the revision going back.
        async with self._observing:
            snapshot = await self._read(_read_snapshot)
            self._identity.observe(snapshot.generation, snapshot.revision)
            return snapshot

    # -- change notification --------------------------------------------------------------

    async def wait_for_change(self, known_revision: int, max_wait: float) -> int:
        """The revision row is the truth; LISTEN/NOTIFY only makes noticing it prompt. While
        the listener is down the revision is polled every ``poll_interval``. If the server
        is down this raises ``StoreUnavailable`` rather than waiting out ``max_wait``."""
        self.listener.ensure_started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, max_wait)
        while True:
            mark = self.listener.mark()
            current = await self.revision()
            remaining = deadline - loop.time()
            if current != known_revision or remaining <= 0:
                return current
            step = _TRUSTED_WAIT_S if self.listener.connected else self._poll_interval
            await self.listener.wait(mark, min(step, remaining))

    # -- writes ---------------------------------------------------------------------------

    async def create_version(
        self, draft: VersionDraft, actor: str, created_at: float
    ) -> tuple[PromptVersion, bool]:
        sha = draft.content_sha256()

        async def write(t: _Txn) -> tuple[PromptVersion, bool]:
            latest = await t.one(
                "SELECT version, sha256, body, status FROM registry_versions WHERE prompt_key = %s "
                "ORDER BY version DESC LIMIT 1",
                (draft.key.text,),
            )
            if latest is not None and latest[1] == sha:
                return row_to_version(latest[2], latest[3]), False
            version = draft.to_version(1 if latest is None else int(latest[0]) + 1, created_at)
            await t.conn.execute(
                f"INSERT INTO registry_versions ({VERSION_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                schema_sql.version_row(version),
            )
            await t.append_audit(
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

        return await self._write(write, texts=(actor, draft.changelog))

    async def promote(
        self, key: PromptKey, version: int, actor: str, reason: str, at: float
    ) -> AuditEntry:
        async def write(t: _Txn) -> AuditEntry:
            current = await t.status_of(key, version)
            lifecycle.check_promote(key, version, current)
            running = await t.running_rollout(key)
            lifecycle.check_promote_during_rollout(
                key, version, None if running is None else running.candidate
            )
            return await _promote(t, key, version, current, running, actor, reason, at)

        return await self._write(write, texts=(actor, reason))

    async def rollback(self, key: PromptKey, actor: str, reason: str, at: float) -> AuditEntry:
        async def write(t: _Txn) -> AuditEntry:
            await _require_key(t.conn, key)
            cur = await t.conn.execute(
                "SELECT action, version FROM registry_audit WHERE prompt_key = %s "
                "AND action IN (%s, %s) ORDER BY seq",
                (key.text, lifecycle.PROMOTE_ACTION, lifecycle.ROLLBACK_ACTION),
            )
            stack = lifecycle.prod_stack(await cur.fetchall())
            prod = await t.current_prod(key)
            if prod is not None and (not stack or stack[-1] != prod):
                # Restored from a snapshot, which has no audit log: the history starts at
                # the restore, with the prod it had (as with the other stores).
                stack = [v for v in stack if v != prod] + [prod]
            current, target = lifecycle.rollback_pair(key, stack)
            target_status = await t.status_of(key, target)
            await t.put_status(key, current, Status.DEPRECATED)
            await t.put_status(key, target, Status.PROD)
            return await t.append_audit(
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

        return await self._write(write, texts=(actor, reason))

    async def set_status(
        self, key: PromptKey, version: int, status: Status, actor: str, reason: str, at: float
    ) -> AuditEntry:
        async def write(t: _Txn) -> AuditEntry:
            current = await t.status_of(key, version)
            lifecycle.check_set_status(key, version, current, status)
            running = await t.running_rollout(key)
            lifecycle.check_set_status_during_rollout(
                key, version, None if running is None else running.candidate
            )
            await t.put_status(key, version, status)
            return await t.append_audit(
                at=at,
                actor=actor,
                action=lifecycle.SET_STATUS_ACTION,
                key=key,
                version=version,
                from_status=current,
                to_status=status,
                reason=reason,
            )

        return await self._write(write, texts=(actor, reason))

    # -- rollouts -------------------------------------------------------------------------

    async def get_rollout(self, key: PromptKey) -> Rollout | None:
        row = await self._one(
            f"SELECT {ROLLOUT_COLUMNS} FROM registry_rollouts WHERE prompt_key = %s", (key.text,)
        )
        return None if row is None else row_to_rollout(row)

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

        async def write(t: _Txn) -> tuple[Rollout, AuditEntry]:
            current = await t.status_of(key, candidate)
            running = await t.running_rollout(key)
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
            await t.put_status(key, candidate, Status.CANDIDATE)
            await t.conn.execute(
                f"INSERT INTO registry_rollouts ({ROLLOUT_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                schema_sql.rollout_row(rollout),
            )
            entry = await t.append_audit(
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

        return await self._write(write, texts=(rollout_id, actor, reason))

    async def update_rollout(
        self, key: PromptKey, rollout_id: str, basis_points: int, actor: str, reason: str, at: float
    ) -> tuple[Rollout, AuditEntry]:
        lifecycle.check_rollout_values(basis_points)

        async def write(t: _Txn) -> tuple[Rollout, AuditEntry]:
            before = await _require_rollout(t, key, rollout_id)
            rollout = dataclasses.replace(before, basis_points=basis_points, updated_at=at)
            await t.conn.execute(
                "UPDATE registry_rollouts SET basis_points = %s, updated_at = %s "
                "WHERE prompt_key = %s",
                (rollout.basis_points, rollout.updated_at, key.text),
            )
            entry = await t.append_audit(
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

        return await self._write(write, texts=(rollout_id, actor, reason))

    async def abort_rollout(self, key: PromptKey, actor: str, reason: str, at: float) -> AuditEntry:
        async def write(t: _Txn) -> AuditEntry:
            rollout = await _require_rollout(t, key)
            current = await t.status_of(key, rollout.candidate)
            restored = rollout.restore_status if current is Status.CANDIDATE else current
            await t.delete_rollout(key)
            await t.put_status(key, rollout.candidate, restored)
            return await t.append_audit(
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

        return await self._write(write, texts=(actor, reason))

    async def promote_rollout(
        self, key: PromptKey, actor: str, reason: str, at: float
    ) -> AuditEntry:
        async def write(t: _Txn) -> AuditEntry:
            rollout = await _require_rollout(t, key)
            current = await t.status_of(key, rollout.candidate)
            lifecycle.check_promote(key, rollout.candidate, current)
            return await _promote(t, key, rollout.candidate, current, rollout, actor, reason, at)

        return await self._write(write, texts=(actor, reason))

    # -- tenants --------------------------------------------------------------------------

    async def list_tenants(self) -> Sequence[Tenant]:
        return list((await self._read(_read_tenants)).values())

    async def put_tenant(
        self, tenant: Tenant, actor: str, reason: str, at: float
    ) -> tuple[Tenant, AuditEntry | None]:
        async def write(t: _Txn) -> tuple[Tenant, AuditEntry | None]:
            old = await _tenant(t.conn, tenant.id)
            if old is not None and tenant.same_record(old):
                return old, None
            stored = dataclasses.replace(tenant, updated_at=at)
            await t.conn.execute(
                f"INSERT INTO registry_tenants ({TENANT_COLUMNS}) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET tier = EXCLUDED.tier, "
                "updated_at = EXCLUDED.updated_at",
                schema_sql.tenant_row(stored),
            )
            await t.conn.execute(
                "DELETE FROM registry_tenant_keys WHERE tenant_id = %s", (stored.id,)
            )
            # The primary key decides who holds a key: a hash held by another tenant is
            # not inserted, and the write is refused (rolled back, nothing of it applied).
            cur = await t.conn.execute(
                "INSERT INTO registry_tenant_keys (key_sha256, tenant_id) "
                "SELECT unnest(%s::text[]), %s "
                "ON CONFLICT (key_sha256) DO NOTHING RETURNING key_sha256",
                (list(stored.key_hashes), stored.id),
            )
            taken = set(stored.key_hashes) - {digest for (digest,) in await cur.fetchall()}
            if taken:
                row = await t.one(
                    "SELECT tenant_id FROM registry_tenant_keys WHERE key_sha256 = ANY(%s) "
                    "ORDER BY tenant_id LIMIT 1",
                    (sorted(taken),),
                )
                holder = "another tenant" if row is None else f"tenant {row[0]!r}"
                raise InvalidTransition(
                    f"an API key given for tenant {stored.id!r} already names {holder}"
                )
            entry = await t.append_audit(
                at=at,
                actor=actor,
                reason=reason,
                **tenant_change(stored, old),
            )
            return stored, entry

        return await self._write(write, texts=(actor, reason))

    async def delete_tenant(self, tenant_id: str, actor: str, reason: str, at: float) -> AuditEntry:
        async def write(t: _Txn) -> AuditEntry:
            old = await _tenant(t.conn, tenant_id)
            if old is None:
                raise TenantNotFound(f"no tenant {tenant_id!r}")
            # Its key hashes go with it (ON DELETE CASCADE).
            await t.conn.execute("DELETE FROM registry_tenants WHERE id = %s", (tenant_id,))
            return await t.append_audit(
                at=at,
                actor=actor,
                reason=reason,
                **tenant_change(None, old),
            )

        return await self._write(write, texts=(actor, reason))

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
        """Put ``image`` in place of the registry's rows, in one transaction, if the store
        still holds generation ``expect`` and ``backup.restore_keeps_audit`` allows it (or
        ``overwrite``, as on Redis: the server's tables can be replaced whole). The store's
        audit log stays when it is this registry's (an older copy put back), and the
        restore's entries follow it."""
        _check_text((actor, reason))
        _check_tenant_keys(image)
        rows = (
            sum(map(len, image.versions.values()))
            + len(image.rollouts)
            + len(image.audit)
            + sum(1 + len(t.key_hashes) for t in image.tenants.values())
        )

        async def txn(conn: AsyncConnection) -> int:
            await conn.execute("INSERT INTO registry_state DEFAULT VALUES ON CONFLICT DO NOTHING")
            cur = await conn.execute(
                "SELECT generation, revision, audit_seq FROM registry_state FOR UPDATE"
            )
            row = await cur.fetchone()
            assert row is not None  # inserted above if it was missing
            found, stored_revision, audit_seq = row[0], int(row[1]), int(row[2])
            if found != expect:
                raise InvalidTransition(
                    f"the store holds {describe(found)}, not {describe(expect)} as when "
                    "the restore was asked for: look again before restoring"
                )
            cur = await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM registry_versions), "
                "(SELECT coalesce(max(seq), 0) FROM registry_audit)"
            )
            counts = await cur.fetchone()
            assert counts is not None
            holds_versions, last_logged = bool(counts[0]), int(counts[1])
            if overwrite:
                keep_audit = overwrite_keeps_audit(found, image)
            else:
                keep_audit = restore_keeps_audit(
                    found, stored_revision, holds_versions, image, after_revision
                )
            after_seq = max(audit_seq, last_logged) if keep_audit else 0
            entries = image.restore_entries(actor, reason, at, after_seq)
            audit = [e for e in image.audit if e.seq > after_seq] + entries
            revision = max(image.revision, after_revision, stored_revision) + 1
            await _replace_rows(conn, image, audit, keep_audit)
            await conn.execute(
                "UPDATE registry_state SET generation = %s, revision = %s, audit_seq = %s "
                "RETURNING pg_notify(%s, revision::text)",
                (
                    image.generation,
                    revision,
                    max([after_seq, *(e.seq for e in audit)]),
                    self.channel,
                ),
            )
            return revision

        limit = self.session.deadline + rows / _RESTORE_ROWS_PER_S
        revision = await self._run(lambda: self.session.write(txn, deadline=limit))
        self._identity.restored(image.generation, revision)
        return revision

    async def close(self) -> None:
        """Closes the LISTEN connection; the pool is the caller's."""
        if self._closed:
            return
        self._closed = True
        await self.listener.close()


# -- inside a transaction -------------------------------------------------------------------


class _Txn:
    """One write transaction: its connection and the statements writes share."""

    def __init__(self, conn: AsyncConnection, audit_seq: int, channel: str) -> None:
        self.conn = conn
        self._audit_seq = audit_seq
        self._channel = channel

    async def one(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        cur = await self.conn.execute(query, params)
        return await cur.fetchone()

    async def status_of(self, key: PromptKey, version: int) -> Status:
        row = await self.one(
            "SELECT status FROM registry_versions WHERE prompt_key = %s AND version = %s",
            (key.text, version),
        )
        if row is None:
            await _require_key(self.conn, key)
            raise VersionNotFound(f"{key} has no version {version}")
        return Status(row[0])

    async def current_prod(self, key: PromptKey) -> int | None:
        row = await self.one(
            "SELECT version FROM registry_versions WHERE prompt_key = %s AND status = 'prod'",
            (key.text,),
        )
        return None if row is None else int(row[0])

    async def running_rollout(self, key: PromptKey) -> Rollout | None:
        row = await self.one(
            f"SELECT {ROLLOUT_COLUMNS} FROM registry_rollouts WHERE prompt_key = %s", (key.text,)
        )
        return None if row is None else row_to_rollout(row)

    async def put_status(self, key: PromptKey, version: int, status: Status) -> None:
        await self.conn.execute(
            "UPDATE registry_versions SET status = %s WHERE prompt_key = %s AND version = %s",
            (status.value, key.text, version),
        )

    async def delete_rollout(self, key: PromptKey) -> None:
        await self.conn.execute("DELETE FROM registry_rollouts WHERE prompt_key = %s", (key.text,))

    async def append_audit(
        self,
        *,
        at: float,
        actor: str,
        action: str,
        key: PromptKey,
        version: int | None,
        from_status: Status | None,
        to_status: Status | None,
        reason: str,
        previous_prod: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one audit entry, bump the revision and notify: every write ends here."""
        self._audit_seq += 1
        entry = AuditEntry(
            seq=self._audit_seq,
            at=at,
            actor=actor,
            action=action,
            key=key,
            version=version,
            from_status=from_status,
            to_status=to_status,
            reason=reason,
            previous_prod=previous_prod,
            detail=detail,
        )
        await self.conn.execute(
            f"INSERT INTO registry_audit ({AUDIT_COLUMNS}) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            schema_sql.audit_row(entry),
        )
        # NOTIFY is transactional: delivered at commit, with the change, or never.
        await self.conn.execute(
            "UPDATE registry_state SET revision = revision + 1, audit_seq = %s "
            "RETURNING pg_notify(%s, revision::text)",
            (self._audit_seq, self._channel),
        )
        return entry


async def _require_key(conn: AsyncConnection, key: PromptKey) -> None:
    cur = await conn.execute(
        "SELECT 1 FROM registry_versions WHERE prompt_key = %s LIMIT 1", (key.text,)
    )
    if await cur.fetchone() is None:
        raise PromptNotFound(f"no prompt {key.text!r}")


async def _require_rollout(t: _Txn, key: PromptKey, rollout_id: str | None = None) -> Rollout:
    await _require_key(t.conn, key)
    running = await t.running_rollout(key)
    lifecycle.check_rollout_running(key, None if running is None else running.id, rollout_id)
    assert running is not None  # check_rollout_running refused otherwise
    return running


async def _promote(
    t: _Txn,
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
        await t.delete_rollout(key)
    previous = await t.current_prod(key)
    if previous is not None:
        # First: the unique index allows one prod per prompt at every step.
        await t.put_status(key, previous, Status.DEPRECATED)
    await t.put_status(key, version, Status.PROD)
    return await t.append_audit(
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


async def _read_snapshot(conn: AsyncConnection) -> RegistrySnapshot:
    cur = await conn.execute("SELECT generation, revision FROM registry_state")
    state = await cur.fetchone()
    cur = await conn.execute(
        "SELECT body, status FROM registry_versions ORDER BY prompt_key, version"
    )
    versions: dict[PromptKey, dict[int, PromptVersion]] = {}
    prod: dict[PromptKey, int] = {}
    for body, status in await cur.fetchall():
        version = row_to_version(body, status)
        versions.setdefault(version.key, {})[version.version] = version
        if version.status is Status.PROD:
            prod[version.key] = version.version
    cur = await conn.execute(f"SELECT {ROLLOUT_COLUMNS} FROM registry_rollouts")
    rollouts = {r.key: r for r in map(row_to_rollout, await cur.fetchall())}
    return RegistrySnapshot(
        revision=0 if state is None else int(state[1]),
        versions=versions,
        prod=prod,
        rollouts=rollouts,
        generation=None if state is None or state[0] is None else str(state[0]),
        tenants=await _read_tenants(conn),
    )


async def _read_tenants(conn: AsyncConnection) -> dict[str, Tenant]:
    """Every tenant record, by id (in the caller's transaction: a snapshot's view)."""
    cur = await conn.execute(f'{SELECT_TENANTS} GROUP BY t.id ORDER BY t.id COLLATE "C"')
    return {tenant.id: tenant for tenant in map(row_to_tenant, await cur.fetchall())}


async def _tenant(conn: AsyncConnection, tenant_id: str) -> Tenant | None:
    cur = await conn.execute(f"{SELECT_TENANTS} WHERE t.id = %s GROUP BY t.id", (tenant_id,))
    row = await cur.fetchone()
    return None if row is None else row_to_tenant(row)


async def _replace_rows(
    conn: AsyncConnection, image: RegistryImage, audit: list[AuditEntry], keep_audit: bool
) -> None:
    """The registry's rows become the image's (the audit log is appended to when kept)."""
    # The guard triggers refuse deleting versions and audit entries outside a restore.
    await conn.execute("SELECT set_config('promptproxy.restoring', 'on', true)")
    await conn.execute("DELETE FROM registry_rollouts")
    await conn.execute("DELETE FROM registry_versions")
    # The image's tenants are all the store's tenants (their keys go with them: CASCADE).
    await conn.execute("DELETE FROM registry_tenants")
    if not keep_audit:
        await conn.execute("DELETE FROM registry_audit")
    async with conn.cursor() as cur:
        async with cur.copy(f"COPY registry_versions ({VERSION_COLUMNS}) FROM STDIN") as copy:
            for numbered in image.versions.values():
                for version in numbered.values():
                    await copy.write_row(schema_sql.version_row(version))
        async with cur.copy(f"COPY registry_rollouts ({ROLLOUT_COLUMNS}) FROM STDIN") as copy:
            for rollout in image.rollouts.values():
                await copy.write_row(schema_sql.rollout_row(rollout))
        async with cur.copy(f"COPY registry_audit ({AUDIT_COLUMNS}) FROM STDIN") as copy:
            for entry in audit:
                await copy.write_row(schema_sql.audit_row(entry))
        async with cur.copy(f"COPY registry_tenants ({TENANT_COLUMNS}) FROM STDIN") as copy:
            for tenant in image.tenants.values():
                await copy.write_row(schema_sql.tenant_row(tenant))
        keys = "COPY registry_tenant_keys (key_sha256, tenant_id) FROM STDIN"
        async with cur.copy(keys) as copy:
            for tenant in image.tenants.values():
                for digest in tenant.key_hashes:
                    await copy.write_row((digest, tenant.id))
    await conn.execute("SELECT set_config('promptproxy.restoring', 'off', true)")


def _storable(text: str) -> bool:
    """PostgreSQL text cannot hold NUL (a prompt key never has one)."""
    return "\x00" not in text


def _check_text(texts: Sequence[str]) -> None:
    """Free text a write stores in a text column (the actor, a reason, a rollout id): the
    other stores keep a NUL character, PostgreSQL cannot, so it is refused up front rather
    than failing the write as if the server were down."""
    if not all(map(_storable, texts)):
        raise InvalidTransition(
            "the PostgreSQL registry store cannot keep a NUL character (U+0000) in an actor, "
            "reason, slug or rollout id: remove it"
        )


def _check_tenant_keys(image: RegistryImage) -> None:
    """An image read from JSON never gives one API key to two tenants (``RegistryImage``
    refuses it); one built otherwise is refused here too, before anything is written,
    rather than by the primary key in the middle of the restore (which would read as the
    server failing)."""
    owners: dict[str, str] = {}
    for tenant in image.tenants.values():
        for digest in tenant.key_hashes:
            if (owner := owners.setdefault(digest, tenant.id)) != tenant.id:
                raise InvalidTransition(
                    f"the image gives an API key of tenant {tenant.id!r} to tenant {owner!r} too"
                )
