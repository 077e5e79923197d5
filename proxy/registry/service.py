"""RegistryService: the prompt use cases, shared by the admin API and (through it) the CLI.

Validation, ids and timestamps live here; stores only persist. Store and template errors
are translated once into the ``ProxyError`` tree so the API answers them in the OpenAI shape.
"""

from __future__ import annotations

import difflib
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from proxy.analysis.policy import AnalysisPolicy
from proxy.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from proxy.models import SLUG_PATTERN
from proxy.registry.models import (
    AuditEntry,
    PromptVersion,
    Rollout,
    RolloutMode,
    Status,
    StickyKey,
    VersionDraft,
)
from proxy.registry.percent import to_basis_points
from proxy.registry.store import (
    InvalidTransition,
    PromptNotFound,
    PromptStore,
    StoreUnavailable,
    VersionNotFound,
)
from proxy.registry.templates import TemplateProblem, check_template


@dataclass(frozen=True, slots=True)
class PromptSummary:
    slug: str
    prod_version: int | None
    latest_version: int
    versions: int
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "prod_version": self.prod_version,
            "latest_version": self.latest_version,
            "versions": self.versions,
            "updated_at": self.updated_at,
        }


@contextmanager
def _store_errors(slug: str | None = None, *, reading: bool = False) -> Iterator[None]:
    """``reading``: the call only reads, so an outage must not claim a change was lost."""
    try:
        yield
    except StoreUnavailable as exc:
        what = "the registry cannot be read" if reading else "changes cannot be saved"
        raise ServiceUnavailable(
            f"The prompt registry store is unavailable, so {what} now ({exc}). "
            "The proxy keeps serving the last known prompts; retry when the store is back.",
            code="registry_unavailable",
        ) from None
    except PromptNotFound:
        raise NotFound(
            f"No prompt named '{slug}'.", param="slug", code="prompt_not_found"
        ) from None
    except VersionNotFound as exc:
        raise NotFound(
            str(exc) or "No such version.", param="version", code="version_not_found"
        ) from None
    except InvalidTransition as exc:
        raise Conflict(str(exc), code="invalid_transition") from None


def check_slug(slug: str) -> None:
    if not SLUG_PATTERN.match(slug):
        raise InvalidRequest(
            f"Invalid prompt slug {slug!r}: it must match [A-Za-z0-9._-]{{1,64}}.",
            param="slug",
            code="invalid_slug",
        )


class RegistryService:
    def __init__(self, store: PromptStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def push(self, draft: VersionDraft, actor: str) -> tuple[PromptVersion, bool]:
        """Create a version (or return the latest if its content is identical)."""
        check_slug(draft.slug)
        try:
            check_template(draft.template, draft.variables)
        except TemplateProblem as exc:
            where = f" (line {exc.line}" + (f", column {exc.column})" if exc.column else ")")
            raise InvalidRequest(
                f"Template rejected: {exc.message}{where if exc.line else ''}",
                param="template",
                code="invalid_template",
            ) from None
        with _store_errors(draft.slug):
            return await self._store.create_version(draft, actor, self._clock())

    async def list_prompts(self) -> list[PromptSummary]:
        with _store_errors(reading=True):
            snapshot = await self._store.snapshot()  # one consistent read, not one per slug
        return [
            _summarize(slug, list(snapshot.versions[slug].values()))
            for slug in sorted(snapshot.versions)
        ]

    async def get_prompt(self, slug: str) -> tuple[PromptSummary, Sequence[PromptVersion]]:
        check_slug(slug)
        with _store_errors(slug, reading=True):
            versions = await self._store.list_versions(slug)
            if not versions:
                raise PromptNotFound(slug)
        return _summarize(slug, versions), versions

    async def get_version(self, slug: str, version: int) -> PromptVersion:
        check_slug(slug)
        with _store_errors(slug, reading=True):
            return await self._store.get_version(slug, version)

    async def promote(self, slug: str, version: int, actor: str, reason: str) -> AuditEntry:
        check_slug(slug)
        with _store_errors(slug):
            return await self._store.promote(slug, version, actor, reason, self._clock())

    async def rollback(self, slug: str, actor: str, reason: str) -> AuditEntry:
        check_slug(slug)
        with _store_errors(slug):
            return await self._store.rollback(slug, actor, reason, self._clock())

    # -- rollouts ---------------------------------------------------------------------------

    async def set_rollout(
        self,
        slug: str,
        candidate: int,
        mode: RolloutMode,
        percent: float,
        sticky: str | None,
        actor: str,
        reason: str,
        analysis: AnalysisPolicy | None = None,
    ) -> RolloutChange:
        """Start a rollout, or change the percentage of the running one when ``candidate``
        and ``mode`` are the same (its id, and so its cohorts, are kept).

        ``analysis`` is the automated-analysis policy of a new rollout. On a running one it
        may be omitted (the policy stays) or repeated, never changed."""
        check_slug(slug)
        points = basis_points(percent)
        key = parse_sticky(sticky) if sticky is not None else None
        with _store_errors(slug):
            running = await self._store.get_rollout(slug)
            if running is None:
                versions = await self._store.list_versions(slug)
                if not versions:
                    raise PromptNotFound(slug)
                if not any(v.status is Status.PROD for v in versions):
                    raise Conflict(
                        f"{slug} has no prod version to compare the candidate with: promote "
                        "one first.",
                        code="no_prod_version",
                    )
                rollout, entry = await self._store.start_rollout(
                    slug,
                    secrets.token_hex(6),
                    candidate,
                    mode,
                    points,
                    key or StickyKey.parse("none"),
                    actor,
                    reason,
                    self._clock(),
                    analysis,
                )
                return RolloutChange(rollout, entry, started=True)
            if running.candidate != candidate or running.mode is not mode:
                raise Conflict(
                    f"{slug} already has a {running.mode.value} rollout of "
                    f"v{running.candidate}: change its percentage (same candidate and mode), "
                    "promote it or abort it before starting another.",
                    param="candidate",
                    code="rollout_running",
                )
            if key is not None and key != running.sticky:
                raise Conflict(
                    f"The running rollout is sticky on '{running.sticky}'; changing the key "
                    "would reshuffle every cohort. Abort it and start a new one instead.",
                    param="sticky",
                    code="rollout_running",
                )
            if analysis is not None and analysis != running.analysis:
                # Verdicts so far were judged by the running policy; a new one would
                # silently reinterpret them (its step index, its failure count).
                has = "no analysis policy" if running.analysis is None else "another policy"
                raise Conflict(
                    f"The running rollout has {has}, and a policy is fixed for a rollout's "
                    "life. Abort it and start a new one with this policy instead.",
                    param="analysis",
                    code="rollout_running",
                )
            if points == running.basis_points:
                return RolloutChange(running, None, started=False)
            rollout, entry = await self._store.update_rollout(
                slug, running.id, points, actor, reason, self._clock()
            )
            return RolloutChange(rollout, entry, started=False)

    async def get_rollout(self, slug: str) -> Rollout:
        check_slug(slug)
        with _store_errors(slug, reading=True):
            rollout = await self._store.get_rollout(slug)
            if rollout is None:
                if not await self._store.list_versions(slug):
                    raise PromptNotFound(slug)
                raise NotFound(
                    f"{slug} has no rollout running.", param="slug", code="rollout_not_found"
                )
        return rollout

    async def list_rollouts(self) -> list[Rollout]:
        with _store_errors(reading=True):
            snapshot = await self._store.snapshot()
        return [snapshot.rollouts[slug] for slug in sorted(snapshot.rollouts)]

    async def abort_rollout(self, slug: str, actor: str, reason: str) -> AuditEntry:
        check_slug(slug)
        with _store_errors(slug):
            return await self._store.abort_rollout(slug, actor, reason, self._clock())

    async def promote_rollout(self, slug: str, actor: str, reason: str) -> AuditEntry:
        check_slug(slug)
        with _store_errors(slug):
            return await self._store.promote_rollout(slug, actor, reason, self._clock())

    async def audit(
        self, slug: str | None = None, limit: int = 100, before_seq: int | None = None
    ) -> Sequence[AuditEntry]:
        if slug is not None:
            check_slug(slug)
        with _store_errors(slug, reading=True):
            return await self._store.audit(slug, limit, before_seq)

    async def prod_at(self, slug: str, at: float) -> int | None:
        """Which version was prod at instant ``at`` (None if none was), from the audit log."""
        await self.get_prompt(slug)  # 404 for unknown slugs
        prod: int | None = None
        for entry in reversed(await self._full_audit(slug)):
            if entry.at > at:
                break
            if entry.to_status is Status.PROD:
                prod = entry.version
            elif entry.from_status is Status.PROD and entry.version == prod:
                prod = None
        return prod

    async def _full_audit(self, slug: str) -> list[AuditEntry]:
        entries: list[AuditEntry] = []
        before: int | None = None
        with _store_errors(slug, reading=True):
            while True:
                page = await self._store.audit(slug, 500, before)
                entries.extend(page)
                if len(page) < 500:
                    return entries
                before = page[-1].seq

    async def diff(self, slug: str, a: int, b: int) -> str:
        old, new = await self.get_version(slug, a), await self.get_version(slug, b)
        lines: list[str] = []
        for label, left, right in (
            ("model", str(old.model), str(new.model)),
            ("variables", _vars(old), _vars(new)),
            ("params", str(old.params), str(new.params)),
        ):
            if left != right:
                lines.append(f"{label}: {left} -> {right}\n")
        lines.extend(
            difflib.unified_diff(
                old.template.splitlines(keepends=True),
                new.template.splitlines(keepends=True),
                fromfile=f"{slug}@v{a}",
                tofile=f"{slug}@v{b}",
            )
        )
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def basis_points(percent: float) -> int:
    """``percent`` (0 to 100 in steps of 0.01) as basis points, or ``InvalidRequest``."""
    try:
        return to_basis_points(percent)
    except ValueError as exc:
        raise InvalidRequest(f"percent {exc}.", param="percent", code="invalid_percent") from None


def parse_sticky(spec: str) -> StickyKey:
    try:
        return StickyKey.parse(spec)
    except ValueError as exc:
        raise InvalidRequest(str(exc) + ".", param="sticky", code="invalid_sticky") from None


@dataclass(frozen=True, slots=True)
class RolloutChange:
    """What a PUT did: started a rollout, changed its percentage, or nothing (same values)."""

    rollout: Rollout
    audit: AuditEntry | None
    started: bool


def _summarize(slug: str, versions: Sequence[PromptVersion]) -> PromptSummary:
    return PromptSummary(
        slug=slug,
        prod_version=next((v.version for v in versions if v.status is Status.PROD), None),
        latest_version=max(v.version for v in versions),
        versions=len(versions),
        updated_at=max(v.created_at for v in versions),
    )


def _vars(version: PromptVersion) -> str:
    return ", ".join(v.name for v in version.variables)
