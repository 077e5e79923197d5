"""``RedisStore``: the registry store for many replicas, on ``redis.asyncio``.

Every multi-key write is one Lua script (``redis_scripts``), so it is atomic and a crash
cannot leave half of it behind; key schema in ``redis_scripts`` too. Reads that span keys
use MULTI (and WATCH on the revision for the snapshot), so they see one consistent state.
An instance's first command records the key schema's version (``SCHEMA_VERSION``) on a
store that holds an older one or none, and refuses a store a newer promptproxy wrote.

Failure policy: a dead or paused Redis must fail fast, never hang. The client has explicit
socket timeouts and a short bounded retry, and every call also runs under an overall
deadline (``op_timeout``) as a backstop. Any connection/timeout/server error becomes
``StoreUnavailable``. A write that fails that way has an unknown outcome (the script may
have run); re-pushing the same content is safe because creates are idempotent by content.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError, WatchError

from proxy.prompt_key import InvalidPromptKey, PromptKey
from proxy.registry import lifecycle
from proxy.registry import redis_rollout_scripts as rollout_scripts
from proxy.registry import redis_scripts as scripts
from proxy.registry import redis_tenant_scripts as tenant_scripts
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.registry.backup import RegistryImage, overwrite_keeps_audit, restore_keeps_audit
from proxy.registry.identity import IdentityGuard, describe, new_generation
from proxy.registry.models import (
    TENANT_DELETE_ACTION,
    TENANT_SET_ACTION,
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
    tenant_audit_key,
)
from proxy.registry.redis_notify import ChangeHints
from proxy.registry.store import (
    InvalidTransition,
    PromptNotFound,
    StoreError,
    StoreReplaced,
    StoreUnavailable,
    TenantNotFound,
    VersionNotFound,
)
from proxy.tasks import interruptible

T = TypeVar("T")

_DOMAIN_ERRORS: tuple[tuple[str, type[StoreError]], ...] = (
    (scripts.PROMPT_NOT_FOUND, PromptNotFound),
    (scripts.VERSION_NOT_FOUND, VersionNotFound),
    (scripts.INVALID_TRANSITION, InvalidTransition),
    (scripts.STORE_REPLACED, StoreReplaced),
    (scripts.TENANT_NOT_FOUND, TenantNotFound),
)
_SNAPSHOT_ATTEMPTS = 10
#: Commands per pipeline when a restore writes its staging keys: each round trip stays well
#: inside the per-operation timeout whatever the size of the image.
_STAGE_CHUNK = 500
#: Staged keys of a restore that died half-way expire by themselves.
_STAGED_TTL_S = 3600
#: Keys the restore's final script renames or deletes per second, at the least (measured
#: ~10x faster on a 2-core machine): sizes its timeout to the image.
_FLIP_KEYS_PER_S = 20_000


class RedisStore:
    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "promptproxy:",
        poll_interval: float = 0.5,
        op_timeout: float = 1.5,
    ) -> None:
        """The store owns ``client`` and closes it in ``close``. Use ``from_url`` unless
        you need custom client settings; the client must have ``decode_responses=True``."""
        self._client = client
        self.keys = scripts.RedisKeys(prefix)
        self._poll_interval = poll_interval
        self._op_timeout = op_timeout
        self._hints = ChangeHints(client, self.keys.channel, op_timeout)
        self._closed = False
        self._identity = IdentityGuard()
        self._observing = asyncio.Lock()
        self._schema_checked = False
        self._schema = client.register_script(scripts.SCHEMA)
        self._init = client.register_script(scripts.INIT)
        self._create = client.register_script(scripts.CREATE)
        self._promote = client.register_script(scripts.PROMOTE)
        self._rollback = client.register_script(scripts.ROLLBACK)
        self._set_status = client.register_script(scripts.SET_STATUS)
        self._start_rollout = client.register_script(rollout_scripts.START)
        self._update_rollout = client.register_script(rollout_scripts.UPDATE)
        self._abort_rollout = client.register_script(rollout_scripts.ABORT)
        self._promote_rollout = client.register_script(rollout_scripts.PROMOTE)
        self._put_tenant = client.register_script(tenant_scripts.PUT)
        self._delete_tenant = client.register_script(tenant_scripts.DELETE)
        self._restore_flip = client.register_script(scripts.RESTORE_FLIP)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "promptproxy:",
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        retries: int = 1,
        health_check_interval: int = 5,
        poll_interval: float = 0.5,
        op_timeout: float = 1.5,
    ) -> RedisStore:
        """No I/O here: the pool connects on first use."""
        scripts.RedisKeys(prefix)  # refuse a bad prefix before building a client
        # Pinned rather than left to redis-py defaults, which changed across releases: one
        # retry is enough to replace a stale pooled connection (e.g. after a Redis restart),
        # more would only delay the failure a caller needs to see.
        client = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries),
            health_check_interval=health_check_interval,
            client_name="promptproxy-registry",
        )
        return cls(client, prefix=prefix, poll_interval=poll_interval, op_timeout=op_timeout)

    # -- plumbing -------------------------------------------------------------------------

    async def _guard(self, call: Callable[[], Awaitable[T]], limit: float | None = None) -> T:
        if self._closed:
            raise StoreUnavailable("registry store is closed")
        if not self._schema_checked:
            await self._check_schema()
        return await self._call(call, limit)

    async def _check_schema(self) -> None:
        """Once per instance, before its first command: record this build's key schema on a
        store written by an older one (or on a new store), refuse one a newer build wrote."""

        async def record() -> bytes | str:
            return await self._schema(keys=[self.keys.schema], args=[scripts.SCHEMA_VERSION])  # type: ignore[no-any-return]

        found = int(scripts.text(await self._call(record)))
        if found > scripts.SCHEMA_VERSION:
            raise StoreUnavailable(
                f"redis holds registry key schema v{found}; this promptproxy understands up "
                f"to v{scripts.SCHEMA_VERSION} (upgrade promptproxy)"
            )
        self._schema_checked = True

    async def _call(self, call: Callable[[], Awaitable[T]], limit: float | None = None) -> T:
        bound = self._op_timeout if limit is None else limit
        try:
            async with asyncio.timeout(bound):
                # In a task of its own: redis-py can swallow a cancel (see ``proxy.tasks``),
                # which would cost the refresher its shutdown and this timeout its bound.
                return await interruptible(call(), grace=self._op_timeout)
        except ResponseError as exc:
            message = str(exc)
            for code, error in _DOMAIN_ERRORS:
                if message.startswith(code + " "):
                    raise error(message[len(code) + 1 :]) from None
            raise StoreUnavailable(f"redis refused a registry command: {message}") from exc
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(
                f"redis unavailable for the prompt registry: {type(exc).__name__}: {exc}"
            ) from exc

    def _write_args(self, key: PromptKey, actor: str, reason: str, at: float) -> list[str]:
        return [self.keys.channel, key.text, actor, reason, repr(float(at))]

    async def _write(self, script: AsyncScript, key: PromptKey, args: list[str]) -> list[Any]:
        """Run a write script for ``key``, bound to this instance's generation and the
        highest revision it read (see ``identity``): the script refuses atomically if the
        store holds another generation or none, or went back to a lower revision."""
        return await self._write_keys(script, self.keys.for_write(key), args)

    async def _write_keys(self, script: AsyncScript, keys: list[str], args: list[str]) -> list[Any]:
        """``_write`` with the script's own KEYS (the tenant scripts name others)."""
        generation = await self._bound_generation()
        seen = str(self._identity.revision)

        async def run() -> list[Any]:
            return await script(keys=keys, args=[*args, seen, generation])  # type: ignore[no-any-return]

        try:
            return await self._guard(run)
        except StoreReplaced as exc:
            self._identity.lost = str(exc)
            raise

    async def _bound_generation(self) -> str:
        if self._identity.lost is not None:
            async with self._observing:
                await self._look_again()
        if self._identity.generation is None:
            await self._stamp_generation()
        assert self._identity.generation is not None
        return self._identity.generation

    async def _look_again(self) -> None:
        """Found lost before: read the identity again (a restore may have brought it back)
        rather than wait for the next snapshot read. Raises if it still is lost."""

        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(self.keys.generation)
                pipe.get(self.keys.revision)
                return await pipe.execute()

        found, revision = await self._guard(read)
        generation = None if found is None else scripts.text(found)
        self._identity.check_write(generation, int(revision or 0))

    async def _stamp_generation(self) -> None:
        """Never read a generation: a fresh store (or one written before generations
        existed) gets one now, unless another process has just set it (SET NX)."""
        fresh = new_generation()

        async def init() -> bytes | str:
            return await self._init(keys=[self.keys.generation], args=[fresh])  # type: ignore[no-any-return]

        self._identity.bind(scripts.text(await self._guard(init)))

    # -- reads ----------------------------------------------------------------------------

    async def get_version(self, key: PromptKey, version: int) -> PromptVersion:
        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(self.keys.versions(key), str(version))
                pipe.hget(self.keys.status(key), str(version))
                pipe.exists(self.keys.versions(key))
                return await pipe.execute()

        body, status, exists = await self._guard(read)
        if body is None or status is None:
            if not exists:
                raise PromptNotFound(f"no prompt {key.text!r}")
            raise VersionNotFound(f"{key} has no version {version}")
        return scripts.decode_version(body, status)

    async def list_versions(self, key: PromptKey) -> Sequence[PromptVersion]:
        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.keys.versions(key))
                pipe.hgetall(self.keys.status(key))
                return await pipe.execute()

        bodies, statuses = await self._guard(read)
        if not bodies:
            raise PromptNotFound(f"no prompt {key.text!r}")
        return list(scripts.decode_versions(bodies, statuses).values())  # numbered order

    async def list_keys(self) -> Sequence[PromptKey]:
        async def read() -> set[bytes | str]:
            return await self._client.smembers(self.keys.prompt_keys)

        return sorted(PromptKey.parse(scripts.text(text)) for text in await self._guard(read))

    async def audit(
        self, key: PromptKey | None = None, limit: int = 100, before_seq: int | None = None
    ) -> Sequence[AuditEntry]:
        if limit <= 0:
            return []
        stream = self.keys.audit if key is None else self.keys.key_audit(key)
        newest = "+" if before_seq is None else f"({before_seq}-0"

        async def read() -> list[Any]:
            return await self._client.xrevrange(stream, newest, "-", count=limit) or []

        entries = await self._guard(read)
        return [scripts.decode_audit(entry_id, fields) for entry_id, fields in entries]

    def expect_generation(self, generation: str) -> None:
        self._identity.expect(generation)

    async def generation(self) -> str | None:
        async def read() -> bytes | str | None:
            return await self._client.get(self.keys.generation)

        found = await self._guard(read)
        return None if found is None else scripts.text(found)

    async def revision(self) -> int:
        async def read() -> bytes | str | None:
            return await self._client.get(self.keys.revision)

        return int(await self._guard(read) or 0)

    async def snapshot(self) -> RegistrySnapshot:
        # Serialized, so reads are observed in the order they were made: a slower, older
        # read observed after a newer one would look like the revision going back.
        async with self._observing:
            return await self._snapshot()

    async def _snapshot(self) -> RegistrySnapshot:
        for _ in range(_SNAPSHOT_ATTEMPTS):
            snapshot = await self._guard(self._snapshot_once)
            if snapshot is None:
                continue
            if (
                snapshot.generation is None
                and not snapshot.empty
                and self._identity.generation is None
            ):
                # Written before generations existed: stamp it (SET NX) and read again.
                await self._stamp_generation()
                continue
            self._identity.observe(snapshot.generation, snapshot.revision)
            return snapshot
        raise StoreUnavailable(f"registry changed during {_SNAPSHOT_ATTEMPTS} snapshot reads")

    async def _snapshot_once(self) -> RegistrySnapshot | None:
        """One optimistic read: every write INCRs the revision, so WATCHing it makes EXEC
        fail (None) if anything changed between listing the keys and reading them."""
        async with self._client.pipeline(transaction=True) as pipe:
            await pipe.watch(self.keys.revision, self.keys.generation)
            keys = sorted(
                PromptKey.parse(scripts.text(text))
                for text in await pipe.smembers(self.keys.prompt_keys)
            )
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.get(self.keys.revision)
            pipe.get(self.keys.generation)
            pipe.hgetall(self.keys.tenants)
            for key in keys:
                pipe.hgetall(self.keys.versions(key))
                pipe.hgetall(self.keys.status(key))
                pipe.hgetall(self.keys.rollout(key))
            try:
                results = await pipe.execute()
            except WatchError:
                return None
        versions: dict[PromptKey, dict[int, PromptVersion]] = {}
        prod: dict[PromptKey, int] = {}
        rollouts: dict[PromptKey, Rollout] = {}
        for i, key in enumerate(keys):
            bodies, statuses, rollout = results[3 + 3 * i : 6 + 3 * i]
            by_number = scripts.decode_versions(bodies, statuses)
            versions[key] = by_number
            for number, version in by_number.items():
                if version.status is Status.PROD:
                    prod[key] = number
            if (running := scripts.decode_rollout(key, rollout)) is not None:
                rollouts[key] = running
        return RegistrySnapshot(
            revision=int(results[0] or 0),
            versions=versions,
            prod=prod,
            rollouts=rollouts,
            generation=None if results[1] is None else scripts.text(results[1]),
            tenants=scripts.decode_tenants(results[2]),
        )

    # -- change notification --------------------------------------------------------------

    async def wait_for_change(self, known_revision: int, max_wait: float) -> int:
        """The revision key is the truth, read at least every ``poll_interval``; pub/sub
        (``ChangeHints``) only makes it prompt. If Redis is down this raises
        ``StoreUnavailable`` fast rather than waiting out ``max_wait``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, max_wait)
        while True:
            current = await self.revision()
            remaining = deadline - loop.time()
            if current != known_revision or remaining <= 0:
                return current
            await self._hints.wait(min(self._poll_interval, remaining))

    # -- writes ---------------------------------------------------------------------------

    async def create_version(
        self, draft: VersionDraft, actor: str, created_at: float
    ) -> tuple[PromptVersion, bool]:
        sha = draft.content_sha256()
        fields = draft.to_version(0, created_at).to_dict()  # the number is assigned in Lua
        del fields["version"], fields["status"]
        args = [*self._write_args(draft.key, actor, draft.changelog, created_at), sha]
        args.append(orjson.dumps(fields).decode())

        created, _, body, status = await self._write(self._create, draft.key, args)
        return scripts.decode_version(body, status), bool(created)

    async def promote(
        self, key: PromptKey, version: int, actor: str, reason: str, at: float
    ) -> AuditEntry:
        args = [*self._write_args(key, actor, reason, at), str(version)]

        return self._promoted(
            key, version, actor, reason, at, await self._write(self._promote, key, args)
        )

    @staticmethod
    def _promoted(
        key: PromptKey, version: int, actor: str, reason: str, at: float, result: list[Any]
    ) -> AuditEntry:
        """The audit entry of a promote, from what the Lua ``promote_version`` returned."""
        seq, from_status, previous, detail = result
        return AuditEntry(
            seq=int(seq),
            at=at,
            actor=actor,
            action=lifecycle.PROMOTE_ACTION,
            key=key,
            version=version,
            from_status=Status(from_status),
            to_status=Status.PROD,
            reason=reason,
            previous_prod=int(previous) if previous else None,
            detail=scripts.decode_detail(detail),
        )

    async def rollback(self, key: PromptKey, actor: str, reason: str, at: float) -> AuditEntry:
        args = self._write_args(key, actor, reason, at)

        seq, target, from_status, current = await self._write(self._rollback, key, args)
        return AuditEntry(
            seq=int(seq),
            at=at,
            actor=actor,
            action=lifecycle.ROLLBACK_ACTION,
            key=key,
            version=int(target),
            from_status=Status(from_status),
            to_status=Status.PROD,
            reason=reason,
            previous_prod=int(current),
        )

    async def set_status(
        self, key: PromptKey, version: int, status: Status, actor: str, reason: str, at: float
    ) -> AuditEntry:
        args = [*self._write_args(key, actor, reason, at), str(version), status.value]

        seq, from_status = await self._write(self._set_status, key, args)
        return AuditEntry(
            seq=int(seq),
            at=at,
            actor=actor,
            action=lifecycle.SET_STATUS_ACTION,
            key=key,
            version=version,
            from_status=Status(from_status),
            to_status=status,
            reason=reason,
        )

    # -- rollouts -------------------------------------------------------------------------

    async def get_rollout(self, key: PromptKey) -> Rollout | None:
        async def read() -> dict[Any, Any]:
            return await self._client.hgetall(self.keys.rollout(key))

        return scripts.decode_rollout(key, await self._guard(read))

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
        args = [
            *self._write_args(key, actor, reason, at),
            rollout_id,
            str(candidate),
            mode.value,
            str(basis_points),
            str(sticky),
            "" if analysis is None else orjson.dumps(analysis.to_dict()).decode(),
            "" if segment is None else orjson.dumps(segment.to_dict()).decode(),
        ]

        seq, from_status, detail = await self._write(self._start_rollout, key, args)
        restore = Status(from_status)
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
            restore_status=restore,
            analysis=analysis,
            segment=segment,
        )
        entry = AuditEntry(
            seq=int(seq),
            at=at,
            actor=actor,
            action=lifecycle.ROLLOUT_START_ACTION,
            key=key,
            version=candidate,
            from_status=restore,
            to_status=Status.CANDIDATE,
            reason=reason,
            detail=scripts.decode_detail(detail),
        )
        return rollout, entry

    async def update_rollout(
        self, key: PromptKey, rollout_id: str, basis_points: int, actor: str, reason: str, at: float
    ) -> tuple[Rollout, AuditEntry]:
        lifecycle.check_rollout_values(basis_points)
        args = [*self._write_args(key, actor, reason, at), rollout_id, str(basis_points)]

        seq, detail, flat = await self._write(self._update_rollout, key, args)
        rollout = scripts.decode_rollout(key, dict(zip(flat[::2], flat[1::2], strict=True)))
        assert rollout is not None  # the script returns the rollout it just changed
        entry = AuditEntry(
            seq=int(seq),
            at=at,
            actor=actor,
            action=lifecycle.ROLLOUT_UPDATE_ACTION,
            key=key,
            version=rollout.candidate,
            from_status=None,
            to_status=None,
            reason=reason,
            detail=scripts.decode_detail(detail),
        )
        return rollout, entry

    async def abort_rollout(self, key: PromptKey, actor: str, reason: str, at: float) -> AuditEntry:
        args = self._write_args(key, actor, reason, at)

        seq, candidate, from_status, to_status, detail = await self._write(
            self._abort_rollout, key, args
        )
        return AuditEntry(
            seq=int(seq),
            at=at,
            actor=actor,
            action=lifecycle.ROLLOUT_ABORT_ACTION,
            key=key,
            version=int(candidate),
            from_status=Status(from_status),
            to_status=Status(to_status),
            reason=reason,
            detail=scripts.decode_detail(detail),
        )

    async def promote_rollout(
        self, key: PromptKey, actor: str, reason: str, at: float
    ) -> AuditEntry:
        args = self._write_args(key, actor, reason, at)

        candidate, *promoted = await self._write(self._promote_rollout, key, args)
        return self._promoted(key, int(candidate), actor, reason, at, promoted)

    # -- tenants --------------------------------------------------------------------------

    async def list_tenants(self) -> Sequence[Tenant]:
        async def read() -> dict[Any, Any]:
            return await self._client.hgetall(self.keys.tenants)

        return list(scripts.decode_tenants(await self._guard(read)).values())

    async def put_tenant(
        self, tenant: Tenant, actor: str, reason: str, at: float
    ) -> tuple[Tenant, AuditEntry | None]:
        stored = dataclasses.replace(tenant, updated_at=at)
        key = stored.audit_key
        args = [
            *self._write_args(key, actor, reason, at),
            stored.id,
            stored.tier,
            orjson.dumps(stored.to_dict()).decode(),
            *sorted(stored.key_hashes),
        ]

        seq, answer = await self._write_keys(
            self._put_tenant, self.keys.for_tenant_write(stored.id), args
        )
        if not int(seq):  # already so: ``answer`` is the stored record
            return Tenant.from_dict(orjson.loads(answer)), None
        return stored, self._tenant_entry(
            int(seq), TENANT_SET_ACTION, key, actor, reason, at, answer
        )

    async def delete_tenant(self, tenant_id: str, actor: str, reason: str, at: float) -> AuditEntry:
        try:
            key = tenant_audit_key(tenant_id)
        except InvalidPromptKey:  # no record can have such an id
            raise TenantNotFound(f"no tenant {tenant_id!r}") from None
        args = [*self._write_args(key, actor, reason, at), tenant_id]

        seq, detail = await self._write_keys(
            self._delete_tenant, self.keys.for_tenant_write(tenant_id), args
        )
        return self._tenant_entry(int(seq), TENANT_DELETE_ACTION, key, actor, reason, at, detail)

    @staticmethod
    def _tenant_entry(
        seq: int, action: str, key: PromptKey, actor: str, reason: str, at: float, detail: Any
    ) -> AuditEntry:
        """The audit entry a tenant script wrote, from the seq and detail it returned."""
        return AuditEntry(
            seq=seq,
            at=at,
            actor=actor,
            action=action,
            key=key,
            version=None,
            from_status=None,
            to_status=None,
            reason=reason,
            detail=scripts.decode_detail(detail),
        )

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
        """Put ``image`` in place of the registry keys, all or nothing, if the store still
        holds generation ``expect`` and ``backup.restore_keeps_audit`` allows it.

        The image is written under staging keys in bounded pipelines (each under the
        per-operation timeout), then one script checks that nothing changed and renames
        them into place: a failure before that leaves the registry as it was. If the
        answer of that script is lost (a timeout), the store is read back: the restore
        is reported applied when it was."""
        found, stored_revision, last_seq, old_keys, audited = await self._guard(self._restore_state)
        if found != expect:
            raise InvalidTransition(
                f"the store holds {describe(found)}, not {describe(expect)} as when "
                "the restore was asked for: look again before restoring"
            )
        if overwrite:
            keep_audit = overwrite_keeps_audit(found, image)
        else:
            keep_audit = restore_keeps_audit(
                found, stored_revision, bool(old_keys), image, after_revision
            )
        after_seq = last_seq if keep_audit else 0
        entries = image.restore_entries(actor, reason, at, after_seq)
        audit = [e for e in image.audit if e.seq > after_seq] + entries
        revision = max(image.revision, after_revision, stored_revision) + 1
        restore_id = new_generation()
        # The tenants with an audit stream after the restore: a kept log keeps theirs.
        staged = await self._stage(restore_id, image, audit, audited if keep_audit else [])
        try:
            keys, argv = self._flip_args(
                restore_id,
                staged,
                old_keys,
                audited,
                keep_audit,
                found,
                stored_revision,
                image.generation,
                revision,
                max([after_seq, *(e.seq for e in audit)]),
            )

            async def flip() -> Any:
                return await self._restore_flip(keys=keys, args=argv)

            try:
                await self._guard(flip, limit=self._op_timeout + len(keys) / _FLIP_KEYS_PER_S)
            except (StoreUnavailable, InvalidTransition):
                # Lost answer, or a retry of a flip that had run: did it apply?
                if not await self._restore_applied(restore_id):
                    raise
        finally:
            await self._drop_staged(staged.values())
        self._identity.restored(image.generation, revision)
        return revision

    async def _restore_state(self) -> tuple[str | None, int, int, list[PromptKey], list[str]]:
        """Generation, revision, last audit seq, prompt keys, and the tenants with an audit
        stream (``tenant_audits``), read at once."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.generation)
            pipe.get(self.keys.revision)
            pipe.get(self.keys.audit_seq)
            pipe.smembers(self.keys.prompt_keys)
            pipe.xrevrange(self.keys.audit, "+", "-", count=1)
            pipe.smembers(self.keys.tenant_audits)
            found, revision, seq, keys, newest, audited = await pipe.execute()
        # The stream's newest entry too: a kept log is appended after both.
        last = max([int(seq or 0), *(int(scripts.text(i).split("-", 1)[0]) for i, _ in newest)])
        return (
            None if found is None else scripts.text(found),
            int(revision or 0),
            last,
            sorted(PromptKey.parse(scripts.text(text)) for text in keys),
            sorted(scripts.text(text) for text in audited),
        )

    async def _restore_applied(self, restore_id: str) -> bool:
        async def read() -> bytes | str | None:
            return await self._client.get(self.keys.last_restore)

        found = await self._guard(read)
        return found is not None and scripts.text(found) == restore_id

    async def _stage(
        self,
        restore_id: str,
        image: RegistryImage,
        audit: list[AuditEntry],
        audited_tenants: Sequence[str] = (),
    ) -> dict[str, str]:
        """Write the image under staging keys; returns live key -> staged key. Staged keys
        expire, so a restore that dies half-way leaves nothing behind for long.
        ``audited_tenants``: tenants whose audit stream the restore keeps (``tenant_audits``
        after it holds those and the tenants ``audit`` files entries under)."""
        staged: dict[str, str] = {}

        def at(name: str) -> str:
            return staged.setdefault(name, self.keys.staged(restore_id, name))

        commands: list[partial[Any]] = []
        for key, numbered in image.versions.items():
            commands.append(partial(_sadd, at(self.keys.prompt_keys), key.text))
            for number, version in numbered.items():
                body = version.to_dict()
                del body["status"]
                commands.append(
                    partial(
                        _hset,
                        at(self.keys.versions(key)),
                        str(number),
                        orjson.dumps(body).decode(),
                    )
                )
                commands.append(
                    partial(_hset, at(self.keys.status(key)), str(number), version.status.value)
                )
            if stack := image.prod_stack(key):
                commands.append(
                    partial(_rpush, at(self.keys.prod_stack(key)), list(map(str, stack)))
                )
        for key, rollout in image.rollouts.items():
            commands.append(
                partial(_hset_all, at(self.keys.rollout(key)), _rollout_fields(rollout))
            )
        for tenant in image.tenants.values():
            commands.append(
                partial(
                    _hset, at(self.keys.tenants), tenant.id, orjson.dumps(tenant.to_dict()).decode()
                )
            )
            if tenant.key_hashes:
                owned = dict.fromkeys(tenant.key_hashes, tenant.id)
                commands.append(partial(_hset_all, at(self.keys.tenant_keys), owned))
        audited = set(audited_tenants)
        for entry in audit:
            fields = scripts.encode_audit(entry)
            for stream in (self.keys.audit, self.keys.key_audit(entry.key)):
                commands.append(partial(_xadd, at(stream), fields, f"{entry.seq}-0"))
            if (tenant_id := _audited_tenant(entry.key)) is not None:
                audited.add(tenant_id)
        for tenant_id in sorted(audited):
            commands.append(partial(_sadd, at(self.keys.tenant_audits), tenant_id))
        try:
            for start in range(0, len(commands), _STAGE_CHUNK):
                chunk = commands[start : start + _STAGE_CHUNK]

                async def write(chunk: list[partial[Any]] = chunk) -> None:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for command in chunk:
                            command(pipe)
                        # Each staged key expires: those this chunk wrote (first argument).
                        for name in {command.args[0] for command in chunk}:
                            pipe.expire(name, _STAGED_TTL_S)
                        await pipe.execute()

                await self._guard(write)
        except BaseException:
            await self._drop_staged(staged.values())
            raise
        return staged

    async def _drop_staged(self, keys: Any) -> None:
        names = list(keys)
        if not names:
            return

        async def drop() -> None:
            for start in range(0, len(names), _STAGE_CHUNK):
                await self._client.delete(*names[start : start + _STAGE_CHUNK])

        with contextlib.suppress(StoreUnavailable):  # they expire anyway
            await self._guard(drop)

    def _flip_args(
        self,
        restore_id: str,
        staged: dict[str, str],
        old_keys: list[PromptKey],
        audited_tenants: list[str],
        keep_audit: bool,
        expect: str | None,
        expect_revision: int,
        generation: str,
        revision: int,
        last_seq: int,
    ) -> tuple[list[str], list[str]]:
        old_streams = [*old_keys, *map(tenant_audit_key, audited_tenants)]
        audit_keys = {self.keys.audit} | {self.keys.key_audit(k) for k in old_streams}
        audit_keys |= {k for k in staged if k.startswith(self.keys.audit + ":")}
        # The image's tenants (staged, when it has any) replace all of the store's.
        delete = [
            self.keys.prompt_keys,
            self.keys.tenants,
            self.keys.tenant_keys,
            self.keys.tenant_audits,
        ]
        for key in old_keys:
            delete += [
                self.keys.versions(key),
                self.keys.status(key),
                self.keys.prod_stack(key),
                self.keys.rollout(key),
            ]
        if not keep_audit:
            delete += [self.keys.key_audit(k) for k in old_streams] + [self.keys.audit]
        rename = [
            (s, live) for live, s in staged.items() if live not in audit_keys or not keep_audit
        ]
        append = [(s, live) for live, s in staged.items() if live in audit_keys and keep_audit]
        keys = [
            self.keys.generation,
            self.keys.revision,
            self.keys.audit_seq,
            self.keys.last_restore,
        ]
        keys += delete
        keys += [k for pair in rename for k in pair]
        keys += [k for pair in append for k in pair]
        argv = [
            expect or "",
            str(expect_revision),
            generation,
            str(revision),
            str(last_seq),
            self.keys.channel,
            restore_id,
            str(len(delete)),
            str(len(rename)),
            str(len(append)),
        ]
        return keys, argv

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._hints.close()
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self._op_timeout):
                await interruptible(self._client.aclose(close_connection_pool=True), grace=0.0)


def _audited_tenant(key: PromptKey) -> str | None:
    """The tenant whose record's audit ``key`` is (``tenant_audit_key``), or None."""
    if key.layer is None or key.layer.kind != "tenant":
        return None
    return key.layer.name if key == tenant_audit_key(key.layer.name) else None


# Staging commands, as functions of a pipeline (queued, not awaited).
def _sadd(key: str, member: str, pipe: Any) -> None:
    pipe.sadd(key, member)


def _hset(key: str, field: str, value: str, pipe: Any) -> None:
    pipe.hset(key, field, value)


def _hset_all(key: str, fields: dict[str, str], pipe: Any) -> None:
    pipe.hset(key, mapping=fields)


def _rpush(key: str, values: list[str], pipe: Any) -> None:
    pipe.rpush(key, *values)


def _xadd(key: str, fields: dict[str, str], entry_id: str, pipe: Any) -> None:
    pipe.xadd(key, fields, id=entry_id)


def _rollout_fields(rollout: Rollout) -> dict[str, str]:
    """The ``rollout:<key>`` hash of ``rollout`` (see ``redis_scripts``)."""
    fields = {
        "id": rollout.id,
        "candidate": str(rollout.candidate),
        "mode": rollout.mode.value,
        "basis_points": str(rollout.basis_points),
        "sticky": str(rollout.sticky),
        "started_at": repr(float(rollout.started_at)),
        "updated_at": repr(float(rollout.updated_at)),
        "actor": rollout.actor,
        "restore_status": rollout.restore_status.value,
    }
    if rollout.analysis is not None:
        fields["analysis"] = orjson.dumps(rollout.analysis.to_dict()).decode()
    if rollout.segment is not None:
        fields["segment"] = orjson.dumps(rollout.segment.to_dict()).decode()
    return fields
