"""A simulated LLM judge: the models ``sim-judge*`` answer ``{"score", "reason"}``.

Eval runs score answers with a judge prompt; tests and the first-run demo need a judge
that behaves like one without a real model. The request's last user message ends with
the answer being judged, after a line ``Answer:`` (e.g. ``Question:\\n...\\n\\nAnswer:\\n...``);
the judged text is what follows the last such line (surrounding spaces of that line
ignored), stripped; the whole message when there is none. Its words are the
whitespace-separated tokens the simulator counts, punctuation stripped from both ends,
lower-cased; a token of punctuation only is no word. The rule, by model name:

| model                | score                                                         |
|----------------------|---------------------------------------------------------------|
| ``sim-judge*``       | 1 - noise words / words, rounded to 2 decimals                |
| ``sim-judge-strict*``| 1.0 without any noise word, else 0.0                          |

Noise words are the ``noise=P`` directive's vocabulary (``directives.NOISE_VOCABULARY``),
so a clean simulated answer scores 1.0 and one degraded by ``[[sim noise=0.3]]`` about
0.7. An empty judged text scores 0.0. The strict judge is the "worse judge" for a judge's
agreement with human labels: where a lightly noised answer is labelled good, it fails it.
Any suffix after the name (``sim-judge-v2``) is free, so the registry can pin versions.

The answer is the JSON document whatever ``response_format`` asks for (its keys are the
ones a judge's schema asks for); ``max_tokens`` and a ``truncate`` directive in the judge's
own system prompt cut it as they cut any answer, ``error`` fails it; ``noise`` and
``longer`` do not apply, the score being a number and not words.
"""

from __future__ import annotations

import enum
import string
from dataclasses import dataclass
from typing import Final

import orjson

from .directives import NOISE_VOCABULARY, Steering

MODEL_PREFIX: Final = "sim-judge"
STRICT_PREFIX: Final = "sim-judge-strict"

ANSWER_LINE: Final = "Answer:"

_PUNCTUATION: Final = string.punctuation + "\u2018\u2019\u201c\u201d\u2026\u2013\u2014"
"""ASCII punctuation plus the typographic quotes, ellipsis and dashes real answers carry."""


class JudgeRule(enum.Enum):
    PROPORTIONAL = "proportional"
    """The score falls with the share of noise words."""
    STRICT = "strict"
    """Any noise word fails the answer."""


def judge_rule(model: str) -> JudgeRule | None:
    """The rule a model name asks for, or None when it is no simulated judge."""
    if model.startswith(STRICT_PREFIX):
        return JudgeRule.STRICT
    if model.startswith(MODEL_PREFIX):
        return JudgeRule.PROPORTIONAL
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float
    words: int
    noise: int
    rule: JudgeRule

    @property
    def reason(self) -> str:
        if self.words == 0:
            return "The answer is empty."
        noun, verb = ("word", "is") if self.words == 1 else ("words", "are")
        reason = f"{self.noise} of {self.words} {noun} {verb} off-topic noise."
        if self.rule is JudgeRule.STRICT and self.noise:
            reason += " The strict judge fails any noise."
        return reason


def judged_text(message: str) -> str:
    """What follows the message's last ``Answer:`` line, stripped (all of it without one)."""
    lines = message.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip() == ANSWER_LINE:
            return "\n".join(lines[i + 1 :]).strip()
    return message.strip()


def judge_words(text: str) -> list[str]:
    """The words of ``text`` as the judge counts them."""
    words = (token.strip(_PUNCTUATION).lower() for token in text.split())
    return [word for word in words if word]


def verdict(judged: str, rule: JudgeRule) -> Verdict:
    words = judge_words(judged)
    noise = sum(word in NOISE_VOCABULARY for word in words)
    if not words:
        score = 0.0
    elif rule is JudgeRule.STRICT:
        score = 0.0 if noise else 1.0
    else:
        score = round(1.0 - noise / len(words), 2)
    return Verdict(score, len(words), noise, rule)


def judge_document(last_user: str, rule: JudgeRule) -> str:
    """The judge's answer to a request whose last user message is ``last_user``."""
    found = verdict(judged_text(last_user), rule)
    return orjson.dumps({"score": found.score, "reason": found.reason}).decode()


def judge_answer(last_user: str, rule: JudgeRule, steering: Steering | None) -> tuple[str, bool]:
    """The judge's answer; the flag means a ``truncate`` directive cut it short."""
    document = judge_document(last_user, rule)
    if steering is None or not steering.cuts():
        return document, False
    # As a real length cut: the document stops anywhere and is no longer valid JSON.
    return document[: steering.rng.randint(1, len(document) - 1)], True
