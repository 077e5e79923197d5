"""`promptproxy fleet` as a table: a replica whose store was lost shows it."""

from __future__ import annotations

from typing import Any

from proxy.cli.fleet import _describe
from proxy.web import admin_models as api


def _row(name: str, state: str, generation: str | None, behind: int | None) -> dict[str, Any]:
    return {
        "replica": name,
        "host": "h",
        "pid": 1,
        "version": "0.1.0",
        "revision": 40,
        "generation": generation,
        "state": state,
        "prompts": 3,
        "behind": behind,
        "served_at": 1.0,
        "staleness_seconds": 2.0,
        "heartbeat_age_seconds": 0.5,
        "healthy": state == "ok",
        "live": True,
        "this": name == "a",
    }


def test_the_table_shows_each_replicas_state_and_no_behind_across_registries() -> None:
    status = {
        "revision": 0,
        "generation": None,
        "replica": "a",
        "live": 2,
        "data": [
            _row("a", "replaced", "0123456789abcdef", None),
            _row("b", "replaced", "0123456789abcdef", None),
        ],
    }
    lines = _describe(api.FleetStatus.model_validate(status)).splitlines()
    assert "store revision 0 (generation -)" in lines[0]
    assert lines[1].split()[:3] == ["REPLICA", "STATE", "GENERATION"]
    assert lines[2].split()[:7] == ["a", "*", "replaced", "01234567", "3", "40", "-"]
    assert lines[3].split()[:6] == ["b", "replaced", "01234567", "3", "40", "-"]
