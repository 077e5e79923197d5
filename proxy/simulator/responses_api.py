"""``POST /v1/responses``: the Responses API object and its typed streaming events."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson

from . import answer_format, content
from .directives import Steering
from .framing import named_event
from .params import Body, flag, optional_int, require_model

_PROMPT_ROLES: Final = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class ResponsesAnswer:
    response: dict[str, Any]
    """The final object (``status`` completed or incomplete), as stored and returned."""
    message_id: str
    text: str

    @property
    def id(self) -> str:
        return str(self.response["id"])

    @property
    def store(self) -> bool:
        return self.response["store"] is not False


def plan_response(body: Body, chunks: int, steering: Steering | None = None) -> ResponsesAnswer:
    model = require_model(body)
    limit = optional_int(body, "max_output_tokens")
    store = flag(body, "store", True)
    flag(body, "stream", False)  # validated for the 400, the handler reads it itself
    instructions = body.get("instructions")
    conversation, input_tokens = _conversation(body.get("input"), instructions)
    if isinstance(instructions, str):
        input_tokens += content.count_tokens(instructions)
    output = answer_format.responses_format(body)
    text, steered_cut = answer_format.answer(conversation, output, 0, chunks, steering)
    text, cut = content.truncate_words(text, limit)
    # A directive cut reports like a max_output_tokens cut: the only reason a client can see.
    cut = cut or steered_cut
    digest = content.request_digest(body)
    created = content.created_from(digest)
    message_id = "msg_" + digest[16:32].hex()
    output_tokens = content.count_tokens(text)
    response = {
        "id": "resp_" + digest[:24].hex(),
        "object": "response",
        "created_at": created,
        "status": "incomplete" if cut else "completed",
        "background": False,
        "completed_at": None if cut else created + 1,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": instructions,
        "max_output_tokens": limit,
        "max_tool_calls": None,
        "model": model,
        "output": [_message(message_id, text, "incomplete" if cut else "completed")],
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": store,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }
    return ResponsesAnswer(response, message_id, text)


def _conversation(items: Any, instructions: Any) -> tuple[content.Conversation, int]:
    """What the answer depends on: ``instructions`` and the system/developer items are the
    prompt, the other message items the turns, the last user text is echoed. Also the
    input's token count."""
    prompts = [instructions] if isinstance(instructions, str) else []
    if isinstance(items, str):
        conversation = content.conversation_of(prompts, [("user", items)], items)
        return conversation, content.count_tokens(items)
    if not isinstance(items, list):
        return content.conversation_of(prompts, [], ""), 0
    texts = [
        (str(item.get("role")), content.content_text(item.get("content")))
        for item in items
        if isinstance(item, dict) and item.get("type", "message") == "message"
    ]
    tokens = sum(content.count_tokens(text) for _, text in texts)
    user = [text for role, text in texts if role == "user"]
    last_user = user[-1] if user else (texts[-1][1] if texts else "")
    prompts += [text for role, text in texts if role in _PROMPT_ROLES]
    turns = [(role, text) for role, text in texts if role not in _PROMPT_ROLES]
    return content.conversation_of(prompts, turns, last_user), tokens


def _message(message_id: str, text: str | None, status: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [] if text is None else [_part(text)],
    }


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_body(answer: ResponsesAnswer) -> bytes:
    return orjson.dumps(answer.response)


def response_events(answer: ResponsesAnswer, chunks: int) -> list[bytes]:
    """The named events the SDK's typed stream expects; the Responses API sends no [DONE]."""
    return [
        named_event(data["type"], {"type": data["type"], "sequence_number": seq, **data})
        for seq, data in enumerate(_event_payloads(answer, chunks))
    ]


def _event_payloads(answer: ResponsesAnswer, chunks: int) -> Iterator[dict[str, Any]]:
    final = answer.response
    started = {
        **final,
        "status": "in_progress",
        "completed_at": None,
        "incomplete_details": None,
        "output": [],
        "usage": None,
    }
    item = final["output"][0]
    where = {"item_id": answer.message_id, "output_index": 0, "content_index": 0}
    yield {"type": "response.created", "response": started}
    yield {"type": "response.in_progress", "response": started}
    yield {
        "type": "response.output_item.added",
        "output_index": 0,
        "item": _message(answer.message_id, None, "in_progress"),
    }
    yield {"type": "response.content_part.added", **where, "part": _part("")}
    for piece in content.split_words(answer.text, chunks):
        yield {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
    yield {"type": "response.output_text.done", **where, "text": answer.text, "logprobs": []}
    yield {"type": "response.content_part.done", **where, "part": _part(answer.text)}
    yield {"type": "response.output_item.done", "output_index": 0, "item": item}
    # A cut answer ends with response.incomplete, as the real API does.
    done = "response.completed" if final["status"] == "completed" else "response.incomplete"
    yield {"type": done, "response": final}
