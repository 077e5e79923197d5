"""Path and query parameters of the admin API, as models.

A route names its path and query models in the route table; ``admin_endpoint`` validates
the request's parameters with them before the handler runs, and ``proxy.web.openapi``
describes each field as a parameter. Each field reads the raw string itself, so a bad
value is a 400 naming the parameter, in words a person can act on (not pydantic's); the
``Field`` constraints then state the same range for the document.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, WithJsonSchema

from proxy.analysis.series import SERIES_SECONDS, default_step
from proxy.errors import InvalidRequest
from proxy.models import SLUG_PATTERN
from proxy.prompt_key import Layer, PromptKey
from proxy.registry.models import INT64_MAX
from proxy.registry.service import MAX_WAIT_SECONDS, check_wait, prompt_key
from proxy.web.admin_models import SLUG_REGEX

#: Shadow ``since``: seconds ago with an optional unit. ASCII digits (``\d`` takes other
#: scripts' too), and few enough to stay a finite time.
SINCE_NUMBER = r"([0-9]{1,15}(?:\.[0-9]{1,9})?)([smhd]?)"
#: Pairs one read of shadow pairs returns by default, and at most.
DEFAULT_PAIRS = 100
MAX_PAIRS = 10_000
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SINCE = re.compile(SINCE_NUMBER)
# A bare number this large is a unix timestamp (2001-09-09 onwards), not seconds ago.
_EPOCH_FLOOR = 1e9
#: The rollout ``rollout=latest`` names: the running one, else the last that ran.
LATEST = "latest"
_ROLLOUT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# ASCII digits only: str.isdigit() also takes '²' and '٣', and int() refuses the first.
_POSITIVE = re.compile(r"0*[1-9][0-9]{0,18}")


class Params(BaseModel):
    """Parameters read from the URL. A required one that is missing reads as ``""``, so
    its own check names it."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)


class NoParams(Params):
    """A route without path (or query) parameters."""


# -- readers: a raw string in, a value or a 400 naming the parameter out ---------------------


def positive_int(value: str, name: str) -> int:
    """A path or query integer from 1 to 2^63-1, or a 400 naming it (never a store overflow)."""
    if _POSITIVE.fullmatch(value) is None or int(value) > INT64_MAX:
        raise InvalidRequest(
            f"`{name}` must be an integer from 1 to {INT64_MAX}, not {value[:40]!r}.", param=name
        )
    return int(value)


def _count(name: str) -> Callable[[Any], int]:
    return lambda value: positive_int(str(value), name)


def _slug(value: Any) -> str:
    prompt_key(str(value))  # the 400 of a slug that names no key
    return str(value)


def _tenant_id(value: Any) -> str:
    if not SLUG_PATTERN.fullmatch(str(value)):
        raise InvalidRequest(
            "The tenant id must match [A-Za-z0-9._-]{1,64}.",
            param="tenant_id",
            code="invalid_tenant",
        )
    return str(value)


def _layer_name(kind: str) -> Callable[[Any], str]:
    def read(value: Any) -> str:
        if not SLUG_PATTERN.fullmatch(str(value)):
            raise InvalidRequest(
                f"`{kind}` must match [A-Za-z0-9._-]{{1,64}}.", param=kind, code="invalid_layer"
            )
        return str(value)

    return read


def _shadow_slug(value: Any) -> str:
    if not SLUG_PATTERN.match(str(value)):
        raise InvalidRequest("The prompt slug must match [A-Za-z0-9._-]{1,64}.", param="slug")
    return str(value)


def _wait(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise InvalidRequest(
            "`wait` must be a number of seconds, e.g. wait=5.", param="wait", code="invalid_wait"
        ) from None
    return check_wait(seconds)


def instant(value: str) -> float:
    """An ISO-8601 time with a zone (``at``), as unix seconds."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            "`at` must be an ISO-8601 time such as 2026-11-24T10:00:00Z.", param="at"
        ) from None
    if moment.tzinfo is None:
        raise InvalidRequest("`at` must carry a time zone (e.g. Z or +00:00).", param="at")
    return moment.timestamp()


def _at(value: Any) -> str:
    instant(str(value))
    return str(value)


def parse_since(value: str | None, now: float, param: str = "since") -> float | None:
    """``since`` (or another moment, ``param``) as unix seconds; None when absent."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    match = _SINCE.fullmatch(text)
    if match is not None:
        number, unit = float(match.group(1)), match.group(2)
        if not unit and number >= _EPOCH_FLOOR:
            return number
        return now - number * _UNITS[unit]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise _bad_since(param)
    return moment.timestamp()


def _bad_since(param: str = "since") -> InvalidRequest:
    return InvalidRequest(
        f"`{param}` must be seconds ago (600), a duration (10m, 2h, 1d), a unix timestamp "
        "or an ISO-8601 time with a zone (2026-11-24T10:00:00Z).",
        param=param,
    )


def _since_text(value: Any) -> str:
    """A ``since`` that must say when (a report has no "the last N pairs")."""
    if parse_since(str(value), time.time()) is None:
        raise _bad_since()
    return str(value)


def _moment(param: str) -> Callable[[Any], float]:
    """A moment that must say when: present, so never empty."""

    def read(value: Any) -> float:
        moment = parse_since(str(value), time.time(), param)
        if moment is None:
            raise _bad_since(param)
        return moment

    return read


def _pairs_limit(value: Any) -> int:
    text = str(value)
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_PAIRS:
        raise InvalidRequest(f"`limit` must be an integer from 1 to {MAX_PAIRS}.", param="limit")
    return int(text)


def _flag(name: str) -> Callable[[Any], bool]:
    def read(value: Any) -> bool:
        lowered = str(value).lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no", ""):
            return False
        raise InvalidRequest(f"`{name}` must be true or false.", param=name)

    return read


def _strict_flag(name: str) -> Callable[[Any], str]:
    def read(value: Any) -> str:
        if value not in ("true", "false"):
            raise InvalidRequest(
                f"`{name}` must be true or false, not {str(value)[:40]!r}.", param=name
            )
        return str(value)

    return read


def _rollout(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    if text != LATEST and not _ROLLOUT_ID.fullmatch(text):
        raise InvalidRequest(
            "`rollout` must be a rollout id or `latest` (the running rollout, else the last).",
            param="rollout",
        )
    return text


#: A series' ``since``: seconds (1 to 900, ``s`` optional) or minutes (1m to 15m), the
#: pool's guaranteed retention (``SERIES_SECONDS``): a JSON Schema pattern can say that much,
#: so the document is as strict as the server.
SERIES_SINCE_REGEX = r"^(?:(?:[1-9][0-9]?|[1-8][0-9]{2}|900)s?|(?:[1-9]|1[0-5])m)$"
_SERIES_SINCE = re.compile(SERIES_SINCE_REGEX)
_SERIES_MINUTES = SERIES_SECONDS // 60


def _series_since(value: Any) -> str:
    text = str(value)
    if _SERIES_SINCE.fullmatch(text) is not None:
        return text
    reach = f"at most {_SERIES_MINUTES}m, the {SERIES_SECONDS} s the pool keeps"
    duration = _SINCE.fullmatch(text)
    if (
        duration is not None
        and float(duration.group(1)) * _UNITS[duration.group(2)] > SERIES_SECONDS
    ):
        message = f"`since` reaches back {reach}, not {text[:40]!r}."
    else:
        message = (
            f"`since` must be a duration of {reach}: whole seconds (90, 90s) or whole "
            "minutes (10m)."
        )
    raise InvalidRequest(message, param="since")


def series_seconds(since: str) -> int:
    """A checked series ``since`` (``_series_since``) in seconds."""
    return int(since[:-1]) * 60 if since.endswith("m") else int(since.rstrip("s"))


def _series_step(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value)
    if _POSITIVE.fullmatch(text) is None or int(text) > SERIES_SECONDS:
        raise InvalidRequest(
            f"`step` must be a whole number of seconds from 1 to {SERIES_SECONDS} (and at most "
            f"`since`), not {text[:40]!r}.",
            param="step",
        )
    return int(text)


def _share(name: str, low: float, high: float, *, low_open: bool) -> Callable[[Any], float]:
    above = f"above {low:g}" if low_open else f"at least {low:g}"

    def read(value: Any) -> float:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        inside = (low < number if low_open else low <= number) and number <= high
        if not inside:  # NaN is never inside
            raise InvalidRequest(
                f"`{name}` must be a number {above} and at most {high:g}.", param=name
            )
        return number

    return read


# -- parameter types ---------------------------------------------------------------------------


_SLUG_SCHEMA = {"type": "string", "pattern": SLUG_REGEX}
Slug = Annotated[str, BeforeValidator(_slug), WithJsonSchema(_SLUG_SCHEMA)]
ShadowSlug = Annotated[str, BeforeValidator(_shadow_slug), WithJsonSchema(_SLUG_SCHEMA)]
TenantId = Annotated[str, BeforeValidator(_tenant_id), WithJsonSchema(_SLUG_SCHEMA)]
TenantName = Annotated[str, BeforeValidator(_layer_name("tenant")), WithJsonSchema(_SLUG_SCHEMA)]
TierName = Annotated[str, BeforeValidator(_layer_name("tier")), WithJsonSchema(_SLUG_SCHEMA)]
VariantName = Annotated[str, BeforeValidator(_layer_name("variant")), WithJsonSchema(_SLUG_SCHEMA)]
_SINCE_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": f"^{SINCE_NUMBER}$"},
        {"type": "string", "format": "date-time"},
    ]
}
_SINCE_HELP = (
    "How far back: seconds (600), a duration (10m, 2h), a unix time or an ISO-8601 time with a zone"
)
_ROLLOUT_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}
_COUNT = Field(ge=1, le=INT64_MAX)
VersionNumber = Annotated[int, _COUNT, BeforeValidator(_count("version"))]
Limit = Annotated[int, _COUNT, BeforeValidator(_count("limit"))]
Before = Annotated[int, _COUNT, BeforeValidator(_count("before"))]
From = Annotated[int, _COUNT, BeforeValidator(_count("from"))]
To = Annotated[int, _COUNT, BeforeValidator(_count("to"))]
MinPairs = Annotated[int, _COUNT, BeforeValidator(_count("min_pairs"))]


# -- path parameters ---------------------------------------------------------------------------


class LayerQuery(Params):
    """The layer of a slug a prompt route addresses, on every route with ``{slug}``: a
    tier's or a tenant's override; neither, the base."""

    tenant: TenantName | None = Field(
        None, description="A tenant's override of the prompt (tenant=acme); not with tier"
    )
    tier: TierName | None = Field(
        None, description="A tier's override of the prompt (tier=enterprise); not with tenant"
    )
    variant: VariantName | None = Field(
        None,
        description="A model variant of the prompt (variant=claude: SLUG@claude), alone or "
        "with tenant= or tier= for that layer's override of the variant",
    )

    @property
    def layer(self) -> Layer | None:
        if self.tenant is not None and self.tier is not None:
            raise InvalidRequest(
                "Name one layer: tenant= or tier=, not both.", param="tier", code="invalid_layer"
            )
        if self.tenant is not None:
            return Layer("tenant", self.tenant)
        return None if self.tier is None else Layer("tier", self.tier)


class Keyed(Params):
    """A path that names a prompt by its ``slug`` (checked by its field's reader). The
    layer comes from the query (``LayerQuery``), which ``admin_endpoint`` reads for every
    keyed route."""

    slug: str
    _layer: Layer | None = PrivateAttr(None)
    _variant: str | None = PrivateAttr(None)

    def at(self, query: LayerQuery) -> Self:
        keyed = self.model_copy()
        keyed._layer = query.layer
        keyed._variant = query.variant
        return keyed

    @property
    def key(self) -> PromptKey:
        """The version line the path names: the handlers' one way to a ``PromptKey``."""
        return PromptKey(self.slug, self._layer, self._variant)


def keyed(model: type[Params]) -> bool:
    """Whether a route with these path parameters names a prompt (and takes its layer)."""
    return issubclass(model, Keyed)


class SlugPath(Keyed):
    slug: Slug


class VersionPath(Keyed):
    slug: Slug
    version: VersionNumber


class ShadowPath(Keyed):
    """The shadow endpoints check the slug before anything else, with their own words. The
    layer names whose rollout's pairs: a variant's (variant=), a tenant's or tier's override
    (tenant=, tier=); a base rollout's pairs carry each caller's tenant."""

    slug: ShadowSlug


class ExplainPath(Params):
    """Explain names the base by its slug; the tenant and tier are who asks, not a layer."""

    slug: Slug


class TenantPath(Params):
    tenant_id: TenantId


#: An eval run's id (``proxy.evals.service``): milliseconds since the epoch, a random part.
EVAL_RUN_ID = re.compile(r"[0-9]{13}-[0-9a-f]{8}")


def _run_id(value: Any) -> str:
    if not EVAL_RUN_ID.fullmatch(str(value)):
        raise InvalidRequest(
            "An eval run id looks like 1765000000000-0a1b2c3d.", param="run_id", code="invalid_run"
        )
    return str(value)


class EvalRunPath(Params):
    run_id: Annotated[
        str,
        BeforeValidator(_run_id),
        WithJsonSchema({"type": "string", "pattern": "^[0-9]{13}-[0-9a-f]{8}$"}),
    ]


# -- query parameters --------------------------------------------------------------------------


class WaitQuery(Params):
    """Every write takes ``wait``: see ``admin_wait``."""

    wait: Annotated[float | None, BeforeValidator(_wait)] = Field(
        None,
        gt=0,
        le=MAX_WAIT_SECONDS,
        description="Seconds to wait until every live replica serves the change; "
        "`served.fleet` then says who confirmed and names who did not",
    )


class AbortQuery(WaitQuery):
    reason: str = Field("", description="Why, when the body does not say (kept in the audit log)")


class HistoryQuery(Params):
    limit: Limit = Field(100, description="Most entries to return (newest first)")
    at: Annotated[str | None, BeforeValidator(_at)] = Field(
        None,
        json_schema_extra={"format": "date-time"},
        description="ISO-8601 instant: answer which version was prod then, and the rollout "
        "running then",
    )


class ExplainQuery(Params):
    tenant: TenantName | None = Field(
        None, description="Whose request: its override and (unless tier is given) its tier's"
    )
    tier: TierName | None = Field(
        None, description="The tier whose override applies (default: the tenant's own)"
    )
    version: VersionNumber | None = Field(
        None, description="The base version (default prod) of the variant selected"
    )
    model: str | None = Field(
        None,
        max_length=256,
        description="A request's model: explain the variant it selects (default: the default "
        "variant)",
    )


class DiffQuery(Params):
    from_: From = Field(alias="from")
    to: To


class AuditQuery(Params):
    limit: Limit = Field(100, description="Most entries to return; at most 1000 are")
    before: Before | None = Field(None, description="Entries with a smaller seq (paging)")
    slug: Annotated[str | None, BeforeValidator(_slug), WithJsonSchema(_SLUG_SCHEMA)] = None

    @property
    def key(self) -> PromptKey | None:
        """The prompt whose entries are asked for; None: every prompt's."""
        return None if self.slug is None else PromptKey(self.slug)


class EvalsQuery(Params):
    candidate: VersionNumber | None = Field(None, description="Only the runs of this version")
    limit: Limit = Field(50, le=500, description="Most runs to return (newest first)")


class UsageQuery(Params):
    since: Annotated[
        float | None, BeforeValidator(_moment("since")), WithJsonSchema(_SINCE_SCHEMA)
    ] = Field(None, description=_SINCE_HELP + "; without it, a day before `until`")
    until: Annotated[
        float | None, BeforeValidator(_moment("until")), WithJsonSchema(_SINCE_SCHEMA)
    ] = Field(
        None,
        description="The end, in the same forms as `since`; without it, now. A `since` "
        "at or after it sums nothing",
    )
    slug: Annotated[str | None, BeforeValidator(_slug), WithJsonSchema(_SLUG_SCHEMA)] = Field(
        None, description="Only this prompt's requests"
    )


class PairsQuery(Params):
    since: Annotated[
        float | None,
        BeforeValidator(lambda value: parse_since(str(value), time.time())),
        WithJsonSchema(_SINCE_SCHEMA),
    ] = Field(None, description=_SINCE_HELP + "; without it, the last `limit` pairs")
    limit: Annotated[int, BeforeValidator(_pairs_limit)] = Field(DEFAULT_PAIRS, ge=1, le=MAX_PAIRS)
    follow: Annotated[bool, BeforeValidator(_flag("follow"))] = Field(
        False, description="Keep the response open and stream new pairs as they come"
    )
    rollout: Annotated[str | None, BeforeValidator(_rollout), WithJsonSchema(_ROLLOUT_SCHEMA)] = (
        Field(
            None,
            description="Only this rollout's pairs: its id, or `latest` (the running rollout, "
            "else the last one; 404 if the prompt never had one), also with `follow`. Without "
            "it, the pairs of every rollout",
        )
    )


class ReportQuery(Params):
    since: Annotated[str, BeforeValidator(_since_text), WithJsonSchema(_SINCE_SCHEMA)] = Field(
        "1h", description="Pairs recorded since then. " + _SINCE_HELP
    )
    limit: Limit | None = Field(None, description="At most this many pairs, oldest first")
    rollout: Annotated[str | None, BeforeValidator(_rollout), WithJsonSchema(_ROLLOUT_SCHEMA)] = (
        Field(
            None,
            description="The rollout whose pairs to judge: its id, or `latest` (the default: "
            "the running rollout, else the last one; 404 if the prompt never had one)",
        )
    )
    alpha: Annotated[float, BeforeValidator(_share("alpha", 0, 0.5, low_open=True))] = Field(
        0.01, gt=0, le=0.5, description="Significance level of each measure's test"
    )
    margin: Annotated[float, BeforeValidator(_share("margin", 0, 1, low_open=False))] = Field(
        0.05,
        ge=0,
        le=1,
        description="How much more the candidate must diverge on average than the noise to fail",
    )
    min_pairs: MinPairs = Field(
        30, description="Fewer comparable pairs of a kind than this: inconclusive"
    )


class SeriesQuery(Params):
    since: Annotated[
        str,
        BeforeValidator(_series_since),
        WithJsonSchema({"type": "string", "pattern": SERIES_SINCE_REGEX}),
    ] = Field(
        "15m",
        description=f"How far back: seconds (1 to {SERIES_SECONDS}, e.g. 90 or 90s) or minutes "
        f"(1m to {_SERIES_MINUTES}m); the pool keeps every rollout's counts this long",
    )
    step: Annotated[int | None, BeforeValidator(_series_step)] = Field(
        None,
        ge=1,
        le=SERIES_SECONDS,
        description="Seconds per point, at most `since`; default: about 60 points (15 s over 15m)",
    )
    rollout: Annotated[str | None, BeforeValidator(_rollout), WithJsonSchema(_ROLLOUT_SCHEMA)] = (
        Field(
            None,
            description="The rollout to chart: its id, or `latest` (the default: the running "
            "rollout, else the last one; 404 if the prompt never had one)",
        )
    )

    @property
    def seconds(self) -> int:
        return series_seconds(self.since)

    @property
    def step_seconds(self) -> int:
        """``step``, or the default for ``since``; a 400 when it exceeds ``since``."""
        since = self.seconds
        if self.step is None:
            return default_step(since)
        if self.step > since:
            raise InvalidRequest(
                f"`step` ({self.step} s) must be at most `since` ({since} s).", param="step"
            )
        return self.step


class ImportQuery(Params):
    overwrite: Annotated[Literal["true", "false"], BeforeValidator(_strict_flag("overwrite"))] = (
        Field("false", description="replace prompts the store holds (409 without it)")
    )
    reason: str = Field("", description="Kept in the audit log")
