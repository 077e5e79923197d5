"""A whole registry as one value (``RegistryImage``): what a restore writes into a lost
store and what ``promptproxy registry export`` / ``import`` read and write.

An image keeps version numbers, content hashes, statuses, rollouts and (from an export) the
audit log, and the registry's generation, so a restore brings back *the same* registry:
every replica that served it recovers by itself, and numbering continues where it was
(version numbers never restart). The file format is JSON with ``format`` = ``FORMAT``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.registry import lifecycle
from proxy.registry.models import AuditEntry, PromptVersion, RegistrySnapshot, Rollout, Status

FORMAT = "promptproxy-registry/1"
RESTORE_ACTION = "restore"


class ImageError(ValueError):
    """The file is not a registry export this promptproxy reads."""


@dataclass(frozen=True, slots=True)
class RegistryImage:
    generation: str
    revision: int
    #: slug -> version number -> version (with its status)
    versions: Mapping[str, Mapping[int, PromptVersion]]
    rollouts: Mapping[str, Rollout] = field(default_factory=dict)
    #: Oldest first; empty when made from a snapshot (a replica has no audit log).
    audit: tuple[AuditEntry, ...] = ()

    @classmethod
    def from_snapshot(cls, snapshot: RegistrySnapshot) -> RegistryImage:
        if snapshot.generation is None:
            raise ImageError("the snapshot has no generation (the store was never initialised)")
        return cls(snapshot.generation, snapshot.revision, snapshot.versions, snapshot.rollouts)

    @property
    def empty(self) -> bool:
        return not self.versions

    def content(self) -> tuple[Any, ...]:
        """What "the same content" means for an import: versions, statuses, rollouts."""
        return (
            {s: {n: v.to_dict() for n, v in vs.items()} for s, vs in self.versions.items()},
            {s: r.to_dict() for s, r in self.rollouts.items()},
        )

    def prod_stack(self, slug: str) -> list[int]:
        """Rollback history of ``slug`` from the audit log; without one, just the prod."""
        events = [
            (e.action, e.version)
            for e in self.audit
            if e.slug == slug
            and e.version is not None
            and e.action in (lifecycle.PROMOTE_ACTION, lifecycle.ROLLBACK_ACTION)
        ]
        stack = lifecycle.prod_stack(events)
        prod = next((n for n, v in self.versions[slug].items() if v.status is Status.PROD), None)
        if prod is not None and (not stack or stack[-1] != prod):
            stack = [n for n in stack if n != prod] + [prod]
        return stack if prod is not None else []

    def restore_entries(self, actor: str, reason: str, at: float) -> list[AuditEntry]:
        """One audit entry per restored slug (seq assigned by the store)."""
        last = max((e.seq for e in self.audit), default=0)
        return [
            AuditEntry(
                seq=last + i,
                at=at,
                actor=actor,
                action=RESTORE_ACTION,
                slug=slug,
                version=max(self.versions[slug]),
                from_status=None,
                to_status=None,
                reason=reason,
                detail={"generation": self.generation, "revision": self.revision},
            )
            for i, slug in enumerate(sorted(self.versions), start=1)
        ]

    def to_json(self) -> bytes:
        data = {
            "format": FORMAT,
            "generation": self.generation,
            "revision": self.revision,
            "versions": [
                v.to_dict() for slug in sorted(self.versions) for v in self.versions[slug].values()
            ],
            "rollouts": [self.rollouts[slug].to_dict() for slug in sorted(self.rollouts)],
            "audit": [e.to_dict() for e in self.audit],
        }
        return orjson.dumps(data, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, raw: bytes | str) -> RegistryImage:
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                found = data.get("format") if isinstance(data, dict) else None
                raise ImageError(f"not a registry export in format {FORMAT!r} (found {found!r})")
            versions: dict[str, dict[int, PromptVersion]] = {}
            for item in data["versions"]:
                version = PromptVersion.from_dict(item)
                versions.setdefault(version.slug, {})[version.version] = version
            for slug, numbered in versions.items():
                if sorted(numbered) != list(range(1, len(numbered) + 1)):
                    raise ImageError(f"{slug}: version numbers must be 1..n without gaps")
            rollouts = {r["slug"]: Rollout.from_dict(r) for r in data.get("rollouts", [])}
            audit = tuple(
                sorted((AuditEntry.from_dict(e) for e in data.get("audit", [])), key=_seq)
            )
            generation = data["generation"]
            if not isinstance(generation, str) or not generation:
                raise ImageError("generation must be a non-empty string")
            return cls(generation, int(data["revision"]), versions, rollouts, audit)
        except ImageError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ImageError(f"not a valid registry export: {type(exc).__name__}: {exc}") from None


def _seq(entry: AuditEntry) -> int:
    return entry.seq
