"""Deterministic answer text, tool-call arguments and embedding vectors.

Everything here is a pure function of the request so identical requests produce
byte-identical answers, which is what lets tests compare "direct" against
"through the proxy" (the random ``[[sim ...]]`` effects live in ``directives``).
Token counts are whitespace-separated words: cheap, stable and close enough to
real tokenizers for usage accounting tests.
"""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from .settings import CREATED_BASE

MAX_ECHO_WORDS: Final = 48
"""The answer echoes at most this many prompt words, so huge prompts stay cheap to answer."""

DEFAULT_FILLER_WORDS: Final = 8

_FILLER: Final = (
    "this", "deterministic", "reply", "comes", "from", "the", "promptproxy", "simulator",
    "so", "every", "identical", "request", "gets", "identical", "bytes", "and", "tests",
    "stay", "stable", "forever",
)  # fmt: skip

_ARGUMENT_LIMIT: Final = 4
"""Tool-call arguments fill at most this many schema properties: small but realistic."""


def request_digest(body: Mapping[str, Any]) -> bytes:
    """Hash of the request's meaning, not its bytes.

    Keys are sorted so a proxy that re-serialises JSON still gets the same ids, and
    ``stream_options`` is left out because proxies inject it to meter usage; neither
    changes what a real model would answer.
    """
    if "stream_options" in body:
        body = {key: value for key, value in body.items() if key != "stream_options"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()


def created_from(digest: bytes) -> int:
    return CREATED_BASE + int.from_bytes(digest[:3], "big") % 10_000_000


def count_tokens(text: str) -> int:
    return len(text.split())


def content_text(content: Any) -> str:
    """Text of a message ``content``: a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return " ".join(texts)
    return ""


def last_user_text(messages: Sequence[Any]) -> str:
    """The prompt a model would answer: the last user turn, else the last turn of any role."""
    fallback: str | None = None
    for message in reversed(messages):
        if not isinstance(message, dict):
            continue
        text = content_text(message.get("content"))
        if message.get("role") == "user":
            return text
        if fallback is None:
            fallback = text
    return fallback or ""


def answer_text(prompt: str, variant: int = 0, min_words: int = 0) -> str:
    """``Simulated answer to: <prompt>`` plus filler; words are separated by single spaces.

    ``variant`` makes the ``n`` choices of one request distinguishable; ``min_words``
    guarantees a streamed answer has enough words to fill every requested chunk.
    """
    echo_words = prompt.split()[:MAX_ECHO_WORDS] or ["(empty", "prompt)"]
    head = "Simulated answer to: " + " ".join(echo_words)
    sep = " " if head[-1] in ".?!" else ". "
    filler_count = max(DEFAULT_FILLER_WORDS, min_words - 3 - len(echo_words))
    start = (variant * 7) % len(_FILLER)
    filler = " ".join(_FILLER[(start + i) % len(_FILLER)] for i in range(filler_count))
    return f"{head}{sep}{filler.capitalize()}."


def stretch_answer(text: str, factor: float, variant: int = 0) -> str:
    """``text`` with about ``factor`` times as many words: filler added, or words dropped.

    Deterministic like the rest of this module, so ``longer=F`` alone does not make
    identical requests differ.
    """
    words = text.split(" ")
    target = max(1, round(len(words) * factor))
    if target <= len(words):
        kept = " ".join(words[:target]).rstrip(".")
        return kept + "."
    start = (variant * 7 + len(words)) % len(_FILLER)
    extra = [_FILLER[(start + i) % len(_FILLER)] for i in range(target - len(words))]
    return " ".join([*words[:-1], words[-1].rstrip("."), *extra]) + "."


def truncate_words(text: str, limit: int | None) -> tuple[str, bool]:
    """Cut ``text`` to ``limit`` tokens; the flag says whether it was cut (finish ``length``)."""
    if limit is None:
        return text, False
    words = text.split(" ")
    if len(words) <= limit:
        return text, False
    return " ".join(words[:limit]), True


def split_words(text: str, pieces: int) -> list[str]:
    """Split single-spaced ``text`` into at most ``pieces`` deltas that concatenate back to it.

    Later pieces carry the leading space, like real tokenizer output (" word").
    """
    if not text:
        return []
    words = text.split(" ")
    count = min(pieces, len(words))
    out: list[str] = []
    for i in range(count):
        group = " ".join(words[i * len(words) // count : (i + 1) * len(words) // count])
        out.append(group if i == 0 else " " + group)
    return out


def split_even(text: str, pieces: int) -> list[str]:
    """Split ``text`` into at most ``pieces`` non-empty slices, e.g. tool-call argument JSON."""
    count = max(1, min(pieces, len(text)))
    return [text[i * len(text) // count : (i + 1) * len(text) // count] for i in range(count)]


def tool_call_id(digest: bytes, index: int) -> str:
    return f"call_{digest[4:16].hex()}{index:x}"


def tool_arguments(parameters: Any) -> str:
    """A small JSON object that fits the tool's JSON schema well enough for client code."""
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(properties, dict) or not properties:
        return '{"input":"simulated"}'
    required = parameters.get("required")
    names = [n for n in required if n in properties] if isinstance(required, list) else []
    names = names or list(properties)
    args = {name: _sample_value(name, properties[name]) for name in names[:_ARGUMENT_LIMIT]}
    return orjson.dumps(args).decode()


def _sample_value(name: str, schema: Any) -> Any:
    if not isinstance(schema, dict):
        return f"simulated {name}"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    samples: dict[Any, Any] = {
        "integer": 1,
        "number": 1.5,
        "boolean": True,
        "array": [],
        "object": {},
        "null": None,
    }
    return samples.get(kind, f"simulated {name}")


def embedding_tokens(item: str | Sequence[int]) -> int:
    return count_tokens(item) if isinstance(item, str) else len(item)


def embedding_vector(item: str | Sequence[int], dimensions: int) -> array[float]:
    """Unit-length float32 vector seeded by the input; identical inputs give identical vectors.

    Returned as float32 so the JSON floats and the base64 bytes describe the same numbers.
    """
    seed = item.encode() if isinstance(item, str) else orjson.dumps(list(item))
    ints = array("h", hashlib.shake_256(seed).digest(2 * dimensions))
    if sys.byteorder == "big":
        ints.byteswap()  # the vector must not depend on the host's byte order
    scale = 1.0 / (math.hypot(*ints) or 1.0)  # hypot runs in C: the norm without a Python loop
    return array("f", [x * scale for x in ints])


def embedding_base64(vector: array[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32 bytes."""
    if sys.byteorder == "big":
        vector = array("f", vector)
        vector.byteswap()
    return base64.b64encode(vector.tobytes()).decode("ascii")
