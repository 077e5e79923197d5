"""state_at on hand-written audit entries: what older entries cannot say stays unknown."""

from __future__ import annotations

from typing import Any

from proxy.cli.prompts import _served_at
from proxy.prompt_key import PromptKey
from proxy.registry.history import RolloutAt, StateAt, state_at
from proxy.registry.models import AuditEntry, Status
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
