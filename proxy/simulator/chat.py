"""``POST /v1/chat/completions``: plan a deterministic answer, then render it as JSON or SSE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from . import answer_format, content
from .directives import Steering
from .errors import RequestError
from .framing import DONE, ChunkFramer, interleave
from .params import Body, flag, include_usage, max_output_tokens, optional_int, require_model, usage
from .settings import MAX_N, SYSTEM_FINGERPRINT


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    text: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    id: str
    created: int
    model: str
    include_usage: bool
    choices: tuple[Choice, ...]
    prompt_tokens: int

    def usage(self) -> dict[str, Any]:
        return usage(self.prompt_tokens, sum(c.completion_tokens for c in self.choices))


def plan_chat(body: Body, chunks: int, steering: Steering | None = None) -> ChatAnswer:
    """Validate the request and decide the full answer; rendering is then mechanical."""
    model = require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array.", "messages", "invalid_value")
    n = optional_int(body, "n", maximum=MAX_N) or 1
    limit = max_output_tokens(body, "max_completion_tokens", "max_tokens")
    stream = flag(body, "stream", False)
    digest = content.request_digest(body)
    conversation = content.chat_conversation(messages)
    output = answer_format.chat_format(body)
    tools = _selected_tools(body, conversation.last_user)
    choices = tuple(
        _tool_choice(i, digest, tools, conversation.last_user)
        if tools
        else _text_choice(i, conversation, output, chunks, limit, steering)
        for i in range(n)
    )
    prompt_tokens = sum(
        content.count_tokens(content.content_text(m.get("content")))
        for m in messages
        if isinstance(m, dict)
    )
    return ChatAnswer(
        id="chatcmpl-" + digest[:12].hex(),
        created=content.created_from(digest),
        model=model,
        include_usage=include_usage(body, stream),
        choices=choices,
        prompt_tokens=prompt_tokens,
    )


def _text_choice(
    index: int,
    conversation: content.Conversation,
    output: answer_format.OutputFormat,
    chunks: int,
    limit: int | None,
    steering: Steering | None,
) -> Choice:
    text, steered_cut = answer_format.answer(conversation, output, index, chunks, steering)
    text, cut = content.truncate_words(text, limit)
    finish = "length" if cut or steered_cut else "stop"
    return Choice(index, text, (), finish, content.count_tokens(text))


def _tool_choice(
    index: int, digest: bytes, tools: Sequence[Mapping[str, Any]], context: str
) -> Choice:
    calls = tuple(
        ToolCall(
            id=content.tool_call_id(digest, index * len(tools) + k),
            name=tool["name"],
            arguments=content.tool_arguments(tool.get("parameters"), context),
        )
        for k, tool in enumerate(tools)
    )
    tokens = sum(content.count_tokens(c.arguments) + 1 for c in calls)
    return Choice(index, None, calls, "tool_calls", tokens)


def _selected_tools(body: Body, user_text: str) -> list[Mapping[str, Any]]:
    """The function definitions this answer calls (empty: answer with text).

    A named ``tool_choice`` calls that tool. Otherwise (``auto``, ``required``) the tools
    whose name, description and parameter names share words with the last user turn are
    called, best match first (two at most, one without ``parallel_tool_calls``); when none
    shares a word, the first one or two declared, as before.
    """
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    functions = [
        t["function"]
        for t in tools
        if isinstance(t, dict)
        and t.get("type") == "function"
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    ]
    tool_choice = body.get("tool_choice")
    if not functions or tool_choice == "none":
        return []
    if isinstance(tool_choice, dict):
        wanted = (tool_choice.get("function") or {}).get("name")
        named = [f for f in functions if f["name"] == wanted]
        if named:
            return named[:1]
    parallel = body.get("parallel_tool_calls") is not False
    ranked = content.rank_tools(functions, user_text)
    return ranked[:2] if parallel else ranked[:1]


def _header(answer: ChatAnswer, obj: str) -> dict[str, Any]:
    return {
        "id": answer.id,
        "object": obj,
        "created": answer.created,
        "model": answer.model,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def chat_body(answer: ChatAnswer) -> bytes:
    choices = []
    for choice in answer.choices:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": choice.text,
            "refusal": None,
            "annotations": [],
        }
        if choice.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in choice.tool_calls
            ]
        choices.append(
            {
                "index": choice.index,
                "message": message,
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
        )
    body = _header(answer, "chat.completion")
    body["choices"] = choices
    body["usage"] = answer.usage()
    return orjson.dumps(body)


def chat_events(answer: ChatAnswer, chunks: int) -> list[bytes]:
    """All SSE events of the streamed answer, ending with ``data: [DONE]``."""
    framer = ChunkFramer(_header(answer, "chat.completion.chunk"), answer.include_usage)
    per_choice = [_choice_chunks(choice, chunks) for choice in answer.choices]
    events = [framer.choices([chunk]) for chunk in interleave(per_choice)]
    if answer.include_usage:
        events.append(framer.usage(answer.usage()))
    events.append(DONE)
    return events


def _choice_chunks(choice: Choice, chunks: int) -> list[dict[str, Any]]:
    deltas: list[dict[str, Any]]
    if choice.tool_calls:
        deltas = []
        for k, call in enumerate(choice.tool_calls):
            opening = {
                "index": k,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            # The first delta of a choice also announces the role, as OpenAI's does.
            deltas.append(
                {"role": "assistant", "content": None, "tool_calls": [opening], "refusal": None}
                if k == 0
                else {"tool_calls": [opening]}
            )
            deltas.extend(
                {"tool_calls": [{"index": k, "function": {"arguments": fragment}}]}
                for fragment in content.split_even(call.arguments, chunks)
            )
    else:
        deltas = [{"role": "assistant", "content": "", "refusal": None}]
        deltas.extend(
            {"content": piece} for piece in content.split_words(choice.text or "", chunks)
        )
    out: list[dict[str, Any]] = [
        {"index": choice.index, "delta": delta, "logprobs": None, "finish_reason": None}
        for delta in deltas
    ]
    out.append(
        {
            "index": choice.index,
            "delta": {},
            "logprobs": None,
            "finish_reason": choice.finish_reason,
        }
    )
    return out
