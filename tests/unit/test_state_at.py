"""state_at on hand-written audit entries: what older entries cannot say stays unknown."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.cli.prompts import _served_at
from proxy.prompt_key import PromptKey
from proxy.registry.history import RolloutAt, StateAt, state_at
from proxy.registry.models import AuditEntry, RolloutSegment, Status
from proxy.web import admin_models as api


def entry(seq: int, at: float, action: str, version: int, **kw: Any) -> AuditEntry:
    fields: dict[str, Any] = {"from_status": None, "to_status": None, "reason": "", **kw}
    return AuditEntry(seq, at, "alice", action, PromptKey("greet"), version, **fields)


def test_an_entry_without_rollout_facts_answers_unknown_rather_than_guessing() -> None:
    entries = [
        entry(3, 30.0, "rollout_update", 2, detail=None),
        entry(1, 10.0, "promote", 1, to_status=Status.PROD),
        entry(2, 20.0, "rollout_start", 2, detail={"mode": "canary", "percent": 5}),
    ]
    assert state_at(entries, 25.0) == StateAt(1, RolloutAt(None, 2, "canary", 5.0, None, 20, 20))
    assert state_at(entries, 35.0) == StateAt(1, RolloutAt(None, 2, None, None, None, 20, 30))


SEGMENT = {"tiers": ["pro"], "tenants": ["acme"]}


def test_the_segment_of_the_rollout_running_then_is_reported() -> None:
    started = {"rollout_id": "r", "mode": "canary", "percent": 5, "segment": SEGMENT}
    entries = [
        entry(1, 10.0, "rollout_start", 2, detail=started),
        entry(2, 20.0, "rollout_update", 2, detail={**started, "percent": 50}),
        entry(3, 30.0, "rollout_abort", 2, detail=started),
        entry(4, 40.0, "rollout_start", 2, detail={"rollout_id": "r2", "mode": "canary"}),
    ]
    pro_and_acme = RolloutSegment(("pro",), ("acme",))
    assert state_at(entries, 15.0).rollout == RolloutAt(
        "r", 2, "canary", 5.0, None, 10, 10, pro_and_acme
    )
    assert state_at(entries, 25.0).rollout == RolloutAt(
        "r", 2, "canary", 50.0, None, 10, 20, pro_and_acme
    )
    assert state_at(entries, 35.0).rollout is None
    later = state_at(entries, 45.0).rollout
    assert later is not None
    assert later.segment is None  # no segment: everyone
    assert later.to_dict()["segment"] is None


@pytest.mark.parametrize(
    "segment", ["pro", {"tiers": "pro"}, {"tiers": [1]}, {"tiers": []}, {"tiers": ["a b"]}]
)
def test_a_segment_no_store_writes_reads_as_none_rather_than_failing(segment: Any) -> None:
    """An imported audit log is only checked to be JSON: a history read must still work."""
    entries = [entry(1, 10.0, "rollout_start", 2, detail={"segment": segment})]
    rollout = state_at(entries, 15.0).rollout
    assert rollout is not None
    assert rollout.segment is None


def test_a_restore_entry_names_the_segment_of_the_rollout_it_restored() -> None:
    running = {"rollout_id": "r", "candidate": 2, "started_at": 5.0, "segment": SEGMENT}
    restored = entry(1, 10.0, "restore", 1, to_status=Status.PROD, detail={"rollout": running})
    rollout = state_at([restored], 15.0).rollout
    assert rollout is not None
    assert rollout.segment == RolloutSegment(("pro",), ("acme",))
    assert served_at(rollout.to_dict()).rollout == api.RolloutAt.model_validate(rollout.to_dict())


def served_at(rollout: dict[str, Any]) -> api.ServedAt:
    return api.ServedAt.model_validate(
        {"slug": "greet", "at": "T", "prod_version": 1, "rollout": rollout}
    )


def test_the_cli_line_says_unknown_for_what_an_old_entry_lacks() -> None:
    rollout = RolloutAt(None, 2, "canary", None, None, 20.0, 30.0).to_dict()
    line = _served_at(served_at(rollout))
    assert line.startswith("greet at T: prod version 1; canary of version 2 serving an unknown")
    assert "sticky unknown (rollout unknown," in line


def test_the_cli_line_of_a_shadow_says_callers_got_prod() -> None:
    rollout = RolloutAt("r", 3, "shadow", 20.0, "user", 20.0, 20.0).to_dict()
    line = _served_at(served_at(rollout))
    assert "shadow of version 3: callers served prod, 20% of requests copied to it" in line
