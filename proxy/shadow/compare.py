"""How far a shadow answer is from its primary, and whether a candidate diverges more than
stable diverges from itself.

Two runs of one prompt never answer with the same text, so a candidate's divergence from
stable means nothing on its own. As in Twitter's Diffy, a share of the shadowed requests
runs stable a second time (``ShadowKind.STABLE``): those pairs measure the noise. A
measure fails only when candidate pairs diverge more than noise pairs, by a one-sided
Mann-Whitney U test (as Netflix Kayenta does) and by a margin that matters.

Every measure lies in [0, 1] (0 = same), is computed identically for both kinds of pair,
and is counted in ``DIVERGENCE_BINS`` equal bins so replicas can pool counts in Redis.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from rapidfuzz import fuzz

from proxy.shadow.models import ArmResult, ToolCall
from proxy.stats import mann_whitney_greater

MEASURES = (
    "text_distance",
    "length_drift",
    "json_invalid",
    "tool_calls_differ",
    "finish_reason_changed",
)
DIVERGENCE_BINS = 50
#: Characters of each answer that text_distance compares. The Indel distance costs about
#: len(a) * len(b) / 64 word operations and holds the GIL, so it runs on the event loop
#: whatever thread it is in: 4k characters keep a pair under a millisecond. Length drift
#: still sees the whole answers.
TEXT_COMPARED = 4096
_JSON_FORMATS = frozenset({"json_object", "json_schema"})

Result = Literal["pass", "fail", "inconclusive"]


def bin_of(value: float) -> int:
    """The bin nearest to ``value`` on the grid ``i / 49``: 0 and 1 (the only values of the
    yes/no measures, and the commonest of the others) land exactly on a bin; values outside
    [0, 1] are clamped."""
    if value != value:  # NaN
        raise ValueError("a divergence cannot be NaN")
    return min(DIVERGENCE_BINS - 1, max(0, round(value * (DIVERGENCE_BINS - 1))))


def bin_value(index: int) -> float:
    """The value a bin stands for: ``i / 49``, within 1/98 (about 0.01) of every value the
    bin holds, well inside any useful margin."""
    return index / (DIVERGENCE_BINS - 1)


@dataclass(frozen=True, slots=True)
class Divergence:
    """One pair's divergence, per measure; None = not applicable to this pair."""

    text_distance: float | None
    length_drift: float | None
    json_invalid: float | None
    tool_calls_differ: float | None
    finish_reason_changed: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in MEASURES}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Divergence:
        """A stored ``to_dict``; missing or non-numeric measures become not applicable."""
        values: dict[str, float | None] = {}
        for name in MEASURES:
            value = data.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
                values[name] = float(value)
            else:
                values[name] = None
        return cls(**values)

    def get(self, measure: str) -> float | None:
        value: float | None = getattr(self, measure)
        return value


def _parses_as_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _arguments(raw: str) -> Any:
    # Parsed, so key order and whitespace do not count as a difference; dict equality is
    # order-insensitive. Unparsable arguments compare as they are.
    try:
        return ("json", orjson.loads(raw))
    except orjson.JSONDecodeError:
        return ("raw", raw)


def _same_calls(a: list[ToolCall], b: list[ToolCall]) -> bool:
    return len(a) == len(b) and all(
        x.name == y.name and _arguments(x.arguments) == _arguments(y.arguments)
        for x, y in zip(a, b, strict=True)
    )


def divergence(primary: ArmResult, shadow: ArmResult, expect_json: bool) -> Divergence:
    """The divergence of ``shadow`` from ``primary``.

    - text_distance: 1 - rapidfuzz ``fuzz.ratio`` / 100 (normalised Indel distance on
      characters). Plain ``ratio`` because it sees every change: ``partial_ratio`` scores
      a truncated answer as identical, ``token_sort``/``token_set`` ignore word order and
      repeated words, and those are regressions too. It is also bit-parallel and fast on
      answers of a few KB.
    - length_drift: 1 - shorter/longer, in characters (0 when both are empty).
    - json_invalid: only when the request asked for JSON: 1.0 when the *shadow's* text does
      not parse. The primary is left out on purpose: it is a stable run in both kinds of
      pair, so it tells nothing about the candidate and only adds variance; this way the
      noise pairs measure stable's own failure rate and candidate pairs the candidate's.
      Not applicable when the shadow answered with tool calls only or its text was cut.
    - tool_calls_differ: when either arm called tools: 1.0 unless both called the same
      tools in the same order with equal arguments (compared as parsed JSON).
    - finish_reason_changed: 1.0 when the finish reasons differ.
    """
    longer = max(len(primary.text), len(shadow.text))
    length_drift = 0.0 if longer == 0 else 1.0 - min(len(primary.text), len(shadow.text)) / longer
    json_invalid: float | None = None
    if expect_json and not shadow.truncated and (shadow.text or not shadow.tool_calls):
        json_invalid = 0.0 if _parses_as_json(shadow.text) else 1.0
    tool_calls_differ: float | None = None
    if primary.tool_calls or shadow.tool_calls:
        tool_calls_differ = 0.0 if _same_calls(primary.tool_calls, shadow.tool_calls) else 1.0
    return Divergence(
        text_distance=1.0
        - fuzz.ratio(primary.text[:TEXT_COMPARED], shadow.text[:TEXT_COMPARED]) / 100.0,
        length_drift=length_drift,
        json_invalid=json_invalid,
        tool_calls_differ=tool_calls_differ,
        finish_reason_changed=float(primary.finish_reason != shadow.finish_reason),
    )


def expects_json(payload: Mapping[str, Any]) -> bool:
    """The request body asked for JSON output: chat ``response_format.type`` or Responses
    ``text.format.type`` is ``json_object`` or ``json_schema``."""
    chat = payload.get("response_format")
    if isinstance(chat, Mapping) and chat.get("type") in _JSON_FORMATS:
        return True
    text = payload.get("text")
    if isinstance(text, Mapping):
        fmt = text.get("format")
        return isinstance(fmt, Mapping) and fmt.get("type") in _JSON_FORMATS
    return False


def _zeros() -> dict[str, list[int]]:
    return {name: [0] * DIVERGENCE_BINS for name in MEASURES}


@dataclass(slots=True)
class DivergenceCounts:
    """Per measure, how many pairs fell in each of the ``DIVERGENCE_BINS`` bins."""

    bins: dict[str, list[int]] = field(default_factory=_zeros)

    def add(self, d: Divergence) -> None:
        for name in MEASURES:
            value = d.get(name)
            if value is not None:
                self.bins[name][bin_of(value)] += 1

    def merge(self, other: DivergenceCounts) -> None:
        """Add ``other``'s counts to these (in place)."""
        for name in MEASURES:
            mine = self.bins[name]
            for i, count in enumerate(other.bins[name]):
                mine[i] += count

    def total(self, measure: str) -> int:
        return sum(self.bins[measure])

    def mean(self, measure: str) -> float | None:
        counts = self.bins[measure]
        n = sum(counts)
        if n == 0:
            return None
        return sum(count * bin_value(i) for i, count in enumerate(counts)) / n

    def to_fields(self) -> dict[str, int]:
        """Flat ``{"measure:bin": count}``, non-zero bins only (a Redis hash stays small
        and ``HINCRBY`` on the same keys merges replicas)."""
        return {
            f"{name}:{i}": count
            for name in MEASURES
            for i, count in enumerate(self.bins[name])
            if count
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> DivergenceCounts:
        """Inverse of ``to_fields``. Keys and values may be ``bytes`` (a Redis reply).
        Fields of unknown measures or bins are skipped: a newer replica may count more."""
        counts = cls()
        for key, value in fields.items():
            text = key.decode() if isinstance(key, bytes) else str(key)
            name, _, index = text.rpartition(":")
            if name not in counts.bins or not index.isdigit():
                continue
            i = int(index)
            if i < DIVERGENCE_BINS:
                counts.bins[name][i] += int(value)
        return counts

    @classmethod
    def of(cls, divergences: Iterable[Divergence]) -> DivergenceCounts:
        counts = cls()
        for d in divergences:
            counts.add(d)
        return counts


@dataclass(frozen=True, slots=True)
class MeasureVerdict:
    measure: str
    result: Result
    noise_mean: float | None
    candidate_mean: float | None
    noise_n: int
    candidate_n: int
    #: One-sided Mann-Whitney p (candidate diverges more); None when a side is empty.
    p_value: float | None
    #: P(candidate > noise) + 0.5 P(tie); 0.5 = no difference; None when a side is empty.
    effect: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "result": self.result,
            "noise_mean": self.noise_mean,
            "candidate_mean": self.candidate_mean,
            "noise_n": self.noise_n,
            "candidate_n": self.candidate_n,
            "p_value": self.p_value,
            "effect": self.effect,
        }


@dataclass(frozen=True, slots=True)
class ShadowVerdict:
    result: Result
    measures: list[MeasureVerdict]

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.result, "measures": [m.to_dict() for m in self.measures]}


def shadow_verdict(
    noise: DivergenceCounts,
    candidate: DivergenceCounts,
    *,
    alpha: float = 0.01,
    margin: float = 0.05,
    min_pairs: int = 30,
) -> ShadowVerdict:
    """Per measure: inconclusive below ``min_pairs`` values on either side; fail when the
    candidate pairs diverge more than the noise pairs with p < ``alpha`` *and* their mean
    is more than ``margin`` above the noise mean (with thousands of pairs a trivial shift
    is significant; the margin keeps it from aborting a rollout); else pass.

    Overall: inconclusive when text_distance is (it applies to every pair, so no other
    measure can have enough pairs then); else fail when any measure fails; else pass.
    Measures that never apply (no JSON asked, no tools) stay inconclusive and do not
    block a pass.
    """
    verdicts: list[MeasureVerdict] = []
    for name in MEASURES:
        noise_n, candidate_n = noise.total(name), candidate.total(name)
        noise_mean, candidate_mean = noise.mean(name), candidate.mean(name)
        p_value: float | None = None
        effect: float | None = None
        if noise_n and candidate_n:
            test = mann_whitney_greater(noise.bins[name], candidate.bins[name])
            p_value, effect = test.p_value, test.effect
        result: Result
        if noise_n < min_pairs or candidate_n < min_pairs:
            result = "inconclusive"
        elif (
            p_value is not None
            and p_value < alpha
            and noise_mean is not None
            and candidate_mean is not None
            and candidate_mean - noise_mean > margin
        ):
            result = "fail"
        else:
            result = "pass"
        verdicts.append(
            MeasureVerdict(
                measure=name,
                result=result,
                noise_mean=noise_mean,
                candidate_mean=candidate_mean,
                noise_n=noise_n,
                candidate_n=candidate_n,
                p_value=p_value,
                effect=effect,
            )
        )
    overall: Result
    if verdicts[0].result == "inconclusive":
        overall = "inconclusive"
    elif any(v.result == "fail" for v in verdicts):
        overall = "fail"
    else:
        overall = "pass"
    return ShadowVerdict(result=overall, measures=verdicts)
