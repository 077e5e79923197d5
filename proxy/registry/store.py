"""The storage contract both stores implement (embedded SQLite, Redis).

Rules every implementation keeps, and the contract tests check:
- Versions are immutable. Only status moves; each move and each creation appends one
  ``AuditEntry`` in the same atomic step as the change itself.
- A ``PromptKey`` names each line of versions; every method takes or returns keys, and a
  store holds a key as its text (``PromptKey.text``: a plain key's is the bare slug, so
  data written before keys existed reads back as itself).
- ``create_version`` numbers versions 1, 2, 3... per key without gaps or duplicates, even
  under concurrent pushes from several processes; content identical (same sha256) to the
  latest version returns that version with ``created=False`` and writes nothing.
- ``promote`` makes version N prod; the former prod becomes deprecated. ``rollback`` makes
  the most recent former prod (per the audit log, skipping the current one) prod again and
  the current prod deprecated. Both are atomic: no reader ever sees two prods or none in
  between.
- ``revision`` increases on every write; ``wait_for_change`` returns soon after any write by
  any process (notification where the store has one, polling otherwise) or on timeout.
- Rollouts (at most one per key; see ``lifecycle`` for the rules): ``start_rollout`` makes
  the candidate ``candidate`` and stores the rollout, ``update_rollout`` changes only its
  percentage, ``abort_rollout`` removes it and restores the candidate's former status,
  ``promote_rollout`` makes the candidate prod exactly like ``promote`` and removes the
  rollout. Each is one atomic step with its audit entry; ``snapshot`` carries the rollouts.
  A rollout's analysis policy and segment are stored in the same step as its start and
  never change; rollouts stored before either existed read back with ``None`` for it.
- Identity (``identity``): a store has a generation, written once when it is first
  initialised and carried in ``snapshot``. A store that reads with no generation or another
  one, or with a revision lower than one already read, than the one this instance bound to
  raises ``StoreReplaced`` on ``snapshot``, and every write refuses with it, checked
  atomically with the write: an emptied store is a lost registry, never an empty one.
- Tenants (``Tenant``): ``put_tenant`` creates or changes a record and ``delete_tenant``
  removes one, each in one atomic step with its audit entry (filed under
  ``tenant_audit_key``; its detail has the tiers and the number of keys, never a key
  hash) and a revision bump; putting the same tier and keys again writes nothing and
  returns no entry. An API key hash belongs to one tenant at most: a put that would give
  one to a second tenant raises ``InvalidTransition`` and writes nothing. ``snapshot``
  carries the records.
- Store failures raise ``StoreUnavailable``; lookups of missing things raise
  ``VersionNotFound``/``PromptNotFound``; forbidden moves raise ``InvalidTransition``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from proxy.prompt_key import PromptKey
from proxy.registry.analysis_policy import AnalysisPolicy
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
)

if TYPE_CHECKING:  # backup imports lifecycle, which imports this module's errors
    from proxy.registry.backup import RegistryImage


class StoreError(Exception):
    pass


class StoreUnavailable(StoreError):
    """The backing store cannot be reached or did not answer in time."""


class StoreReplaced(StoreError):
    """The store is not the registry this process served: emptied, replaced, or put back
    to an older copy (``identity``). Writes are refused until an operator restores it."""


class PromptNotFound(StoreError):
    pass


class VersionNotFound(StoreError):
    pass


class TenantNotFound(StoreError):
    pass


class InvalidTransition(StoreError):
    """A status move the lifecycle forbids (e.g. promote a deprecated version? no: allowed;
    rollback with no former prod: forbidden)."""


class PromptStore(Protocol):
    async def create_version(
        self, draft: VersionDraft, actor: str, created_at: float
    ) -> tuple[PromptVersion, bool]: ...

    async def get_version(self, key: PromptKey, version: int) -> PromptVersion: ...

    async def list_versions(self, key: PromptKey) -> Sequence[PromptVersion]: ...

    async def list_keys(self) -> Sequence[PromptKey]:
        """Every key with at least one version, in key order."""
        ...

    async def promote(
        self, key: PromptKey, version: int, actor: str, reason: str, at: float
    ) -> AuditEntry: ...

    async def rollback(self, key: PromptKey, actor: str, reason: str, at: float) -> AuditEntry: ...

    async def set_status(
        self, key: PromptKey, version: int, status: Status, actor: str, reason: str, at: float
    ) -> AuditEntry: ...

    async def audit(
        self, key: PromptKey | None = None, limit: int = 100, before_seq: int | None = None
    ) -> Sequence[AuditEntry]:
        """Newest first."""
        ...

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
        """Start a rollout of ``candidate``, with its automated-analysis policy and its
        segment if any (both kept for the rollout's life, read back by ``get_rollout`` and
        ``snapshot``, and in the start's audit detail);
        ``InvalidTransition`` if one is running or the candidate cannot be one
        (``lifecycle.check_rollout_candidate``)."""
        ...

    async def update_rollout(
        self, key: PromptKey, rollout_id: str, basis_points: int, actor: str, reason: str, at: float
    ) -> tuple[Rollout, AuditEntry]:
        """Change the percentage of the running rollout ``rollout_id`` (its id, mode,
        candidate, sticky key and analysis policy stay); ``InvalidTransition`` if it is no
        longer running."""
        ...

    async def get_rollout(self, key: PromptKey) -> Rollout | None: ...

    async def abort_rollout(self, key: PromptKey, actor: str, reason: str, at: float) -> AuditEntry:
        """End the running rollout without promotion; the candidate gets back the status it
        had before (``Rollout.restore_status``). ``InvalidTransition`` if none is running."""
        ...

    async def promote_rollout(
        self, key: PromptKey, actor: str, reason: str, at: float
    ) -> AuditEntry:
        """Make the running rollout's candidate prod (the former prod becomes deprecated, as
        with ``promote``) and end the rollout. ``InvalidTransition`` if none is running."""
        ...

    async def put_tenant(
        self, tenant: Tenant, actor: str, reason: str, at: float
    ) -> tuple[Tenant, AuditEntry | None]:
        """The record as stored (``updated_at`` is ``at`` when it changed) and its audit
        entry, None when it was already so."""
        ...

    async def delete_tenant(self, tenant_id: str, actor: str, reason: str, at: float) -> AuditEntry:
        """``TenantNotFound`` if there is no such tenant."""
        ...

    async def list_tenants(self) -> Sequence[Tenant]:
        """Every tenant record, by id."""
        ...

    async def revision(self) -> int: ...

    async def snapshot(self) -> RegistrySnapshot: ...

    async def wait_for_change(self, known_revision: int, max_wait: float) -> int:
        """Return the current revision once it differs from ``known_revision``, or after
        ``max_wait`` seconds."""
        ...

    async def generation(self) -> str | None:
        """The generation the store holds now, unchecked (None: none)."""
        ...

    def expect_generation(self, generation: str) -> None:
        """Before the first snapshot: bind to ``generation``, the registry the live
        replicas serve, whatever the store holds (``proxy.registry.fleet_adopt``)."""
        ...

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
        """Write ``image`` (numbers, hashes, statuses, rollouts, audit, generation) plus one
        ``restore`` audit entry per key, in one atomic step, if the store still holds
        generation ``expect``; ``InvalidTransition`` otherwise. The revision becomes higher
        than ``after_revision``, the image's and the store's. A store holding versions is
        refused (``backup.RestoreRefused``) unless ``backup.restore_keeps_audit`` allows it
        (no generation on Redis; an older copy of this registry on both) or ``overwrite``
        (Redis only: the embedded file's history cannot be deleted)."""
        ...

    async def close(self) -> None: ...
