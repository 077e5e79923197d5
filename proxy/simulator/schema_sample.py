"""A deterministic JSON value that validates against a JSON schema.

Used for tool-call arguments and ``response_format`` / ``text.format`` JSON answers. It
covers what function and structured-output schemas use: ``type`` (one or a list),
``properties`` with ``required`` (every required property is filled; with no
``required``, the first few), ``additionalProperties: false`` (only declared
properties are written), ``enum``, ``const``, ``anyOf`` / ``oneOf`` (the first
alternative that is not ``null``), ``allOf`` (merged), local ``$ref`` (``#/$defs/...``,
``#/definitions/...``), ``items`` / ``prefixItems`` with ``minItems`` / ``maxItems`` /
``uniqueItems``, numeric bounds and ``multipleOf``, string ``minLength`` /
``maxLength`` and common ``format`` values. ``pattern`` is not honoured.

Values come from the request: an enum value or a number the user mentioned, a capitalised
name for a place-like property, the user's words for a query-like one, and, for JSON
answers, the words of the simulated answer (so the document changes with the prompt).
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

MAX_DEPTH: Final = 12
"""Deeper than this (a recursive ``$ref``), the smallest value of the type is written."""

OPTIONAL_LIMIT: Final = 4
"""Properties filled when a schema requires none: small but realistic."""

_NUMBER: Final = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_PROPER_NOUN: Final = re.compile(r"(?<=[^.!?\s]\s)[A-Z][\w'-]+")
_WORD: Final = re.compile(r"\w+")

_PLACE_NAMES: Final = frozenset(
    {"city", "location", "place", "country", "destination", "origin", "town", "region"}
)
_QUERY_NAMES: Final = frozenset(
    {"query", "q", "search", "question", "text", "prompt", "input", "message", "keywords"}
)
_QUERY_WORDS: Final = 8

_FORMATS: Final = {
    "date": "2024-06-01",
    "date-time": "2024-06-01T12:00:00Z",
    "time": "12:00:00",
    "email": "user@example.com",
    "idn-email": "user@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "duration": "P1D",
}

_TYPES: Final = ("object", "array", "string", "integer", "number", "boolean", "null")


class SchemaSampler:
    """One document's worth of sampling: ``root`` resolves ``$ref``, ``context`` is the
    user's text, ``words`` (optional) the answer words strings are cut from."""

    def __init__(self, root: Any, context: str = "", words: Sequence[str] = ()) -> None:
        self._root = root
        self._context = context
        self._lower_words = {w.lower() for w in _WORD.findall(context)}
        self._numbers = [float(n) for n in _NUMBER.findall(context)]
        nouns = _PROPER_NOUN.findall(context)
        self._noun = nouns[0] if nouns else None
        self._words = [w for w in words if w]
        self._cursor = 0

    def value(self, schema: Any, name: str, depth: int = 0, index: int = 0) -> Any:
        """A value for ``schema``; ``name`` is the property it fills (it shapes strings),
        ``index`` its position in an array (it keeps ``uniqueItems`` items apart)."""
        if not isinstance(schema, dict):
            return self._string({}, name, index)
        schema = self._resolve(schema, depth)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self._enum(enum, name, index)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                picked = next((o for o in options if not _is_null(o)), options[0])
                merged = {k: v for k, v in schema.items() if k != key}
                return self.value(_merge(merged, picked), name, depth + 1, index)
        kind = _kind(schema)
        if depth > MAX_DEPTH:
            return _smallest(kind)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, name, depth)
        if kind == "integer":
            return self._number(schema, integer=True, index=index)
        if kind == "number":
            return self._number(schema, integer=False, index=index)
        if kind == "boolean":
            return index % 2 == 0
        if kind == "null":
            return None
        return self._string(schema, name, index)

    def _resolve(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """Follow ``$ref`` (siblings override) and merge ``allOf``."""
        for _ in range(MAX_DEPTH):
            ref = schema.get("$ref")
            if not isinstance(ref, str):
                break
            target = _pointer(self._root, ref)
            schema = _merge(target, {k: v for k, v in schema.items() if k != "$ref"})
        parts = schema.get("allOf")
        if isinstance(parts, list) and depth <= MAX_DEPTH:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                if isinstance(part, dict):
                    merged = _merge(merged, self._resolve(part, depth + 1))
            schema = merged
        return schema

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        required = schema.get("required")
        names = [n for n in required if n in properties] if isinstance(required, list) else []
        names = list(dict.fromkeys(names)) or list(properties)[:OPTIONAL_LIMIT]
        return {name: self.value(properties[name], name, depth + 1) for name in names}

    def _array(self, schema: Mapping[str, Any], name: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        if isinstance(items, list):  # draft 4 tuple form
            prefix, items = items, schema.get("additionalItems")
        fixed = prefix if isinstance(prefix, list) else []
        low = _count(schema.get("minItems"))
        high = _limit(schema.get("maxItems"))
        count = max(low, len(fixed), 1 if not self._words else 2)
        if items is False:
            count = len(fixed)
        if high is not None:
            count = min(count, high)
        singular = name[:-1] if name.endswith("s") and len(name) > 3 else name
        out = [
            self.value(fixed[i] if i < len(fixed) else items, singular, depth + 1, i)
            for i in range(count)
        ]
        if schema.get("uniqueItems") is True:
            seen: dict[bytes, Any] = {}
            for item in out:
                seen.setdefault(orjson.dumps(item, option=orjson.OPT_SORT_KEYS), item)
            out = list(seen.values())
        return out

    def _enum(self, enum: list[Any], name: str, index: int) -> Any:
        mentioned = [v for v in enum if isinstance(v, str) and v.lower() in self._lower_words]
        if mentioned and index == 0:
            return mentioned[0]
        base = 0
        if self._words:  # a JSON answer: vary with the answer, as a model's choice would
            base = _hash_int(name, " ".join(self._words)) % len(enum)
        return enum[(base + index) % len(enum)]

    def _number(self, schema: Mapping[str, Any], *, integer: bool, index: int) -> int | float:
        low, high = _bounds(schema, integer)
        raw_step = schema.get("multipleOf")
        step: float | None = None
        if isinstance(raw_step, int | float) and not isinstance(raw_step, bool) and raw_step > 0:
            step = float(raw_step)
        mentioned = [
            n
            for n in (self._numbers if index == 0 else [])
            if (n.is_integer() or not integer) and _fits(n, low, high, step)
        ]
        value: float
        if mentioned:
            value = mentioned[0]
        else:
            value = (1.0 if integer else 1.5) + index
            if step is not None:
                value = step * (max(1, math.ceil((low if low is not None else 1.0) / step)) + index)
            if low is not None and value < low:
                value = low
            if high is not None and value > high:
                value = high
        if integer or (step is not None and step.is_integer()):
            return int(value)
        return value

    def _string(self, schema: Mapping[str, Any], name: str, index: int) -> str:
        fmt = schema.get("format")
        key = name.lower()
        if fmt in _FORMATS:
            text = _FORMATS[fmt]
        elif fmt == "uuid":
            text = str(uuid.UUID(bytes=_digest(name, self._context, str(index))[:16], version=4))
        elif fmt in ("uri", "url", "iri", "uri-reference"):
            text = f"https://example.com/{_slug(name)}"
        elif key in _PLACE_NAMES and self._noun is not None:
            text = self._noun
        elif key in _QUERY_NAMES and self._context.strip():
            text = " ".join(self._context.split()[:_QUERY_WORDS])
        elif self._words:
            text = self._take(3 + _hash_int(name) % 6)
        else:
            text = f"simulated {name}"
        if index and not self._words:  # answer words already differ from item to item
            text = f"{text} {index + 1}"
        low = _count(schema.get("minLength"))
        high = _limit(schema.get("maxLength"))
        while len(text) < low:
            text += " simulated"
        if high is not None:
            text = text[:high]
        return text

    def _take(self, count: int) -> str:
        words = [self._words[(self._cursor + i) % len(self._words)] for i in range(count)]
        self._cursor += count
        return " ".join(words)


def _kind(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null" if kind else None)
    if kind in _TYPES:
        return str(kind)
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _merge(base: Any, extra: Any) -> dict[str, Any]:
    """``extra`` over ``base``; properties and required are united, as ``allOf`` means."""
    out = dict(base) if isinstance(base, dict) else {}
    if not isinstance(extra, dict):
        return out
    for key, value in extra.items():
        if key == "properties" and isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = {**out[key], **value}
        elif key == "required" and isinstance(out.get(key), list) and isinstance(value, list):
            out[key] = list(dict.fromkeys([*out[key], *value]))
        else:
            out[key] = value
    return out


def _pointer(root: Any, ref: str) -> Any:
    """A local JSON pointer (``#/$defs/Name``); anything else resolves to ``{}``."""
    if not ref.startswith("#"):
        return {}
    node = root
    for raw in ref[1:].split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return {}
    return node


def _bounds(schema: Mapping[str, Any], integer: bool) -> tuple[float | None, float | None]:
    def num(key: str) -> float | None:
        value = schema.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return None

    low, high = num("minimum"), num("maximum")
    ex_low, ex_high = num("exclusiveMinimum"), num("exclusiveMaximum")
    gap = 1.0 if integer else 0.5
    if ex_low is not None:
        low = max(low if low is not None else -math.inf, ex_low + gap)
    if ex_high is not None:
        high = min(high if high is not None else math.inf, ex_high - gap)
    if integer:
        low = None if low is None else float(math.ceil(low))
        high = None if high is None else float(math.floor(high))
    return low, high


def _fits(value: float, low: float | None, high: float | None, step: float | None) -> bool:
    if (low is not None and value < low) or (high is not None and value > high):
        return False
    return step is None or (value / step).is_integer()


def _limit(value: Any) -> int | None:
    """A ``max...`` keyword: a non-negative integer, else no limit."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def _count(value: Any) -> int:
    """A ``min...`` keyword: a non-negative integer, else 0."""
    return _limit(value) or 0


def _smallest(kind: str) -> Any:
    return {"object": {}, "array": [], "integer": 0, "number": 0, "boolean": False}.get(kind, "")


def _slug(name: str) -> str:
    return "-".join(_WORD.findall(name.lower())) or "resource"


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).digest()


def _hash_int(*parts: str) -> int:
    return int.from_bytes(_digest(*parts)[:4], "big")
