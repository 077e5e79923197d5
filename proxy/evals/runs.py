"""``EvalRun``: the stored record of one eval run, and ``EvalRunStore``, where the backend
keeps them. One store per backend, opened with the others by ``proxy.backends``:

- embedded: a SQLite file beside the registry (``runs_sqlite``, ``registry.evals.db``);
- Redis: a hash per run and a sorted set per slug and per (slug, candidate) (``runs_redis``);
- PostgreSQL: the table ``eval_runs`` (``runs_postgres``).

A run is written once and never changed: ``add`` of an id already stored leaves the stored
run as it is. Each store keeps the newest ``keep_runs`` runs of a slug (default
``DEFAULT_KEEP_RUNS``), newest by ``finished_at`` then ``id``; older ones are deleted by the
``add`` that passes the limit.

Sizes. ``summary`` (the figures a listing shows) is at most ``MAX_SUMMARY_BYTES`` encoded;
``detail`` (every case's result) at most the store's ``max_detail_bytes`` (default
``DEFAULT_MAX_DETAIL_BYTES``). The *store* checks both, in ``add``, as it encodes the run
(``encode_run``): a run is encoded once, and only the store knows its configured limit.
A run over either limit is refused with ``EvalRunTooLarge`` and nothing is written.
``EvalRun`` itself checks the rest when it is made (``EvalRunError``).

``summary`` and ``detail`` are JSON objects as orjson writes them: string keys; a float
that is not finite is written as ``null`` (JSON has no NaN). They are kept as bytes, so a
run reads back exactly as it was encoded.

Errors. A store that cannot be reached or used raises ``EvalRunsUnavailable``, a
``StoreUnavailable`` like the registry's, which the service answers with a 503.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from proxy.registry.record_ids import new_record_id
from proxy.registry.store import StoreUnavailable

#: Runs kept per slug unless the store is told otherwise.
DEFAULT_KEEP_RUNS = 500
#: The largest ``detail`` a store accepts unless told otherwise, encoded.
DEFAULT_MAX_DETAIL_BYTES = 2 * 1024 * 1024
#: The largest ``summary``, encoded: a listing of ``keep_runs`` runs stays a few MiB.
MAX_SUMMARY_BYTES = 16 * 1024
#: A slug is a ``PromptKey``'s text form (layer and variant included): opaque here.
MAX_SLUG_CHARS = 200
#: Names, actors, hashes: short texts.
MAX_TEXT_CHARS = 200
#: Judges one run may name.
MAX_JUDGES = 64

#: Ids and kinds are made of these, so they can be part of a Redis key or a file name.
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KIND = re.compile(r"[A-Za-z0-9._-]{1,32}")

#: The kinds the runner writes today; a store takes any ``_KIND``.
KINDS = ("eval", "judge_agreement", "replay")


class EvalRunError(ValueError):
    """A run that cannot be stored as it is: a field of the wrong type or out of bounds."""


class EvalRunTooLarge(EvalRunError):
    """A run whose summary or detail is over the store's limit: nothing was written."""


class EvalRunsUnavailable(StoreUnavailable):
    """The store of eval runs cannot be reached or did not answer in time."""


new_run_id = new_record_id


@dataclass(frozen=True, slots=True)
class EvalRun:
    """One run of a suite (or of a judge's agreement, or a replay) on a version of a slug.

    ``summary`` and ``detail`` are kept as given (not copied): do not change them after."""

    id: str
    #: The prompt key's text form (``support-reply``, ``tier=gold/support-reply@claude``).
    slug: str
    #: The version the run judged, and the one it was compared with (None: none).
    candidate: int
    baseline: int | None
    #: ``eval``, ``judge_agreement``, ``replay`` (``KINDS``); stored as any short name.
    kind: str
    actor: str
    started_at: float
    finished_at: float
    suite_name: str
    suite_sha256: str
    #: (judge slug, version) of every judge the run used.
    judges: tuple[tuple[str, int], ...]
    #: The run's verdict on its own criteria.
    passed: bool
    #: Small figures: pass rates, intervals, counts (``MAX_SUMMARY_BYTES``).
    summary: Mapping[str, Any]
    #: Every case's result (the store's ``max_detail_bytes``); empty in listings.
    detail: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise EvalRunError(f"eval run id {self.id!r} must match {_ID.pattern}")
        _text("slug", self.slug, MAX_SLUG_CHARS, empty=False)
        _version("candidate", self.candidate)
        if self.baseline is not None:
            _version("baseline", self.baseline)
        if not isinstance(self.kind, str) or not _KIND.fullmatch(self.kind):
            raise EvalRunError(f"eval run kind {self.kind!r} must match {_KIND.pattern}")
        _text("actor", self.actor, MAX_TEXT_CHARS)
        _instant("started_at", self.started_at)
        _instant("finished_at", self.finished_at)
        if self.finished_at < self.started_at:
            raise EvalRunError("eval run finished_at is before started_at")
        _text("suite_name", self.suite_name, MAX_TEXT_CHARS)
        _text("suite_sha256", self.suite_sha256, MAX_TEXT_CHARS)
        if not isinstance(self.judges, tuple | list) or len(self.judges) > MAX_JUDGES:
            raise EvalRunError(f"eval run judges must be a sequence of at most {MAX_JUDGES}")
        judges = []
        for judge in self.judges:
            if not isinstance(judge, tuple | list) or len(judge) != 2:
                raise EvalRunError(f"eval run judge {judge!r} must be (slug, version)")
            _text("judge slug", judge[0], MAX_SLUG_CHARS, empty=False)
            _version("judge version", judge[1])
            judges.append((judge[0], judge[1]))
        # A list read back from JSON is made a tuple, so a round trip compares equal.
        object.__setattr__(self, "judges", tuple(judges))
        if not isinstance(self.passed, bool):
            raise EvalRunError("eval run passed must be true or false")
        for name in ("summary", "detail"):
            if not isinstance(getattr(self, name), Mapping):
                raise EvalRunError(f"eval run {name} must be a JSON object")

    def to_dict(self) -> dict[str, Any]:
        """The run as JSON types (orjson writes it as it is); ``from_dict`` reads it back."""
        return {**self.head_dict(), "detail": dict(self.detail)}

    def head_dict(self) -> dict[str, Any]:
        """``to_dict`` without ``detail``: what a listing carries."""
        return {
            "id": self.id,
            "slug": self.slug,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "kind": self.kind,
            "actor": self.actor,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "suite_name": self.suite_name,
            "suite_sha256": self.suite_sha256,
            "judges": [[slug, version] for slug, version in self.judges],
            "passed": self.passed,
            "summary": dict(self.summary),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalRun:
        """A run from ``to_dict``'s form; ``detail`` (and ``baseline``) may be absent.
        ``EvalRunError`` names what is missing or wrong."""
        if not isinstance(data, Mapping):
            raise EvalRunError("an eval run must be a JSON object")
        try:
            return cls(
                id=data["id"],
                slug=data["slug"],
                candidate=data["candidate"],
                baseline=data.get("baseline"),
                kind=data["kind"],
                actor=data["actor"],
                started_at=data["started_at"],
                finished_at=data["finished_at"],
                suite_name=data["suite_name"],
                suite_sha256=data["suite_sha256"],
                judges=data["judges"],
                passed=data["passed"],
                summary=data["summary"],
                detail=data.get("detail", {}),
            )
        except KeyError as exc:
            raise EvalRunError(f"an eval run needs {exc.args[0]!r}") from None

    @property
    def order(self) -> tuple[float, str]:
        """Listings go from the greatest to the least: newest first, ties by id."""
        return (self.finished_at, self.id)


def _text(name: str, value: object, limit: int, *, empty: bool = True) -> None:
    # No NUL: PostgreSQL text cannot hold it.
    if (
        not isinstance(value, str)
        or len(value) > limit
        or (not empty and not value)
        or "\x00" in value
    ):
        size = f"1 to {limit}" if not empty else f"at most {limit}"
        raise EvalRunError(f"eval run {name} must be a text of {size} characters without NUL")


def _version(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < 2**31:
        raise EvalRunError(f"eval run {name} must be a version number (1 or more)")


def _instant(name: str, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise EvalRunError(f"eval run {name} must be a finite number of seconds")


# -- what the stores keep -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodedRun:
    """A run as every store keeps it: ``head`` (the run without its detail) and ``detail``,
    each orjson's bytes."""

    run: EvalRun
    head: bytes
    detail: bytes


def encode_run(run: EvalRun, *, max_detail_bytes: int) -> EncodedRun:
    """The run's bytes, or ``EvalRunTooLarge`` / ``EvalRunError`` (not JSON) naming why."""
    summary = _json(run, "summary", run.summary)
    if len(summary) > MAX_SUMMARY_BYTES:
        raise EvalRunTooLarge(
            f"eval run {run.id}: the summary is {len(summary):,} bytes encoded, over the "
            f"limit of {MAX_SUMMARY_BYTES:,}: per-case results belong in the detail"
        )
    detail = _json(run, "detail", run.detail)
    if len(detail) > max_detail_bytes:
        raise EvalRunTooLarge(
            f"eval run {run.id}: the detail is {len(detail):,} bytes encoded, over the "
            f"store's limit of {max_detail_bytes:,}: run fewer cases or samples, or raise "
            "the limit"
        )
    return EncodedRun(run, _json(run, "run", run.head_dict()), detail)


def decode_run(head: bytes | str, detail: bytes | str | None = None) -> EvalRun:
    """A run from a store's bytes; without ``detail``, its detail is empty (a listing)."""
    data = orjson.loads(head)
    data["detail"] = {} if detail is None else orjson.loads(detail)
    return EvalRun.from_dict(data)


def _json(run: EvalRun, what: str, value: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(value if isinstance(value, dict) else dict(value))
    except orjson.JSONEncodeError as exc:
        raise EvalRunError(f"eval run {run.id}: the {what} is not JSON: {exc}") from None


def check_limit(limit: int) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise EvalRunError(f"a listing's limit must be 1 or more, not {limit!r}")


def check_store_options(keep_runs: int, max_detail_bytes: int) -> None:
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be 1 or more, not {keep_runs}")
    if max_detail_bytes < 2:  # "{}"
        raise ValueError(f"max_detail_bytes must be 2 or more, not {max_detail_bytes}")


#: What ``list`` returns (named here: inside the classes ``list`` is the method).
RunList = list[EvalRun]


class EvalRunStore(Protocol):
    """Where the backend keeps eval runs (see the module's docstring).

    Retention: the newest ``keep_runs`` runs of each slug (default 500, by ``finished_at``
    then ``id``) are kept; the ``add`` that passes the limit deletes the older ones, so a
    run added with a ``finished_at`` older than all of those kept is deleted at once.
    Every method raises ``EvalRunsUnavailable`` when the store cannot be used."""

    async def add(self, run: EvalRun) -> None:
        """Store ``run``. Idempotent on ``run.id``: a run already stored under that id
        stays as it was (so a caller may send an add again whose answer was lost).
        ``EvalRunTooLarge`` / ``EvalRunError`` before anything is written."""
        ...

    async def get(self, run_id: str) -> EvalRun | None:
        """The run with its detail, or None (never stored, or deleted by retention)."""
        ...

    async def list(self, slug: str, *, candidate: int | None = None, limit: int = 50) -> RunList:
        """``slug``'s runs, newest first (``finished_at``, then ``id``), at most ``limit``;
        only those whose ``candidate`` is the one given, when given. Each run comes with
        its summary but *without* its detail (an empty mapping), so a listing stays small:
        ``get`` has the detail."""
        ...

    async def close(self) -> None:
        """Idempotent. A closed store raises ``EvalRunsUnavailable``."""
        ...
