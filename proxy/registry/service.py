"""RegistryService: the prompt use cases, shared by the admin API and (through it) the CLI.

Validation, ids and timestamps live here; stores only persist. Store and template errors
are translated once into the ``ProxyError`` tree so the API answers them in the OpenAI shape.
"""

from __future__ import annotations

import difflib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from proxy.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from proxy.prompt_key import (
    GUARDRAILS_SLUG,
    NAME_PATTERN,
    InvalidPromptKey,
    PromptKey,
)
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.registry.explain import ExplainFailed, Explanation, explain
from proxy.registry.fleet import Fleet, FleetError, FleetWait, ReplicaView
from proxy.registry.gates import GateCheck, check_override_reason, gated_reason
from proxy.registry.history import StateAt, state_at
from proxy.registry.layer_checks import LayerProblem, base_problems, override_problems
from proxy.registry.lifecycle import ROLLOUT_START_ACTION
from proxy.registry.models import (
    AuditEntry,
    PromptVersion,
    Rollout,
    RolloutMode,
    RolloutSegment,
    Status,
    StickyKey,
    Tenant,
    VersionDraft,
)
from proxy.registry.override_fit import FitReport, fit_report
from proxy.registry.percent import to_basis_points
from proxy.registry.reserved import reserved_problem
from proxy.registry.safety_gate import refuse_push, refuse_serving
from proxy.registry.store import (
    InvalidTransition,
    PromptNotFound,
    PromptStore,
    StoreReplaced,
    StoreUnavailable,
    TenantNotFound,
    VersionNotFound,
)
from proxy.registry.templates import TemplateProblem, check_template
from proxy.safety import SafetyPolicy


@dataclass(frozen=True, slots=True)
class PromptSummary:
    key: PromptKey
    prod_version: int | None
    latest_version: int
    versions: int
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "slug": self.key.text,
            "prod_version": self.prod_version,
            "latest_version": self.latest_version,
            "versions": self.versions,
            "updated_at": self.updated_at,
        }


@contextmanager
def store_errors(key: PromptKey | None = None, *, reading: bool = False) -> Iterator[None]:
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
        raise NotFound(f"No prompt named '{key}'.", param="slug", code="prompt_not_found") from None
    except VersionNotFound as exc:
        raise NotFound(
            str(exc) or "No such version.", param="version", code="version_not_found"
        ) from None
    except InvalidTransition as exc:
        raise Conflict(str(exc), code="invalid_transition") from None
    except StoreReplaced as exc:
        raise Conflict(
            f"The prompt registry store lost its data ({exc}). Replicas keep serving their "
            "last good snapshot; changes are refused until an operator restores the store: "
            "`promptproxy registry restore --from-replica` or `promptproxy registry import "
            "FILE` (docs/operations.md#registry-store-lost).",
            code="registry_store_replaced",
        ) from None


def prompt_key(slug: str) -> PromptKey:
    """The key a slug from a request names (the admin API's path or query), or the 400 an
    invalid slug gets: ``PromptKey`` never raises past the edge."""
    try:
        return PromptKey(slug)
    except InvalidPromptKey:
        raise InvalidRequest(
            f"Invalid prompt slug {slug!r}: it must match [A-Za-z0-9._-]{{1,64}}.",
            param="slug",
            code="invalid_slug",
        ) from None


def _tenant(tenant_id: str, tier: str, key_hashes: Sequence[str]) -> Tenant:
    if not NAME_PATTERN.fullmatch(tenant_id):
        raise InvalidRequest(
            f"Invalid tenant id {tenant_id!r}: it must match [A-Za-z0-9._-]{{1,64}}.",
            param="tenant_id",
            code="invalid_tenant",
        )
    try:
        return Tenant(tenant_id, tier, tuple(key_hashes))
    except ValueError as exc:
        raise InvalidRequest(
            f"Invalid API key hashes: {exc}.", param="api_key_sha256", code="invalid_tenant"
        ) from None


def _no_tenant(tenant_id: str) -> NotFound:
    return NotFound(f"No tenant {tenant_id!r}.", param="tenant_id", code="tenant_not_found")


def _refuse_layer_problems(problems: Sequence[LayerProblem], code: str) -> None:
    """A 400 naming every problem, the first one's field as the parameter."""
    if problems:
        raise InvalidRequest(
            "Version rejected: " + "; ".join(f"{p.field}: {p.message}" for p in problems) + ".",
            param=problems[0].field,
            code=code,
        )


def check_reserved(draft: VersionDraft) -> None:
    """The platform's own slugs: only the known ones, and the guardrails as the platform
    composes them (see ``reserved``)."""
    problem = reserved_problem(draft.key, draft.template, draft.variables)
    if problem is not None:
        raise InvalidRequest(
            problem.message,
            param=problem.field,
            code="reserved_slug" if problem.field == "slug" else "invalid_template",
        )


#: Longest wait for the fleet an admin write accepts: the CLI's HTTP call must outlive it.
MAX_WAIT_SECONDS = 60.0


def check_wait(wait: float | None) -> float | None:
    if wait is not None and not 0 < wait <= MAX_WAIT_SECONDS:
        raise InvalidRequest(
            f"`wait` is seconds to wait for every replica, above 0 and at most "
            f"{MAX_WAIT_SECONDS:g}.",
            param="wait",
            code="invalid_wait",
        )
    return wait


@dataclass(frozen=True, slots=True)
class Served:
    """Who serves a write: this process (``here``), and with a wait, the live replicas."""

    #: the store's revision once the write was done (None if it could not be read)
    revision: int | None
    here: bool
    fleet: FleetWait | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "here": self.here,
            "fleet": None if self.fleet is None else self.fleet.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class FleetStatus:
    #: the store's revision (None if it could not be read)
    revision: int | None
    me: str
    replicas: Sequence[ReplicaView]
    #: the generation the store holds (None: none, or it could not be read)
    generation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "generation": self.generation,
            "replica": self.me,
            "live": sum(1 for r in self.replicas if r.live),
            "data": [r.to_dict(self.revision, self.me, self.generation) for r in self.replicas],
        }


class RegistryService:
    """``serve(revision)`` makes this process serve that registry revision now (True once it
    does): every write awaits it before answering, so whoever wrote, through this process,
    reads the change on its very next request. ``fleet`` tells where the other replicas
    stand.

    ``safety`` is the policy a version must pass to be pushed, promoted or start a
    rollout (the built-in defaults unless the configuration says otherwise); rollback is
    never checked: it goes back to what served before.

    ``gates`` says what else a base or variant version must have passed (an eval run, a
    judge score) before it is promoted or its rollout starts; an operator may override
    them with a reason, which the audit keeps. Not re-checked at a rollout's promote, nor
    at a percentage change: the candidate passed them when its rollout started
    (docs/gates.md)."""

    def __init__(
        self,
        store: PromptStore,
        clock: Callable[[], float] = time.time,
        *,
        serve: Callable[[int], Awaitable[bool]] | None = None,
        fleet: Fleet | None = None,
        tiers: Sequence[str] = ("free", "pro", "enterprise"),
        safety: SafetyPolicy | None = None,
        gates: GateCheck | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._serve = serve
        self._fleet = fleet
        self._tiers = tuple(tiers)
        self._safety = SafetyPolicy() if safety is None else safety
        self._gates = gates

    async def _serve_here(self) -> tuple[int | None, bool]:
        """After a write: load it here before answering. Never raises: the write is done,
        and a failure to load it only means this process does not serve it yet."""
        if self._serve is None:
            return None, False
        try:
            revision = await self._store.revision()
        except StoreUnavailable:
            return None, False
        return revision, await self._serve(revision)

    async def served(self, wait: float | None = None, since: float | None = None) -> Served:
        """Where the latest write stands: whether this process serves the store's current
        revision and, with ``wait`` (seconds), once every live replica does, or who did not
        in time. ``since``: ``time.monotonic()`` before the write, which the wait and its
        reported time count from."""
        check_wait(wait)
        revision, here = await self._serve_here()
        if wait is None or self._fleet is None or revision is None:
            return Served(revision, here, None)
        return Served(revision, here, await self._fleet.wait(revision, wait, here, since))

    async def fleet_status(self) -> FleetStatus:
        if self._fleet is None:
            raise ServiceUnavailable("This process keeps no fleet board.", code="fleet_unavailable")
        generation: str | None = None
        try:
            revision: int | None = await self._store.revision()
            generation = await self._store.generation()
        except StoreUnavailable:
            revision = None
        try:
            replicas = await self._fleet.replicas()
        except FleetError as exc:
            raise ServiceUnavailable(
                f"The fleet board in the shared store cannot be read now ({exc}).",
                code="fleet_unavailable",
            ) from None
        return FleetStatus(revision, self._fleet.me, replicas, generation)

    async def push(self, draft: VersionDraft, actor: str) -> tuple[PromptVersion, bool]:
        """Create a version (or return the latest if its content is identical). A base
        version's template and blocks are checked on their own; an override's fills,
        defaults and params against the base version it is pushed over."""
        check_reserved(draft)
        layer = draft.key.layer
        if layer is None:
            _refuse_layer_problems(base_problems(draft), "invalid_blocks")
            try:
                check_template(draft.template, draft.variables, draft.blocks)
            except TemplateProblem as exc:
                where = f" (line {exc.line}" + (f", column {exc.column})" if exc.column else ")")
                raise InvalidRequest(
                    f"Template rejected: {exc.message}{where if exc.line else ''}",
                    param="template",
                    code="invalid_template",
                ) from None
        else:
            if layer.kind == "tier" and layer.name not in self._tiers:
                raise InvalidRequest(
                    f"Unknown tier {layer.name!r}: the configured tiers are "
                    f"{', '.join(self._tiers)} (tenants.tiers).",
                    param="tier",
                    code="unknown_tier",
                )
            _refuse_layer_problems(await self._override_problems(draft), "invalid_override")
        # Checked before the store is: a refused version leaves no trace (no version, no
        # audit entry). An identical re-push of a version stored before the policy
        # tightened is refused too: it would answer as if the content were acceptable.
        refuse_push(self._safety, draft)
        with store_errors(draft.key):
            result = await self._store.create_version(draft, actor, self._clock())
        await self._serve_here()
        return result

    async def explain(
        self,
        slug: str,
        tenant_id: str | None,
        tier: str | None,
        version: int | None,
        model: str | None = None,
    ) -> Explanation:
        """What a request of ``tenant_id`` (in ``tier``, which defaults to its record's)
        for ``model`` is composed of, from one consistent read of the registry. ``version``
        is the base's (default its prod) of the variant ``model`` selects."""
        key = prompt_key(slug)
        with store_errors(key, reading=True):
            snapshot = await self._store.snapshot()
        key = snapshot.variant_for(snapshot.plain_keys.get(key.slug, key), model)
        if tenant_id is not None and tier is None:
            record = snapshot.tenants.get(tenant_id)
            if record is None:
                raise _no_tenant(tenant_id)
            tier = record.tier
        versions = snapshot.versions.get(key)
        if not versions:
            raise NotFound(f"No prompt named '{key}'.", param="slug", code="prompt_not_found")
        number = version if version is not None else snapshot.prod.get(key)
        if number is None:
            raise Conflict(
                f"Prompt '{key}' has no prod version yet: name a version to explain.",
                param="version",
                code="no_prod_version",
            )
        base = versions.get(number)
        if base is None:
            raise NotFound(
                f"Prompt '{key}' has no version {number}.",
                param="version",
                code="version_not_found",
            )
        try:
            return explain(snapshot, base, tenant_id, tier)
        except ExplainFailed as exc:
            raise Conflict(str(exc), param="version", code="explain_failed") from None

    async def _override_problems(self, draft: VersionDraft) -> list[LayerProblem]:
        """An override fits if it fits the base's latest version (pushed with it, as a
        folder of prompt files does) or its prod one (what serves now); otherwise the
        latest's problems. Where it does not fit the version serving, those parts are left
        out until a version it fits serves (``explain`` and the fit report say so)."""
        versions = await self._base_versions(draft.key)
        problems = _fitting(draft, versions)
        if problems or draft.key.variant is not None or draft.key.layer is None:
            return problems
        # An override of the default variant is also what every variant without its own
        # override of this layer composes: it must fit those variants' bases too.
        layer = draft.key.layer
        with store_errors(draft.key, reading=True):
            keys = await self._store.list_keys()
            for key in keys:
                if key.slug != draft.key.slug or key.layer is not None or key.variant is None:
                    continue
                if PromptKey(key.slug, layer, key.variant) in keys:
                    continue
                found = _fitting(draft, await self._store.list_versions(key))
                problems.extend(
                    LayerProblem(p.field, f"with variant {key.variant!r}: {p.message}")
                    for p in found
                )
        return problems

    async def _base_versions(self, key: PromptKey) -> Sequence[PromptVersion]:
        base_key = PromptKey(key.slug, None, key.variant)
        with store_errors(base_key, reading=True):
            versions = await self._store.list_versions(base_key)
        if not versions:
            raise NotFound(
                f"No prompt named '{base_key}': push the base before its overrides.",
                param="slug",
                code="prompt_not_found",
            )
        return versions

    async def list_prompts(self) -> list[PromptSummary]:
        with store_errors(reading=True):
            snapshot = await self._store.snapshot()  # one consistent read, not one per key
        return [
            _summarize(key, list(snapshot.versions[key].values()))
            for key in sorted(snapshot.versions)
        ]

    async def get_prompt(self, key: PromptKey) -> tuple[PromptSummary, Sequence[PromptVersion]]:
        with store_errors(key, reading=True):
            versions = await self._store.list_versions(key)
            if not versions:
                raise PromptNotFound(key)
        return _summarize(key, versions), versions

    async def get_version(self, key: PromptKey, version: int) -> PromptVersion:
        with store_errors(key, reading=True):
            return await self._store.get_version(key, version)

    async def override_fit(
        self, key: PromptKey, version: int, *, reading: bool = True
    ) -> FitReport | None:
        """How base version ``version`` fits every override of ``key`` in use; None for an
        override's own line and for the guardrails (nothing composes over them).
        ``reading`` False: the check before a write, whose outage means it was not saved."""
        if key.layer is not None or key.slug == GUARDRAILS_SLUG:
            return None
        with store_errors(key, reading=reading):
            snapshot = await self._store.snapshot()
        if key not in snapshot.versions:
            raise NotFound(f"No prompt named '{key}'.", param="slug", code="prompt_not_found")
        base = snapshot.versions[key].get(version)
        if base is None:
            raise NotFound(
                f"Prompt '{key}' has no version {version}.",
                param="version",
                code="version_not_found",
            )
        return fit_report(snapshot, base)

    async def _fit_or_forced(
        self, key: PromptKey, version: int, force: bool, reason: str, what: str
    ) -> str:
        """The reason to audit for making ``version`` serve: refused (409) when it breaks
        an override in use unless forced, and a forced one says what it broke."""
        if force and not reason.strip():
            raise InvalidRequest(
                "A forced change needs a reason: it is kept in the audit log.",
                param="reason",
                code="reason_required",
            )
        report = await self.override_fit(key, version, reading=False)
        if report is None or not report.broken:
            return reason
        if not force:
            raise Conflict(
                f"{report.base} breaks {len(report.broken)} of the {report.checked} overrides "
                f"in use: {report.summary()}. Fix them, or {what} with force and a reason.",
                param="version",
                code="overrides_break",
            )
        layers = ", ".join(b.layer for b in report.broken)
        return f"{reason} [forced over broken overrides: {layers}]"

    async def promote(
        self,
        key: PromptKey,
        version: int,
        actor: str,
        reason: str,
        *,
        force: bool = False,
        override_gates: bool = False,
    ) -> AuditEntry:
        """Make ``version`` prod. A base version that breaks an override in use is refused
        unless ``force`` (with a reason, which the audit keeps with the layers it broke);
        one that has not passed its gates unless ``override_gates`` (likewise)."""
        check_override_reason(override_gates, reason)
        await self._refuse_unsafe(key, version, "promoted")
        if self._gates is not None:
            with store_errors(key):
                prod = _prod_of(await self._store.list_versions(key))
            reason = await self._gated(key, version, prod, override_gates, reason, "promote")
        reason = await self._fit_or_forced(key, version, force, reason, "promote")
        with store_errors(key):
            entry = await self._store.promote(key, version, actor, reason, self._clock())
        await self._serve_here()
        return entry

    async def _refuse_unsafe(self, key: PromptKey, version: int, what: str) -> None:
        """The 409 of a stored version that fails the current safety policy and was about
        to serve (``what`` it was about to be)."""
        if not self._safety.enabled:
            return
        with store_errors(key):
            stored = await self._store.get_version(key, version)
        refuse_serving(self._safety, stored, what)

    async def _gated(
        self,
        key: PromptKey,
        version: int,
        prod: int | None,
        override: bool,
        reason: str,
        what: str,
    ) -> str:
        """The reason to audit once ``version``'s gates are passed or overridden (409
        otherwise). A version that is prod already changes nothing here: the store says
        so in its own words."""
        if self._gates is None or version == prod:
            return reason
        problems = await self._gates.problems(key, version, prod)
        if problems:
            # A version that does not exist is a 404, not a list of runs it lacks.
            with store_errors(key):
                await self._store.get_version(key, version)
        return gated_reason(key, version, problems, override, reason, what)

    async def rollback(self, key: PromptKey, actor: str, reason: str) -> AuditEntry:
        with store_errors(key):
            entry = await self._store.rollback(key, actor, reason, self._clock())
        await self._serve_here()
        return entry

    # -- tenants ----------------------------------------------------------------------------

    async def list_tenants(self) -> Sequence[Tenant]:
        with store_errors(reading=True):
            return await self._store.list_tenants()

    async def get_tenant(self, tenant_id: str) -> Tenant:
        for tenant in await self.list_tenants():
            if tenant.id == tenant_id:
                return tenant
        raise _no_tenant(tenant_id)

    async def put_tenant(
        self,
        tenant_id: str,
        tier: str,
        key_hashes: Sequence[str] | None,
        actor: str,
        reason: str,
    ) -> tuple[Tenant, AuditEntry | None]:
        """Create or change a tenant; the same tier and keys again change nothing (None).
        ``key_hashes`` None keeps the tenant's keys: a tier change must not drop them (with
        ``tenants.source: api_key`` that would make the tenant unknown)."""
        if key_hashes is None:
            current = {t.id: t for t in await self.list_tenants()}.get(tenant_id)
            key_hashes = () if current is None else current.key_hashes
        if tier not in self._tiers:
            raise InvalidRequest(
                f"Unknown tier {tier!r}: tenants.tiers lists {', '.join(self._tiers)}.",
                param="tier",
                code="unknown_tier",
            )
        tenant = _tenant(tenant_id, tier, key_hashes)
        with store_errors():
            try:
                result = await self._store.put_tenant(tenant, actor, reason, self._clock())
            except InvalidTransition as exc:
                raise Conflict(str(exc), param="api_key_sha256", code="api_key_taken") from None
        if result[1] is not None:
            await self._serve_here()
        return result

    async def delete_tenant(self, tenant_id: str, actor: str, reason: str) -> AuditEntry:
        with store_errors():
            try:
                entry = await self._store.delete_tenant(tenant_id, actor, reason, self._clock())
            except TenantNotFound:
                raise _no_tenant(tenant_id) from None
        await self._serve_here()
        return entry

    # -- rollouts ---------------------------------------------------------------------------

    async def set_rollout(
        self,
        key: PromptKey,
        candidate: int,
        mode: RolloutMode,
        percent: float,
        sticky: str | None,
        actor: str,
        reason: str,
        analysis: AnalysisPolicy | None = None,
        *,
        force: bool = False,
        segment: RolloutSegment | None = None,
        override_gates: bool = False,
    ) -> RolloutChange:
        """Start a rollout, or change the percentage of the running one when ``candidate``
        and ``mode`` are the same (its id, and so its cohorts, are kept).

        A new rollout's candidate must have passed its gates, unless ``override_gates``
        (with a reason, which the audit keeps with what it overrode); a percentage change
        is not gated again.

        ``analysis`` is the automated-analysis policy of a new rollout. On a running one it
        may be omitted (the policy stays) or repeated, never changed."""
        if key.slug == GUARDRAILS_SLUG:
            raise Conflict(
                f"{GUARDRAILS_SLUG} changes by promote and rollback, which every replica "
                "obeys within a second; a canary or shadow of the guardrails is not supported.",
                param="slug",
                code="guardrails_rollout",
            )
        if key.layer is not None and segment is not None:
            raise InvalidRequest(
                f"'{key}' is an override: its rollout reaches its own {key.layer.kind} only, "
                "so it takes no segment.",
                param="segment",
                code="invalid_segment",
            )
        check_override_reason(override_gates, reason)
        points = basis_points(percent)
        sticky_key = parse_sticky(sticky) if sticky is not None else None
        if segment is not None:
            unknown = [tier for tier in segment.tiers if tier not in self._tiers]
            if unknown:
                raise InvalidRequest(
                    f"Unknown tier {unknown[0]!r} in the segment: the configured tiers are "
                    f"{', '.join(self._tiers)} (tenants.tiers).",
                    param="segment.tiers",
                    code="unknown_tier",
                )
        with store_errors(key):
            running = await self._store.get_rollout(key)
            if running is None:
                versions = await self._store.list_versions(key)
                if not versions:
                    raise PromptNotFound(key)
                prod = _prod_of(versions)
                if prod is None:
                    raise Conflict(
                        f"{key} has no prod version to compare the candidate with: promote "
                        "one first.",
                        code="no_prod_version",
                    )
                await self._refuse_unsafe(key, candidate, "the candidate of a rollout")
                reason = await self._gated(
                    key, candidate, prod, override_gates, reason, "start the rollout"
                )
                reason = await self._fit_or_forced(
                    key, candidate, force, reason, "start the rollout"
                )
                rollout, entry = await self._store.start_rollout(
                    key,
                    secrets.token_hex(6),
                    candidate,
                    mode,
                    points,
                    sticky_key or StickyKey.parse("none"),
                    actor,
                    reason,
                    self._clock(),
                    analysis,
                    segment=segment,
                )
                await self._serve_here()
                return RolloutChange(rollout, entry, started=True)
            if running.candidate != candidate or running.mode is not mode:
                raise Conflict(
                    f"{key} already has a {running.mode.value} rollout of "
                    f"v{running.candidate}: change its percentage (same candidate and mode), "
                    "promote it or abort it before starting another.",
                    param="candidate",
                    code="rollout_running",
                )
            if sticky_key is not None and sticky_key != running.sticky:
                raise Conflict(
                    f"The running rollout is sticky on '{running.sticky}'; changing the key "
                    "would reshuffle every cohort. Abort it and start a new one instead.",
                    param="sticky",
                    code="rollout_running",
                )
            if segment is not None and segment != running.segment:
                raise Conflict(
                    "A rollout's segment is fixed for its life (its verdicts are about those "
                    "callers). Abort it and start a new one for another segment.",
                    param="segment",
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
                key, running.id, points, actor, reason, self._clock()
            )
        await self._serve_here()
        return RolloutChange(rollout, entry, started=False)

    async def get_rollout(self, key: PromptKey) -> Rollout:
        with store_errors(key, reading=True):
            rollout = await self._store.get_rollout(key)
            if rollout is None:
                if not await self._store.list_versions(key):
                    raise PromptNotFound(key)
                raise NotFound(
                    f"{key} has no rollout running.", param="slug", code="rollout_not_found"
                )
        return rollout

    async def list_rollouts(self) -> list[Rollout]:
        with store_errors(reading=True):
            snapshot = await self._store.snapshot()
        return [snapshot.rollouts[key] for key in sorted(snapshot.rollouts)]

    async def abort_rollout(self, key: PromptKey, actor: str, reason: str) -> AuditEntry:
        with store_errors(key):
            entry = await self._store.abort_rollout(key, actor, reason, self._clock())
        await self._serve_here()
        return entry

    async def promote_rollout(self, key: PromptKey, actor: str, reason: str) -> AuditEntry:
        """Make the running rollout's candidate prod: refused (409) when the candidate fails
        the safety policy, which may have tightened since the rollout started. Its gates
        are not checked again: it passed them (or they were overridden, audited) when the
        rollout started, and the canary analysis since; the analyser promotes by itself,
        and an eval run ageing out mid-rollout must not hold it."""
        with store_errors(key):
            running = await self._store.get_rollout(key)
        if running is not None:
            await self._refuse_unsafe(key, running.candidate, "promoted")
        with store_errors(key):
            entry = await self._store.promote_rollout(key, actor, reason, self._clock())
        await self._serve_here()
        return entry

    async def audit(
        self, key: PromptKey | None = None, limit: int = 100, before_seq: int | None = None
    ) -> Sequence[AuditEntry]:
        with store_errors(key, reading=True):
            return await self._store.audit(key, limit, before_seq)

    async def state_at(self, key: PromptKey, at: float) -> StateAt:
        """Which version was prod at instant ``at`` and what the rollout running then (if
        any) served: candidate, mode, percent, sticky key. From the audit log."""
        await self.get_prompt(key)  # 404 for unknown keys
        return state_at(await self._full_audit(key), at)

    async def latest_rollout(self, key: PromptKey) -> tuple[str, bool] | None:
        """The id of the key's running rollout, else of the last one that ran (from the
        audit log), with whether it runs; None if the key never had one."""
        with store_errors(key, reading=True):
            running = await self._store.get_rollout(key)
        if running is not None:
            return running.id, True
        await self.get_prompt(key)  # 404 for unknown keys
        before: int | None = None
        with store_errors(key, reading=True):
            while True:
                page = await self._store.audit(key, 500, before)
                for entry in page:  # newest first
                    rollout_id = (entry.detail or {}).get("rollout_id")
                    if entry.action == ROLLOUT_START_ACTION and isinstance(rollout_id, str):
                        return rollout_id, False
                if len(page) < 500:
                    return None
                before = page[-1].seq

    async def _full_audit(self, key: PromptKey) -> list[AuditEntry]:
        entries: list[AuditEntry] = []
        before: int | None = None
        with store_errors(key, reading=True):
            while True:
                page = await self._store.audit(key, 500, before)
                entries.extend(page)
                if len(page) < 500:
                    return entries
                before = page[-1].seq

    async def diff(self, key: PromptKey, a: int, b: int) -> str:
        old, new = await self.get_version(key, a), await self.get_version(key, b)
        lines: list[str] = []
        for label, left, right in (
            ("model", str(old.model), str(new.model)),
            ("variables", _vars(old), _vars(new)),
            ("params", str(old.params), str(new.params)),
            ("blocks", _block_limits(old), _block_limits(new)),
            ("param_bounds", str(old.param_bounds), str(new.param_bounds)),
            ("defaults", str(old.defaults), str(new.defaults)),
        ):
            if left != right:
                lines.append(f"{label}: {left} -> {right}\n")
        texts = [("", old.template, new.template)]
        # A block's default (a base) or fill (an override) is text like the template.
        old_blocks, new_blocks = _block_texts(old), _block_texts(new)
        for name in sorted(old_blocks.keys() | new_blocks.keys()):
            texts.append((f"#{name}", old_blocks.get(name, ""), new_blocks.get(name, "")))
        for part, left_text, right_text in texts:
            lines.extend(
                difflib.unified_diff(
                    left_text.splitlines(keepends=True),
                    right_text.splitlines(keepends=True),
                    fromfile=f"{key}@v{a}{part}",
                    tofile=f"{key}@v{b}{part}",
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


def _prod_of(versions: Sequence[PromptVersion]) -> int | None:
    return next((v.version for v in versions if v.status is Status.PROD), None)


def _summarize(key: PromptKey, versions: Sequence[PromptVersion]) -> PromptSummary:
    return PromptSummary(
        key=key,
        prod_version=_prod_of(versions),
        latest_version=max(v.version for v in versions),
        versions=len(versions),
        updated_at=max(v.created_at for v in versions),
    )


def _fitting(draft: VersionDraft, versions: Sequence[PromptVersion]) -> list[LayerProblem]:
    """An override fits a base line if it fits its latest version (pushed with it, as a
    folder of prompt files does) or its prod one (what serves now); else the latest's
    problems."""
    if not versions:
        return []
    latest = max(versions, key=lambda v: v.version)
    problems = override_problems(draft, latest)
    prod = next((v for v in versions if v.status is Status.PROD), None)
    if problems and prod is not None and prod is not latest:
        return problems if override_problems(draft, prod) else []
    return problems


def _block_limits(version: PromptVersion) -> str:
    """The blocks a base declares and how long a fill may be (their texts are diffed)."""
    return ", ".join(f"{b.name} (max {b.max_chars})" for b in version.blocks)


def _block_texts(version: PromptVersion) -> dict[str, str]:
    """Block name -> the version's text for it: a base's defaults, an override's fills."""
    return {b.name: b.default for b in version.blocks} | dict(version.fills)


def _vars(version: PromptVersion) -> str:
    return ", ".join(v.name for v in version.variables)
