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
  not hits, so they are counted in ``prompt_tokens`` only. A count that is not an integer
  is left out (counted as 0), as the stream translator does.
- An answer of the wrong shape (not an object, ``content`` not a list, a ``stop_reason``,
  ``id``, text, tool id or name that is not a string, a tool input that is not an object)
  is an ``UpstreamError`` (502, ``code="malformed_answer"``) naming what was wrong, never a
  ``TypeError`` from deep inside the translation.
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


def malformed(what: str, value: Any) -> UpstreamError:
    """The error for an answer whose ``what`` holds ``value``, of the wrong type."""
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return UpstreamError(
        f"the provider answered a malformed message: {what} is {shown}",
        code="malformed_answer",
    )


def finish_reason(stop_reason: Any) -> str | None:
    """The chat completions ``finish_reason`` of a Messages ``stop_reason``; an unknown
    reason (added to the API later) is ``stop``: the model stopped, we do not know why.
    ``UpstreamError`` when it is neither a string nor null."""
    if stop_reason is None:
        return None
    if not isinstance(stop_reason, str):
        raise malformed("stop_reason", stop_reason)
    return FINISH_REASONS.get(stop_reason, "stop")


def is_count(value: Any) -> bool:
    """A token count: an int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def usage(anthropic_usage: Any) -> JSON:
    """OpenAI ``usage`` from Anthropic's (module docstring)."""
    raw = anthropic_usage if isinstance(anthropic_usage, dict) else {}
    source = {k: v for k, v in raw.items() if is_count(v)}
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
    """The chat completions tool call of a ``tool_use`` block; ``UpstreamError`` when its
    id or name is not a string or its input not an object."""
    for key in ("id", "name"):
        if not isinstance(block.get(key), str):
            raise malformed(f"a tool_use block's {key}", block.get(key))
    tool_input = block.get("input")
    if tool_input is not None and not isinstance(tool_input, dict):
        raise malformed("a tool_use block's input", tool_input)
    return {
        "index": index,
        "id": block["id"],
        "type": "function",
        "function": {
            "name": block["name"],
            "arguments": orjson.dumps(tool_input or {}).decode(),
        },
    }


def to_chat_completion(message: Any, *, model: str, created: int) -> JSON:
    """The chat completion of a Messages answer (module docstring); ``UpstreamError`` when
    the answer cannot be translated whole."""
    if not isinstance(message, dict):
        raise malformed("the answer", message)
    if not isinstance(message.get("id"), str):
        raise malformed("id", message.get("id"))
    content = message.get("content")
    if content is not None and not isinstance(content, list):
        raise malformed("content", content)
    reason = finish_reason(message.get("stop_reason")) or "stop"
    texts: list[str] = []
    calls: list[JSON] = []
    for block in content or ():
        if not isinstance(block, dict):
            raise malformed("a content block", block)
        kind = block.get("type")
        if not isinstance(kind, str):
            raise malformed("a content block's type", kind)
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise malformed("a text block's text", text)
            texts.append(text)
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
    joined: str | None = "".join(texts)
    if calls and not joined:
        joined = None
    answer: JSON = {"role": "assistant", "content": joined, "refusal": None}
    if calls:
        answer["tool_calls"] = calls
    return {
        "id": message["id"],
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": answer,
                "logprobs": None,
                "finish_reason": reason,
            }
        ],
        "usage": usage(message.get("usage")),
        "system_fingerprint": None,
    }
