"""What a prompt key served at a past instant, replayed from its audit log. Pure.

The prod version alone does not say what ran during a rollout: a canary served its candidate
to a share of callers, a shadow copied a share of requests to it. Every rollout entry of the
audit log carries the rollout's facts (``Rollout.audit_detail``: id, mode, percent, sticky
key, segment), so the log alone answers "what ran at 14:05" without the rollout record, which is
gone once the rollout ends.

Entries written before a field was recorded answer ``None`` for it rather than a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.registry.backup import RESTORE_ACTION, RESTORED_ROLLOUT
from proxy.registry.lifecycle import (
    PROMOTE_ACTION,
    ROLLOUT_ABORT_ACTION,
    ROLLOUT_PROMOTED_DETAIL,
    ROLLOUT_START_ACTION,
    ROLLOUT_UPDATE_ACTION,
)
from proxy.registry.models import AuditEntry, RolloutSegment, Status


@dataclass(frozen=True, slots=True)
class RolloutAt:
    """The rollout running at an instant, as its last audit entry before then left it."""

    id: str | None
    candidate: int | None
    #: ``canary``: ``percent`` of callers were served the candidate; ``shadow``: callers
    #: were served prod and ``percent`` of requests were copied to the candidate.
    mode: str | None
    percent: float | None
    sticky: str | None
    started_at: float
    #: When the percentage last changed (the start, or the latest update).
    percent_since: float
    #: The tiers and tenants it reached; None: everyone (or an entry from before segments,
    #: which were all rollouts that reached everyone).
    segment: RolloutSegment | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "candidate": self.candidate,
            "mode": self.mode,
            "percent": self.percent,
            "sticky": self.sticky,
            "started_at": self.started_at,
            "percent_since": self.percent_since,
            "segment": None if self.segment is None else self.segment.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class StateAt:
    prod_version: int | None
    rollout: RolloutAt | None


def state_at(entries: Iterable[AuditEntry], at: float) -> StateAt:
    """Prod and the running rollout at instant ``at`` (entries stamped ``at`` included),
    from one key's audit entries in any order."""
    prod: int | None = None
    rollout: RolloutAt | None = None
    for entry in sorted(entries, key=lambda e: e.seq):
        if entry.at > at:
            break
        detail: Mapping[str, Any] = entry.detail or {}
        if entry.action == RESTORE_ACTION:
            # A restore states what ran: history may start there (a snapshot has no log).
            prod = entry.version if entry.to_status is Status.PROD else None
            running = detail.get(RESTORED_ROLLOUT)
            rollout = None if not isinstance(running, Mapping) else _restored(running)
            continue
        if entry.to_status is Status.PROD:
            prod = entry.version
        elif entry.from_status is Status.PROD and entry.version == prod:
            prod = None
        if entry.action == ROLLOUT_START_ACTION:
            rollout = _rollout(entry, detail, entry.at)
        elif entry.action == ROLLOUT_UPDATE_ACTION:
            started = entry.at if rollout is None else rollout.started_at
            rollout = _rollout(entry, detail, started)
        elif entry.action == ROLLOUT_ABORT_ACTION or (
            entry.action == PROMOTE_ACTION and detail.get(ROLLOUT_PROMOTED_DETAIL)
        ):
            rollout = None
    return StateAt(prod, rollout)


def _restored(detail: Mapping[str, Any]) -> RolloutAt:
    percent, candidate = detail.get("percent"), detail.get("candidate")
    started, updated = detail.get("started_at"), detail.get("updated_at")
    return RolloutAt(
        id=detail.get("rollout_id"),
        candidate=candidate if isinstance(candidate, int) else None,
        mode=detail.get("mode"),
        percent=None if percent is None else float(percent),
        sticky=detail.get("sticky"),
        started_at=float(started) if isinstance(started, int | float) else 0.0,
        percent_since=float(updated) if isinstance(updated, int | float) else 0.0,
        segment=_segment(detail),
    )


def _rollout(entry: AuditEntry, detail: Mapping[str, Any], started_at: float) -> RolloutAt:
    percent = detail.get("percent")
    return RolloutAt(
        id=detail.get("rollout_id"),
        candidate=entry.version,
        mode=detail.get("mode"),
        percent=None if percent is None else float(percent),
        sticky=detail.get("sticky"),
        started_at=started_at,
        percent_since=entry.at,
        segment=_segment(detail),
    )


def _segment(detail: Mapping[str, Any]) -> RolloutSegment | None:
    """The segment a rollout entry records, None for none. Also None for a shape no store
    writes (an imported log is only checked to be JSON): a history read must not fail."""
    found = detail.get("segment")
    if not isinstance(found, Mapping):
        return None
    lists = [found.get("tiers", []), found.get("tenants", [])]
    if not all(
        isinstance(names, list) and all(isinstance(n, str) for n in names) for names in lists
    ):
        return None
    try:
        return RolloutSegment(tuple(lists[0]), tuple(lists[1]))
    except ValueError:
        return None
