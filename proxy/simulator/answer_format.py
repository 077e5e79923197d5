"""The shape of a text answer: plain text, or the JSON document ``response_format`` (chat)
or ``text.format`` (Responses API) asks for.

``json_object`` gets ``{"answer": <the text answer>}``; ``json_schema`` gets a document
that validates against the schema (``schema_sample``), its strings cut from the text
answer's words, so it changes with the prompt as the text answer does. ``[[sim ...]]``
directives shape the words first (noise and ``longer`` stay inside the strings, the JSON
stays valid); a ``truncate`` cut then cuts the document itself, as a real length cut
leaves unparsable JSON.

A simulated judge model (``sim-judge*``, see ``judge``) answers its ``{"score", "reason"}``
document instead, whatever ``response_format`` asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from . import content
from .directives import Steering
from .judge import JudgeRule, judge_answer, judge_rule
from .params import Body, model_of
from .schema_sample import SchemaSampler


@dataclass(frozen=True, slots=True)
class OutputFormat:
    kind: Literal["text", "json_object", "json_schema", "judge"]
    schema: Any = None
    name: str = "response"
    judge: JudgeRule | None = None


TEXT: Final = OutputFormat("text")


def chat_format(body: Body) -> OutputFormat:
    """Chat completions ``response_format``: ``{"type": "json_schema", "json_schema":
    {"name", "schema", "strict"}}`` or ``{"type": "json_object"}``; anything else is text.
    A judge model's verdict wins over all of them."""
    if (judge := _judge_format(body)) is not None:
        return judge
    spec = body.get("response_format")
    if not isinstance(spec, dict):
        return TEXT
    inner = spec.get("json_schema")
    return _format(spec.get("type"), inner if isinstance(inner, dict) else {})


def responses_format(body: Body) -> OutputFormat:
    """Responses API ``text.format``: ``{"type": "json_schema", "name", "schema",
    "strict"}`` (flat) or ``{"type": "json_object"}``; anything else is text.
    A judge model's verdict wins over all of them."""
    if (judge := _judge_format(body)) is not None:
        return judge
    text = body.get("text")
    spec = text.get("format") if isinstance(text, dict) else None
    if not isinstance(spec, dict):
        return TEXT
    return _format(spec.get("type"), spec)


def _judge_format(body: Body) -> OutputFormat | None:
    rule = judge_rule(model_of(body))
    return None if rule is None else OutputFormat("judge", judge=rule)


def _format(kind: Any, spec: dict[str, Any]) -> OutputFormat:
    if kind == "json_object":
        return OutputFormat("json_object")
    if kind == "json_schema":
        schema = spec.get("schema")
        name = spec.get("name")
        if not isinstance(schema, dict):
            return OutputFormat("json_object")
        return OutputFormat("json_schema", schema, name if isinstance(name, str) else "response")
    return TEXT


def answer(
    conversation: content.Conversation,
    output: OutputFormat,
    variant: int,
    min_words: int,
    steering: Steering | None,
) -> tuple[str, bool]:
    """The answer text in ``output``'s shape; the flag means a directive cut it short."""
    if output.judge is not None:
        return judge_answer(conversation.last_user, output.judge, steering)
    text = content.conversation_answer(conversation, variant, min_words)
    steered_cut = False
    if steering is not None:
        full_words = content.count_tokens(text)
        text, steered_cut = steering.shape(text, variant)
    if output.kind == "text":
        return text, steered_cut
    if output.kind == "json_object":
        document = orjson.dumps({"answer": text}).decode()
    else:
        head = 3 + content.echo_word_count(conversation.last_user)
        words = text.rstrip(".").split(" ")
        words = words[head:] or words
        sampler = SchemaSampler(output.schema, conversation.last_user, words)
        document = orjson.dumps(sampler.value(output.schema, output.name)).decode()
    if steered_cut:
        kept = len(document) * content.count_tokens(text) // max(1, full_words)
        document = document[: max(1, min(len(document) - 1, kept))]
    return document, steered_cut
