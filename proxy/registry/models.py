"""Registry data: frozen values, no I/O.

A version is never changed or deleted; its status is the only thing that moves, and every
move is an ``AuditEntry``. ``content_sha256`` covers what defines a version's behaviour
(template, variables, model pin, params, and what becomes of the caller's system
messages), so pushing the same content twice is a no-op.

Every value names its version line by a ``PromptKey``. In the JSON of ``to_dict`` (what
the admin API answers and what stores, backups and the audit keep) the key's text is the
``slug`` field: for a plain key the bare slug, so every record written before keys existed
reads back as itself.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple

import orjson

from proxy.prompt_key import GUARDRAILS_SLUG, NAME_PATTERN, TENANTS_SLUG, Layer, PromptKey
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.registry.percent import BASIS_POINTS as BASIS_POINTS

#: A swapped-in prompt drops the caller's own system and developer messages (the default:
#: a caller's "ignore the rules above" never reaches the model), or keeps them ``after``
#: the composed prompt, where they cannot come before the guardrails.
CallerSystem = Literal["drop", "after"]
CALLER_SYSTEM_DROP: CallerSystem = "drop"
CALLER_SYSTEM_AFTER: CallerSystem = "after"
CALLER_SYSTEM: tuple[CallerSystem, ...] = (CALLER_SYSTEM_DROP, CALLER_SYSTEM_AFTER)


def caller_system(value: object) -> CallerSystem | None:
    """``value`` as a ``CallerSystem``, or None if it is not one."""
    if value == CALLER_SYSTEM_AFTER:
        return CALLER_SYSTEM_AFTER
    return CALLER_SYSTEM_DROP if value == CALLER_SYSTEM_DROP else None


class Status(StrEnum):
    DRAFT = "draft"
    CANDIDATE = "candidate"
    PROD = "prod"
    DEPRECATED = "deprecated"


#: The widest integers a registry keeps: SQLite's INTEGER is a signed 64-bit value, and orjson
#: (which writes every stored version and its content hash) encodes nothing wider.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def unstorable_value(value: Any, path: str) -> tuple[str, str] | None:
    """The first place in a JSON value a version cannot keep as it was sent, and why; None if
    there is none. NaN and Infinity are not JSON (orjson would store them as null and the
    provider would get null), and integers beyond 64 bits cannot be encoded at all.

    ``path`` names ``value`` in the answer; nested places extend it as ``a.b[0]``."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:  # a loop, not recursion: the depth of a request body is the caller's choice
        item, where = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        if isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                return where, "integers must fit in 64 bits (-2^63 to 2^63-1)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return where, f"numbers must be finite, not {item}"
        elif isinstance(item, Mapping):
            stack.extend(reversed([(v, f"{where}.{k}") for k, v in item.items()]))
        elif isinstance(item, list | tuple):
            stack.extend(reversed([(v, f"{where}[{i}]") for i, v in enumerate(item)]))
    return None


def finite_number(value: Any) -> bool:
    """A JSON number a bound or a bounded parameter can be: not a bool, not NaN or inf."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def within_bounds(value: Any, bounds: tuple[float, float]) -> bool:
    """``value`` is a number in ``[low, high]`` (a base's ``param_bounds`` entry)."""
    return finite_number(value) and bounds[0] <= value <= bounds[1]


#: What a model pattern of a variant may hold: a model name's characters and the glob's
#: ``* ? [ ]``. The admin API's schema states the same.
MODEL_PATTERN = re.compile(r"[A-Za-z0-9._:/@*?\[\]-]{1,128}")


@dataclass(frozen=True, slots=True)
class VariableSpec:
    name: str
    #: Optional type: "string", "number", "integer", "boolean", "list", "object" (checked
    #: when a request supplies a value; see proxy/registry/templates.py).
    type: str | None = None
    #: When ``has_default`` the caller may omit the variable.
    default: Any = None
    has_default: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.has_default:
            out["default"] = self.default
        return out


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """A named block a base version declares: an override may fill it (a template over the
    base's variables, at most ``max_chars`` long); ``default`` fills it where none does."""

    name: str
    default: str = ""
    max_chars: int = 2000

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "max_chars": self.max_chars}


#: Longest block fill any base may allow.
MAX_BLOCK_CHARS = 100_000


def _layer_content(
    blocks: tuple[BlockSpec, ...],
    param_bounds: Mapping[str, tuple[float, float]],
    fills: Mapping[str, str],
    defaults: Mapping[str, Any],
    match: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The layer fields of a version, only those set: a version without them keeps the
    JSON (and the hash) it had before layers existed."""
    out: dict[str, Any] = {}
    if match:
        out["match"] = list(match)
    if blocks:
        out["blocks"] = {b.name: b.to_dict() for b in blocks}
    if param_bounds:
        out["param_bounds"] = {k: [lo, hi] for k, (lo, hi) in param_bounds.items()}
    if fills:
        out["fills"] = dict(fills)
    if defaults:
        out["defaults"] = dict(defaults)
    return out


@dataclass(frozen=True, slots=True)
class VersionDraft:
    """What a push supplies; the store assigns number, time, status."""

    key: PromptKey
    template: str
    variables: tuple[VariableSpec, ...] = ()
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    author: str = ""
    changelog: str = ""
    #: What happens to the caller's own system and developer messages (``CALLER_SYSTEM``).
    caller_system: CallerSystem = CALLER_SYSTEM_DROP
    #: A base's blocks, which its overrides may fill, and the bounds of the parameters they
    #: may set.
    blocks: tuple[BlockSpec, ...] = ()
    param_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: An override's (a ``tier=``/``tenant=`` key's) fills of the base's blocks, and its
    #: defaults for the base's variables; its ``params`` stay within the base's bounds.
    fills: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    #: A model variant's base (``SLUG@NAME``): the request models it serves, as glob
    #: patterns (``claude-*``); the default variant (no ``@``) serves the rest.
    match: tuple[str, ...] = ()

    def to_version(self, number: int, created_at: float) -> PromptVersion:
        """The immutable version this draft becomes, as a new draft."""
        return PromptVersion(
            key=self.key,
            version=number,
            template=self.template,
            variables=self.variables,
            model=self.model,
            params=self.params,
            author=self.author,
            changelog=self.changelog,
            created_at=created_at,
            sha256=self.content_sha256(),
            status=Status.DRAFT,
            caller_system=self.caller_system,
            blocks=self.blocks,
            param_bounds=self.param_bounds,
            fills=self.fills,
            defaults=self.defaults,
            match=self.match,
        )

    def content_sha256(self) -> str:
        content = {
            "template": self.template,
            "variables": [v.to_dict() for v in self.variables],
            "model": self.model,
            "params": self.params,
        }
        if self.caller_system != CALLER_SYSTEM_DROP:
            # Only when set: every version hashed before the field existed keeps its hash.
            content["caller_system"] = self.caller_system
        content.update(
            _layer_content(self.blocks, self.param_bounds, self.fills, self.defaults, self.match)
        )
        return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class PromptVersion:
    key: PromptKey
    version: int
    template: str
    variables: tuple[VariableSpec, ...]
    model: str | None
    params: dict[str, Any]
    author: str
    changelog: str
    created_at: float  # unix seconds
    sha256: str
    status: Status
    caller_system: CallerSystem = CALLER_SYSTEM_DROP
    blocks: tuple[BlockSpec, ...] = ()
    param_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    fills: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    match: tuple[str, ...] = ()

    @property
    def is_override(self) -> bool:
        """A tier's or tenant's override: fills, defaults and params, no template."""
        return self.key.layer is not None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "slug": self.key.text,
            "version": self.version,
            "template": self.template,
            "variables": [v.to_dict() for v in self.variables],
            "model": self.model,
            "params": self.params,
            "author": self.author,
            "changelog": self.changelog,
            "created_at": self.created_at,
            "sha256": self.sha256,
            "status": self.status.value,
        }
        if self.caller_system != CALLER_SYSTEM_DROP:
            data["caller_system"] = self.caller_system
        data.update(
            _layer_content(self.blocks, self.param_bounds, self.fills, self.defaults, self.match)
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptVersion:
        return cls(
            key=PromptKey.parse(data["slug"]),
            version=int(data["version"]),
            template=data["template"],
            variables=tuple(
                VariableSpec(
                    name=v["name"],
                    type=v.get("type"),
                    default=v.get("default"),
                    has_default="default" in v,
                )
                for v in data.get("variables", ())
            ),
            model=data.get("model"),
            params=dict(data.get("params") or {}),
            author=data.get("author", ""),
            changelog=data.get("changelog", ""),
            created_at=float(data["created_at"]),
            sha256=data["sha256"],
            status=Status(data["status"]),
            caller_system=caller_system(data.get("caller_system", "drop")) or CALLER_SYSTEM_DROP,
            blocks=blocks_from_dict(data.get("blocks")),
            param_bounds=bounds_from_dict(data.get("param_bounds")),
            fills=dict(data.get("fills") or {}),
            defaults=dict(data.get("defaults") or {}),
            match=tuple(data.get("match") or ()),
        )


def blocks_from_dict(data: Mapping[str, Any] | None) -> tuple[BlockSpec, ...]:
    """Block declarations as ``to_dict`` writes them (name -> default and max_chars)."""
    return tuple(
        BlockSpec(name, str(spec.get("default", "")), int(spec.get("max_chars", 2000)))
        for name, spec in (data or {}).items()
    )


def bounds_from_dict(data: Mapping[str, Any] | None) -> dict[str, tuple[float, float]]:
    return {name: (pair[0], pair[1]) for name, pair in (data or {}).items()}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change to the registry: who did what, when, why. Append-only."""

    seq: int  # store-assigned, increasing
    at: float  # unix seconds
    actor: str
    action: str  # "create", "promote", "rollback", "set_status"
    key: PromptKey
    version: int | None
    from_status: Status | None
    to_status: Status | None
    reason: str
    #: For promote/rollback: the version that was prod before (None if there was none).
    previous_prod: int | None = None
    #: Structured facts of the change beyond the status move, e.g. a rollout's mode,
    #: percentage and id (``Rollout.audit_detail``). JSON-safe values only.
    detail: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "slug": self.key.text,
            "version": self.version,
            "from_status": None if self.from_status is None else self.from_status.value,
            "to_status": None if self.to_status is None else self.to_status.value,
            "reason": self.reason,
            "previous_prod": self.previous_prod,
            "detail": None if self.detail is None else dict(self.detail),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditEntry:
        return cls(
            seq=int(data["seq"]),
            at=float(data["at"]),
            actor=data["actor"],
            action=data["action"],
            key=PromptKey.parse(data["slug"]),
            version=data.get("version"),
            from_status=None if data.get("from_status") is None else Status(data["from_status"]),
            to_status=None if data.get("to_status") is None else Status(data["to_status"]),
            reason=data.get("reason", ""),
            previous_prod=data.get("previous_prod"),
            detail=data.get("detail"),
        )


class RolloutMode(StrEnum):
    CANARY = "canary"
    SHADOW = "shadow"


class StickyKind(StrEnum):
    HEADER = "header"
    USER = "user"
    TENANT = "tenant"
    NONE = "none"


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")
#: Headers that must never be a sticky key: they carry secrets, or they are the proxy's own.
_FORBIDDEN_STICKY_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "api-key", "cookie", "x-api-key"}
)


@dataclass(frozen=True, slots=True)
class StickyKey:
    """What makes assignment sticky: ``header:<name>``, ``user``, ``tenant`` or ``none``."""

    kind: StickyKind
    #: Lower-cased header name, for ``kind == HEADER`` only.
    header: str | None = None

    @classmethod
    def parse(cls, spec: str) -> StickyKey:
        """``ValueError`` with a message fit for an API answer when ``spec`` is not valid."""
        name, sep, header = spec.partition(":")
        if sep:
            if name != StickyKind.HEADER:
                raise ValueError(f"unknown sticky key {spec!r}")
            header = header.strip().lower()
            if not _HEADER_NAME.match(header):
                raise ValueError(f"sticky header name {header!r} is not a valid header name")
            if header in _FORBIDDEN_STICKY_HEADERS:
                raise ValueError(f"{header!r} carries credentials and cannot be a sticky key")
            return cls(StickyKind.HEADER, header)
        try:
            kind = StickyKind(spec)
        except ValueError:
            raise ValueError(
                f"sticky must be 'header:<name>', 'user', 'tenant' or 'none', not {spec!r}"
            ) from None
        if kind is StickyKind.HEADER:
            raise ValueError("sticky 'header' needs a header name: 'header:x-user-id'")
        return cls(kind)

    def __str__(self) -> str:
        return f"header:{self.header}" if self.kind is StickyKind.HEADER else self.kind.value


@dataclass(frozen=True, slots=True)
class RolloutSegment:
    """Who a base rollout reaches: the tenants of these tiers and these tenants (either
    list may be empty, not both). Callers outside it, and callers of no known tenant, stay
    on stable and are not counted in the rollout's analysis."""

    tiers: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.tiers and not self.tenants:
            raise ValueError("a segment names at least one tier or tenant")
        for name in (*self.tiers, *self.tenants):
            if not NAME_PATTERN.fullmatch(name):
                raise ValueError(f"{name!r} must match [A-Za-z0-9._-]{{1,64}}")
        # One order everywhere: what a store reads back equals what was started.
        object.__setattr__(self, "tiers", tuple(sorted(set(self.tiers))))
        object.__setattr__(self, "tenants", tuple(sorted(set(self.tenants))))

    def includes(self, tenant: Tenant | None) -> bool:
        return tenant is not None and (tenant.tier in self.tiers or tenant.id in self.tenants)

    def to_dict(self) -> dict[str, Any]:
        return {"tiers": list(self.tiers), "tenants": list(self.tenants)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutSegment:
        return cls(tuple(data.get("tiers") or ()), tuple(data.get("tenants") or ()))


@dataclass(frozen=True, slots=True)
class Rollout:
    """A candidate version on trial for one key: canary (a share of callers really get it)
    or shadow (a share of requests also run on it, unseen). At most one per key.

    ``id`` is fixed when the rollout starts and is part of the assignment hash, so changing
    ``basis_points`` keeps cohorts (monotone ramp) while a new rollout reshuffles them.
    """

    key: PromptKey
    id: str
    candidate: int
    mode: RolloutMode
    #: Share of keys on the candidate arm, in 1/10000 (``2500`` = 25 %).
    basis_points: int
    sticky: StickyKey
    started_at: float
    updated_at: float
    #: Who started it.
    actor: str
    #: The candidate's status before the rollout made it ``candidate``; abort restores it.
    restore_status: Status
    #: Automated analysis: the analyser judges, ramps through ``analysis.steps`` and aborts
    #: by this policy. Fixed for the rollout's life (abort and restart to change it).
    analysis: AnalysisPolicy | None = None
    #: The tiers and tenants a base rollout reaches (None: everyone). Fixed for its life.
    segment: RolloutSegment | None = None

    @property
    def percent(self) -> float:
        return self.basis_points / 100

    def to_dict(self) -> dict[str, Any]:
        return {
            "slug": self.key.text,
            "id": self.id,
            "candidate": self.candidate,
            "mode": self.mode.value,
            "percent": self.percent,
            "basis_points": self.basis_points,
            "sticky": str(self.sticky),
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "actor": self.actor,
            "restore_status": self.restore_status.value,
            "analysis": None if self.analysis is None else self.analysis.to_dict(),
            "segment": None if self.segment is None else self.segment.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        """The rollout ``to_dict`` describes; ``analysis`` is the policy's JSON object
        (stores decode their text first), absent or null for none."""
        analysis = data.get("analysis")
        return cls(
            key=PromptKey.parse(data["slug"]),
            id=data["id"],
            candidate=int(data["candidate"]),
            mode=RolloutMode(data["mode"]),
            basis_points=int(data["basis_points"]),
            sticky=StickyKey.parse(data["sticky"]),
            started_at=float(data["started_at"]),
            updated_at=float(data["updated_at"]),
            actor=data.get("actor", ""),
            restore_status=Status(data["restore_status"]),
            analysis=None if analysis is None else AnalysisPolicy.from_stored(analysis),
            segment=None if not data.get("segment") else RolloutSegment.from_dict(data["segment"]),
        )

    def audit_detail(self) -> dict[str, Any]:
        """What an audit entry about this rollout records beside the status move. The
        policy only when there is one, so entries of rollouts without one keep the shape
        they always had; with one, every entry says which rules the analyser acted on."""
        detail: dict[str, Any] = {
            "rollout_id": self.id,
            "mode": self.mode.value,
            "percent": self.percent,
            "sticky": str(self.sticky),
        }
        if self.analysis is not None:
            detail["analysis"] = self.analysis.to_dict()
        if self.segment is not None:
            detail["segment"] = self.segment.to_dict()
        return detail


_KEY_SHA256 = re.compile(r"^[0-9a-f]{64}$")
TENANT_SET_ACTION = "tenant_set"
TENANT_DELETE_ACTION = "tenant_delete"


@dataclass(frozen=True, slots=True)
class Tenant:
    """A caller of the platform, as the registry keeps it: its tier picks the tier's
    overrides, its id its own. ``key_hashes`` are SHA-256 digests (hex) of the API keys that
    identify it when tenants come from keys: the keys themselves are never sent or kept."""

    id: str
    tier: str
    key_hashes: tuple[str, ...] = ()
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        # fullmatch: ``$`` alone also matches before a trailing newline.
        if not NAME_PATTERN.fullmatch(self.id):
            raise ValueError(f"tenant id {self.id!r} must match [A-Za-z0-9._-]{{1,64}}")
        if not NAME_PATTERN.fullmatch(self.tier):
            raise ValueError(f"tier {self.tier!r} must match [A-Za-z0-9._-]{{1,64}}")
        for digest in self.key_hashes:
            if not _KEY_SHA256.fullmatch(digest):
                raise ValueError("an API key hash is 64 lowercase hex digits (SHA-256)")
        if len(set(self.key_hashes)) != len(self.key_hashes):
            raise ValueError("an API key hash is listed twice")
        # One order everywhere: what a put returns equals what every store reads back.
        object.__setattr__(self, "key_hashes", tuple(sorted(self.key_hashes)))

    @property
    def audit_key(self) -> PromptKey:
        return tenant_audit_key(self.id)

    def same_record(self, other: Tenant | None) -> bool:
        """Same tier and keys: putting it again changes nothing."""
        return (
            other is not None
            and other.tier == self.tier
            and sorted(other.key_hashes) == sorted(self.key_hashes)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tier": self.tier,
            "key_hashes": sorted(self.key_hashes),
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tenant:
        return cls(
            id=data["id"],
            tier=data["tier"],
            key_hashes=tuple(sorted(data.get("key_hashes") or ())),
            updated_at=float(data.get("updated_at") or 0.0),
        )


def tenant_audit_key(tenant_id: str) -> PromptKey:
    """Where a tenant record's changes are filed in the audit log."""
    return PromptKey(TENANTS_SLUG, Layer("tenant", tenant_id))


def tenant_change(new: Tenant | None, old: Tenant | None) -> dict[str, Any]:
    """The audit fields of a tenant put (``new``, over ``old`` if there was one) or delete
    (``new`` None), for a store's audit append; the store adds when, who and why."""
    subject = new if new is not None else old
    if subject is None:
        raise ValueError("a tenant change needs the tenant")
    return {
        "action": TENANT_SET_ACTION if new is not None else TENANT_DELETE_ACTION,
        "key": subject.audit_key,
        "version": None,
        "from_status": None,
        "to_status": None,
        "detail": tenant_audit_detail(new, old),
    }


def tenant_audit_detail(new: Tenant | None, old: Tenant | None) -> dict[str, Any]:
    """The facts of a tenant change for its audit entry: tiers and how many keys, never a
    key hash (the audit is read by more people than the records)."""
    return {
        "tier": None if new is None else new.tier,
        "from_tier": None if old is None else old.tier,
        "api_keys": 0 if new is None else len(new.key_hashes),
    }


class VariantRoute(NamedTuple):
    """A variant a request's model may select: its patterns, compiled, and its key."""

    patterns: tuple[re.Pattern[str], ...]
    key: PromptKey


def pattern_specificity(patterns: Sequence[str]) -> int:
    """How specific a variant's patterns are: the literal characters of its most literal
    one. ``claude-3-5-sonnet-*`` wins over ``claude-*``; ties go by variant name."""
    return max((len(p) - sum(p.count(c) for c in "*?[]") for p in patterns), default=0)


@dataclass(frozen=True, slots=True)
class LayerOverrides:
    """The prod overrides of one base key: tier name -> version, tenant id -> version."""

    tiers: dict[str, PromptVersion] = field(default_factory=dict)
    tenants: dict[str, PromptVersion] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """Everything the request path needs, read in one go and never mutated.

    ``revision`` is the store's change counter at read time.
    """

    revision: int
    #: key -> version number -> version
    versions: dict[PromptKey, dict[int, PromptVersion]]
    #: key -> prod version number (keys without prod are absent)
    prod: dict[PromptKey, int]
    #: key -> the running rollout (keys without one are absent)
    rollouts: dict[PromptKey, Rollout] = field(default_factory=dict)
    #: The store's identity (``proxy.registry.identity``); None: not initialised yet.
    generation: str | None = None
    #: tenant id -> record
    tenants: dict[str, Tenant] = field(default_factory=dict)
    #: The plain keys of ``versions`` by slug: a request naming a prompt by its slug gets
    #: the very key object every table of the snapshot (and the metrics' label sets) is
    #: keyed by, so its lookups match by identity, and no key is built per request.
    plain_keys: dict[str, PromptKey] = field(init=False, repr=False, compare=False)
    #: API key hash -> tenant, for ``tenants.source: api_key``.
    tenant_by_key_hash: dict[str, Tenant] = field(init=False, repr=False, compare=False)
    #: The prod version of ``_guardrails``, composed first into every swapped-in prompt.
    guardrails: PromptVersion | None = field(init=False, repr=False, compare=False)
    #: base key -> its tiers' and tenants' prod overrides (base keys without any are absent)
    overrides: dict[PromptKey, LayerOverrides] = field(init=False, repr=False, compare=False)
    #: base key -> (layer kind, name) -> the running rollout of that layer's override of
    #: that base (a variant's requests are reached by its own overrides' rollouts only)
    override_rollouts: dict[PromptKey, dict[tuple[str, str], Rollout]] = field(
        init=False, repr=False, compare=False
    )
    #: plain key -> the variants of its slug a request's model may select, most specific
    #: first (slugs without variants are absent)
    variants: dict[PromptKey, tuple[VariantRoute, ...]] = field(
        init=False, repr=False, compare=False
    )
    #: Compositions built for this snapshot (``proxy.registry.composition``): built on
    #: first use, kept as long as the snapshot serves, so a request does a lookup.
    compositions: dict[tuple[Any, ...], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        canonical = {key: key for key in self.versions}
        object.__setattr__(self, "prod", {canonical.get(k, k): v for k, v in self.prod.items()})
        object.__setattr__(
            self, "rollouts", {canonical.get(k, k): r for k, r in self.rollouts.items()}
        )
        object.__setattr__(
            self, "plain_keys", {key.slug: key for key in self.versions if key.is_plain}
        )
        object.__setattr__(
            self,
            "tenant_by_key_hash",
            {digest: t for t in self.tenants.values() for digest in t.key_hashes},
        )
        guardrails: PromptVersion | None = None
        key = self.plain_keys.get(GUARDRAILS_SLUG)
        if key is not None and (number := self.prod.get(key)) is not None:
            guardrails = self.versions[key].get(number)
        object.__setattr__(self, "guardrails", guardrails)
        overrides: dict[PromptKey, LayerOverrides] = {}
        for key, number in self.prod.items():
            if key.layer is None:
                continue
            base = PromptKey(key.slug, None, key.variant)
            base = canonical.get(base, base)
            layered = overrides.setdefault(base, LayerOverrides())
            table = layered.tiers if key.layer.kind == "tier" else layered.tenants
            version = self.versions.get(key, {}).get(number)
            if version is not None:
                table[key.layer.name] = version
        variants: dict[PromptKey, list[tuple[int, str, VariantRoute]]] = {}
        for key, number in self.prod.items():
            if key.layer is not None or key.variant is None:
                continue
            version = self.versions.get(key, {}).get(number)
            if version is None or not version.match:
                continue
            plain = self.plain_keys.get(key.slug) or PromptKey(key.slug)
            compiled = tuple(re.compile(fnmatch.translate(p)) for p in version.match)
            route = VariantRoute(compiled, key)
            variants.setdefault(plain, []).append(
                (-pattern_specificity(version.match), key.variant, route)
            )
            # Where a layer has no override of the variant, its default variant's applies.
            inherited = overrides.get(plain)
            if inherited is not None:
                own = overrides.get(key) or LayerOverrides()
                overrides[key] = LayerOverrides(
                    {**inherited.tiers, **own.tiers}, {**inherited.tenants, **own.tenants}
                )
        object.__setattr__(self, "overrides", overrides)
        object.__setattr__(self, "override_rollouts", self._override_rollouts())
        object.__setattr__(
            self,
            "variants",
            {plain: tuple(r for *_, r in sorted(routes)) for plain, routes in variants.items()},
        )
        object.__setattr__(self, "compositions", {})

    def _override_rollouts(self) -> dict[PromptKey, dict[tuple[str, str], Rollout]]:
        found: dict[PromptKey, dict[tuple[str, str], Rollout]] = {}
        for key, rollout in self.rollouts.items():
            if key.layer is not None:
                base = PromptKey(key.slug, None, key.variant)
                found.setdefault(base, {})[(key.layer.kind, key.layer.name)] = rollout
        # A rollout of the default variant's override reaches that variant's requests only:
        # a variant composing the same override (it has none of its own) keeps its prod
        # version, so the rollout's windows, pairs and metrics stay on one model's line.
        return found

    def variant_for(self, key: PromptKey, model: str | None) -> PromptKey:
        """The variant of plain ``key`` a request of ``model`` gets: the first whose
        patterns match, most specific first; ``key`` itself (the default variant) for every
        other model, and for a request that names none."""
        routes = self.variants.get(key)
        if routes is None or model is None:
            return key
        for route in routes:
            for pattern in route.patterns:
                if pattern.match(model):
                    return route.key
        return key

    @property
    def empty(self) -> bool:
        return not self.versions
