"""A Messages API answer, translated to a chat completion.

``to_chat_completion(message, model=..., created=...)`` is a pure function of the parsed
answer. ``model`` is the name the client asked for (an alias stays an alias); ``id`` is
Anthropic's message id, kept so a completion can be found in Anthropic's logs.

- ``text`` blocks are joined into ``content``; ``tool_use`` blocks become ``tool_calls``
  (``arguments`` is the input as a JSON string). ``content`` is null when the answer is
  only tool calls, as OpenAI answers. ``thinking`` / ``redacted_thinking`` blocks are not
  shown (chat completions has no place for them, and the request translator never asks
  for thinking); any other block type is an ``UpstreamError``: an answer we cannot show
  whole is not shown in part.
- ``stop_reason``: ``end_turn`` and ``stop_sequence`` -> ``stop``; ``max_tokens`` and
  ``model_context_window_exceeded`` -> ``length``; ``tool_use`` -> ``tool_calls``;
  ``refusal`` -> ``content_filter``; ``pause_turn`` -> ``length``: it only follows
  server-side tools, which the request translator never sends, and when it comes the
  answer is unfinished and chat completions has no way to resume it, which is what
  ``length`` tells a client.
- usage: Anthropic's ``input_tokens`` leaves out the tokens read from and written to the
  prompt cache, OpenAI's ``prompt_tokens`` counts every prompt token; so ``prompt_tokens``
  is the three added together and ``prompt_tokens_details.cached_tokens`` is the cache
  reads (OpenAI's meaning: prompt tokens served from the cache). Writes to the cache are
  not hits, so they are counted in ``prompt_tokens`` only.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import UpstreamError

JSON = dict[str, Any]

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "length",
}
_HIDDEN_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def finish_reason(stop_reason: str | None) -> str | None:
    """The chat completions ``finish_reason`` of a Messages ``stop_reason``; an unknown
    reason (added to the API later) is ``stop``: the model stopped, we do not know why."""
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(stop_reason, "stop")


def usage(anthropic_usage: Any) -> JSON:
    """OpenAI ``usage`` from Anthropic's (module docstring)."""
    source = anthropic_usage if isinstance(anthropic_usage, dict) else {}
    created = source.get("cache_creation_input_tokens") or 0
    read = source.get("cache_read_input_tokens") or 0
    prompt = (source.get("input_tokens") or 0) + created + read
    completion = source.get("output_tokens") or 0
    out: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if "cache_read_input_tokens" in source or "cache_creation_input_tokens" in source:
        out["prompt_tokens_details"] = {"cached_tokens": read}
    return out


def tool_call(block: JSON, index: int) -> JSON:
    return {
        "index": index,
        "id": block.get("id"),
        "type": "function",
        "function": {
            "name": block.get("name"),
            "arguments": orjson.dumps(block.get("input") or {}).decode(),
        },
    }


def to_chat_completion(message: JSON, *, model: str, created: int) -> JSON:
    texts: list[str] = []
    calls: list[JSON] = []
    for block in message.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            call = tool_call(block, len(calls))
            del call["index"]  # only chunks carry an index
            calls.append(call)
        elif kind not in _HIDDEN_BLOCKS:
            raise UpstreamError(
                f"the provider answered a content block of type {kind!r}, which cannot be "
                "translated to a chat completion",
                code="untranslatable_answer",
            )
    content: str | None = "".join(texts)
    if calls and not content:
        content = None
    answer: JSON = {"role": "assistant", "content": content, "refusal": None}
    if calls:
        answer["tool_calls"] = calls
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": answer,
                "logprobs": None,
                "finish_reason": finish_reason(message.get("stop_reason")) or "stop",
            }
        ],
        "usage": usage(message.get("usage")),
        "system_fingerprint": None,
    }
