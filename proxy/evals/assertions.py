"""What an eval case asserts about one answer, and the check of one assertion on it.

Pure: an answer is read from a recorded chat completion (``answer_from_chat_completion``),
and ``check`` says whether it passes and, when not, why in a few words. A judge's rubric is
not checked here: its verdict is ``None`` and the runner has a judge score it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import referencing
import referencing.exceptions
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

#: How much of an answer a detail quotes around what it found.
_EXCERPT = 40


@dataclass(frozen=True, slots=True)
class Contains:
    """The answer's text contains ``value``."""

    kind: ClassVar[str] = "contains"
    value: str
    case_sensitive: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "value": self.value, "case_sensitive": self.case_sensitive}


@dataclass(frozen=True, slots=True)
class NotContains:
    """The answer's text does not contain ``value``."""

    kind: ClassVar[str] = "not_contains"
    value: str
    case_sensitive: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "value": self.value, "case_sensitive": self.case_sensitive}


@dataclass(frozen=True, slots=True)
class Regex:
    """``pattern`` matches somewhere in the answer's text (``re.search``)."""

    kind: ClassVar[str] = "regex"
    pattern: re.Pattern[str]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "pattern": self.pattern.pattern}


@dataclass(frozen=True, slots=True)
class JsonSchema:
    """The answer's whole text is JSON valid against ``schema`` (Draft 2020-12)."""

    kind: ClassVar[str] = "json_schema"
    schema: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "schema": copy_json(self.schema)}


@dataclass(frozen=True, slots=True)
class FinishReason:
    """The choice finished for one of ``values`` (``stop``, ``length``, ``tool_calls``...)."""

    kind: ClassVar[str] = "finish_reason"
    values: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "value": list(self.values)}


@dataclass(frozen=True, slots=True)
class ToolCalled:
    """The answer calls the tool ``name``; with ``arguments``, one such call's arguments are
    a JSON object holding each of them with an equal value (others may be there too)."""

    kind: ClassVar[str] = "tool_called"
    name: str
    arguments: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"type": self.kind, "name": self.name}
        if self.arguments is not None:
            found["arguments"] = copy_json(self.arguments)
        return found


@dataclass(frozen=True, slots=True)
class Length:
    """The answer's text is within these bounds (each optional, inclusive): characters are
    Unicode code points, words are runs of non-whitespace."""

    kind: ClassVar[str] = "length"
    min_chars: int | None = None
    max_chars: int | None = None
    min_words: int | None = None
    max_words: int | None = None

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"type": self.kind}
        for name in ("min_chars", "max_chars", "min_words", "max_words"):
            value = getattr(self, name)
            if value is not None:
                found[name] = value
        return found


@dataclass(frozen=True, slots=True)
class Judge:
    """A judge scores the answer against ``rubric`` from 0 to 1; it passes at ``threshold``
    or above. ``judge`` names the judge prompt (None: the runner's default judge)."""

    kind: ClassVar[str] = "judge"
    rubric: str
    threshold: float
    judge: str | None = None

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"type": self.kind, "rubric": self.rubric}
        found["threshold"] = self.threshold
        if self.judge is not None:
            found["judge"] = self.judge
        return found


@dataclass(frozen=True, slots=True)
class Label:
    """For a judge's own suite: the answer is a judge's score (``read_score``), and a person
    labelled the judged answer ``pass`` or ``fail``. It passes when the judge agrees: its
    score is at least ``threshold`` exactly when the label is ``pass``. A judge's pass rate
    on its suite is its agreement with the labels."""

    kind: ClassVar[str] = "label"
    expected: str
    threshold: float = 0.5

    @property
    def expects_pass(self) -> bool:
        return self.expected == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "expected": self.expected, "threshold": self.threshold}


Assertion: TypeAlias = (
    Contains | NotContains | Regex | JsonSchema | FinishReason | ToolCalled | Length | Judge | Label
)
#: Every kind, by the name a suite file gives it.
KINDS: Mapping[str, type[Assertion]] = {
    kind.kind: kind
    for kind in (
        Contains,
        NotContains,
        Regex,
        JsonSchema,
        FinishReason,
        ToolCalled,
        Length,
        Judge,
        Label,
    )
}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call of an answer; ``arguments`` is the JSON text the API returned."""

    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class EvalAnswer:
    """What the assertions look at in one answer. ``error`` is set when there is no answer
    to look at (a non-2xx status or an error body); ``text`` is then empty."""

    status: int
    text: str
    finish_reason: str | None
    tool_calls: tuple[ToolCall, ...]
    error: str | None
    #: The model declined: a ``refusal`` instead of content, or a content filter's stop.
    refused: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """``passed`` is None for a judge's assertion (scored later) and only for it."""

    passed: bool | None
    detail: str


def answer_from_chat_completion(status: int, body: Any) -> EvalAnswer:
    """The first choice of an OpenAI chat completion body. A refusal (structured outputs)
    is the text when there is no content: it is what the caller would show."""
    error = _error_of(status, body)
    if error is not None:
        return EvalAnswer(status, "", None, (), error)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return EvalAnswer(status, "", None, (), "the answer has no choices")
    choice = choices[0]
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    finish = choice.get("finish_reason")
    content = _content_text(message.get("content"))
    refusal = _content_text(message.get("refusal"))
    return EvalAnswer(
        status=status,
        text=content or refusal,
        finish_reason=finish if isinstance(finish, str) else None,
        tool_calls=_tool_calls(message),
        error=None,
        refused=bool(refusal and not content) or finish == "content_filter",
    )


def _error_of(status: int, body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    if error is not None or not 200 <= status < 300:
        if isinstance(error, dict):
            message = error.get("message")
            code = error.get("code") or error.get("type")
            text = message if isinstance(message, str) and message else json.dumps(error)
            return f"HTTP {status}: {text}" + (f" ({code})" if isinstance(code, str) else "")
        if isinstance(error, str) and error:
            return f"HTTP {status}: {error}"
        return f"HTTP {status}"
    if not isinstance(body, dict):
        return "the answer is not a JSON object"
    return None


def _content_text(content: Any) -> str:
    """Content is text, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(t for t in texts if isinstance(t, str))
    return ""


def _tool_calls(message: Mapping[str, Any]) -> tuple[ToolCall, ...]:
    calls: list[ToolCall] = []
    raw = message.get("tool_calls")
    functions = (
        [c.get("function") for c in raw if isinstance(c, dict)] if isinstance(raw, list) else []
    )
    legacy = message.get("function_call")  # the API's form before tool_calls
    for function in [*functions, legacy]:
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            arguments = function.get("arguments")
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            calls.append(ToolCall(function["name"], text))
    return tuple(calls)


def check(assertion: Assertion, answer: EvalAnswer) -> Verdict:
    """Whether ``answer`` passes ``assertion``, and why not in a few words."""
    if isinstance(assertion, Judge):
        return Verdict(None, "scored by a judge")
    if answer.error is not None:
        return Verdict(False, f"no answer: {answer.error}")
    detail: str | None
    match assertion:
        case Contains(value, case_sensitive):
            at = _find(answer.text, value, case_sensitive)
            detail = None if at >= 0 else f"expected {value!r} in the answer"
        case NotContains(value, case_sensitive):
            at = _find(answer.text, value, case_sensitive)
            detail = None if at < 0 else f"{value!r} found: {_excerpt(answer.text, at, len(value))}"
        case Regex(pattern):
            detail = None if pattern.search(answer.text) else f"no match for /{pattern.pattern}/"
        case JsonSchema(schema):
            detail = _schema_detail(schema, answer.text)
        case FinishReason(values):
            detail = None if answer.finish_reason in values else _finish_detail(answer, values)
        case ToolCalled(name, arguments):
            detail = _tool_detail(name, arguments, answer.tool_calls)
        case Length():
            detail = _length_detail(assertion, answer.text)
        case Label():
            detail = _label_detail(assertion, answer.text)
    return Verdict(detail is None, detail or "")


@dataclass(frozen=True, slots=True)
class Score:
    """A judge's answer: a score from 0 to 1 and its reason."""

    score: float
    reason: str


#: What a judge must answer, as the judge prompts are told (docs/evals.md).
SCORE_SHAPE = '{"score": <a number from 0 to 1>, "reason": "<one sentence>"}'


def read_score(text: str) -> Score | str:
    """The judge's score in ``text``, or why there is none. The answer is the JSON object
    ``SCORE_SHAPE``; a Markdown code fence or words around it are tolerated (the first
    ``{`` to the last ``}``), because judges are prompted, not constrained: a judge on a
    provider without structured outputs must work too."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return f"the judge answered no JSON object: {_show(text[:80])}"
    try:
        found = json.loads(text[start : end + 1])
    except ValueError:
        return f"the judge's answer is not JSON: {_show(text[start : start + 80])}"
    score = found.get("score") if isinstance(found, dict) else None
    if not isinstance(score, int | float) or isinstance(score, bool) or not 0 <= score <= 1:
        return f"the judge gave no score from 0 to 1 (score: {_show(score)})"
    reason = found.get("reason")
    return Score(float(score), reason if isinstance(reason, str) else "")


def _label_detail(label: Label, text: str) -> str | None:
    score = read_score(text)
    if isinstance(score, str):
        return score
    says = "pass" if score.score >= label.threshold else "fail"
    if says == label.expected:
        return None
    return f"score {score.score:g} says {says}, labelled {label.expected}"


def _find(text: str, value: str, case_sensitive: bool) -> int:
    if case_sensitive:
        return text.find(value)
    return text.casefold().find(value.casefold())


def _excerpt(text: str, at: int, size: int) -> str:
    start, end = max(0, at - _EXCERPT), min(len(text), at + size + _EXCERPT)
    return ("…" if start else "") + repr(text[start:end])[1:-1] + ("…" if end < len(text) else "")


def _schema_detail(schema: Mapping[str, Any], text: str) -> str | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"answer is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    # An empty registry: a schema's $ref is never fetched from the network.
    validator = Draft202012Validator(schema, registry=referencing.Registry())
    try:
        error = best_match(validator.iter_errors(value))
    except referencing.exceptions.Unresolvable as exc:
        return f"the schema cannot be used: {exc}"
    if error is None:
        return None
    return f"{error.json_path}: {error.message}"


def _finish_detail(answer: EvalAnswer, values: tuple[str, ...]) -> str:
    expected = " or ".join(repr(v) for v in values)
    if answer.finish_reason is None:
        return f"no finish_reason, expected {expected}"
    return f"finish_reason {answer.finish_reason!r}, expected {expected}"


def _tool_detail(
    name: str, arguments: Mapping[str, Any] | None, calls: tuple[ToolCall, ...]
) -> str | None:
    mine = [call for call in calls if call.name == name]
    if not mine:
        called = ", ".join(sorted({call.name for call in calls})) or "none"
        return f"tool {name!r} not called (called: {called})"
    if arguments is None:
        return None
    misses = []
    for call in mine:
        miss = _arguments_miss(arguments, call.arguments)
        if miss is None:
            return None
        misses.append(miss)
    tail = f" (and {len(mine) - 1} other calls of it)" if len(mine) > 1 else ""
    return f"{name}: {misses[0]}{tail}"


def _arguments_miss(expected: Mapping[str, Any], text: str) -> str | None:
    try:
        given = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"arguments are not JSON ({exc.msg}): {text[:_EXCERPT]!r}"
    if not isinstance(given, dict):
        return f"arguments are not a JSON object: {text[:_EXCERPT]!r}"
    for key, want in expected.items():
        where = f"$.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f"$[{key!r}]"
        if key not in given:
            return f"{where} missing"
        if not same_json(given[key], want):
            return f"{where}: {_show(given[key])} is not {_show(want)}"
    return None


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: a number equals a number of the same value (1 and 1.0), but
    never a boolean (as Python's ``True == 1`` would)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def _show(value: Any) -> str:
    shown = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 2 * _EXCERPT else shown[: 2 * _EXCERPT] + "…"


def _length_detail(bounds: Length, text: str) -> str | None:
    chars, words = len(text), len(text.split())
    for count, unit, low, high in (
        (chars, "characters", bounds.min_chars, bounds.max_chars),
        (words, "words", bounds.min_words, bounds.max_words),
    ):
        if low is not None and count < low:
            return f"{count} {unit}, at least {low}"
        if high is not None and count > high:
            return f"{count} {unit}, at most {high}"
    return None


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON value (a tuple becomes a list), so a caller's change to what
    ``to_dict`` gave is not ours."""
    if isinstance(value, Mapping):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [copy_json(v) for v in value]
    return value
