"""One assertion of a suite file, from its decoded JSON (or YAML) to an ``Assertion``.

Two forms: in full, ``{type: KIND, ...fields}``; or shorthand, the kind as the key of its
main field (``contains: TEXT`` is ``{type: contains, value: TEXT}``), other fields beside it.
Every problem is reported, each with the place in the document it is about, so a file's
line can be found for it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from proxy.evals.assertions import (
    KINDS,
    Assertion,
    Contains,
    FinishReason,
    JsonSchema,
    Judge,
    Label,
    Length,
    NotContains,
    Regex,
    ToolCalled,
    copy_json,
)
from proxy.models import SLUG_PATTERN
from proxy.registry.models import finite_number, unstorable_value

#: (place in the document, e.g. ``cases[0].assert[2].pattern``; the message).
Problem = tuple[str, str]
AddProblem = Callable[[str, str], None]

#: The kinds with a shorthand, and the field their value is. A judge and length bounds
#: have no single main field, so they are written in full.
SHORTHAND: Mapping[str, str] = {
    "contains": "value",
    "not_contains": "value",
    "regex": "pattern",
    "json_schema": "schema",
    "finish_reason": "value",
    "tool_called": "name",
    "label": "expected",
}
#: Each kind's fields (besides ``type``).
FIELDS: Mapping[str, frozenset[str]] = {
    "contains": frozenset({"value", "case_sensitive"}),
    "not_contains": frozenset({"value", "case_sensitive"}),
    "regex": frozenset({"pattern"}),
    "json_schema": frozenset({"schema"}),
    "finish_reason": frozenset({"value"}),
    "tool_called": frozenset({"name", "arguments"}),
    "length": frozenset({"min_chars", "max_chars", "min_words", "max_words"}),
    "judge": frozenset({"rubric", "threshold", "judge"}),
    "label": frozenset({"expected", "threshold"}),
}
#: Judges are registry prompts under this prefix (docs/design-gates.md).
JUDGE_PREFIX = "judge."
_EXAMPLE = "`- contains: TEXT` or `- {type: contains, value: TEXT}`"
#: The kinds without a shorthand, as they are written.
_FULL: Mapping[str, str] = {
    "judge": "{type: judge, rubric: TEXT, threshold: 0.7} (and judge: judge.NAME)",
    "length": "{type: length, max_words: 150} (min_chars, max_chars, min_words, max_words)",
}


def parse_assertion(raw: Any, path: str, label: str, add: AddProblem) -> Assertion | None:
    """``raw`` at ``path``, named ``label`` in messages (``case 'x' assert[2]``); None when it
    has problems, each given to ``add``."""
    if not isinstance(raw, dict):
        add(path, f"{label}: an assertion is a mapping, e.g. {_EXAMPLE}")
        return None
    form = _form(raw, path, label, add)
    if form is None:
        return None
    kind, fields, places = form
    label = f"{label} ({kind})"

    def problem(field: str, message: str) -> None:
        add(f"{path}.{places.get(field, field)}", f"{label}: {message}")

    unknown = sorted(str(k) for k in fields if k not in FIELDS[kind])
    for name in unknown:
        problem(name, f"unknown field {name!r} (a {kind} has: {', '.join(sorted(FIELDS[kind]))})")
    counted = Counted(problem)
    built = _BUILDERS[kind](fields, counted)
    return None if unknown or counted.count else built


class Counted:
    """Passes problems on and counts them: a builder's result is dropped if it had any."""

    def __init__(self, add: AddProblem):
        self._add = add
        self.count = 0

    def __call__(self, field: str, message: str) -> None:
        self.count += 1
        self._add(field, message)


def _form(
    raw: dict[Any, Any], path: str, label: str, add: AddProblem
) -> tuple[str, dict[str, Any], dict[str, str]] | None:
    """(kind, fields, field -> the key it was written under) of either form."""
    if "type" in raw:
        kind = raw["type"]
        if not isinstance(kind, str) or kind not in KINDS:
            add(f"{path}.type", f"{label}: {_unknown_kind(kind)}")
            return None
        return kind, {str(k): v for k, v in raw.items() if k != "type"}, {}
    given = [key for key in raw if key in KINDS]
    if len(given) > 1:
        kinds = " and ".join(str(k) for k in given)
        add(path, f"{label}: one assertion per item, this one has {kinds}")
        return None
    if not given:
        keys = ", ".join(repr(str(k)) for k in raw)
        hint = next((_unknown_kind(k) for k in raw if _close_kind(k)), None)
        what = hint or (f"no assertion kind among {keys}" if keys else "an empty assertion")
        add(path, f"{label}: {what}; write {_EXAMPLE}")
        return None
    kind = given[0]
    if kind not in SHORTHAND:
        add(path, f"{label}: write a {kind} assertion in full, {_FULL[kind]}")
        return None
    main = SHORTHAND[kind]
    fields = {str(k): v for k, v in raw.items() if k != kind}
    if main in fields:
        add(f"{path}.{main}", f"{label}: {main!r} is given twice, as {kind}: and as {main}:")
        return None
    fields[main] = raw[kind]
    return kind, fields, {main: kind}


def _close_kind(given: Any) -> str | None:
    if not isinstance(given, str):
        return None
    spelled = given.replace("-", "_").replace(" ", "_").lower()
    if spelled in KINDS:
        return spelled
    close = difflib.get_close_matches(spelled, list(KINDS), n=1, cutoff=0.75)
    return close[0] if close else None


def _unknown_kind(given: Any) -> str:
    message = f"unknown assertion type {given!r}"
    close = _close_kind(given)
    if close is not None:
        return f"{message} (did you mean {close}?)"
    return f"{message} (one of {', '.join(KINDS)})"


Builder = Callable[[dict[str, Any], AddProblem], Assertion | None]


def _contains(fields: dict[str, Any], problem: AddProblem) -> Assertion | None:
    value = _text(fields, "value", problem)
    sensitive = _flag(fields, "case_sensitive", True, problem)
    return None if value is None else Contains(value, sensitive)


def _not_contains(fields: dict[str, Any], problem: AddProblem) -> Assertion | None:
    value = _text(fields, "value", problem)
    sensitive = _flag(fields, "case_sensitive", True, problem)
    return None if value is None else NotContains(value, sensitive)


def _regex(fields: dict[str, Any], problem: AddProblem) -> Assertion | None:
    pattern = _text(fields, "pattern", problem)
    if pattern is None:
        return None
    try:
        return Regex(re.compile(pattern))
    except re.error as exc:
        problem("pattern", f"bad regex {pattern!r}: {exc}")
        return None


def _json_schema(fields: dict[str, Any], problem: AddProblem) -> Assertion | None:
    schema = fields.get("schema")
    if not isinstance(schema, dict) or not schema:
        problem("schema", "schema must be a JSON Schema object, e.g. {type: object, ...}")
        return None
    if (why := json_problem(schema)) is not None:
        problem("schema", f"schema{why}")
        return None
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = exc.json_path.removeprefix("$")
        problem(
            "schema", f"not a valid JSON Schema (Draft 2020-12) at schema{where}: {exc.message}"
        )
        return None
    for where, ref in _remote_refs(schema, ""):
        problem(
            "schema",
            f"schema{where}: $ref {ref!r} is outside the schema, and schemas are never fetched: "
            "put it under $defs and refer to it as #/$defs/NAME",
        )
    return JsonSchema(copy_json(schema))


def _remote_refs(value: Any, where: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            found.append((where, ref))
        for key, item in value.items():
            found.extend(_remote_refs(item, f"{where}.{key}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_remote_refs(item, f"{where}[{index}]"))
    return found


def _finish_reason(fields: dict[str, Any], problem: AddProblem) -> Assertion | None:
    value = fields.get("value")
    values = [value] if isinstance(value, str) else value
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, str) and v for v in values)
    ):
        problem("value", "value must be a finish reason (stop, length, tool_calls...) or a list")
        return None
    return FinishReason(tuple(dict.fromkeys(values)))


def _tool_called(fields: dict[str, Any], problem: AddProblem) -> Assertion | None:
    name = _text(fields, "name", problem)
    arguments = fields.get("arguments")
    if arguments is not None:
        if not isinstance(arguments, dict):
            message = "arguments must be a mapping: argument -> the value it must have"
            problem("arguments", message)
            return None
        if (why := json_problem(arguments)) is not None:
            problem("arguments", f"arguments{why}")
            return None
        arguments = copy_json(arguments)
    return None if name is None else ToolCalled(name, arguments)


def _length(fields: dict[str, Any], problem: AddProblem) -> Assertion | None:
    bounds: dict[str, int] = {}
    for name in sorted(FIELDS["length"]):
        value = fields.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problem(name, f"{name} must be a whole number, 0 or more")
        else:
            bounds[name] = value
    if not any(fields.get(name) is not None for name in FIELDS["length"]):
        problem("length", "give at least one of min_chars, max_chars, min_words, max_words")
    for unit in ("chars", "words"):
        low, high = bounds.get(f"min_{unit}"), bounds.get(f"max_{unit}")
        if low is not None and high is not None and low > high:
            problem(f"min_{unit}", f"min_{unit} {low} is above max_{unit} {high}")
    return Length(**bounds)


def _judge(fields: dict[str, Any], problem: AddProblem) -> Assertion | None:
    rubric = _text(fields, "rubric", problem)
    given: Any = fields.get("threshold")
    threshold: float | None = None
    if finite_number(given) and 0 <= given <= 1:
        threshold = float(given)
    else:
        problem("threshold", "threshold must be a number from 0 to 1 (the lowest passing score)")
    judge = fields.get("judge")
    if judge is not None and (
        not isinstance(judge, str)
        or not SLUG_PATTERN.match(judge)
        or not judge.startswith(JUDGE_PREFIX)
        or judge == JUDGE_PREFIX
    ):
        problem("judge", f"judge must name a judge prompt, {JUDGE_PREFIX}NAME (got {judge!r})")
        judge = None
    if rubric is None or threshold is None:
        return None
    return Judge(rubric, threshold, judge)


def _label(fields: dict[str, Any], problem: AddProblem) -> Assertion | None:
    expected = fields.get("expected")
    if expected not in ("pass", "fail"):
        problem("expected", f"a label is pass or fail (got {expected!r})")
    given: Any = fields.get("threshold", 0.5)
    threshold: float | None = None
    if finite_number(given) and 0 <= given <= 1:
        threshold = float(given)
    else:
        problem("threshold", "threshold must be a number from 0 to 1 (the judge's passing score)")
    if expected not in ("pass", "fail") or threshold is None:
        return None
    return Label(str(expected), threshold)


_BUILDERS: Mapping[str, Builder] = {
    "contains": _contains,
    "not_contains": _not_contains,
    "regex": _regex,
    "json_schema": _json_schema,
    "finish_reason": _finish_reason,
    "tool_called": _tool_called,
    "length": _length,
    "judge": _judge,
    "label": _label,
}


def _text(fields: dict[str, Any], name: str, problem: AddProblem) -> str | None:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        got = "nothing" if value is None else repr(value)
        problem(name, f"{name} must be non-empty text (got {got}; quote numbers)")
        return None
    return value


def _flag(fields: dict[str, Any], name: str, default: bool, problem: AddProblem) -> bool:
    value = fields.get(name, default)
    if not isinstance(value, bool):
        problem(name, f"{name} must be true or false")
        return default
    return value


def json_problem(value: Any) -> str | None:
    """Why ``value`` is not a JSON value the proxy can send, as a suffix of the name of the
    place (``.a[0]: ...``); None when it is one."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    return f"{where}: keys must be text (got {key!r})"
                stack.append((inner, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((inner, f"{where}[{i}]") for i, inner in enumerate(item))
        elif not (item is None or isinstance(item, str | bool | int | float)):
            kind = type(item).__name__
            return f"{where}: {kind} is not a JSON value (quote it to make it text)"
    unstorable = unstorable_value(value, "")
    return None if unstorable is None else f"{unstorable[0]}: {unstorable[1]}"
