"""Deterministic answer text, tool-call arguments and embedding vectors.

Everything here is a pure function of the request so identical requests produce
byte-identical answers, which is what lets tests compare "direct" against
"through the proxy" (the random ``[[sim ...]]`` effects live in ``directives``).
Token counts are whitespace-separated words: cheap, stable and close enough to
real tokenizers for usage accounting tests.

An answer depends on the instructions (system/developer prompt) *and* the conversation,
so two prompt versions answer differently, as a real model would:

    Simulated answer to: <the last user turn>. <theme phrases> <closing filler>.

The themes are up to ``MAX_THEMES`` content words of the instructions (the distinct words
with the smallest CRC-32, so the choice does not depend on word order), each followed by
0-3 words drawn from a hash of the theme and the conversation. A different prompt gives
other themes, other words and (deterministically) another length; editing one word of a
long prompt changes one theme at most; function words, courtesy words (please, kindly,
thanks) and ``[[sim ...]]`` markers count for nothing, so a cosmetic edit answers the same.
Without instructions the themes come from the conversation itself.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import sys
import zlib
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from .schema_sample import SchemaSampler
from .settings import CREATED_BASE

MAX_ECHO_WORDS: Final = 48
"""The answer echoes at most this many prompt words, so huge prompts stay cheap to answer."""

DEFAULT_FILLER_WORDS: Final = 8

_FILLER: Final = (
    "this", "deterministic", "reply", "comes", "from", "the", "promptproxy", "simulator",
    "so", "every", "identical", "request", "gets", "identical", "bytes", "and", "tests",
    "stay", "stable", "forever",
)  # fmt: skip

MAX_THEMES: Final = 12
"""Content words of the instructions an answer picks up: enough to tell prompts apart."""

THEME_SCAN_CHARS: Final = 65_536
"""Themes are read from this many characters of the instructions, so huge prompts stay cheap."""

_CLOSING_WORDS: Final = 2
"""Filler words after the themes: they make the ``n`` choices differ (``variant``)."""

_VOCABULARY: Final = (
    "account", "answer", "available", "briefly", "careful", "checked", "clear", "confirm",
    "context", "covered", "detail", "directly", "example", "expected", "explained", "follow",
    "found", "general", "glad", "guide", "help", "here", "indeed", "information", "likely",
    "listed", "mainly", "matter", "means", "noted", "option", "overall", "part", "plan",
    "point", "possible", "quick", "reason", "record", "related", "request", "result",
    "review", "right", "said", "section", "short", "simple", "specific", "status", "step",
    "summary", "support", "sure", "today", "topic", "typical", "update", "usual", "value",
    "verified", "whole", "within", "yours",
)  # fmt: skip
"""Words the theme phrases are made of (64 of them)."""

_STOPWORD_TEXT: Final = """
    about above after again against all also and any are aren't because been before being
    below between both but can cannot could did didn't does doesn't doing don't down during
    each even ever every few for from further get had has have having her here hers herself him
    himself his how i'm i've into isn't it's its itself just let's more most must myself
    nor not now off once only other ought our ours ourselves out over own same shall she
    should some such than that that's the their theirs them themselves then there there's
    these they this those through too under until very was wasn't way were weren't what
    when where which while who whom why will with won't would you you're your yours
    yourself yourselves
    please kindly thanks thank thx pls
"""
_STOPWORDS: Final = frozenset(_STOPWORD_TEXT.split())
"""Words that carry no instruction: an edit made of them only does not change the answer."""

_WORD: Final = re.compile(r"\w+(?:'\w+)*")
_SIM_MARKER: Final = re.compile(r"\[\[sim\b[^\]]*\]\]")
_PROMPT_ROLES: Final = frozenset({"system", "developer"})


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
    """``Simulated answer to: <prompt>`` plus words that depend on the whole ``prompt``.

    One string is both what is echoed and what the themes come from (callers that have
    a system prompt and messages apart use ``conversation_answer``). Words are separated
    by single spaces; ``variant`` makes the ``n`` choices of one request distinguishable;
    ``min_words`` guarantees a streamed answer has enough words to fill every requested chunk.
    """
    return compose_answer(prompt, prompt, prompt, variant, min_words)


@dataclass(frozen=True, slots=True)
class Conversation:
    """What an answer depends on, read from a chat or Responses API request."""

    instructions: str
    """The system/developer texts, ``[[sim ...]]`` markers removed."""
    turns: str
    """Every other turn, role-tagged: the same question in another context answers otherwise."""
    last_user: str
    """The turn the answer echoes."""
    said: str = ""
    """The turns' texts without roles: the themes when there are no instructions."""


def conversation_of(
    instructions: Iterable[str], turns: Iterable[tuple[str, str]], last_user: str
) -> Conversation:
    """A ``Conversation`` from prompt texts and ``(role, text)`` turns."""
    prompt = "\n".join(_SIM_MARKER.sub(" ", text) for text in instructions)
    turns = list(turns)  # read twice
    tagged = "\n".join(f"{role}: {text}" for role, text in turns)
    return Conversation(prompt, tagged, last_user, "\n".join(text for _, text in turns))


def chat_conversation(messages: Sequence[Any]) -> Conversation:
    """The ``Conversation`` of a chat completions ``messages`` array."""
    instructions: list[str] = []
    turns: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        text = content_text(message.get("content"))
        if role in _PROMPT_ROLES:
            instructions.append(text)
            continue
        calls = message.get("tool_calls")
        if isinstance(calls, list):  # an assistant turn that called tools answered with them
            text += " " + orjson.dumps(calls, option=orjson.OPT_SORT_KEYS).decode()
        turns.append((str(role), text))
    return conversation_of(instructions, turns, last_user_text(messages))


def conversation_answer(conversation: Conversation, variant: int = 0, min_words: int = 0) -> str:
    """The text answer to a conversation: echoes its last user turn, themed by its
    instructions (by the turns themselves when there are none), seeded by its turns."""
    return compose_answer(
        conversation.last_user,
        conversation.instructions,
        conversation.turns,
        variant,
        min_words,
        said=conversation.said,
    )


def echo_word_count(echo: str) -> int:
    """How many words of ``echo`` an answer repeats after ``Simulated answer to:``."""
    return min(len(echo.split()), MAX_ECHO_WORDS) or 2


def compose_answer(
    echo: str,
    instructions: str,
    conversation: str,
    variant: int = 0,
    min_words: int = 0,
    *,
    said: str | None = None,
) -> str:
    """``Simulated answer to: <echo>. <themes of instructions> <filler>.``

    The theme phrases are drawn from ``conversation`` and ``variant``; without themes in
    ``instructions`` they come from ``said`` (default: ``conversation``).
    """
    echo_words = echo.split()[:MAX_ECHO_WORDS] or ["(empty", "prompt)"]
    head = "Simulated answer to: " + " ".join(echo_words)
    sep = " " if head[-1] in ".?!" else ". "
    seed = hashlib.sha256(conversation.encode("utf-8", "surrogatepass")).digest()
    themes = prompt_themes(instructions) or prompt_themes(conversation if said is None else said)
    body = [word for theme in themes for word in _phrase(theme, seed, variant)]
    closing = max(_CLOSING_WORDS, DEFAULT_FILLER_WORDS - len(body))
    closing = max(closing, min_words - 3 - len(echo_words) - len(body))
    start = (variant * 7 + seed[0]) % len(_FILLER)
    body.extend(_FILLER[(start + i) % len(_FILLER)] for i in range(closing))
    return f"{head}{sep}{' '.join(body).capitalize()}."


def prompt_themes(text: str) -> list[str]:
    """Up to ``MAX_THEMES`` content words of ``text``: lower-cased, distinct, at least three
    letters, no function or courtesy words, no ``[[sim ...]]`` marker; the ones with the
    smallest CRC-32 (a bottom-k sketch), so adding a word changes one theme at most and the
    word order does not matter."""
    words = set(_WORD.findall(_SIM_MARKER.sub(" ", text[:THEME_SCAN_CHARS]).lower()))
    content = [w for w in words if len(w) >= 3 and w not in _STOPWORDS]
    return sorted(content, key=lambda w: (zlib.crc32(w.encode("utf-8", "surrogatepass")), w))[
        :MAX_THEMES
    ]


def rank_tools(functions: Sequence[Mapping[str, Any]], text: str) -> list[Mapping[str, Any]]:
    """The functions that share words with ``text``, most shared words first (ties keep
    the declared order); all of them in declared order when none shares a word."""
    wanted = _stems(text)
    scored = [(len(wanted & _stems(_tool_words(f))), i, f) for i, f in enumerate(functions)]
    matching = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1]))
    return [f for _, _, f in matching] or list(functions)


def _tool_words(function: Mapping[str, Any]) -> str:
    """A function's name (``get_weather``, ``getWeather``), description and parameter names."""
    name = str(function.get("name", ""))
    parts = [re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name).replace("_", " ").replace("-", " ")]
    description = function.get("description")
    if isinstance(description, str):
        parts.append(description)
    parameters = function.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    if isinstance(properties, dict):
        parts.extend(str(key).replace("_", " ") for key in properties)
    return " ".join(parts)


def _stems(text: str) -> set[str]:
    """Content words, lower-cased, a plural ``s`` dropped: enough to match ``orders`` to
    ``order``."""
    out = set()
    for word in _WORD.findall(text.lower()):
        if len(word) < 3 or word in _STOPWORDS:
            continue
        out.add(word[:-1] if len(word) > 3 and word.endswith("s") else word)
    return out


def _phrase(theme: str, seed: bytes, variant: int) -> list[str]:
    """The theme and 0-3 vocabulary words, all chosen by the theme, conversation and variant."""
    person = str(variant).encode()
    data = theme.encode("utf-8", "surrogatepass")
    h = hashlib.blake2b(data, digest_size=8, key=seed, person=person).digest()
    return [theme, *(_VOCABULARY[h[1 + i] % len(_VOCABULARY)] for i in range(h[0] % 4))]


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


def tool_arguments(parameters: Any, context: str = "") -> str:
    """A JSON object that validates against the tool's JSON schema (``parameters``).

    Every required property is filled (with no ``required``, the first few properties),
    enums, consts, bounds, formats and nested objects/arrays are respected, and values
    the user mentioned in ``context`` (an enum value, a number, a name) are preferred.
    """
    if not isinstance(parameters, dict) or not (
        parameters.get("properties") or parameters.get("$ref") or parameters.get("anyOf")
    ):
        closed = isinstance(parameters, dict) and parameters.get("additionalProperties") is False
        return "{}" if closed else '{"input":"simulated"}'
    sampler = SchemaSampler(parameters, context)
    return orjson.dumps(sampler.value(parameters, "arguments")).decode()


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
