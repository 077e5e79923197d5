"""The storage contract both stores implement (embedded SQLite, Redis).

Rules every implementation keeps, and the contract tests check:
- Versions are immutable. Only status moves; each move and each creation appends one
  ``AuditEntry`` in the same atomic step as the change itself.
- ``create_version`` numbers versions 1, 2, 3... per slug without gaps or duplicates, even
  under concurrent pushes from several processes; content identical (same sha256) to the
  latest version returns that version with ``created=False`` and writes nothing.
- ``promote`` makes version N prod; the former prod becomes deprecated. ``rollback`` makes
  the most recent former prod (per the audit log, skipping the current one) prod again and
  the current prod deprecated. Both are atomic: no reader ever sees two prods or none in
  between.
- ``revision`` increases on every write; ``wait_for_change`` returns soon after any write by
  any process (notification where the store has one, polling otherwise) or on timeout.
- Store failures raise ``StoreUnavailable``; lookups of missing things raise
  ``VersionNotFound``/``PromptNotFound``; forbidden moves raise ``InvalidTransition``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from proxy.registry.models import AuditEntry, PromptVersion, RegistrySnapshot, Status, VersionDraft


class StoreError(Exception):
    pass


class StoreUnavailable(StoreError):
    """The backing store cannot be reached or did not answer in time."""


class PromptNotFound(StoreError):
    pass


class VersionNotFound(StoreError):
    pass


class InvalidTransition(StoreError):
    """A status move the lifecycle forbids (e.g. promote a deprecated version? no: allowed;
    rollback with no former prod: forbidden)."""


class PromptStore(Protocol):
    async def create_version(
        self, draft: VersionDraft, actor: str, created_at: float
    ) -> tuple[PromptVersion, bool]: ...

    async def get_version(self, slug: str, version: int) -> PromptVersion: ...

    async def list_versions(self, slug: str) -> Sequence[PromptVersion]: ...

    async def list_slugs(self) -> Sequence[str]: ...

    async def promote(
        self, slug: str, version: int, actor: str, reason: str, at: float
    ) -> AuditEntry: ...

    async def rollback(self, slug: str, actor: str, reason: str, at: float) -> AuditEntry: ...

    async def set_status(
        self, slug: str, version: int, status: Status, actor: str, reason: str, at: float
    ) -> AuditEntry: ...

    async def audit(
        self, slug: str | None = None, limit: int = 100, before_seq: int | None = None
    ) -> Sequence[AuditEntry]:
        """Newest first."""
        ...

    async def revision(self) -> int: ...

    async def snapshot(self) -> RegistrySnapshot: ...

    async def wait_for_change(self, known_revision: int, max_wait: float) -> int:
        """Return the current revision once it differs from ``known_revision``, or after
        ``max_wait`` seconds."""
        ...

    async def close(self) -> None: ...
