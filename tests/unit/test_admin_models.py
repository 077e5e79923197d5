"""The admin API's models carry every field of what the registry says, and nothing else.

Handlers build each answer by validating a domain object's JSON shape (``to_dict``) into
its model and serializing the model; a key the model did not know would vanish from the
answer, and a key it added would appear. Each model must give back exactly what it was
given, for representative values of every shape.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from proxy.errors import Conflict, InvalidRequest
from proxy.prompt_key import PromptKey
from proxy.registry.analysis_policy import AnalysisPolicy, Thresholds
from proxy.registry.backup import RegistryImage
from proxy.registry.fleet import FleetWait, ReplicaBeat, ReplicaView
from proxy.registry.history import RolloutAt
from proxy.registry.models import (
    AuditEntry,
    Rollout,
    RolloutMode,
    RolloutSegment,
    Status,
    StickyKey,
    VariableSpec,
    VersionDraft,
)
from proxy.registry.recovery import RestoreResult
from proxy.registry.service import FleetStatus, PromptSummary, Served
from proxy.shadow.models import ArmResult, ToolCall
from proxy.shadow.pairs import Pair, PairMeta
from proxy.web import admin_models as api

SUPPORT = PromptKey("support")
POLICY = AnalysisPolicy(
    interval=30.0,
    min_samples=50,
    failure_limit=1,
    steps=(100, 2500),
    thresholds=Thresholds(p95_ttft_ratio=None, feedback_name="thumbs", feedback_max_drop=0.1),
)
VERSION = VersionDraft(
    key=SUPPORT,
    template="Hi {{ name }} {{ tone }}",
    variables=(
        VariableSpec("name", "string"),
        VariableSpec("tone", None, {"a": [1, 2.5, None]}, has_default=True),
        VariableSpec("n", "integer", None, has_default=True),
    ),
    model="gpt-4o-mini",
    params={"temperature": 0.2, "seed": 2**63 - 1, "logit_bias": {"50256": -100}},
    author="ada",
    changelog="first",
).to_version(3, 1732449940.125)
ROLLOUT = Rollout(
    key=SUPPORT,
    id="ab12",
    candidate=3,
    mode=RolloutMode.SHADOW,
    basis_points=2550,
    sticky=StickyKey.parse("header:X-User-Id"),
    started_at=1732449940.5,
    updated_at=1732449999.25,
    actor="ada",
    restore_status=Status.DRAFT,
    analysis=POLICY,
)
ENTRY = AuditEntry(
    7,
    1732449940.5,
    "ada",
    "rollout_update",
    SUPPORT,
    3,
    Status.DRAFT,
    Status.CANDIDATE,
    "ramp",
    2,
    {**ROLLOUT.audit_detail(), "from_percent": 10.0},
)
PLAIN_ENTRY = AuditEntry(1, 2.0, "a", "create", PromptKey("s"), None, None, None, "")
BEAT = ReplicaBeat("h:1:a", "h", 1, "0.1.0", 40, 1732449000.0, 0.25, True, "g1", "ok", 3)
VIEW = ReplicaView(BEAT, age=1.2345, live=True, staleness=2.5)
WAIT = FleetWait(
    revision=41,
    replicas=("h:1:a", "h:2:b", "h:3:c"),
    confirmed=("h:1:a",),
    missing=(("h:2:b", VIEW), ("h:3:c", None)),
    elapsed=2.0004,
    timeout=2.0,
    error="board down",
)
PAIR = Pair.build(
    PairMeta("p1", SUPPORT, "ab12", "stable", "r1", "chat", True, expect_json=True),
    ArmResult(
        version=2,
        status=200,
        text="hello",
        tool_calls=[ToolCall("lookup", '{"id": 1}')],
        finish_reason="tool_calls",
        model="gpt-4o-mini",
        latency=0.8124,
        ttft=0.1,
        input_tokens=12,
        output_tokens=3,
    ),
    ArmResult(version=2, status=502, error_class="upstream_5xx", truncated=True),
    1732449940.75,
    {"text_distance": 0.25, "length_drift": 0.0, "json_invalid": None},
)
VERDICT = {
    "at": 1732450000.123,
    "rollout_id": "ab12",
    "verdict": "fail",
    "percent": 25.5,
    "window": {"start": 1732449940.0, "end": 1732450000.0},
    "samples": {"stable": 1800, "shadow": 190},
    "checks": [
        {
            "name": "error_rate",
            "result": "skipped",
            "stable": None,
            "candidate": None,
            "limit": 0.02,
            "p_value": None,
            "note": "no samples on either arm",
        }
    ],
    "action": "abort",
    "actor": "analyser:h:1:a",
    "from_a_newer_version": {"kept": True},
}

CASES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (api.Version, VERSION.to_dict()),
    (api.AuditEntry, ENTRY.to_dict()),
    (api.AuditEntry, PLAIN_ENTRY.to_dict()),
    (api.Rollout, ROLLOUT.to_dict()),
    (api.RolloutView, {**ROLLOUT.to_dict(), "prod_version": None}),
    (api.PromptSummary, PromptSummary(SUPPORT, 2, 3, 3, 1732449940.5).to_dict()),
    (api.Served, Served(41, True, WAIT).to_dict()),
    (api.Served, Served(None, False, None).to_dict()),
    (api.FleetStatus, FleetStatus(41, "h:1:a", [VIEW], "g1").to_dict()),
    (api.FleetStatus, FleetStatus(None, "h:1:a", [VIEW], None).to_dict()),
    (api.RestoreResult, RestoreResult("file", "g1", 42, 3, 9, unchanged=True).to_dict()),
    (api.RolloutAt, RolloutAt("ab12", 3, "canary", 25.5, "user", 1.5, 2.5).to_dict()),
    (api.RolloutAt, RolloutAt(None, 3, None, None, None, 1.5, 2.5).to_dict()),
    (
        api.RolloutAt,
        RolloutAt("ab12", 3, "canary", 5.0, "tenant", 1.5, 2.5, RolloutSegment(("pro",))).to_dict(),
    ),
    (api.ShadowPair, PAIR.to_dict()),
    (api.ShadowPair, {"pair_id": "old", "ts": 1.5, "shadow": {"text": "a pair of long ago"}}),
    (api.Verdict, VERDICT),
    (
        api.RegistryExport,
        orjson.loads(
            RegistryImage("g1", 9, {SUPPORT: {3: VERSION}}, {SUPPORT: ROLLOUT}, (ENTRY,)).to_json()
        ),
    ),
    (
        api.RegistryStatus,
        {"state": "replaced", "problem": "lost", "generation": None, "revision": 0, "prompts": 0},
    ),
]


@pytest.mark.parametrize(("model", "data"), CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_a_model_gives_back_exactly_what_it_was_given(
    model: type[BaseModel], data: dict[str, Any]
) -> None:
    made = model.model_validate(data)
    assert api.wire(made) == data
    assert list(api.wire(made)) == list(data)  # in the same order


def test_an_audit_entry_reads_its_rollout_facts() -> None:
    detail = api.AuditEntry.model_validate(ENTRY.to_dict()).rollout_detail()
    assert detail is not None
    assert (detail.mode, detail.percent, detail.from_percent) == ("shadow", 25.5, 10.0)
    plain = PLAIN_ENTRY
    assert api.AuditEntry.model_validate(plain.to_dict()).rollout_detail() is None


@pytest.mark.parametrize(
    "error",
    [InvalidRequest("bad", param="template"), Conflict("no", code="no_prod_version")],
)
def test_every_error_is_in_the_documented_shape(error: InvalidRequest | Conflict) -> None:
    body = error.to_openai_body()
    assert api.wire(api.Error.model_validate(body)) == body
