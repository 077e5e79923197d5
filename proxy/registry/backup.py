"""A whole registry as one value (``RegistryImage``): what a restore writes into a lost
store and what ``promptproxy registry export`` / ``import`` read and write.

An image keeps version numbers, content hashes, statuses, rollouts and (from an export) the
audit log, and the registry's generation, so a restore brings back *the same* registry:
every replica that served it recovers by itself, and numbering continues where it was
(version numbers never restart). The file format is JSON with ``format`` = ``FORMAT``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from proxy.prompt_key import GUARDRAILS_SLUG, InvalidPromptKey, PromptKey
from proxy.registry import lifecycle
from proxy.registry.identity import describe
from proxy.registry.layer_checks import base_only_fields, base_problems
from proxy.registry.models import (
    CALLER_SYSTEM,
    CALLER_SYSTEM_DROP,
    INT64_MAX,
    AuditEntry,
    BlockSpec,
    CallerSystem,
    PromptVersion,
    RegistrySnapshot,
    Rollout,
    RolloutSegment,
    Status,
    Tenant,
    VariableSpec,
    VersionDraft,
    caller_system,
    finite_number,
    unstorable_value,
)
from proxy.registry.reserved import reserved_problem
from proxy.registry.store import InvalidTransition
from proxy.registry.templates import BLOCK_NAME, names_read, template_problems

FORMAT = "promptproxy-registry/1"
RESTORE_ACTION = "restore"
#: Key of a restore entry's detail holding the rollout that was running (see
#: ``RegistryImage.restore_entries``).
RESTORED_ROLLOUT = "rollout"


#: Highest revision or audit seq an export may carry: both stores count on from there
#: (the restore itself adds one per prompt), and neither counts past 2^63-1.
MAX_COUNTER = 2**62


class ImageError(ValueError):
    """The file is not a registry export this promptproxy reads; ``param`` names the field
    at fault (``versions[3].sha256``), None for the file as a whole."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(f"{param}: {message}" if param else message)
        self.param = param


class RestoreRefused(InvalidTransition):
    """The store holds prompts a restore would destroy (another registry, or newer changes
    of this one) and the operator did not ask to overwrite them."""


def restore_keeps_audit(
    found: str | None, revision: int, holds_versions: bool, image: RegistryImage, floor: int
) -> bool:
    """Whether a restore of ``image`` may go into a store holding generation ``found`` at
    ``revision`` without ``overwrite`` (``RestoreRefused`` if not), and whether it keeps the
    store's audit log: it does when the store holds the same registry, whose audit is its
    history (an older copy put back), and appends after its last entry. ``floor``: the
    highest revision the caller knows this registry reached."""
    if found is not None and found == image.generation:
        if not holds_versions or revision < max(image.revision, floor):
            return True
        raise RestoreRefused(
            f"The registry store holds this registry (generation {found}) at revision "
            f"{revision}, not older than what is being restored (revision "
            f"{max(image.revision, floor)}): restoring would throw away newer changes. "
            "Pass overwrite (`--overwrite`) only if you mean to replace them."
        )
    if holds_versions and found is not None:
        raise RestoreRefused(
            f"The registry store holds prompts of another registry ({describe(found)}): "
            "restoring would destroy them. If the store URL or database is wrong, fix it "
            "and restart instead; pass overwrite (`--overwrite`) only to replace that registry."
        )
    return False


def overwrite_keeps_audit(found: str | None, image: RegistryImage) -> bool:
    """With ``overwrite``: the store's audit is kept only if it is this registry's."""
    return found is not None and found == image.generation


@dataclass(frozen=True, slots=True)
class RegistryImage:
    generation: str
    revision: int
    #: key -> version number -> version (with its status)
    versions: Mapping[PromptKey, Mapping[int, PromptVersion]]
    rollouts: Mapping[PromptKey, Rollout] = field(default_factory=dict)
    #: Oldest first; empty when made from a snapshot (a replica has no audit log).
    audit: tuple[AuditEntry, ...] = ()
    #: tenant id -> record; a restore makes these the store's tenants, all of them.
    tenants: Mapping[str, Tenant] = field(default_factory=dict)

    @classmethod
    def from_snapshot(cls, snapshot: RegistrySnapshot) -> RegistryImage:
        if snapshot.generation is None:
            raise ImageError("the snapshot has no generation (the store was never initialised)")
        return cls(
            snapshot.generation,
            snapshot.revision,
            snapshot.versions,
            snapshot.rollouts,
            tenants=snapshot.tenants,
        )

    @property
    def empty(self) -> bool:
        """No prompt and no tenant: nothing an import could overwrite."""
        return not self.versions and not self.tenants

    def content(self) -> tuple[Any, ...]:
        """What "the same content" means for an import: versions, statuses, rollouts,
        tenants (their tiers and keys; not when they were last changed)."""
        return (
            {s: {n: v.to_dict() for n, v in vs.items()} for s, vs in self.versions.items()},
            {s: r.to_dict() for s, r in self.rollouts.items()},
            {t.id: (t.tier, sorted(t.key_hashes)) for t in self.tenants.values()},
        )

    def prod_stack(self, key: PromptKey) -> list[int]:
        """Rollback history of ``key`` from the audit log; without one, just the prod."""
        events = [
            (e.action, e.version)
            for e in self.audit
            if e.key == key
            and e.version is not None
            and e.action in (lifecycle.PROMOTE_ACTION, lifecycle.ROLLBACK_ACTION)
        ]
        stack = lifecycle.prod_stack(events)
        prod = next((n for n, v in self.versions[key].items() if v.status is Status.PROD), None)
        if prod is not None and (not stack or stack[-1] != prod):
            stack = [n for n in stack if n != prod] + [prod]
        return stack if prod is not None else []

    def restore_entries(
        self, actor: str, reason: str, at: float, after_seq: int = 0
    ) -> list[AuditEntry]:
        """One audit entry per restored key, numbered after the image's audit and
        ``after_seq`` (the last seq of an audit log the restore keeps). Each is a starting
        point for history (``history.state_at``): it names the prod it restored (version,
        ``to_status`` prod) and, in ``detail[RESTORED_ROLLOUT]``, the rollout running."""
        last = max([after_seq, *(e.seq for e in self.audit)])
        entries = []
        for i, key in enumerate(sorted(self.versions), start=1):
            numbered = self.versions[key]
            prod = next((n for n, v in numbered.items() if v.status is Status.PROD), None)
            detail: dict[str, Any] = {"generation": self.generation, "revision": self.revision}
            if (rollout := self.rollouts.get(key)) is not None:
                detail[RESTORED_ROLLOUT] = {
                    **rollout.audit_detail(),
                    "candidate": rollout.candidate,
                    "started_at": rollout.started_at,
                    "updated_at": rollout.updated_at,
                }
            entries.append(
                AuditEntry(
                    seq=last + i,
                    at=at,
                    actor=actor,
                    action=RESTORE_ACTION,
                    key=key,
                    version=max(numbered) if prod is None else prod,
                    from_status=None,
                    to_status=None if prod is None else Status.PROD,
                    reason=reason,
                    detail=detail,
                )
            )
        return entries

    def to_json(self) -> bytes:
        data = {
            "format": FORMAT,
            "generation": self.generation,
            "revision": self.revision,
            "versions": [
                v.to_dict() for key in sorted(self.versions) for v in self.versions[key].values()
            ],
            "rollouts": [self.rollouts[key].to_dict() for key in sorted(self.rollouts)],
            "audit": [e.to_dict() for e in self.audit],
            "tenants": [self.tenants[t].to_dict() for t in sorted(self.tenants)],
        }
        return orjson.dumps(data, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, raw: bytes | str) -> RegistryImage:
        """Parse and check an export as strictly as a push: nothing a store would refuse
        (or fail on half-way through a restore) gets past this; ``ImageError.param`` names
        the first field at fault."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ImageError(f"not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise ImageError(
                f"not a registry export in format {FORMAT!r} (found {found!r})", "format"
            )
        generation = data.get("generation")
        if not isinstance(generation, str) or not generation or len(generation) > 128:
            raise ImageError("must be a non-empty string (at most 128 characters)", "generation")
        revision = _int(data.get("revision"), "revision", low=0, high=MAX_COUNTER)
        versions = _versions(_list(data.get("versions"), "versions"))
        rollouts = _rollouts(_list(data.get("rollouts", []), "rollouts"), versions)
        audit = _audit(_list(data.get("audit", []), "audit"))
        tenants = _tenants(_list(data.get("tenants", []), "tenants"))
        return cls(generation, revision, versions, rollouts, audit, tenants)


# -- checking an export, field by field ------------------------------------------------------


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ImageError("must be a list", where)
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImageError("must be an object", where)
    return value


def _int(value: Any, where: str, *, low: int = 1, high: int = INT64_MAX) -> int:
    # bool is an int to Python, not to an export.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ImageError(f"must be an integer from {low} to {high}", where)
    return value


def _opt_int(value: Any, where: str) -> int | None:
    return None if value is None else _int(value, where)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ImageError("must be a string", where)
    return value


def _time(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ImageError("must be a finite number (unix seconds)", where)
    return float(value)


def _status(value: Any, where: str, *, optional: bool = False) -> Status | None:
    if value is None and optional:
        return None
    try:
        return Status(value)
    except ValueError:
        choices = ", ".join(s.value for s in Status)
        raise ImageError(f"must be one of {choices}", where) from None


def _caller_system(value: Any, where: str) -> CallerSystem:
    if value is None:
        return CALLER_SYSTEM_DROP  # written before the field existed
    found = caller_system(value)
    if found is None:
        raise ImageError(f"must be one of {', '.join(CALLER_SYSTEM)}", where)
    return found


def _storable(value: Any, where: str) -> None:
    found = unstorable_value(value, where)
    if found is not None:
        raise ImageError(found[1], found[0])


def _key(value: Any, where: str) -> PromptKey:
    """The key a record's ``slug`` holds (its text: for a plain key, the bare slug)."""
    try:
        return PromptKey.parse(_str(value, where))
    except InvalidPromptKey:
        raise ImageError("a slug must match [A-Za-z0-9._-]{1,64}", where) from None


def _versions(items: list[Any]) -> dict[PromptKey, dict[int, PromptVersion]]:
    versions: dict[PromptKey, dict[int, PromptVersion]] = {}
    checked: dict[bytes, str | None] = {}  # content -> template problem (many share one)
    for i, item in enumerate(items):
        where = f"versions[{i}]"
        version = _version(_object(item, where), where, checked)
        numbered = versions.setdefault(version.key, {})
        if version.version in numbered:
            raise ImageError(f"{version.key} v{version.version} appears twice", f"{where}.version")
        numbered[version.version] = version
    for key, numbered in versions.items():
        if sorted(numbered) != list(range(1, len(numbered) + 1)):
            raise ImageError(f"{key}: version numbers must be 1..n without gaps", "versions")
        prods = sorted(n for n, v in numbered.items() if v.status is Status.PROD)
        if len(prods) > 1:
            raise ImageError(
                f"{key}: only one version can be prod (found v{prods[0]} and v{prods[1]})",
                "versions",
            )
    return versions


def _version(item: dict[str, Any], where: str, checked: dict[bytes, str | None]) -> PromptVersion:
    key = _key(item.get("slug"), f"{where}.slug")
    number = _int(item.get("version"), f"{where}.version")
    template = _str(item.get("template"), f"{where}.template")
    variables = []
    for j, spec in enumerate(_list(item.get("variables", []), f"{where}.variables")):
        at = f"{where}.variables[{j}]"
        spec = _object(spec, at)
        kind = spec.get("type")
        if kind is not None:
            _str(kind, f"{at}.type")
        if "default" in spec:
            _storable(spec["default"], f"{at}.default")
        variables.append(
            VariableSpec(
                _str(spec.get("name"), f"{at}.name"),
                kind,
                spec.get("default"),
                has_default="default" in spec,
            )
        )
    model = item.get("model")
    if model is not None:
        _str(model, f"{where}.model")
    params = _object(item.get("params") or {}, f"{where}.params")
    _storable(params, f"{where}.params")
    draft = VersionDraft(
        key=key,
        template=template,
        variables=tuple(variables),
        model=model,
        params=params,
        author=_str(item.get("author", ""), f"{where}.author"),
        changelog=_str(item.get("changelog", ""), f"{where}.changelog"),
        caller_system=_caller_system(item.get("caller_system"), f"{where}.caller_system"),
        **_layer_fields(item, where),
    )
    if (reserved := reserved_problem(key, template, tuple(variables))) is not None:
        raise ImageError(reserved.message, f"{where}.{reserved.field}")
    if key.layer is None and (layered := base_problems(draft)):
        raise ImageError(layered[0].message, f"{where}.{layered[0].field}")
    if key.layer is not None:
        _check_override(draft, where, checked)
    content = orjson.dumps([template, [v.to_dict() for v in variables], item.get("blocks")])
    if content not in checked:
        problems = template_problems(template, variables, draft.blocks)
        checked[content] = str(problems[0]) if problems else None
    if (problem := checked[content]) is not None:
        raise ImageError(f"the template is refused: {problem}", f"{where}.template")
    sha = draft.content_sha256()
    if item.get("sha256") != sha:
        raise ImageError(
            "does not match the version's content (template, variables, model, params)",
            f"{where}.sha256",
        )
    status = _status(item.get("status"), f"{where}.status")
    assert status is not None
    return replace(
        draft.to_version(number, _time(item.get("created_at"), f"{where}.created_at")),
        status=status,
    )


def _layer_fields(item: dict[str, Any], where: str) -> dict[str, Any]:
    """A version's blocks and bounds (a base's), fills and defaults (an override's), typed
    as a push would have them; whether they fit is the push-time checks' business."""
    blocks = []
    for name, spec in _object(item.get("blocks") or {}, f"{where}.blocks").items():
        at = f"{where}.blocks.{name}"
        spec = _object(spec, at)
        max_chars = _int(spec.get("max_chars", 2000), f"{at}.max_chars")
        blocks.append(BlockSpec(name, _str(spec.get("default", ""), f"{at}.default"), max_chars))
    bounds: dict[str, tuple[float, float]] = {}
    for name, pair in _object(item.get("param_bounds") or {}, f"{where}.param_bounds").items():
        at = f"{where}.param_bounds.{name}"
        pair = _list(pair, at)
        if len(pair) != 2 or not all(finite_number(x) for x in pair):
            raise ImageError("must be two numbers [low, high]", at)
        bounds[name] = (pair[0], pair[1])
    fills = _object(item.get("fills") or {}, f"{where}.fills")
    for name, text in fills.items():
        _str(text, f"{where}.fills.{name}")
    defaults = _object(item.get("defaults") or {}, f"{where}.defaults")
    _storable(defaults, f"{where}.defaults")
    match = tuple(
        _str(p, f"{where}.match[{i}]")
        for i, p in enumerate(_list(item.get("match") or [], f"{where}.match"))
    )
    return {
        "blocks": tuple(blocks),
        "param_bounds": bounds,
        "fills": fills,
        "defaults": defaults,
        "match": match,
    }


def _check_override(draft: VersionDraft, where: str, checked: dict[bytes, str | None]) -> None:
    """What an override may hold, as a push would check it, but not whether it fits a base:
    an export holds old overrides made for older bases, which may no longer fit the one
    serving (the composition leaves those parts out). Each fill must be a template the
    sandbox accepts, reading only variables, never blocks."""
    for name in base_only_fields(draft):
        raise ImageError(f"an override holds no {name}", f"{where}.{name}")
    for name, text in draft.fills.items():
        content = orjson.dumps(["fill", text])
        if content not in checked:
            read = names_read(text)
            if read is None or BLOCK_NAME in read:
                checked[content] = "it does not parse, or reads a block"
            else:
                found = template_problems(text, [VariableSpec(n) for n in sorted(read)])
                checked[content] = str(found[0]) if found else None
        if (problem := checked[content]) is not None:
            raise ImageError(f"the fill is refused: {problem}", f"{where}.fills.{name}")


def _rollouts(
    items: list[Any], versions: Mapping[PromptKey, Mapping[int, PromptVersion]]
) -> dict[PromptKey, Rollout]:
    rollouts: dict[PromptKey, Rollout] = {}
    for i, item in enumerate(items):
        where = f"rollouts[{i}]"
        data = _object(item, where)
        segment = _segment(data.get("segment"), f"{where}.segment")
        try:
            rollout = replace(Rollout.from_dict({**data, "segment": None}), segment=segment)
            lifecycle.check_rollout_values(
                rollout.basis_points, rollout.id, rollout.sticky, rollout.analysis
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageError(f"not a rollout: {type(exc).__name__}: {exc}", where) from None
        if rollout.restore_status not in (Status.DRAFT, Status.CANDIDATE):
            raise ImageError(
                "a rollout returns its candidate to draft or candidate",
                f"{where}.restore_status",
            )
        if rollout.key in rollouts:
            raise ImageError(f"{rollout.key} has two rollouts", f"{where}.slug")
        if rollout.key.slug == GUARDRAILS_SLUG:
            raise ImageError("the guardrails have no rollouts", f"{where}.slug")
        candidate = versions.get(rollout.key, {}).get(rollout.candidate)
        if candidate is None:
            raise ImageError(
                f"{rollout.key} has no version {rollout.candidate}", f"{where}.candidate"
            )
        if candidate.status is not Status.CANDIDATE:
            raise ImageError(
                f"{rollout.key} v{rollout.candidate} is {candidate.status.value}: the "
                "candidate of a running rollout has status candidate",
                f"{where}.candidate",
            )
        rollouts[rollout.key] = rollout
    return rollouts


def _segment(value: Any, where: str) -> RolloutSegment | None:
    """A rollout's segment, as strictly as the admin API takes one: ``from_dict`` alone
    would read a string of tiers as its characters."""
    if value is None:
        return None  # written before segments, or a rollout that reaches everyone
    data = _object(value, where)
    if unknown := sorted(set(data) - {"tiers", "tenants"}):
        raise ImageError(f"unknown field {unknown[0]!r} (a segment has tiers and tenants)", where)
    names: dict[str, tuple[str, ...]] = {}
    for field_name in ("tiers", "tenants"):
        listed = data.get(field_name, [])
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            raise ImageError(f"{field_name} must be a list of names", where)
        names[field_name] = tuple(listed)
    try:
        return RolloutSegment(**names)
    except ValueError as exc:
        raise ImageError(str(exc), where) from None


def _tenants(items: list[Any]) -> dict[str, Tenant]:
    tenants: dict[str, Tenant] = {}
    owners: dict[str, str] = {}
    for index, item in enumerate(items):
        where = f"tenants[{index}]"
        data = _object(item, where)
        key_hashes = _list(data.get("key_hashes", []), f"{where}.key_hashes")
        try:
            tenant = Tenant(
                id=_str(data.get("id"), f"{where}.id"),
                tier=_str(data.get("tier"), f"{where}.tier"),
                key_hashes=tuple(_str(k, f"{where}.key_hashes") for k in key_hashes),
                updated_at=_time(data.get("updated_at", 0.0), f"{where}.updated_at"),
            )
        except ValueError as exc:
            raise ImageError(str(exc), where) from None
        if tenant.id in tenants:
            raise ImageError(f"tenant {tenant.id!r} appears twice", f"{where}.id")
        for digest in tenant.key_hashes:
            if (owner := owners.setdefault(digest, tenant.id)) != tenant.id:
                raise ImageError(
                    f"an API key hash of {tenant.id!r} also names {owner!r}",
                    f"{where}.key_hashes",
                )
        tenants[tenant.id] = tenant
    return tenants


def _audit(items: list[Any]) -> tuple[AuditEntry, ...]:
    entries: list[AuditEntry] = []
    for i, item in enumerate(items):
        where = f"audit[{i}]"
        data = _object(item, where)
        seq = _int(data.get("seq"), f"{where}.seq", high=MAX_COUNTER)
        if entries and seq <= entries[-1].seq:
            raise ImageError(
                f"seq must increase strictly, oldest first (after {entries[-1].seq})",
                f"{where}.seq",
            )
        detail = data.get("detail")
        if detail is not None:
            _storable(_object(detail, f"{where}.detail"), f"{where}.detail")
        entries.append(
            AuditEntry(
                seq=seq,
                at=_time(data.get("at"), f"{where}.at"),
                actor=_str(data.get("actor"), f"{where}.actor"),
                action=_str(data.get("action"), f"{where}.action"),
                key=_key(data.get("slug"), f"{where}.slug"),
                version=_opt_int(data.get("version"), f"{where}.version"),
                from_status=_status(data.get("from_status"), f"{where}.from_status", optional=True),
                to_status=_status(data.get("to_status"), f"{where}.to_status", optional=True),
                reason=_str(data.get("reason", ""), f"{where}.reason"),
                previous_prod=_opt_int(data.get("previous_prod"), f"{where}.previous_prod"),
                detail=detail,
            )
        )
    return tuple(entries)
