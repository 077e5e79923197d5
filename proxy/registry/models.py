"""Registry data: frozen values, no I/O.

A version is never changed or deleted; its status is the only thing that moves, and every
move is an ``AuditEntry``. ``content_sha256`` covers what defines a version's behaviour
(template, variables, model pin, params), so pushing the same content twice is a no-op.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson


class Status(StrEnum):
    DRAFT = "draft"
    CANDIDATE = "candidate"
    PROD = "prod"
    DEPRECATED = "deprecated"


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
class VersionDraft:
    """What a push supplies; the store assigns number, time, status."""

    slug: str
    template: str
    variables: tuple[VariableSpec, ...] = ()
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    author: str = ""
    changelog: str = ""

    def to_version(self, number: int, created_at: float) -> PromptVersion:
        """The immutable version this draft becomes, as a new draft."""
        return PromptVersion(
            slug=self.slug,
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
        )

    def content_sha256(self) -> str:
        content = {
            "template": self.template,
            "variables": [v.to_dict() for v in self.variables],
            "model": self.model,
            "params": self.params,
        }
        return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class PromptVersion:
    slug: str
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptVersion:
        return cls(
            slug=data["slug"],
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
        )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change to the registry: who did what, when, why. Append-only."""

    seq: int  # store-assigned, increasing
    at: float  # unix seconds
    actor: str
    action: str  # "create", "promote", "rollback", "set_status"
    slug: str
    version: int | None
    from_status: Status | None
    to_status: Status | None
    reason: str
    #: For promote/rollback: the version that was prod before (None if there was none).
    previous_prod: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "slug": self.slug,
            "version": self.version,
            "from_status": None if self.from_status is None else self.from_status.value,
            "to_status": None if self.to_status is None else self.to_status.value,
            "reason": self.reason,
            "previous_prod": self.previous_prod,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditEntry:
        return cls(
            seq=int(data["seq"]),
            at=float(data["at"]),
            actor=data["actor"],
            action=data["action"],
            slug=data["slug"],
            version=data.get("version"),
            from_status=None if data.get("from_status") is None else Status(data["from_status"]),
            to_status=None if data.get("to_status") is None else Status(data["to_status"]),
            reason=data.get("reason", ""),
            previous_prod=data.get("previous_prod"),
        )


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """Everything the request path needs, read in one go and never mutated.

    ``revision`` is the store's change counter at read time.
    """

    revision: int
    #: slug -> version number -> version
    versions: dict[str, dict[int, PromptVersion]]
    #: slug -> prod version number (slugs without prod are absent)
    prod: dict[str, int]

    @property
    def empty(self) -> bool:
        return not self.versions
