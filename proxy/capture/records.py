"""``Capture``: the stored record of one served call, kept to be replayed against a
candidate version later (docs/design-gates.md, step 8), and ``CaptureStore``, where the
backend keeps them. One store per backend, opened with the others by ``proxy.backends``:

- embedded: a SQLite file beside the registry (``captures_sqlite``, ``registry.captures.db``);
- Redis: a string per capture and a sorted set per slug (``captures_redis``);
- PostgreSQL: the table ``captures`` (``captures_postgres``).

What a capture holds is decided before it gets here: the recorder samples, redacts (by the
log's rules) and caps each call, then hands batches to ``add`` from a background flush. A
store keeps what it is given, checks its size and keeps its retention; nothing more.

A capture is written once and never changed: ``add`` of an id already stored leaves the
stored capture as it is.

Retention, per store (``keep_per_slug``, ``keep_hours``):

- **by age**: a capture whose ``at`` is more than ``keep_hours`` (default
  ``DEFAULT_KEEP_HOURS``) before the store's clock is gone: reads and counts never return
  it from that moment, and it is deleted from disk by the next ``add`` of any slug
  (SQLite, PostgreSQL) or expires with its key (Redis). A capture already that old when
  added is not written;
- **by count**: a slug keeps its newest ``keep_per_slug`` captures (default
  ``DEFAULT_KEEP_PER_SLUG``, newest by ``at`` then ``id``); the ``add`` that passes that
  deletes the oldest, so a capture older than all of those kept is deleted by its own add.

Size. A capture is encoded once, as one JSON object (``encode``); the *store* refuses one
over its ``max_bytes`` (default ``DEFAULT_MAX_BYTES``) with ``CaptureTooLarge``, and then
writes nothing of the batch. ``Capture`` itself checks the rest when it is made
(``CaptureError``). ``request`` and ``answer`` are JSON objects as orjson writes them: string
keys; a float that is not finite is written as ``null``. They are kept as bytes, so a
capture reads back exactly as it was encoded.

Errors. A store that cannot be reached or used raises ``CapturesUnavailable``, a
``StoreUnavailable`` like the registry's (a 503 where a service answers with it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from proxy.registry.record_ids import new_record_id
from proxy.registry.store import StoreUnavailable

#: Captures a slug keeps unless the store is told otherwise.
DEFAULT_KEEP_PER_SLUG = 10_000
#: Hours a capture is kept unless the store is told otherwise.
DEFAULT_KEEP_HOURS = 72.0
#: The largest capture a store accepts unless told otherwise, encoded.
DEFAULT_MAX_BYTES = 64 * 1024
#: Captures one ``add`` may carry: a flush is a bounded write, not a bulk load.
MAX_BATCH = 1000
#: A slug is a ``PromptKey``'s text form (layer and variant included): opaque here.
MAX_SLUG_CHARS = 200
#: Rollout ids, tenants, hashes, model names: short texts.
MAX_TEXT_CHARS = 200
#: ``x-prompt-layers``: a label per layer (guardrails, base, tier, tenant).
MAX_LAYERS_CHARS = 1000

#: Ids are made of these, so they can be part of a Redis key.
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ARM = re.compile(r"[A-Za-z0-9._-]{1,32}")


class CaptureError(ValueError):
    """A capture that cannot be stored as it is: a field of the wrong type or out of bounds."""


class CaptureTooLarge(CaptureError):
    """A capture over the store's ``max_bytes``: nothing of its batch was written."""


class CapturesUnavailable(StoreUnavailable):
    """The store of captures cannot be reached or did not answer in time."""


new_capture_id = new_record_id


@dataclass(frozen=True, slots=True)
class Capture:
    """One served call, as the recorder kept it (already redacted and capped).

    ``request`` and ``answer`` are kept as given (not copied): do not change them after."""

    id: str
    #: The prompt key's text form of the line served (``tier=gold/support-reply@claude``).
    slug: str
    #: The version that answered, and the arm that chose it (``stable``, ``canary``,
    #: ``pinned``; stored as any short name).
    version: int
    arm: str
    rollout_id: str | None
    #: What composed the prompt, as ``x-prompt-layers`` says it.
    layers: str | None
    tenant: str | None
    #: The rendered prompt's hash.
    prompt_hash: str | None
    #: The model sent to the provider.
    model: str | None
    #: The client's JSON body as the recorder kept it: messages, prompt_variables, params.
    request: Mapping[str, Any]
    #: What came back: text, finish_reason, tool_calls, status.
    answer: Mapping[str, Any]
    #: When the call was served, unix seconds.
    at: float

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise CaptureError(f"capture id {self.id!r} must match {_ID.pattern}")
        _text("slug", self.slug, MAX_SLUG_CHARS)
        if (
            not isinstance(self.version, int)
            or isinstance(self.version, bool)
            or not 1 <= self.version < 2**31
        ):
            raise CaptureError("capture version must be a version number (1 or more)")
        if not isinstance(self.arm, str) or not _ARM.fullmatch(self.arm):
            raise CaptureError(f"capture arm {self.arm!r} must match {_ARM.pattern}")
        for name, limit in (
            ("rollout_id", MAX_TEXT_CHARS),
            ("layers", MAX_LAYERS_CHARS),
            ("tenant", MAX_TEXT_CHARS),
            ("prompt_hash", MAX_TEXT_CHARS),
            ("model", MAX_TEXT_CHARS),
        ):
            value = getattr(self, name)
            if value is not None:
                _text(name, value, limit)
        for name in ("request", "answer"):
            if not isinstance(getattr(self, name), Mapping):
                raise CaptureError(f"capture {name} must be a JSON object")
        if (
            not isinstance(self.at, int | float)
            or isinstance(self.at, bool)
            or not math.isfinite(self.at)
        ):
            raise CaptureError("capture at must be a finite number of seconds")

    def to_dict(self) -> dict[str, Any]:
        """The capture as JSON types (orjson writes it as it is); ``from_dict`` reads it."""
        return {
            "id": self.id,
            "slug": self.slug,
            "version": self.version,
            "arm": self.arm,
            "rollout_id": self.rollout_id,
            "layers": self.layers,
            "tenant": self.tenant,
            "prompt_hash": self.prompt_hash,
            "model": self.model,
            "request": self.request if isinstance(self.request, dict) else dict(self.request),
            "answer": self.answer if isinstance(self.answer, dict) else dict(self.answer),
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Capture:
        """A capture from ``to_dict``'s form; the optional texts may be absent.
        ``CaptureError`` names what is missing or wrong."""
        if not isinstance(data, Mapping):
            raise CaptureError("a capture must be a JSON object")
        try:
            return cls(
                id=data["id"],
                slug=data["slug"],
                version=data["version"],
                arm=data["arm"],
                rollout_id=data.get("rollout_id"),
                layers=data.get("layers"),
                tenant=data.get("tenant"),
                prompt_hash=data.get("prompt_hash"),
                model=data.get("model"),
                request=data["request"],
                answer=data["answer"],
                at=data["at"],
            )
        except KeyError as exc:
            raise CaptureError(f"a capture needs {exc.args[0]!r}") from None

    @property
    def order(self) -> tuple[float, str]:
        """Reads go from the least to the greatest: oldest first, ties by id."""
        return (self.at, self.id)


def _text(name: str, value: object, limit: int) -> None:
    # No NUL in the texts kept as columns or keys: PostgreSQL text cannot hold it.
    if not isinstance(value, str) or not 1 <= len(value) <= limit or "\x00" in value:
        raise CaptureError(f"capture {name} must be a text of 1 to {limit} characters without NUL")


def encode(capture: Capture) -> bytes:
    """The capture as orjson's bytes, or ``CaptureError`` when a part is not JSON."""
    try:
        return orjson.dumps(capture.to_dict())
    except orjson.JSONEncodeError as exc:
        raise CaptureError(f"capture {capture.id}: not JSON: {exc}") from None


def decode(data: bytes | str) -> Capture:
    """A capture from ``encode``'s bytes."""
    try:
        found = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CaptureError(f"a stored capture is not JSON: {exc}") from None
    return Capture.from_dict(found)


# -- what the stores share ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodedCapture:
    """A capture as every store keeps it: its bytes, beside the fields keys are made of."""

    capture: Capture
    data: bytes


def encode_batch(captures: Sequence[Capture], *, max_bytes: int) -> list[EncodedCapture]:
    """Every capture of a batch encoded, or the first error: ``CaptureTooLarge`` naming the
    capture over ``max_bytes``, ``CaptureError`` for anything else. Called before a store
    writes anything, so a refused batch leaves nothing behind."""
    if isinstance(captures, Capture | str | bytes) or not isinstance(captures, Sequence):
        raise CaptureError("add takes a sequence of captures")
    if len(captures) > MAX_BATCH:
        raise CaptureError(f"a batch holds at most {MAX_BATCH} captures, not {len(captures)}")
    encoded = []
    for capture in captures:
        if not isinstance(capture, Capture):
            raise CaptureError(f"add takes captures, not {type(capture).__name__}")
        data = encode(capture)
        if len(data) > max_bytes:
            raise CaptureTooLarge(
                f"capture {capture.id}: {len(data):,} bytes encoded, over the store's limit "
                f"of {max_bytes:,}: nothing of its batch was written"
            )
        encoded.append(EncodedCapture(capture, data))
    return encoded


def check_read(since: float, until: float | None, limit: int) -> None:
    for name, value in (("since", since), ("until", until)):
        if value is None and name == "until":
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            raise CaptureError(f"a read's {name} must be a number of seconds, not {value!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise CaptureError(f"a read's limit must be 1 or more, not {limit!r}")


def check_store_options(keep_per_slug: int, keep_hours: float, max_bytes: int) -> None:
    if not isinstance(keep_per_slug, int) or keep_per_slug < 1:
        raise ValueError(f"keep_per_slug must be 1 or more, not {keep_per_slug!r}")
    if not isinstance(keep_hours, int | float) or not 0 < keep_hours < math.inf:
        raise ValueError(f"keep_hours must be a positive number, not {keep_hours!r}")
    if not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be 1 or more, not {max_bytes!r}")


def expired_before(now: float, keep_hours: float) -> float:
    """The oldest ``at`` still kept at ``now``: a capture is gone once ``at`` is below it."""
    return now - keep_hours * 3600.0


#: What ``read`` returns.
CaptureList = list[Capture]


class CaptureStore(Protocol):
    """Where the backend keeps captured calls (see the module's docstring for retention).

    Every method raises ``CapturesUnavailable`` when the store cannot be used."""

    async def add(self, captures: Sequence[Capture]) -> None:
        """Store a batch (at most ``MAX_BATCH``), idempotent on each capture's ``id``: one
        already stored stays as it was, so a batch may be sent again whole.

        All or nothing: a batch is one transaction (SQLite, PostgreSQL) or one script
        (Redis), so after any outcome either every capture of it is written (bar those
        retention drops at once) or none is, never a part. When ``add`` raises
        ``CapturesUnavailable`` the caller does not know which of the two (the answer to a
        write may be what was lost): sending the same batch again is safe and is how to
        make sure. ``CaptureTooLarge`` / ``CaptureError`` are raised before anything is
        written, for the whole batch."""
        ...

    async def read(
        self, slug: str, *, since: float, until: float | None = None, limit: int = 1000
    ) -> CaptureList:
        """``slug``'s captures with ``since <= at < until`` (no upper bound without
        ``until``), oldest first (``at``, then ``id``), at most ``limit``; never one past
        ``keep_hours``. A slug is matched exactly (its layer and variant included)."""
        ...

    async def count(self, slug: str, *, since: float) -> int:
        """How many captures of ``slug`` have ``at >= since`` (and are not past
        ``keep_hours``)."""
        ...

    async def close(self) -> None:
        """Idempotent. A closed store raises ``CapturesUnavailable``."""
        ...
