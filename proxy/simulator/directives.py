"""Answer-quality directives embedded in the system prompt: ``[[sim truncate=0.2 noise=0.3]]``.

Headers steer one request; a directive steers every request rendered from a prompt
version, because the proxy puts that version's text where the system message was.
That lets a canary of a "worse" candidate prompt be answered measurably worse while
the stable version is answered normally, with no change to the client.

Syntax: ``[[sim key=value ...]]`` anywhere in a system/developer message (chat) or in
``instructions`` / a system or developer input item (Responses API) or in ``system``
(Messages API). Pairs are separated by spaces or commas; when several markers set a
key, the last one wins.

| directive    | range      | effect (per text answer / choice)                               |
|--------------|------------|-----------------------------------------------------------------|
| truncate=P   | 0..1       | with probability P cut the answer short, finish ``length``      |
|              |            | (Messages API: stop_reason ``max_tokens``)                      |
| error=P      | 0..1       | with probability P answer 500 (as ``x-sim-status: 500``)        |
| noise=P      | 0..1       | replace each answer word by a random one with probability P     |
| longer=F     | >0..100    | about F times as many answer words (F < 1 gives shorter ones)   |

Only requests that carry a marker draw random numbers, so everything else stays
byte-deterministic. Tool-call answers and ``/v1/completions`` (no system message)
are not affected. A JSON answer (``response_format``) is built from the shaped words, so
noise and ``longer`` stay inside its strings; a truncate cut cuts the document itself.
A simulated judge's verdict (``sim-judge*`` models, see ``judge``) is cut by ``truncate``
and failed by ``error`` but ignores ``noise`` and ``longer``: its score is no words.
The markers themselves are not part of what the answer's words depend on.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from . import content
from .errors import RequestError
from .params import Body

_MARKER: Final = re.compile(r"\[\[sim\b([^\]]*)\]\]")
_SEPARATOR: Final = re.compile(r"[\s,]+")

_PROMPT_ROLES: Final = frozenset({"system", "developer"})

MAX_LONGER: Final = 100.0
"""A typo such as ``longer=1e9`` must not make the simulator build a gigantic answer."""

_NOISE_WORDS: Final = (
    "apparently", "banana", "circuit", "drizzle", "elsewhere", "fragment", "granite",
    "hollow", "inkwell", "juniper", "kettle", "lantern", "meadow", "nonsense", "orbit",
    "pebble", "quietly", "ripple", "saffron", "tundra",
)  # fmt: skip

NOISE_VOCABULARY: Final = frozenset(_NOISE_WORDS)
"""The words ``noise`` puts into answers: the simulated judge (``judge``) counts them."""


@dataclass(frozen=True, slots=True)
class Directives:
    truncate: float = 0.0
    error: float = 0.0
    noise: float = 0.0
    longer: float = 1.0

    @property
    def active(self) -> bool:
        return self != NO_DIRECTIVES


NO_DIRECTIVES: Final = Directives()

_PROBABILITIES: Final = frozenset({"truncate", "error", "noise"})
_NAMES: Final = (*sorted(_PROBABILITIES), "longer")


def parse_directives(texts: Iterable[tuple[str, str]]) -> Directives:
    """Directives from ``(text, param)`` pairs; ``param`` names the field in a 400."""
    values: dict[str, float] = {}
    for text, param in texts:
        for marker in _MARKER.finditer(text):
            for item in _SEPARATOR.split(marker.group(1).strip()):
                if item:
                    name, value = _parse_item(item, param)
                    values[name] = value
    return Directives(**values) if values else NO_DIRECTIVES


def _parse_item(item: str, param: str) -> tuple[str, float]:
    name, sep, raw = item.partition("=")
    if not sep or name not in _NAMES:
        raise RequestError(
            f"Unknown simulator directive {item!r} in [[sim ...]]; "
            f"expected name=value with name one of {', '.join(_NAMES)}.",
            param,
            "invalid_value",
        )
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if name in _PROBABILITIES:
        valid, expected = 0.0 <= value <= 1.0, "a probability between 0 and 1"
    else:
        valid, expected = 0.0 < value <= MAX_LONGER, f"a factor > 0 and <= {MAX_LONGER:g}"
    if not valid:  # comparisons with NaN are false, so non-numbers land here too
        raise RequestError(
            f"Invalid simulator directive {item!r}: {name} must be {expected}.",
            param,
            "invalid_value",
        )
    return name, value


def chat_directives(body: Body) -> Directives:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return NO_DIRECTIVES  # plan_chat reports the bad field with its own 400
    return parse_directives((text, "messages") for text in _prompt_texts(messages))


def responses_directives(body: Body) -> Directives:
    def texts() -> Iterator[tuple[str, str]]:
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            yield instructions, "instructions"
        items = body.get("input")
        if isinstance(items, list):
            yield from ((text, "input") for text in _prompt_texts(items))

    return parse_directives(texts())


def messages_directives(body: Body) -> Directives:
    """Directives in the Messages API's ``system`` (a string or a list of text blocks)."""
    system = body.get("system")
    if not isinstance(system, str | list):
        return NO_DIRECTIVES  # plan_message reports a bad type with its own 400
    return parse_directives([(content.content_text(system), "system")])


def _prompt_texts(messages: list[Any]) -> Iterator[str]:
    for message in messages:
        if isinstance(message, dict) and message.get("role") in _PROMPT_ROLES:
            yield content.content_text(message.get("content"))


@dataclass(frozen=True, slots=True)
class Steering:
    """Directives plus the request's own random generator."""

    directives: Directives
    rng: random.Random

    def fails(self) -> bool:
        return self.rng.random() < self.directives.error

    def cuts(self) -> bool:
        """Draw the ``truncate`` directive: True means cut this answer short."""
        return self.rng.random() < self.directives.truncate

    def shape(self, text: str, variant: int) -> tuple[str, bool]:
        """Apply ``longer``, ``noise``, ``truncate`` to an answer; the flag means "cut short"."""
        directives = self.directives
        if directives.longer != 1.0:
            text = content.stretch_answer(text, directives.longer, variant)
        if directives.noise > 0.0:
            text = self._noisy(text)
        if self.cuts():
            words = text.split(" ")
            # Real length cuts stop anywhere; at least one word stays so the answer exists.
            keep = self.rng.randint(1, max(1, len(words) - 1))
            return " ".join(words[:keep]), True
        return text, False

    def _noisy(self, text: str) -> str:
        noise, rng = self.directives.noise, self.rng
        words = text.split(" ")
        for i, word in enumerate(words):
            if rng.random() < noise:
                # Pick among the others so a replacement always changes the word.
                pick = rng.randrange(len(_NOISE_WORDS) - 1)
                alternative = _NOISE_WORDS[pick]
                words[i] = _NOISE_WORDS[-1] if alternative == word else alternative
        return " ".join(words)
