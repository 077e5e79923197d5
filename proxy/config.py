"""Configuration: one YAML file, validated at start, plus secrets read from the environment.

This is the only module that reads config files or environment variables. A bad file stops
the process with every problem listed by field path (``ConfigError``). Secrets never live in
the file: the file names an environment variable (``api_key_env``) and we read it here.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from proxy.backends.kinds import (
    KINDS,
    SINK_KINDS,
    BackendKind,
    describe_store,
    kind_of,
    store_forms,
)
from proxy.safety import (
    DEFAULT_DENIED,
    RULE_FAMILIES,
    DeniedRule,
    RequiredPhrase,
    SafetyPolicy,
    compile_pattern,
)
from proxy.safety.policy import DEFAULT_MAX_BLOCK_CHARS, DEFAULT_MAX_TEMPLATE_CHARS

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: PostgreSQL schema names the proxy accepts (an unquoted identifier; see proxy/pg/connect.py).
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: Models that keep their own metric series; anything else is folded into `other` so a typo'd
#: or hostile model name cannot create unbounded series.
DEFAULT_METRIC_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "o3",
    "o4-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "sim-model",
)


def is_local_host(host: str) -> bool:
    """The host names this machine: `localhost`, a loopback address or the any-address."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def url_port(url: str) -> int:
    """The port an http(s) URL connects to, explicit or the scheme's default."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


class ConfigError(Exception):
    """Every problem found in the configuration, one per line, prefixed by its field path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(8081, ge=0, le=65535)
    #: Request bodies above this answer 413. Images in chat requests need 10-20 MiB.
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    #: On SIGTERM: readiness turns 503 at once, open requests get this long to finish.
    shutdown_grace_seconds: float = Field(25.0, ge=0)
    #: A client connection must deliver a complete request line and headers this long after
    #: it opened, or after the first byte of its next request; else it is closed (slowloris).
    #: Both ports.
    header_timeout_seconds: float = Field(10.0, gt=0, le=300)
    #: An idle keep-alive connection (between requests) is closed after this long. Keep it
    #: above the idle timeout of any load balancer in front (AWS ALB: 60 s), so the balancer,
    #: not the proxy, closes first. Both ports.
    keepalive_timeout_seconds: float = Field(75.0, gt=0, le=3600)
    #: A request body must arrive whole within this long after its headers, else 408 and
    #: the connection is closed (a slowloris that trickles the body instead). Both ports.
    body_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    #: Processes serving the data port (`--workers`), each a replica on the shared store;
    #: `auto`: one per core. More than one needs a shared store (docs/workers.md).
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = 1

    @field_validator("workers", mode="before")
    @classmethod
    def _check_workers(cls, value: Any) -> Any:
        # One line naming what is accepted, not one per branch of the union.
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if value == "auto" or (type(value) is int and 1 <= value <= 256):
            return value
        raise ValueError(f"must be a whole number from 1 to 256, or auto; got {value!r}")

    def worker_count(self) -> int:
        return (os.cpu_count() or 1) if self.workers == "auto" else self.workers


def provider_url(value: str) -> str:
    """A provider's base URL: absolute http(s), a valid port, no query or fragment."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL such as https://api.openai.com/v1")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in 0-65535
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query string or fragment")
    return value.rstrip("/")


def env_name(value: str | None) -> str | None:
    if value is not None and not _ENV_NAME.fullmatch(value):
        raise ValueError("must be an environment variable name, not the key itself")
    return value


#: A provider's base URL, checked (``provider_url``) wherever the config takes one.
ProviderURL = Annotated[str, AfterValidator(provider_url)]
#: The name of an environment variable holding a key (never the key itself).
EnvName = Annotated[str | None, AfterValidator(env_name)]


class UpstreamConfig(_Section):
    #: Base URL of the OpenAI-compatible provider, including its `/v1`.
    base_url: ProviderURL = "https://api.openai.com/v1"
    #: Name of the environment variable holding the provider key. When set, the proxy sends
    #: that key upstream in place of the client's `Authorization`; when unset, the client's
    #: own `Authorization` is forwarded.
    api_key_env: EnvName = None
    connect_timeout_seconds: float = Field(5.0, gt=0)
    #: Longest silence allowed between two reads from the provider (headers or body bytes).
    read_timeout_seconds: float = Field(600.0, gt=0)
    #: Upstream connections open at once (each one also holds a client connection, so the
    #: proxy needs about twice this in file descriptors). An LLM stream holds its
    #: connection for its whole answer, so this is the number of concurrent calls.
    max_connections: int = Field(4096, ge=1)
    #: With every connection in use, a request waits this long for a free one, then gets a
    #: retryable 503 (`upstream_pool_exhausted`). The TCP connect has its own timeout after.
    pool_wait_seconds: float = Field(2.0, gt=0, le=600)
    #: At start, one TCP connect to the upstream. `auto`: an upstream on this machine that
    #: does not answer stops the start (exit 1), a remote one only logs a warning (a provider
    #: blip must not crash-loop a fleet); `fail`: any unreachable upstream stops it; `warn`:
    #: never stops it; `off`: no probe.
    check_at_start: Literal["auto", "fail", "warn", "off"] = "auto"


#: What a provider speaks. `anthropic`: the Messages API, reached from chat completions
#: through the native translation (proxy/anthropic/, proxy/exchange/messages_call.py).
ProviderKind = Literal["openai", "openai-compatible", "anthropic"]
#: The provider the `upstream` section makes when no `providers` are listed.
UPSTREAM_PROVIDER = "upstream"


class ProviderConfig(_Section):
    """One provider a request's model may route to (`providers`)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    kind: ProviderKind = "openai-compatible"
    #: Base URL including the API's `/v1` (`kind: anthropic`: the host's root, as the
    #: anthropic SDK takes it; the proxy adds `/v1/messages`). Requests go only to the base
    #: URLs of the config.
    base_url: ProviderURL
    #: The environment variable holding this provider's key, sent in place of the client's
    #: `Authorization` (as `x-api-key` to `kind: anthropic`); unset: the client's own key
    #: is forwarded.
    api_key_env: EnvName = None
    #: The models this provider serves: names or globs (`gpt-*`, `o?-*`), matched against
    #: the model sent (after a prompt's pin), first provider in the list first.
    models: tuple[Annotated[str, Field(min_length=1, max_length=128)], ...] = Field(
        min_length=1, max_length=256
    )
    #: `kind: anthropic`: the `max_tokens` sent when a chat completions request names
    #: neither `max_tokens` nor `max_completion_tokens` (the Messages API requires one).
    default_max_tokens: int = Field(4096, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _anthropic_root(self) -> ProviderConfig:
        # `.../v1` here would send requests to `/v1/v1/messages`, a 404 at the first call.
        if self.kind == "anthropic" and urlsplit(self.base_url).path.rstrip("/").endswith("/v1"):
            raise ValueError(
                f"providers[{self.name}]: kind anthropic takes the base URL without /v1, as "
                "the anthropic SDK does (https://api.anthropic.com); the proxy adds "
                "/v1/messages"
            )
        return self


class SimulatorConfig(_Section):
    """The bundled simulated provider, started in-process by `serve` when enabled."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535)
    first_byte_ms: float = Field(0.0, ge=0)
    chunk_delay_ms: float = Field(0.0, ge=0)
    chunks: int = Field(8, ge=1, le=10_000)


class LoggingConfig(_Section):
    level: str = "INFO"

    @field_validator("level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return upper


class ModelPrice(_Section):
    #: US dollars per million tokens, as on the provider's price page.
    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)


class MetricsConfig(_Section):
    #: Models that keep their own `model` label; any other model counts as `other`.
    models: tuple[str, ...] = DEFAULT_METRIC_MODELS
    #: Price table for `promptproxy_cost_usd_total`, by the model name sent upstream. A model
    #: without a price adds no cost (the estimate is a floor, never a guess).
    prices: dict[str, ModelPrice] = {}

    def price_table(self) -> dict[str, tuple[float, float]]:
        return {model: (price.input, price.output) for model, price in self.prices.items()}


class FeedbackConfig(_Section):
    #: Outcome names `/v1/feedback` accepts (bounded: they become metric labels).
    names: tuple[Annotated[str, Field(pattern=r"^[a-z0-9_.-]{1,64}$")], ...] = (
        "thumbs_up",
        "thumbs_down",
        "escalated",
        "resolved",
        "rating",
    )
    #: How long after an answer its request id still takes feedback. With Redis each answer
    #: that named a prompt is one key for this long (about 150 bytes): size Redis for
    #: requests per second x ttl_seconds keys.
    ttl_seconds: float = Field(21_600.0, gt=0, le=30 * 86_400)
    #: Answers remembered in memory with the embedded store, newest kept (about 160 bytes
    #: each, docs/operations.md "Memory"): feedback on an answer more than this many answers
    #: old gets a 404. Small enough that the index is full, and its memory flat, within a
    #: few seconds of traffic. A shared store keeps the answers instead, with `ttl_seconds`
    #: as expiry and no count bound.
    max_local_entries: int = Field(4096, ge=1000, le=10_000_000)

    @field_validator("names")
    @classmethod
    def _not_the_judge_score(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        # The online judge's scores reach the analysis as this outcome (analysis/judge.py,
        # JUDGE_SCORE): a caller's feedback of that name would mix with them.
        if "judge_score" in names:
            raise ValueError("judge_score is reserved for the online judge's scores")
        return names


class AnalysisConfig(_Section):
    #: Each replica adds its per-arm counts to the pool (the shared store, or memory) this
    #: often.
    flush_seconds: float = Field(2.0, gt=0, le=60)
    #: The analysis lease (shared stores): another replica takes over this long after its
    #: holder vanished.
    lease_seconds: float = Field(10.0, ge=2, le=300)


class FleetConfig(_Section):
    #: Each replica writes the registry revision it serves to the shared store this often,
    #: and at once after it loads a new snapshot.
    heartbeat_seconds: float = Field(1.0, gt=0, le=60)
    #: A replica heard from within this long is live: admin writes with `wait` wait for it.
    live_seconds: float = Field(5.0, gt=0, le=600)
    #: The entry of a replica not heard from for this long is removed from the board.
    forget_seconds: float = Field(3600.0, ge=60, le=30 * 86_400)

    @model_validator(mode="after")
    def _live_spans_beats(self) -> FleetConfig:
        if self.live_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(
                "live_seconds must be at least twice heartbeat_seconds, or a replica "
                "that misses one beat looks gone"
            )
        return self


class RegistryConfig(_Section):
    #: Where every piece of shared state lives (prompts, fleet board, analysis, feedback
    #: index, shadow pairs): `embedded:PATH` (files on this machine, one process),
    #: `redis://host:port/db` or `postgresql://user@host/db` (shared by replicas). Overridden
    #: by `--store` or `PROMPTPROXY_STORE`.
    store: str = "embedded:.promptproxy/registry.db"
    #: Key prefix in Redis, so several deployments can share one server.
    redis_prefix: str = "promptproxy:"
    #: Schema in PostgreSQL, so several deployments can share one database.
    postgres_schema: str = "promptproxy"
    #: A folder of prompt files pushed at start (idempotent); a prompt with no prod version
    #: gets the pushed one promoted. For first runs and demos.
    bootstrap_dir: str | None = None

    @property
    def backend(self) -> BackendKind:
        """The backend the store names (validated: there is one)."""
        kind = kind_of(self.store)
        assert kind is not None, "registry.store was validated"
        return kind

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str) -> str:
        if kind_of(value) is None:
            raise ValueError(f"must be {store_forms()}")
        return value

    @field_validator("redis_prefix")
    @classmethod
    def _check_redis_prefix(cls, value: str) -> str:
        if "{" in value or "}" in value:
            raise ValueError("must not contain '{' or '}' (they make a Redis Cluster hash tag)")
        return value

    @field_validator("postgres_schema")
    @classmethod
    def _check_postgres_schema(cls, value: str) -> str:
        if not _SCHEMA_NAME.match(value):
            raise ValueError(
                "must be lowercase letters, digits and _ (at most 63, not starting with a digit)"
            )
        return value


class AdminToken(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    #: Environment variable holding the token (tokens never go in the file).
    env: str
    role: str = Field("admin", pattern=r"^(admin|read)$")

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError("must be an environment variable name, not the token itself")
        return value


class AdminConfig(_Section):
    #: Named tokens; `PROMPTPROXY_ADMIN_TOKEN`, when set, adds one named `admin`.
    tokens: tuple[AdminToken, ...] = ()


class RolloutsConfig(_Section):
    #: Header naming the caller's tenant, for rollouts with `sticky: tenant`. When a request
    #: lacks it, the tenant is a hash of the caller's `Authorization` (one key per tenant).
    tenant_header: str = Field("x-tenant-id", pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")


class TenantsConfig(_Section):
    #: Where a request's tenant comes from: `header` (its id in `header`) or `api_key` (the
    #: caller's bearer key, whose SHA-256 the tenant records list; keys are never stored).
    source: Literal["header", "api_key"] = "header"
    header: str = Field("x-tenant-id", pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")
    #: The tiers a tenant may have. A bounded list: tiers label the metrics.
    tiers: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")], ...] = Field(
        ("free", "pro", "enterprise"), min_length=1, max_length=32
    )
    #: A request naming a prompt whose tenant is missing or not in the registry: `base`
    #: serves it the base prompt, `refuse` answers 403 (`unknown_tenant`).
    unknown: Literal["base", "refuse"] = "base"

    @field_validator("tiers")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("each tier is listed once")
        return value


class UsageConfig(_Section):
    """Per-tenant usage (`GET /admin/v1/tenants/{id}/usage`): each replica adds up requests,
    errors, tokens and estimated cost per (known tenant, slug, variant, minute) and adds them
    to the store's usage ledger every `flush_seconds`."""

    enabled: bool = True
    flush_seconds: float = Field(5.0, gt=0, le=300)
    #: Minutes older than this are deleted (or expire). Bounds the ledger at tenants x
    #: slugs x variants x minutes; a query reaches back this far at most.
    keep_days: int = Field(35, ge=1, le=400)
    #: Rows (tenant, slug, variant, minute) a replica holds while the store cannot take
    #: them; past it the oldest minutes are dropped and counted
    #: (`promptproxy_usage_dropped_rows_total`).
    max_pending_rows: int = Field(100_000, ge=1_000, le=10_000_000)


class CaptureRuleConfig(_Section):
    #: A glob (fnmatch) on the slug of the prompt a request names, variant and layer aside.
    match: str = Field(pattern=r"^[A-Za-z0-9._*?\[\]-]{1,64}$")
    #: The share of its requests captured, 0 to 1.
    share: float = Field(ge=0, le=1)


class CaptureConfig(_Section):
    """Captured calls (docs/evals.md, "Capture and replay"): a sampled share of the requests
    of the slugs listed, kept so `promptproxy replay` can run them again on a candidate.
    Off unless a slug is listed."""

    #: The first rule whose `match` matches a request's slug decides its share.
    slugs: tuple[CaptureRuleConfig, ...] = Field((), max_length=256)
    #: A capture larger than this, encoded, is not kept (counted as `too_large`).
    max_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: Captures of one slug kept, newest; and none older than `keep_hours`.
    keep_per_slug: int = Field(10_000, ge=10, le=10_000_000)
    keep_hours: float = Field(72.0, gt=0, le=24 * 366)
    #: Captures waiting to be written; beyond this they are dropped and counted.
    queue_size: int = Field(1000, ge=1, le=1_000_000)
    #: How often the queue is written to the store.
    flush_seconds: float = Field(2.0, gt=0, le=300)

    def share_of(self, slug: str) -> float:
        for rule in self.slugs:
            if fnmatch.fnmatchcase(slug, rule.match):
                return rule.share
        return 0.0


#: A judge's slug: a registry prompt under the reserved `judge.` prefix.
_JUDGE_SLUG = r"^judge\.[A-Za-z0-9._-]{1,58}$"


class OnlineJudgeRule(_Section):
    """A share of a slug's served answers judged off the request path (`evals.online`)."""

    #: A glob (fnmatch) on the slug of the prompt a request names, variant and layer aside.
    match: str = Field(pattern=r"^[A-Za-z0-9._*?\[\]-]{1,64}$")
    #: The share of its served chat completions judged, 0 to 1.
    share: float = Field(ge=0, le=1)
    #: What the judge scores the answers against: its template's `rubric` variable.
    rubric: str = Field(min_length=1, max_length=4000)
    #: The judge (a `judge.NAME` prompt) at its prod version; unset: `evals.judge`.
    judge: str | None = Field(None, pattern=_JUDGE_SLUG)


class EvalsConfig(_Section):
    """Eval runs (`promptproxy eval`, `POST /admin/v1/prompts/{slug}/evals`): each sample
    is a call through this process's own data plane, pinned to a version."""

    #: Calls in flight per run when the request names no concurrency, and at most.
    concurrency: int = Field(4, ge=1, le=64)
    max_concurrency: int = Field(16, ge=1, le=256)
    #: Runs at once per process; another is refused (409) until one finishes.
    max_running: int = Field(2, ge=1, le=32)
    #: One sample's call, first byte to last.
    request_timeout: float = Field(120.0, gt=0, le=3600)
    #: The environment variable holding the key eval calls (runs, judges, replays) send as
    #: a caller's, for providers that take the caller's key (no `api_key_env` of their own).
    api_key_env: EnvName = None
    #: The judge (a `judge.NAME` prompt) of judge assertions that name none; unset: such
    #: an assertion makes its suite refused.
    judge: str | None = Field(None, pattern=_JUDGE_SLUG)
    #: Drift (docs/evals.md): a measure drifts when the candidate's pairs diverge more than
    #: the baseline's own pairs with p < `drift_alpha` and by more than `drift_margin`;
    #: with fewer than `drift_min_pairs` pairs a side it is inconclusive.
    drift_alpha: float = Field(0.01, gt=0, le=0.5)
    drift_margin: float = Field(0.05, ge=0, le=1)
    drift_min_pairs: int = Field(10, ge=2, le=100_000)
    #: Stored runs kept per prompt line (the oldest are deleted).
    keep_runs: int = Field(500, ge=10, le=100_000)
    #: A run's samples (answers, failures) as stored, encoded; a larger run is not stored
    #: (its follower still gets it, with a warning). Lower `samples` or the cases.
    max_detail_bytes: int = Field(2 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    #: Online judging (docs/evals.md): the first rule whose `match` matches a served
    #: answer's slug decides the share judged, its rubric and its judge.
    online: tuple[OnlineJudgeRule, ...] = Field((), max_length=256)
    #: Answers waiting for a judge; beyond this they are dropped and counted.
    online_queue_size: int = Field(256, ge=1, le=100_000)
    #: Judge calls in flight at once (the online judge's own connection pool).
    online_max_in_flight: int = Field(4, ge=1, le=64)

    @model_validator(mode="after")
    def _online_judges(self) -> EvalsConfig:
        for i, rule in enumerate(self.online):
            if rule.judge is None and self.judge is None:
                raise ValueError(
                    f"evals.online[{i}] ({rule.match}) names no judge, and evals.judge names "
                    "no default judge"
                )
        return self

    def online_rule(self, slug: str) -> OnlineJudgeRule | None:
        """The rule of ``slug``'s served answers, or None: none judged."""
        for rule in self.online:
            if fnmatch.fnmatchcase(slug, rule.match):
                return rule
        return None

    def online_share(self, slug: str) -> float:
        rule = self.online_rule(slug)
        return 0.0 if rule is None else rule.share

    def online_judge(self, rule: OnlineJudgeRule) -> str:
        """The judge of ``rule``: its own, else the default (the validator saw one)."""
        judge = rule.judge or self.judge
        assert judge is not None
        return judge


_RULE_NAME = r"^[a-z0-9_.-]{1,64}$"


class DeniedPhrase(_Section):
    """A pattern no prompt text may match (`safety.denied`)."""

    #: The finding's rule is `denied_phrase:NAME`; a built-in's name replaces it.
    name: str = Field(pattern=_RULE_NAME)
    #: A regular expression (Python `re`), matched case-insensitively; a match negated or
    #: reported in its sentence ("never ...", "if asked to ...") before the group named
    #: `verb` (else the match) does not count.
    pattern: str = Field(min_length=1)
    #: What the refusal says the text does.
    message: str = "matches a denied phrase"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        compile_pattern(value)  # a ValueError naming the problem, at load
        return value


class RequiredPhraseConfig(_Section):
    #: The finding's rule is `required_phrase:NAME`.
    name: str = Field(pattern=_RULE_NAME)
    #: Text every base template must contain (case and runs of spaces aside).
    text: str = Field(min_length=1)


class SafetyConfig(_Section):
    """The safety policy a version must pass at push, import, promote and rollout start
    (docs/safety.md)."""

    enabled: bool = True
    #: The built-in denied phrases (reveal_system_prompt, reveal_credentials); `false`
    #: leaves only `denied`.
    default_denied: bool = True
    #: Denied phrases ADDED to the built-in ones; an entry named like a built-in replaces it.
    denied: tuple[DeniedPhrase, ...] = ()
    #: Blocks every base version must declare.
    required_blocks: tuple[
        Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], ...
    ] = ()
    required_phrases: tuple[RequiredPhraseConfig, ...] = ()
    max_template_chars: int = Field(DEFAULT_MAX_TEMPLATE_CHARS, ge=1)
    #: Longest block default or override fill, whatever a base's own `max_chars` allows.
    max_block_chars: int = Field(DEFAULT_MAX_BLOCK_CHARS, ge=1)
    #: Rule -> slugs it does not apply to (every layer and variant of each): a rule
    #: family (`secret_in_template`, `denied_phrase`, `required_block`, `required_phrase`,
    #: `max_template_chars`, `max_block_chars`) or one rule (`denied_phrase:NAME`).
    exempt: dict[str, tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")], ...]] = {}

    @field_validator("exempt")
    @classmethod
    def _known_rules(
        cls, value: dict[str, tuple[str, ...]], info: ValidationInfo
    ) -> dict[str, tuple[str, ...]]:
        # The fields above are validated first: their names are what a rule may name.
        own = {d.name for d in info.data.get("denied", ())}
        built_in = {r.name for r in DEFAULT_DENIED} if info.data.get("default_denied") else set()
        names = {
            "denied_phrase": own | built_in,
            "required_block": set(info.data.get("required_blocks", ())),
            "required_phrase": {p.name for p in info.data.get("required_phrases", ())},
        }
        for rule in value:
            family, colon, name = rule.partition(":")
            if family not in RULE_FAMILIES or (colon and name not in names.get(family, set())):
                raise ValueError(
                    f"no rule {rule!r}: a rule is one of {', '.join(RULE_FAMILIES)}, or "
                    "denied_phrase, required_block or required_phrase, ':' and the name of "
                    "one of this policy's"
                )
        return value

    def _denied_rules(self) -> list[DeniedRule]:
        own = {
            d.name: DeniedRule(d.name, compile_pattern(d.pattern), d.message) for d in self.denied
        }
        built_in = [r for r in DEFAULT_DENIED if r.name not in own] if self.default_denied else []
        return [*built_in, *own.values()]

    def policy(self) -> SafetyPolicy:
        return SafetyPolicy(
            enabled=self.enabled,
            denied=tuple(self._denied_rules()),
            required_blocks=self.required_blocks,
            required_phrases=tuple(RequiredPhrase(p.name, p.text) for p in self.required_phrases),
            max_template_chars=self.max_template_chars,
            max_block_chars=self.max_block_chars,
            exempt=dict(self.exempt),
        )


#: The gates a version may be required to pass before it is promoted or its rollout starts
#: (docs/gates.md).
GATE_NAMES = ("eval", "judge", "drift")
#: Names of the plan's gates that are not ones `gates.require` takes, and why.
_NOT_REQUIRABLE = {
    "syntax": "is checked at every push, always",
    "safety": "is the `safety` section, checked at push, promote and rollout start, always",
}


def _gate_names(value: tuple[str, ...]) -> tuple[str, ...]:
    for name in value:
        if name in _NOT_REQUIRABLE:
            raise ValueError(
                f"{name!r} {_NOT_REQUIRABLE[name]}; a gate is one of eval, judge, drift"
            )
        if name not in GATE_NAMES:
            raise ValueError(f"no gate {name!r}: a gate is one of eval, judge, drift")
    if len(set(value)) != len(value):
        raise ValueError("each gate is listed once")
    return value


#: Gates a version must pass, each listed once.
GateNames = Annotated[tuple[str, ...], AfterValidator(_gate_names)]


class EvalGateConfig(_Section):
    """The `eval` gate: the newest eval run of the version against prod (docs/gates.md)."""

    #: The candidate's pass rate must be at least this.
    min_pass_rate: float = Field(1.0, ge=0, le=1)
    #: And its difference to prod's pass rate no lower than minus this.
    max_drop: float = Field(0.0, ge=0, le=1)
    #: Runs that finished longer ago do not count (for the `judge` gate too).
    max_age_hours: float = Field(168.0, gt=0, le=24 * 366)
    #: A run with fewer candidate samples proves too little to open the gate (a one-case
    #: suite would pass anything).
    min_samples: int = Field(20, ge=1, le=1_000_000)


class JudgeGateConfig(_Section):
    """The `judge` gate: the judge scores of the same run (docs/gates.md)."""

    #: The candidate's mean judge score must be at least this.
    min_score: float = Field(0.0, ge=0, le=1)
    #: And no more than this below prod's mean score in the same run.
    max_drop: float = Field(0.05, ge=0, le=1)
    #: Scores of the candidate the run must have.
    min_scores: int = Field(20, ge=1, le=1_000_000)


class GatePolicyConfig(_Section):
    """What a version must pass: the default policy (`gates.default`), or a prompt's."""

    require: GateNames = ()
    eval: EvalGateConfig = EvalGateConfig()
    judge: JudgeGateConfig = JudgeGateConfig()


class GateRuleConfig(_Section):
    """A policy for the slugs `match` matches (`gates.slugs`); a key left out is the
    default policy's."""

    #: A glob (`fnmatch`: `*`, `?`, `[...]`) on the slug, layer and variant aside.
    match: str = Field(pattern=r"^[A-Za-z0-9._*?\[\]!-]{1,64}$")
    require: GateNames | None = None
    eval: EvalGateConfig | None = None
    judge: JudgeGateConfig | None = None


class GatesConfig(_Section):
    """Gates before prod (docs/gates.md): checked at promote and rollout start, never at
    rollback. Nothing is required by default."""

    default: GatePolicyConfig = GatePolicyConfig()
    #: Per-slug policies; the first whose `match` matches the slug wins.
    slugs: tuple[GateRuleConfig, ...] = Field((), max_length=256)

    def policy_for(self, slug: str) -> GatePolicyConfig:
        """The policy of ``slug`` (a base slug): the first matching rule over the
        default, or the default."""
        for rule in self.slugs:
            if fnmatch.fnmatchcase(slug, rule.match):
                base = self.default
                return GatePolicyConfig(
                    require=base.require if rule.require is None else rule.require,
                    eval=base.eval if rule.eval is None else rule.eval,
                    judge=base.judge if rule.judge is None else rule.judge,
                )
        return self.default


class ShadowSinkConfig(_Section):
    #: `auto`: the store's own: rotated files with the embedded store, a capped Redis Stream
    #: per slug with Redis, a table with PostgreSQL. Any other value must name that one.
    kind: str = "auto"
    #: Folder of the rotated JSON-lines files (`pairs.jsonl`, `pairs.jsonl.1`, ...).
    dir: str = ".promptproxy/shadow"
    max_file_bytes: int = Field(64 * 1024 * 1024, ge=4096)
    #: Rotated files kept besides the one being written.
    max_files: int = Field(8, ge=1, le=1000)
    #: Pairs kept per slug in a shared store: the cap of each slug's Redis Stream (XADD
    #: MAXLEN ~, approximate) or of its rows in PostgreSQL (exact). `redis_max_entries`, its
    #: name before PostgreSQL, is still read.
    max_entries: int = Field(
        100_000, ge=100, validation_alias=AliasChoices("max_entries", "redis_max_entries")
    )
    #: Each recorded output is cut to this many characters (the pair says it was cut).
    max_output_chars: int = Field(32 * 1024, ge=256)
    #: Pairs waiting to be written; beyond this they are dropped and counted.
    queue_size: int = Field(10_000, ge=1)

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, value: str) -> str:
        if value not in SINK_KINDS:
            raise ValueError(f"must be one of {', '.join(SINK_KINDS)}")
        return value


class ShadowConfig(_Section):
    #: Where shadow copies are sent; defaults to `upstream.base_url`. Always its own client
    #: session and connection pool, so shadows never queue with user traffic.
    base_url: ProviderURL | None = None
    #: Shadow calls running at once; beyond this they wait in the queue.
    max_in_flight: int = Field(64, ge=1)
    #: Shadow calls waiting for a slot; beyond this they are dropped and counted.
    queue_size: int = Field(256, ge=0)
    #: The queued bodies' total size is capped too (beyond it: dropped and counted).
    queue_max_bytes: int = Field(32 * 1024 * 1024, ge=0)
    #: A queued shadow older than this is dropped (its primary is long gone).
    queue_max_age_seconds: float = Field(5.0, gt=0)
    connect_timeout_seconds: float = Field(5.0, gt=0)
    #: Whole shadow call, first byte to last.
    timeout_seconds: float = Field(120.0, gt=0)
    #: Larger request bodies are not shadowed (counted): a shadow must not double memory.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    max_connections: int = Field(100, ge=1)
    #: How long a finished shadow waits for its primary to finish before giving up the pair.
    pair_wait_seconds: float = Field(900.0, gt=0)
    #: Noise calibration: this share of shadowed requests also runs the *stable* version a
    #: second time, so divergence can be judged against stable's own variability.
    noise_share: float = Field(0.2, ge=0, le=1)
    sink: ShadowSinkConfig = ShadowSinkConfig()


def otlp_url(value: str) -> str:
    """An OTLP/HTTP traces URL: absolute http(s), a valid port, no query or fragment."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL such as http://collector:4318/v1/traces")
    return provider_url(value)


class TracingConfig(_Section):
    """OpenTelemetry spans of requests and provider calls, exported over OTLP/HTTP
    (docs/tracing.md). Off by default; needs the `otel` extra."""

    enabled: bool = False
    #: The OTLP/HTTP traces URL (`http://collector:4318/v1/traces`). Unset: the standard
    #: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` +
    #: `/v1/traces`, else `http://localhost:4318/v1/traces`.
    endpoint: str | None = None
    #: The environment variable holding the export's headers (`name=value,name=value`, as
    #: OpenTelemetry's `OTEL_EXPORTER_OTLP_HEADERS`): API keys of a hosted backend stay out
    #: of the file. Unset: `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, else
    #: `OTEL_EXPORTER_OTLP_HEADERS`, when set.
    headers_env: EnvName = None
    #: `service.name` of every span's resource.
    service_name: str = Field("promptproxy", min_length=1, max_length=256)
    #: The share of traces started here that are kept (a caller's sampled flag decides for
    #: the traces it started: parent-based).
    sample_ratio: float = Field(1.0, ge=0, le=1)
    #: Ended spans waiting for export; beyond this they are dropped (the request never waits).
    max_queue_size: int = Field(2048, ge=1, le=1_000_000)
    max_export_batch_size: int = Field(512, ge=1, le=100_000)
    #: How often the exporter thread sends what is queued.
    schedule_delay_seconds: float = Field(5.0, gt=0, le=600)
    #: One export request, retries included.
    export_timeout_seconds: float = Field(10.0, gt=0, le=300)
    #: At shutdown, how long the last spans may take to leave; then they are given up.
    shutdown_timeout_seconds: float = Field(3.0, ge=0, le=60)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else otlp_url(value)

    @model_validator(mode="after")
    def _batch_fits_queue(self) -> TracingConfig:
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("tracing.max_export_batch_size must not exceed max_queue_size")
        return self


class ProxyConfig(_Section):
    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    registry: RegistryConfig = RegistryConfig()
    admin: AdminConfig = AdminConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    rollouts: RolloutsConfig = RolloutsConfig()
    shadow: ShadowConfig = ShadowConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    fleet: FleetConfig = FleetConfig()
    tenants: TenantsConfig = TenantsConfig()
    usage: UsageConfig = UsageConfig()
    evals: EvalsConfig = EvalsConfig()
    capture: CaptureConfig = CaptureConfig()
    safety: SafetyConfig = SafetyConfig()
    gates: GatesConfig = GatesConfig()
    tracing: TracingConfig = TracingConfig()
    #: Where requests go, by the model sent. Empty: the one provider `upstream` describes
    #: (its base URL and key, every model), as before providers existed.
    providers: tuple[ProviderConfig, ...] = Field((), max_length=64)

    @model_validator(mode="after")
    def _providers_or_upstream(self) -> ProxyConfig:
        if not self.providers:
            return self
        names = [provider.name for provider in self.providers]
        if len(set(names)) != len(names):
            raise ValueError("providers: each name is listed once")
        if self.upstream.model_fields_set & {"base_url", "api_key_env"}:
            raise ValueError(
                "upstream.base_url (or --upstream) and upstream.api_key_env describe the one "
                "provider of a config without `providers`: with `providers`, give each its "
                "own base_url and api_key_env (upstream keeps the timeouts and the "
                "connection pool)"
            )
        if self.shadow.base_url is not None:
            raise ValueError(
                "shadow.base_url sends every shadow copy to one host with the primary's "
                "credentials: with `providers`, each copy goes to the provider serving its "
                "model, with that provider's key; remove shadow.base_url"
            )
        return self

    def provider_list(self) -> tuple[ProviderConfig, ...]:
        """The providers, in the order models are matched; without `providers`, the one
        `upstream` describes, serving every model."""
        if self.providers:
            return self.providers
        upstream = self.upstream
        return (
            ProviderConfig(
                name=UPSTREAM_PROVIDER,
                base_url=upstream.base_url,
                api_key_env=upstream.api_key_env,
                models=("*",),
            ),
        )

    @model_validator(mode="after")
    def _simulator_is_the_upstream(self) -> ProxyConfig:
        # The bundled simulator enabled, and an upstream on this machine on another port:
        # the proxy would forward everything to a port the simulator does not listen on.
        sim, base_url = self.simulator, self.upstream.base_url
        if not sim.enabled or self.providers:
            return self

        def on_sim_host(url: str) -> bool:
            host = urlsplit(url).hostname or ""
            return host == sim.host or (is_local_host(host) and is_local_host(sim.host))

        def is_sim(url: str | None) -> bool:
            return url is not None and on_sim_host(url) and url_port(url) == sim.port

        # A local model server as upstream with the simulator only for shadows is fine.
        if on_sim_host(base_url) and not is_sim(base_url) and not is_sim(self.shadow.base_url):
            raise ValueError(
                f"simulator.port is {sim.port} but upstream.base_url ({base_url}) uses port "
                f"{url_port(base_url)}: the proxy would forward to a port nobody listens on; "
                "make them agree (or set simulator.enabled: false)"
            )
        return self


def backend_problems(config: ProxyConfig) -> list[str]:
    """What the store's backend cannot serve, one line per problem: a pair sink it does
    not provide (pair files on a shared store keep each replica's pairs apart), and
    settings only shared backends read under the embedded store (a Redis or PostgreSQL
    setting says replicas were meant to share state that would stay in each process). A
    setting at its default value is never refused, and neither is an embedded-only setting
    under a shared store: one config file commonly serves a laptop and, with the store
    overridden by `PROMPTPROXY_STORE`, production, and nothing is lost by ignoring it."""
    kind = config.registry.backend
    where = f"registry.store is {describe_store(config.registry.store)} ({kind.label})"
    problems: list[str] = []
    sink = config.shadow.sink.kind
    if sink not in ("auto", kind.pair_sink):
        use = f"use `auto` (pairs in {kind.label})" if kind.shared else "use `auto` or `files`"
        if sink == "files":
            problems.append(
                f"shadow.sink.kind: `files` keeps each replica's pairs on its own disk "
                f"(`shadow tail|export|report` would see one replica's share), but {where}, "
                f"shared by replicas: {use}"
            )
        else:
            needs = _owners_of_sink(sink)
            problems.append(f"shadow.sink.kind: `{sink}` needs a {needs} store, but {where}: {use}")
    for option in _other_backends_options(kind):
        if not _differs_from_default(config, option):
            continue
        owners = [other for other in KINDS if option in other.options]
        if kind.shared or not all(owner.shared for owner in owners):
            continue
        labels = " and ".join(owner.label for owner in owners)
        readers = f"the {labels} backends use" if len(owners) > 1 else f"the {labels} backend uses"
        stores = " or ".join(owner.label for owner in owners)
        problems.append(
            f"{option}: only {readers} it, but {where}: remove it, or point registry.store "
            f"at a {stores} store if replicas are to share it"
        )
    return problems


def workers_problems(config: ProxyConfig) -> list[str]:
    """Several worker processes (`server.workers`) are replicas: each would keep its own
    embedded registry, and each would start its own in-process simulator on one port."""
    workers = config.server.workers
    if workers == 1:
        return []
    problems: list[str] = []
    if not config.registry.backend.shared:
        problems.append(
            f"server.workers: {workers} worker processes are replicas and need a store they "
            f"share, but registry.store is {describe_store(config.registry.store)} (one "
            "process): point registry.store (--store, PROMPTPROXY_STORE) at redis://... or "
            "postgresql://..., or run one worker"
        )
    if config.simulator.enabled:
        problems.append(
            "simulator.enabled: each worker would start the simulated provider on "
            f"simulator.port {config.simulator.port}: run `promptproxy simulate` on its own, or "
            "run one worker"
        )
    return problems


def _owners_of_sink(sink: str) -> str:
    return " or ".join(kind.label for kind in KINDS if kind.pair_sink == sink)


def _other_backends_options(kind: BackendKind) -> list[str]:
    others = [option for other in KINDS if other is not kind for option in other.options]
    return [option for option in dict.fromkeys(others) if option not in kind.options]


def _differs_from_default(config: ProxyConfig, dotted: str) -> bool:
    *path, name = dotted.split(".")
    section: BaseModel = config
    for part in path:
        section = getattr(section, part)
    return bool(getattr(section, name) != type(section).model_fields[name].default)


@dataclass(frozen=True, slots=True)
class TokenGrant:
    name: str
    token: str
    role: str  # "admin" or "read"

    def __repr__(self) -> str:
        return f"TokenGrant(name={self.name!r}, role={self.role!r})"


def _shared_token_problems(tokens: list[TokenGrant]) -> list[str]:
    """One secret under two names would make the audit name whichever matched last, and
    give a read-only name an admin's rights (or the reverse): each token must be its own."""
    names: dict[str, list[str]] = {}
    for grant in tokens:
        names.setdefault(grant.token, []).append(grant.name)
    return [
        f"admin.tokens: {' and '.join(shared)} have the same token value; give each its own "
        "(the audit names the token a change was made with)"
        for shared in names.values()
        if len(shared) > 1
    ]


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated file plus what came from the environment."""

    config: ProxyConfig
    upstream_api_key: str | None
    admin_tokens: tuple[TokenGrant, ...] = ()
    #: Each listed provider's key from its `api_key_env` (providers without one are absent).
    provider_keys: Mapping[str, str] = field(default_factory=dict)
    #: The key eval calls send as a caller's (`evals.api_key_env`).
    eval_api_key: str | None = field(default=None, repr=False)
    #: Where spans go and the headers sent with them (`tracing`; from the environment).
    tracing_endpoint: str | None = None
    tracing_headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:  # never print a secret
        key = "set" if self.upstream_api_key else "unset"
        return (
            f"Settings(config={self.config!r}, upstream_api_key=<{key}>, "
            f"provider_keys=<{sorted(self.provider_keys)}>, "
            f"admin_tokens={list(self.admin_tokens)!r})"
        )

    def provider_key(self, provider: ProviderConfig) -> str | None:
        """The key sent to ``provider`` in place of the client's; None: forward the
        client's."""
        if provider.name == UPSTREAM_PROVIDER and not self.config.providers:
            return self.upstream_api_key
        return self.provider_keys.get(provider.name)


def _problem(err: ErrorDetails) -> str:
    """One line per problem. A check across sections (a model validator) has no field of
    its own and names its fields in its message, so it stands alone, without pydantic's
    "Value error, " wrapping."""
    message = err["msg"]
    if err["type"] == "value_error" and "error" in err.get("ctx", {}):
        message = str(err["ctx"]["error"])
    if not err["loc"]:
        return message
    return f"{'.'.join(str(part) for part in err['loc'])}: {message}"


def _set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    section, dot, key = path.partition(".")
    if not dot:  # a top-level setting (`providers`)
        raw[section] = value
        return
    node = raw.setdefault(section, {})
    if not isinstance(node, dict):
        raise ConfigError([f"{section}: must be a mapping"])
    node[key] = value


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from exc
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return raw


def load_safety_policy(path: Path | None) -> SafetyPolicy:
    """The safety policy of a configuration file (the built-in one without a file), for
    ``promptproxy prompts lint``: only the ``safety`` section is validated and no
    environment is read, so CI can lint prompt files without the proxy's secrets."""
    section = {} if path is None else _read_file(path).get("safety") or {}
    try:
        return SafetyConfig.model_validate(section).policy()
    except ValidationError as exc:
        errors = exc.errors()
        for err in errors:
            err["loc"] = ("safety", *err["loc"])
        raise ConfigError([_problem(err) for err in errors]) from None


def load_config(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read, merge and validate the configuration.

    ``overrides`` maps dotted paths (``"upstream.base_url"``) to values given on the command
    line; they win over the file and are validated like it.
    """
    env = os.environ if environ is None else environ
    raw = {} if path is None else _read_file(path)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(raw, dotted, value)
    store = env.get("PROMPTPROXY_STORE")
    if store and not (overrides or {}).get("registry.store"):
        _set_path(raw, "registry.store", store)
    try:
        config = ProxyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_problem(err) for err in exc.errors()]) from None

    problems: list[str] = []
    api_key: str | None = None
    if config.upstream.api_key_env is not None:
        api_key = env.get(config.upstream.api_key_env) or None
        if api_key is None:
            problems.append(
                f"upstream.api_key_env: environment variable "
                f"{config.upstream.api_key_env} is not set or empty"
            )
    provider_keys: dict[str, str] = {}
    for index, provider in enumerate(config.providers):
        if provider.api_key_env is None:
            continue
        key = env.get(provider.api_key_env) or None
        if key is None:
            problems.append(
                f"providers.{index}.api_key_env: environment variable "
                f"{provider.api_key_env} is not set or empty"
            )
        else:
            provider_keys[provider.name] = key
    eval_key: str | None = None
    if config.evals.api_key_env is not None:
        eval_key = env.get(config.evals.api_key_env) or None
        if eval_key is None:
            problems.append(
                f"evals.api_key_env: environment variable {config.evals.api_key_env} is not "
                "set or empty"
            )
    tokens: list[TokenGrant] = []
    for index, spec in enumerate(config.admin.tokens):
        value = env.get(spec.env)
        if not value:
            problems.append(f"admin.tokens.{index}.env: environment variable {spec.env} is not set")
        else:
            tokens.append(TokenGrant(spec.name, value, spec.role))
    default_token = env.get("PROMPTPROXY_ADMIN_TOKEN")
    if default_token:
        tokens.append(TokenGrant("admin", default_token, "admin"))
    problems += _shared_token_problems(tokens)
    tracing_endpoint, tracing_headers = _tracing_export(config.tracing, env, problems)
    problems += backend_problems(config)
    problems += workers_problems(config)
    if problems:
        raise ConfigError(problems)
    return Settings(
        config=config,
        upstream_api_key=api_key,
        admin_tokens=tuple(tokens),
        provider_keys=provider_keys,
        eval_api_key=eval_key,
        tracing_endpoint=tracing_endpoint,
        tracing_headers=tracing_headers,
    )


#: What `tracing.enabled` needs installed: the `otel` extra.
OTEL_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
_DEFAULT_TRACES_ENDPOINT = "http://localhost:4318/v1/traces"
_EXAMPLE_TRACES_ENDPOINT = "http://collector:4318/v1/traces"
#: OpenTelemetry's protocol variables, the signal's first.
_PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


def otel_installed() -> bool:
    """Whether the `otel` extra is installed, found without importing it."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in OTEL_MODULES)
    except (ImportError, ValueError):
        return False


def _tracing_export(
    tracing: TracingConfig, env: Mapping[str, str], problems: list[str]
) -> tuple[str | None, dict[str, str]]:
    """The OTLP endpoint and headers of enabled tracing, from the file or OpenTelemetry's
    standard variables; a problem for each thing missing or malformed. A header's value is
    never repeated in a problem."""
    if not tracing.enabled:
        return None, {}
    if not otel_installed():
        problems.append(
            "tracing.enabled: OpenTelemetry is not installed: pip install 'promptproxy[otel]'"
        )
    endpoint = tracing.endpoint
    if endpoint is None:
        signal = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        endpoint = signal or (base.rstrip("/") + "/v1/traces" if base else None)
        endpoint = endpoint or _DEFAULT_TRACES_ENDPOINT
        try:
            endpoint = otlp_url(endpoint)
        except ValueError as exc:
            problems.append(f"tracing.endpoint (from the environment): {exc}")
        # An environment set up for gRPC points at the gRPC port: HTTP there loses every span.
        protocol = next((n for n in _PROTOCOL_VARIABLES if env.get(n)), None)
        if protocol is not None and env[protocol].strip().lower() == "grpc":
            problems.append(
                f"tracing.endpoint (from the environment): {protocol} is grpc, but the proxy "
                "exports OTLP over HTTP: set tracing.endpoint to the collector's HTTP "
                f"endpoint, such as {_EXAMPLE_TRACES_ENDPOINT}"
            )
    names = (
        (tracing.headers_env,)
        if tracing.headers_env
        else ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
    )
    name = next((n for n in names if env.get(n)), None)
    if name is None:
        if tracing.headers_env:
            problems.append(
                f"tracing.headers_env: environment variable {tracing.headers_env} is not set "
                "or empty"
            )
        return endpoint, {}
    headers: dict[str, str] = {}
    for number, item in enumerate(env[name].split(","), 1):
        key, eq, value = item.partition("=")
        key = unquote(key).strip()
        if not eq or not _HEADER_NAME.fullmatch(key):
            problems.append(
                f"tracing: environment variable {name}: entry {number} is not name=value"
            )
            continue
        value = unquote(value).strip()
        if _CONTROL.search(value):
            # The exporter's HTTP client refuses it on every export, quoting it in the log.
            problems.append(
                f"tracing: environment variable {name}: entry {number} has a control "
                "character in its value"
            )
            continue
        headers[key] = value
    return endpoint, headers


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
