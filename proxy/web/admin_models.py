"""The admin API's JSON contract: what each endpoint takes and what it answers.

Three readers, one definition: the handlers validate request bodies with these models and
build every answer from them, the OpenAPI document (``proxy.web.openapi``) is generated
from them, and the CLI's client (``proxy.cli.client``) parses answers into them.

Field order is the order of the keys on the wire. An answer is serialized with
``wire``: only the fields that were set, so a key that is optional on the wire (a
variable's ``default``) is absent rather than null, and records read back from a store
(verdicts, shadow pairs) come out as they went in.

Some rules are checked after the model (templates by the Jinja sandbox, percents and
sticky keys by the registry, an analysis policy by ``AnalysisPolicy.from_dict``), so the
messages name the field the same way whichever front end sent it. The document still
states them: ``doc`` below adds a JSON Schema keyword without a second check.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    RootModel,
    StrictBool,
    StrictFloat,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, PydanticUndefined

from proxy.registry.models import INT64_MAX, MAX_BLOCK_CHARS, MODEL_PATTERN, RolloutMode, Status

#: The types a variable may declare (``proxy.registry.templates.VARIABLE_TYPES``, which
#: checks them; importing it here would load Jinja into every CLI call).
VARIABLE_TYPE_NAMES = ("boolean", "integer", "list", "number", "object", "string")
SLUG_REGEX = "^[A-Za-z0-9._-]{1,64}$"
#: A model pattern of a variant: a model name's characters and the glob's ``* ? [ ]``.
MATCH_REGEX = f"^{MODEL_PATTERN.pattern}$"
EXPORT_FORMAT = "promptproxy-registry/1"
# StickyKey.parse: the header name is stripped and lower-cased; the token characters of
# RFC 9110. The credential headers it refuses are named in the description.
_STICKY_REGEX = r"^(none|user|tenant|header:[ \t]*[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}[ \t]*)$"
#: A JSON value a version keeps as sent: numbers finite, integers within 64 bits (NaN,
#: Infinity and wider integers are a 400 naming their path). JSON Schema has no "finite".
_JSON_VALUE = "Any JSON value; integers from -2^63 to 2^63-1, no NaN or Infinity"


def doc(
    default: Any = PydanticUndefined, *, description: str | None = None, **keywords: Any
) -> Any:
    """A field whose JSON Schema ``keywords`` are for the document only: the rule they
    state is checked after the model."""
    return Field(default, description=description, json_schema_extra=keywords)


class DocAs:
    """Describe a field in the document as ``shape`` while the model keeps it as it came
    (an analysis policy is a plain object until ``AnalysisPolicy.from_dict`` reads it)."""

    def __init__(self, shape: Any) -> None:
        self.shape = shape

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        from pydantic import TypeAdapter

        return handler(TypeAdapter(self.shape).core_schema)


def _json_number(value: Any) -> Any:
    # Pydantic's lax mode reads true and "5" as numbers; JSON Schema does not (it does take
    # 5.0 as the integer 5, which strict mode would refuse).
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


#: Version numbers, audit sequence numbers and limits: what a store can hold (SQLite INTEGER).
Count = Annotated[int, Field(ge=1, le=INT64_MAX), BeforeValidator(_json_number)]


def wire(model: BaseModel) -> Any:
    """The JSON value of an answer: the fields that were set."""
    return model.model_dump(mode="json", exclude_unset=True)


class Wire(BaseModel):
    """An answer (or a part of one). Unknown keys are ignored: a CLI reads a newer
    server's answers."""


class Record(Wire):
    """A record read back from a store as it was written: keys this version does not know
    are kept, and none is added."""

    model_config = ConfigDict(extra="allow")


class Body(Wire):
    """A request body: an unknown key is a 400 naming it."""

    model_config = ConfigDict(extra="forbid")


# -- errors ---------------------------------------------------------------------------------


class ErrorDetail(Wire):
    message: str
    type: str
    param: str | None
    code: str | None


class Error(Wire):
    """Every error, in the OpenAI shape (``proxy.errors.ProxyError.to_openai_body``)."""

    error: ErrorDetail


# -- prompts and versions -------------------------------------------------------------------


class Variable(Body):
    name: str = doc(
        pattern="^[A-Za-z_][A-Za-z0-9_]*$",
        description="A template variable (Jinja's own names, like range or loop, are reserved)",
    )
    type: str | None = doc(None, enum=[*VARIABLE_TYPE_NAMES, None])
    default: Any = Field(
        None, description="Present: the caller may omit the variable. " + _JSON_VALUE
    )


class BlockIn(Body):
    default: str = Field(
        "", description="Text where no override fills the block (a template over the variables)"
    )
    max_chars: int = Field(2000, ge=1, le=MAX_BLOCK_CHARS, description="Longest fill allowed")


class VersionIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "template": "You help {{ customer_name }}. Tone: {{ tone }}.",
                    "variables": [
                        {"name": "customer_name", "type": "string"},
                        {"name": "tone", "type": "string", "default": "friendly"},
                    ],
                    "model": "gpt-4o-mini",
                    "params": {"temperature": 0.2},
                    "changelog": "first version",
                }
            ]
        }
    )

    template: str = Field(
        "",
        description="Jinja2 (sandboxed) system prompt, e.g. Hello {{ customer_name }}. A "
        "template the sandbox refuses, or one using undeclared variables, is a 400 whose "
        "param is template. Required for a base; an override (tier= or tenant=) has none",
    )
    variables: list[Variable] = []
    model: str | None = Field(None, description="Model pin, e.g. gpt-4o-2024-08-06")
    params: dict[str, Any] = Field({}, description="Default generation parameters. " + _JSON_VALUE)
    author: str | None = Field(None, description="Defaults to the token's name")
    changelog: str = ""
    caller_system: Literal["drop", "after"] = Field(
        "drop",
        description="The caller's own system and developer messages: dropped (the default), "
        "or kept after the composed prompt, never before the guardrails",
    )
    blocks: dict[str, BlockIn] = Field(
        {},
        description="A base's named blocks, read by its template as {{ block.NAME }}, which "
        "tier and tenant overrides may fill",
    )
    param_bounds: dict[str, Annotated[list[float], Field(min_length=2, max_length=2)]] = Field(
        {},
        description="A base's bounds [low, high] on the parameters its overrides may set, "
        'e.g. {"temperature": [0, 1]}',
    )
    fills: dict[str, str] = Field(
        {},
        description="An override's text for the base's blocks (templates over the base's "
        "variables); a block the base does not declare is a 400 naming it",
    )
    defaults: dict[str, Any] = Field(
        {}, description="An override's defaults for the base's variables. " + _JSON_VALUE
    )
    match: list[Annotated[str, Field(pattern=MATCH_REGEX)]] = Field(
        [],
        description="A model variant's base (variant=NAME): the request models it serves, "
        "as glob patterns such as claude-* or gpt-4o*; required there, refused elsewhere",
    )


def _needs_reason(flag: str) -> dict[str, Any]:
    return {
        "if": {"properties": {flag: {"const": True}}, "required": [flag]},
        "then": {"properties": {"reason": {"pattern": "\\S"}}, "required": ["reason"]},
    }


#: ``force`` and ``override_gates`` need a reason: said in the schema, so a client
#: generated from it knows.
FLAGS_NEED_REASON: dict[str, Any] = {
    "allOf": [_needs_reason("force"), _needs_reason("override_gates")]
}
#: The flag that goes ahead although gates are missing or failing (docs/gates.md).
OVERRIDE_GATES_DOC = (
    "Go ahead although the version has not passed the gates its slug requires (409 "
    "gates_not_passed without it); needs a reason, kept in the audit log with each gate "
    "overridden. The safety policy is never overridden"
)


class PromoteIn(Body):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"version": 2, "reason": "CR-12"}], **FLAGS_NEED_REASON}
    )

    version: Count
    reason: str = ""
    force: bool = Field(
        False,
        description="Go ahead although the base version breaks overrides in use (409 "
        "overrides_break without it); needs a reason, kept in the audit log with the layers "
        "it broke",
    )
    override_gates: bool = Field(False, description=OVERRIDE_GATES_DOC)


class ReasonIn(Body):
    reason: str = Field("", description="Kept in the audit log")


class Version(Wire):
    slug: str
    version: int
    template: str
    variables: list[Variable]
    model: str | None
    params: dict[str, Any]
    author: str
    changelog: str
    created_at: float
    sha256: str
    status: Status
    caller_system: Literal["drop", "after"] = "drop"
    blocks: dict[str, BlockIn] = {}
    param_bounds: dict[str, list[float]] = {}
    fills: dict[str, str] = {}
    defaults: dict[str, Any] = {}
    match: list[str] = []


class PromptSummary(Wire):
    slug: str
    prod_version: int | None
    latest_version: int
    versions: int
    updated_at: float


class PromptList(Wire):
    data: list[PromptSummary]


class Prompt(PromptSummary):
    """A prompt and its versions, oldest first."""

    data: list[Version]


class FleetMissing(Wire):
    replica: str
    revision: int | None
    heartbeat_age_seconds: float | None


class FleetWait(Wire):
    """How a change reached the replicas live when it was written."""

    revision: int = Field(description="registry revision waited for")
    replicas: int = Field(description="live replicas waited for")
    confirmed: int = Field(description="those serving the revision or later")
    complete: bool
    elapsed_ms: int
    timeout_seconds: float
    missing: list[FleetMissing] = Field(
        description="replicas that did not confirm in time, as last seen"
    )
    error: str | None = Field(description="the fleet board failed")


class Served(Wire):
    """Who serves the write: the answering process, and with `wait` the fleet."""

    revision: int | None = Field(description="store revision after it")
    here: bool = Field(
        description="the answering process serves it (false only if its store read failed "
        "right after the write; the write is made either way)"
    )
    fleet: FleetWait | None


class OverrideBreakage(Wire):
    layer: str = Field(description="The override, as tenant:acme@4 or tier:enterprise@1")
    problems: list[str]


class OverrideFit(Wire):
    """How a base version fits every tier's and tenant's override in use (their prod
    versions): each composed with it and rendered."""

    base: str = Field(description="The base version, as base@5")
    checked: int = Field(description="Overrides composed with it")
    broken: list[OverrideBreakage]


class VersionCreated(Wire):
    created: bool
    version: Version
    served: Served
    overrides: OverrideFit | None = Field(
        None,
        description="A base version: how it fits every override in use. Promoting it or "
        "starting its rollout with breakage is refused unless forced",
    )


class AuditEntry(Wire):
    seq: int
    at: float
    actor: str
    action: str
    slug: str
    version: int | None
    from_status: Status | None
    to_status: Status | None
    reason: str
    previous_prod: int | None
    detail: dict[str, Any] | None = Field(
        description="Rollout changes: rollout_id, mode, percent, sticky (from_percent on a "
        "ramp, ended_rollout when a promote or abort ended one)"
    )

    def rollout_detail(self) -> RolloutDetail | None:
        """The rollout facts of ``detail``, or None when it has none."""
        if not self.detail or "mode" not in self.detail:
            return None
        return RolloutDetail.model_validate(self.detail)


class RolloutDetail(Record):
    """The rollout facts an audit entry's ``detail`` may carry."""

    rollout_id: str | None = None
    mode: str | None = None
    percent: float | None = None
    sticky: str | None = None
    from_percent: float | None = None
    ended_rollout: bool | None = None


class AuditWritten(AuditEntry):
    """A registry write's audit entry, and who serves it."""

    served: Served


class TenantIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "tier": "enterprise",
                    "api_key_sha256": [
                        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                    ],
                    "reason": "signed 2026-12",
                }
            ]
        }
    )

    tier: str = Field(
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="One of the tiers the config lists (tenants.tiers)",
    )
    api_key_sha256: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] | None = Field(
        None,
        description="SHA-256 (hex) of each API key that names this tenant when "
        "tenants.source is api_key; the keys themselves are never sent (the CLI hashes "
        "them). The list replaces the tenant's keys; omitted, its keys stay as they are.",
    )
    reason: str = Field("", description="Kept in the audit log")


class Tenant(Wire):
    id: str
    tier: str
    api_keys: int = Field(description="how many API keys name this tenant")
    api_key_prefixes: list[str] = Field(
        description="the first 12 hex digits of each key's SHA-256, to tell them apart"
    )
    updated_at: float


class TenantList(Wire):
    data: list[Tenant]


class UsageFigures(Wire):
    requests: int
    errors: int = Field(description="requests that ended in an error of any class")
    input_tokens: int
    output_tokens: int
    cost_usd: float = Field(
        description="estimated from `metrics.prices` by the model sent; models without a "
        "price add nothing"
    )


class PromptUsage(UsageFigures):
    slug: str
    variant: str | None = Field(description="null: the default variant")


class TenantUsage(Wire):
    tenant: str
    known: bool = Field(
        description="whether the registry knows the tenant now (a deleted tenant's figures "
        "stay until they expire)"
    )
    tier: str | None
    since: float = Field(description="start of the first minute summed (unix seconds)")
    until: float = Field(description="end of the last minute summed (unix seconds)")
    slug: str | None
    total: UsageFigures
    prompts: list[PromptUsage] = Field(description="by prompt and variant, slug order")


class TenantChanged(Wire):
    tenant: Tenant
    changed: bool = Field(description="false when the tenant already had this tier and keys")
    audit: AuditEntry | None
    served: Served


class AuditPage(Wire):
    data: list[AuditEntry]


class RolloutAt(Wire):
    """The rollout running at an instant, from its audit entries. A field an older audit
    entry does not record is null."""

    id: str | None
    candidate: int | None
    mode: str | None = doc(enum=["canary", "shadow", None])
    percent: float | None
    sticky: str | None
    started_at: float
    percent_since: float
    segment: dict[str, list[str]] | None = Field(
        None,
        description="The tiers and tenants it reached ({tiers, tenants}); null: every caller",
    )


class ServedAt(Wire):
    """What a prompt served at an instant: its prod version and the rollout running then."""

    slug: str
    at: str
    prod_version: int | None
    rollout: RolloutAt | None


class History(RootModel[AuditPage | ServedAt]):
    """A prompt's audit entries (newest first), or with `at` what it served then."""


class Diff(Wire):
    diff: str = Field(description="Unified diff; empty when the versions are the same")


class ExplainedMessage(Wire):
    role: str = Field(description="Always system: the composed prompt's messages, in order")
    layer: str = Field(description="guardrails@2, or the base's label for the composed text")
    text: str


class ExplainedSegment(Wire):
    layer: str = Field(description="Who supplied the text: base@3, tier:enterprise@1, ...")
    block: str | None = Field(description="The block it fills; null: the base's own text")
    text: str


class ExplainedParam(Wire):
    value: Any
    layer: str


class Explain(Wire):
    """What a request of this tenant (or tier) is composed of now: the messages the proxy
    puts first, and the composed prompt cut into segments by the layer that wrote them."""

    slug: str
    tenant: str | None
    tier: str | None
    layers: str = Field(description="As the x-prompt-layers header says it")
    messages: list[ExplainedMessage]
    segments: list[ExplainedSegment] = Field(
        description="The composed prompt (the last message) in order; their texts joined "
        "are that message's text"
    )
    params: dict[str, ExplainedParam] = Field(description="Parameters the prompt sets")
    model: str | None = Field(description="The model pin, if any")
    variables: list[str] = Field(
        description="Variables without a value here (no default): shown as {{ name }}"
    )
    ignored: list[str] = Field(description="Parts of overrides that do not fit the base")


# -- rollouts -------------------------------------------------------------------------------


class FeedbackDrop(Body):
    name: str = Field(pattern="^[A-Za-z0-9_.:-]{1,64}$")
    max_drop: float = Field(ge=0)


class JudgeDrop(Body):
    max_drop: float = Field(ge=0, le=1)


class AnalysisThresholds(Body):
    """Limits of the checks; null turns a check off."""

    error_rate_increase: float | None = Field(
        0.02, ge=0, le=1, description="Canary error share minus stable's (absolute)"
    )
    p95_latency_ratio: float | None = Field(
        1.5, ge=1, description="Canary p95 duration / stable p95"
    )
    p95_ttft_ratio: float | None = Field(
        1.5, ge=1, description="Canary p95 time to first token / stable p95 (streams)"
    )
    length_finish_increase: float | None = Field(
        0.05, ge=0, le=1, description='Share of finish_reason "length", canary minus stable'
    )
    answer_length_drift: float | None = Field(
        0.3, gt=0, description="|canary mean output tokens / stable mean - 1|"
    )
    shadow_divergence: bool | None = Field(
        True, description="Use the noise-calibrated shadow verdict (shadow mode only)"
    )
    feedback_drop: FeedbackDrop | None = Field(
        None,
        description="Largest tolerated drop of a feedback score's mean, stable minus canary",
    )
    judge_drop: JudgeDrop | None = Field(
        None,
        description="Largest tolerated drop of the online judge's mean score (evals.online), "
        "stable minus canary",
    )


class AnalysisPolicy(Body):
    """Automated analysis of a rollout. Omitted fields take their defaults."""

    interval: float = Field(60, ge=1, le=3600, description="Seconds between verdicts")
    min_samples: int = Field(
        100, ge=1, description="Requests per arm per window before a verdict can pass or fail"
    )
    failure_limit: int = Field(
        0, ge=0, description="Failed verdicts tolerated; the next failure aborts"
    )
    steps: list[Annotated[float, Field(gt=0, le=100), doc(multipleOf=0.01)]] = Field(
        [],
        description="Percents to ramp through, strictly ascending; empty: the analyser never "
        "ramps or promotes by itself",
    )
    alpha: float = Field(
        0.01, gt=0, le=0.5, description="Significance level of every statistical test"
    )
    thresholds: AnalysisThresholds = AnalysisThresholds()


class RolloutIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            **FLAGS_NEED_REASON,
            "examples": [
                {
                    "candidate": 2,
                    "mode": "canary",
                    "percent": 10,
                    "sticky": "header:x-user-id",
                    "analysis": {"interval": 60, "steps": [10, 25, 50]},
                    "reason": "try v2",
                }
            ],
        }
    )

    candidate: Count
    mode: RolloutMode
    #: Checked by the registry, so the message is the same for every front end.
    percent: StrictFloat = doc(minimum=0, maximum=100, multipleOf=0.01)
    sticky: Annotated[str | None, DocAs(Annotated[str | None, Field(pattern=_STICKY_REGEX)])] = (
        Field(
            None,
            description="header:<name>, user, tenant or none. Omitted: none for a new rollout, "
            "the running rollout's key for a percentage change. Headers that carry "
            "credentials (authorization, api-key, cookie...) are refused",
        )
    )
    #: Parsed by ``AnalysisPolicy.from_dict``, not pydantic, so every front end gets the
    #: same messages and param paths.
    analysis: Annotated[dict[str, Any] | None, DocAs(AnalysisPolicy | None)] = Field(
        None,
        description="Automated analysis of a new rollout. Omitted or null on a percentage "
        "change: the running policy stays; a different one is a 409 (abort and start again "
        "to change it). An invalid policy is a 400 whose param names the field, e.g. "
        "analysis.steps[2]",
    )
    segment: Segment | None = Field(
        None,
        description="A base rollout scoped to tiers and/or tenants: callers outside it stay "
        "on stable and are not analysed. Fixed for the rollout's life",
    )
    reason: str = ""
    force: bool = Field(
        False,
        description="Go ahead although the base version breaks overrides in use (409 "
        "overrides_break without it); needs a reason, kept in the audit log with the layers "
        "it broke",
    )
    override_gates: bool = Field(
        False,
        description=OVERRIDE_GATES_DOC + ". Read when a rollout starts; a percentage change "
        "is not gated",
    )


class Segment(Body):
    """Who a base rollout reaches: tenants of these tiers, and these tenants."""

    tiers: list[Annotated[str, Field(pattern=SLUG_REGEX)]] = Field(
        [], description="Tier names (of tenants.tiers)"
    )
    tenants: list[Annotated[str, Field(pattern=SLUG_REGEX)]] = Field([], description="Tenant ids")


class Rollout(Wire):
    slug: str
    id: str
    candidate: int
    mode: RolloutMode
    percent: float
    basis_points: int
    sticky: str
    started_at: float
    updated_at: float
    actor: str
    restore_status: Status
    analysis: AnalysisPolicy | None
    segment: Segment | None = Field(
        None, description="The tiers and tenants it reaches; null: every caller"
    )


class AnalysisSummary(Wire):
    """A running rollout's analysis at a glance: its last verdict, without the figures
    (``GET /prompts/{slug}/rollout`` has them)."""

    last_verdict: str | None = doc(
        description="The last verdict; null: none yet",
        enum=["pass", "fail", "inconclusive", None],
    )
    last_at: float | None = Field(description="When it was given (unix seconds)")
    failures: int = Field(description="Failed verdicts so far in this rollout")
    next_at: float = Field(description="When the next verdict is due (unix seconds)")


class RolloutListItem(Rollout):
    analysis_summary: AnalysisSummary | None = Field(
        None,
        description="null when the rollout has no analysis policy; absent when the "
        "analysis state could not be read (then `analysis_unavailable` is true)",
    )


class RolloutList(Wire):
    data: list[RolloutListItem]
    analysis_unavailable: bool = Field(
        False,
        description="true when the analysis state of a rollout with a policy could not be "
        "read: its item has no `analysis_summary` (the list itself still answers)",
    )


class RolloutView(Rollout):
    prod_version: int | None = Field(
        description="The stable version the candidate is tried against"
    )


class RolloutChanged(RolloutView):
    audit: AuditEntry | None = Field(description="null when nothing changed")
    served: Served


class Window(Record):
    start: float | None = None
    end: float | None = None


class Check(Record):
    name: str | None = None
    result: str | None = doc(None, enum=["pass", "fail", "inconclusive", "skipped", None])
    stable: float | None = None
    candidate: float | None = None
    limit: float | None = None
    p_value: float | None = None
    note: str | None = None


class TierVerdict(Record):
    """One tier judged on its own within a verdict."""

    verdict: str | None = doc(None, enum=["pass", "fail", "inconclusive", None])
    samples: dict[str, int] | None = Field(
        None, description="The tier's requests per arm: stable, and canary or shadow"
    )
    checks: list[Check] | None = None


class Verdict(Record):
    """One verdict of the analyser, as it stored it."""

    at: float | None = None
    rollout_id: str | None = None
    verdict: str | None = doc(None, enum=["pass", "fail", "inconclusive", None])
    percent: float | None = None
    window: Window | None = None
    samples: dict[str, int] | None = Field(
        None, description="Requests per arm: stable, and canary or shadow"
    )
    checks: list[Check] | None = None
    tiers: dict[str, TierVerdict] | None = Field(
        None,
        description="Each tier with traffic on both arms, judged on its own; a failing "
        "tier fails the verdict. Absent when no request had a tier",
    )
    action: str | None = doc(None, enum=["abort", "ramp", "promote", None])
    actor: str | None = None


class AnalysisState(Wire):
    step: int | None = Field(description="Index into the policy's steps")
    failures: int
    next_at: float
    holder: str | None = Field(description="The replica holding the analysis lease")
    verdicts: list[Verdict] = Field(description="Newest first")


class RolloutStatus(RolloutView):
    analysis_state: AnalysisState | None = Field(
        description="null when the rollout has no analysis policy"
    )


class LastAnalysis(Wire):
    """The latest analysed rollout of a slug, running or ended."""

    slug: str
    rollout_id: str
    failures: int
    verdicts: list[Verdict] = Field(description="Newest first")


class SeriesFigures(Wire):
    """One arm over one point: what its verdict checks would read over those seconds."""

    requests: int = Field(description="Finished requests (or shadow calls)")
    errors: int
    error_rate: float | None = Field(description="errors / requests; null without requests")
    p95_latency: float | None = Field(
        description="Seconds, read off 10 %-wide bins; null without a successful request"
    )
    p95_ttft: float | None = Field(description="Seconds to the first token, streams only")
    length_share: float | None = Field(
        description="Share of answers with a finish reason that the token limit cut"
    )
    answer_tokens: float | None = Field(description="Mean output tokens per successful answer")
    judge: float | None = Field(description="Mean online-judge score (evals.online); null: none")


class SeriesPoint(Wire):
    at: int = Field(description="Start of the point (unix seconds): it covers [at, at + step)")
    arms: dict[str, SeriesFigures] = Field(description="Every arm of `arms`")


class RolloutSeries(Wire):
    """A rollout's pooled counts (every replica's), one point per `step` seconds and arm."""

    slug: str
    rollout_id: str
    mode: RolloutMode
    start: int = Field(description="The first point's `at` (unix seconds)")
    end: int = Field(
        description="Unix seconds, exclusive: the second after the current one, where the "
        "last point stops (its last seconds may still be counting)"
    )
    step: int
    arms: list[str] = Field(
        description="stable and canary (canary mode), or stable, shadow and rerun (shadow mode)"
    )
    points: list[SeriesPoint] = Field(description="Oldest first, one per step")


# -- the fleet ------------------------------------------------------------------------------


class Replica(Wire):
    replica: str = Field(description="host:pid:suffix")
    host: str
    pid: int
    version: str = Field(description="promptproxy version")
    revision: int = Field(description="registry revision it serves")
    generation: str | None = Field(description="registry generation it serves (null: no snapshot)")
    state: Literal["ok", "replaced", "empty"] = Field(
        description="replaced: the store lost the registry it serves; empty: it serves no prompt"
    )
    prompts: int = Field(description="prompts in the snapshot it serves")
    behind: int | None = Field(
        description="revisions behind the store; null unless it serves the generation the "
        "store holds"
    )
    served_at: float | None
    staleness_seconds: float
    heartbeat_age_seconds: float
    healthy: bool = Field(description="its last store read worked and found the registry it serves")
    live: bool
    this: bool = Field(description="the replica that answered")


class FleetStatus(Wire):
    revision: int | None
    generation: str | None = Field(description="the generation the store holds")
    replica: str = Field(description="the one answering")
    live: int
    data: list[Replica]


# -- shadow pairs ---------------------------------------------------------------------------


class ToolCall(Record):
    name: str | None = None
    arguments: str | None = None


class ShadowArm(Record):
    """What one arm answered (texts redacted, and cut to the sink's limit)."""

    version: int | None = None
    status: int | None = None
    text: str | None = None
    tool_calls: list[ToolCall] | None = None
    finish_reason: str | None = None
    model: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    error_class: str | None = None
    truncated: bool | None = None
    layers: str | None = Field(
        None, description="What composed the prompt this arm ran, as x-prompt-layers says it"
    )


class ShadowPair(Record):
    """One shadowed request: the answer its caller got next to the shadow's."""

    pair_id: str
    ts: float
    slug: str | None = None
    rollout_id: str | None = None
    kind: str | None = doc(
        None,
        enum=["candidate", "stable", None],
        description="candidate (stable vs candidate) or stable (stable run twice: the noise)",
    )
    request_id: str | None = None
    route: str | None = None
    stream: bool | None = None
    primary: ShadowArm | None = Field(
        None, description="null when the primary never reported in time"
    )
    shadow: ShadowArm | None = None
    expect_json: bool | None = None
    divergence: dict[str, float | None] | None = None
    tenant: str | None = Field(None, description="The tenant the primary answered, if known")


class ShadowRollout(Wire):
    slug: str
    rollout_id: str
    running: bool


class PairCounts(Wire):
    stable: int = Field(description="stable vs stable pairs (the noise) compared")
    candidate: int = Field(description="stable vs candidate pairs compared")
    skipped: int = Field(description="unpaired, of another kind, or a half failed")


class MeasureReport(Wire):
    measure: str
    result: Literal["pass", "fail", "inconclusive"]
    noise_mean: float | None
    candidate_mean: float | None
    noise_n: int
    candidate_n: int
    p_value: float | None = Field(description="One-sided Mann-Whitney: the candidate diverges more")
    effect: float | None = Field(description="P(candidate > noise) + P(tie) / 2")
    noise_p50: float | None
    noise_p95: float | None
    candidate_p50: float | None
    candidate_p95: float | None
    noise_bins: list[int] = Field(
        description="Noise pairs per bin of the measure: bin i holds values nearest i / 49"
    )
    candidate_bins: list[int] = Field(description="Candidate pairs per bin, like noise_bins")


class ShadowReport(Wire):
    """Whether a rollout's candidate diverges from stable more than stable from itself."""

    slug: str
    rollout_id: str
    rollout_running: bool | None = Field(
        description="null when the rollout was named (`rollout`), not chosen as the latest"
    )
    since: str
    pairs: PairCounts
    alpha: float
    margin: float
    min_pairs: int
    result: Literal["pass", "fail", "inconclusive"]
    measures: list[MeasureReport]


# -- the registry store ---------------------------------------------------------------------


class RegistryStatus(Wire):
    state: Literal["ok", "replaced"]
    problem: str | None = Field(description="why the store is not the registry served")
    generation: str | None
    revision: int
    prompts: int


class RestoreIn(Body):
    source: Literal["snapshot"]
    reason: str = ""
    overwrite: StrictBool = Field(
        False,
        description="replace prompts the store holds that are not an older copy of this "
        "registry (409 without it)",
    )


class RestoreResult(Wire):
    source: Literal["snapshot", "file"]
    generation: str
    revision: int
    prompts: int
    versions: int
    unchanged: bool


class TenantRecord(Body):
    """A tenant as an export keeps it: with the whole SHA-256 of each key, which a restore
    needs (digests of the keys, never the keys)."""

    id: str
    tier: str
    key_hashes: list[str] = []
    updated_at: float = 0.0


class RegistryExport(Body):
    """The whole registry. An import checks it as strictly as pushes (slugs, templates,
    content hashes, one prod per prompt, increasing audit seqs)."""

    format: Literal["promptproxy-registry/1"]
    generation: str
    revision: int
    versions: list[Version]
    rollouts: list[Rollout] = []
    audit: list[AuditEntry] = []
    tenants: list[TenantRecord] = []


# -- probes ---------------------------------------------------------------------------------


class Health(Wire):
    status: Literal["ok"]


class ReadyRegistry(Wire):
    store: str
    state: Literal["ok", "unavailable", "replaced"]
    error: str | None
    generation: str | None
    revision: int
    prompts: int
    staleness_seconds: float
    snapshot_loaded: bool
    bootstrap_pending: bool


class Ready(Wire):
    status: Literal["ready", "degraded", "starting", "draining"]
    registry: ReadyRegistry


# -- eval runs ------------------------------------------------------------------------------


class EvalIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "suite": {
                        "slug": "support-reply",
                        "samples": 3,
                        "model": "gpt-4o-mini",
                        "cases": [
                            {
                                "name": "refund",
                                "variables": {"customer_name": "Ana", "product": "Routers"},
                                "messages": [{"role": "user", "content": "Refund me."}],
                                "assert": [{"type": "contains", "value": "colleague"}],
                            }
                        ],
                    },
                    "candidate": 2,
                    "baseline": "prod",
                }
            ]
        }
    )

    suite: dict[str, Any] = Field(
        description="The suite file's content, as `promptproxy eval` reads it (see "
        "docs/evals.md); checked by the server"
    )
    suite_name: str | None = Field(
        None, max_length=200, description="Where the suite came from (its file), kept with the run"
    )
    candidate: Count
    baseline: Count | Literal["prod"] | None = Field(
        "prod",
        description="The version to compare with: a number, prod (the default), or "
        "null for the candidate alone",
    )
    tenant: Annotated[str, Field(pattern=SLUG_REGEX)] | None = Field(
        None,
        description="Run every case as this tenant (its overrides apply); default: the suite's",
    )
    min_pass_rate: float = Field(
        1.0,
        ge=0,
        le=1,
        description="The run passes when the candidate's pass rate is at least this",
    )
    max_drop: float = Field(
        0.0,
        ge=0,
        le=1,
        description="... and its pass rate is at most this much below the "
        "baseline's (the mean of per-case differences)",
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Calls in flight (default evals.concurrency, at most evals.max_concurrency)",
    )


class EvalRunOut(Record):
    id: str
    slug: str
    candidate: int
    baseline: int | None
    kind: str
    actor: str
    started_at: float
    finished_at: float
    suite_name: str
    suite_sha256: str
    judges: list[Any]
    passed: bool
    summary: dict[str, Any]
    detail: dict[str, Any] = Field(
        default_factory=dict, description="Every sample's answer and failures (empty in lists)"
    )


class EvalRunList(Wire):
    data: list[EvalRunOut]


class ReplayIn(Body):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"candidate": 3, "since": "1h", "baseline": "prod"}]}
    )

    candidate: Count
    baseline: Count | Literal["prod"] = Field(
        "prod", description="The version whose captured calls are replayed (default: prod)"
    )
    since: str = Field(
        "1h",
        max_length=64,
        description="Captured calls from then on: seconds ago (600), a duration (10m, 2h, 1d), "
        "a unix time or an ISO-8601 time with a zone",
    )
    limit: int = Field(200, ge=1, le=5000, description="The most calls replayed (the oldest first)")
    concurrency: int | None = Field(None, ge=1, le=256, description="Calls in flight")
