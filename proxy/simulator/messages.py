"""``POST /v1/messages``: Anthropic's Messages API face of the simulator.

The request is validated the way the real API does (``path: problem`` messages, all
``invalid_request_error``), the answer is planned once, then rendered as one Message
object or as the SSE sequence the SDKs parse: ``message_start``, per content block
``content_block_start`` / ``content_block_delta`` / ``content_block_stop`` (a ``ping``
after the first start), ``message_delta`` with the stop reason and the cumulative usage
(input and cache counts as well as output tokens, as the current API sends),
``message_stop``. The same ``x-sim-*`` controls and ``[[sim ...]]`` directives (read
from ``system``) apply as on the OpenAI face; errors use Anthropic's shape (``errors``).
A ``sim-judge*`` model answers its verdict as the text block, as on the chat face (``judge``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from . import content
from .directives import Steering
from .errors import RequestError, anthropic_error_message, anthropic_error_type
from .framing import named_event
from .judge import JudgeRule, judge_answer, judge_rule
from .params import Body

MESSAGES_PATH: Final = "/v1/messages"
VERSION_HEADER: Final = "anthropic-version"

_ROLES: Final = ("user", "assistant")
_TOOL_CHOICES: Final = ("auto", "any", "tool", "none")
_TOOL_NAME: Final = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_PARALLEL_TOOLS: Final = 2
"""Like the chat face: parallel tool use calls the first two tools, so clients see several."""


#: The Claude models ``GET /v1/models`` lists when asked the Anthropic way.
CLAUDE_MODELS: Final = (
    "claude-sonnet-4-5-20250929",
    "claude-opus-4-1-20250805",
    "claude-3-5-sonnet-20241022",
    "claude-3-5-haiku-20241022",
)
_MODELS_PATH: Final = "/v1/models"


def is_messages_path(path: str) -> bool:
    """Requests under ``/v1/messages`` get Anthropic's headers, auth and error shape."""
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


def is_anthropic_request(path: str, headers: Mapping[str, str]) -> bool:
    """The Messages API, or the model list asked as Anthropic's SDKs ask it (with the
    version header): Anthropic's auth, shapes and errors."""
    if is_messages_path(path):
        return True
    models = path == _MODELS_PATH or path.startswith(_MODELS_PATH + "/")
    return models and VERSION_HEADER in headers


def anthropic_model(model_id: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id,
        "created_at": "2024-10-22T00:00:00Z",
    }


def anthropic_models_body() -> bytes:
    return orjson.dumps(
        {
            "data": [anthropic_model(m) for m in CLAUDE_MODELS],
            "has_more": False,
            "first_id": CLAUDE_MODELS[0],
            "last_id": CLAUDE_MODELS[-1],
        }
    )


@dataclass(frozen=True, slots=True)
class Block:
    """One content block of the answer: ``text``, or ``tool_use`` with its input as JSON text."""

    type: str
    text: str = ""
    id: str = ""
    name: str = ""
    input_json: str = ""
    """Kept as text so the stream's ``input_json_delta`` pieces are slices of what was planned."""

    def rendered(self) -> dict[str, Any]:
        if self.type == "text":
            return {"type": "text", "text": self.text}
        return {
            "type": "tool_use",
            "id": self.id,
            "name": self.name,
            "input": orjson.loads(self.input_json),
        }


@dataclass(frozen=True, slots=True)
class MessagesAnswer:
    id: str
    model: str
    blocks: tuple[Block, ...]
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int


# --- validation ---------------------------------------------------------------------------


def _invalid(path: str, problem: str) -> RequestError:
    # Anthropic names the offending field first, e.g. "max_tokens: Field required".
    return RequestError(f"{path}: {problem}", param=path)


def _required(body: Body, name: str, path: str = "") -> Any:
    """``body[name]``; ``path`` is where ``body`` sits in the request ("" at the top)."""
    if body.get(name) is None:
        raise _invalid(f"{path}.{name}" if path else name, "Field required")
    return body[name]


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _invalid(path, "Input should be a valid string")
    return value


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(path, "Input should be a valid dictionary")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid(path, "Input should be a valid list")
    return value


def _max_tokens(body: Body) -> int:
    value = _required(body, "max_tokens")
    # bool is an int subclass in Python but not an integer in JSON.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid("max_tokens", "Input should be a valid integer")
    if value < 1:
        raise _invalid("max_tokens", "Input should be greater than or equal to 1")
    return value


def _blocks(value: Any, path: str) -> None:
    """A message's content: a string, or a list of typed blocks (text blocks need text)."""
    if isinstance(value, str):
        return
    for i, block in enumerate(_list(value, path)):
        where = f"{path}.{i}"
        block = _object(block, where)
        kind = _string(block.get("type"), f"{where}.type")
        if kind == "text":
            _string(block.get("text"), f"{where}.text")


def _messages(body: Body) -> list[Mapping[str, Any]]:
    messages = _list(_required(body, "messages"), "messages")
    if not messages:
        raise _invalid("messages", "at least one message is required")
    for i, message in enumerate(messages):
        message = _object(message, f"messages.{i}")
        if message.get("role") not in _ROLES:
            raise _invalid(f"messages.{i}.role", "Input should be 'user' or 'assistant'")
        _blocks(_required(message, "content", f"messages.{i}"), f"messages.{i}.content")
    return messages


def system_text(body: Body) -> str:
    """``system`` as plain text: a string, or the texts of its text blocks joined by spaces."""
    system = body.get("system")
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    for i, block in enumerate(_list(system, "system")):
        block = _object(block, f"system.{i}")
        if block.get("type") != "text":
            raise _invalid(f"system.{i}.type", "Input should be 'text'")
        _string(block.get("text"), f"system.{i}.text")
    return content.content_text(system)


def _stop_sequences(body: Body) -> list[str]:
    value = body.get("stop_sequences")
    if value is None:
        return []
    return [_string(s, f"stop_sequences.{i}") for i, s in enumerate(_list(value, "stop_sequences"))]


def _temperature(body: Body) -> None:
    value = body.get("temperature")
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _invalid("temperature", "Input should be a valid number")
    if not 0.0 <= value <= 1.0:
        raise _invalid("temperature", "Input should be between 0 and 1")


def _metadata(body: Body) -> None:
    value = body.get("metadata")
    if value is None:
        return
    user_id = _object(value, "metadata").get("user_id")
    if user_id is not None:
        _string(user_id, "metadata.user_id")


def _stream(body: Body) -> None:
    value = body.get("stream")
    if value is not None and not isinstance(value, bool):
        raise _invalid("stream", "Input should be a valid boolean")


def _tools(body: Body) -> list[Mapping[str, Any]]:
    """The client (custom) tools; server tools such as web search are accepted, never called."""
    value = body.get("tools")
    if value is None:
        return []
    custom: list[Mapping[str, Any]] = []
    for i, tool in enumerate(_list(value, "tools")):
        tool = _object(tool, f"tools.{i}")
        if tool.get("type", "custom") != "custom":
            continue
        name = _string(tool.get("name"), f"tools.{i}.name")
        if not _TOOL_NAME.match(name):
            raise _invalid(f"tools.{i}.name", f"String should match pattern '{_TOOL_NAME.pattern}'")
        if tool.get("description") is not None:
            _string(tool["description"], f"tools.{i}.description")
        _object(_required(tool, "input_schema", f"tools.{i}"), f"tools.{i}.input_schema")
        custom.append(tool)
    return custom


def _tool_choice(body: Body, tools: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    value = body.get("tool_choice")
    if value is None:
        return {"type": "auto"}
    if body.get("tools") is None:
        raise _invalid("tool_choice", "tool_choice may only be specified while providing tools.")
    choice = _object(value, "tool_choice")
    if choice.get("type") not in _TOOL_CHOICES:
        expected = ", ".join(f"'{c}'" for c in _TOOL_CHOICES)
        raise _invalid("tool_choice.type", f"Input should be {expected}")
    if choice["type"] == "tool":
        name = _string(_required(choice, "name", "tool_choice"), "tool_choice.name")
        if all(tool["name"] != name for tool in tools):
            raise _invalid("tool_choice.name", f"Tool '{name}' not found in 'tools'.")
    return choice


# --- planning -----------------------------------------------------------------------------


def plan_message(body: Body, chunks: int, steering: Steering | None = None) -> MessagesAnswer:
    """Validate the request and decide the whole answer; rendering is then mechanical."""
    model = _string(_required(body, "model"), "model")
    limit = _max_tokens(body)
    messages = _messages(body)
    system = system_text(body)
    stops = _stop_sequences(body)
    _temperature(body)
    _metadata(body)
    _stream(body)
    tools = _tools(body)
    choice = _tool_choice(body, tools)
    digest = content.request_digest(body)
    called = _called_tools(tools, choice)
    if called:
        blocks = _tool_blocks(digest, called, preamble=choice["type"] == "auto")
        stop_reason, stop_sequence = "tool_use", None
    else:
        # The conversation the chat face would see for the same prompt and turns, so a
        # Claude model reached through the translation answers as the chat face does.
        conversation = content.conversation_of(
            [system] if system else [],
            [(str(m.get("role")), content.content_text(m.get("content"))) for m in messages],
            content.last_user_text(messages),
        )
        judge = judge_rule(model)
        text, stop_reason, stop_sequence = _text(
            conversation, chunks, limit, stops, steering, judge
        )
        blocks = (Block("text", text=text),) if text else ()
    input_tokens = content.count_tokens(system) + sum(
        content.count_tokens(content.content_text(m.get("content"))) for m in messages
    )
    return MessagesAnswer(
        id="msg_01" + digest[:11].hex(),
        model=model,
        blocks=blocks,
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        input_tokens=input_tokens,
        output_tokens=sum(_block_tokens(b) for b in blocks),
    )


def _text(
    conversation: content.Conversation,
    chunks: int,
    limit: int,
    stops: Sequence[str],
    steering: Steering | None,
    judge: JudgeRule | None,
) -> tuple[str, str, str | None]:
    """The answer text, its stop reason and the stop sequence that ended it, if one did."""
    if judge is not None:  # a simulated judge answers with its verdict (``judge``)
        text, steered_cut = judge_answer(conversation.last_user, judge, steering)
    else:
        text = content.conversation_answer(conversation, 0, chunks)
        steered_cut = False
        if steering is not None:
            text, steered_cut = steering.shape(text, 0)
    text, hit = _cut_at_stop(text, stops)
    text, cut = content.truncate_words(text, limit)
    # Generation ends at whichever comes first: a cut before the stop sequence wins.
    if cut:
        return text, "max_tokens", None
    if hit is not None:
        return text, "stop_sequence", hit
    # A directive cut reports like a max_tokens cut: the only reason a client can see.
    return text, "max_tokens" if steered_cut else "end_turn", None


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """``text`` up to the earliest stop sequence (which the API leaves out of the answer)."""
    found = [(text.find(s), s) for s in stops if s and s in text]
    if not found:
        return text, None
    at, stop = min(found)
    return text[:at].rstrip(" "), stop


def _called_tools(
    tools: Sequence[Mapping[str, Any]], choice: Mapping[str, Any]
) -> list[Mapping[str, Any]]:
    if not tools or choice["type"] == "none":
        return []
    if choice["type"] == "tool":
        return [t for t in tools if t["name"] == choice["name"]][:1]
    parallel = choice.get("disable_parallel_tool_use") is not True
    return list(tools[: _PARALLEL_TOOLS if parallel else 1])


def _tool_blocks(
    digest: bytes, tools: Sequence[Mapping[str, Any]], *, preamble: bool
) -> tuple[Block, ...]:
    calls = tuple(
        Block(
            "tool_use",
            id=f"toolu_01{digest[11:21].hex()}{k:02x}",
            name=tool["name"],
            input_json=content.tool_arguments(tool.get("input_schema")),
        )
        for k, tool in enumerate(tools)
    )
    if not preamble:
        return calls  # with "any"/"tool" Claude goes straight to the call
    # With "auto" Claude usually says what it is about to do first: a text block at index 0.
    names = " and ".join(call.name for call in calls)
    return (Block("text", text=f"I'll use {names} for this."), *calls)


def _block_tokens(block: Block) -> int:
    if block.type == "text":
        return content.count_tokens(block.text)
    return content.count_tokens(block.input_json) + 1


# --- rendering ----------------------------------------------------------------------------


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _message(answer: MessagesAnswer, *, final: bool) -> dict[str, Any]:
    return {
        "id": answer.id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [b.rendered() for b in answer.blocks] if final else [],
        "stop_reason": answer.stop_reason if final else None,
        "stop_sequence": answer.stop_sequence if final else None,
        # message_start reports the first output token, as the API's does.
        "usage": _usage(answer.input_tokens, answer.output_tokens if final else 1),
    }


def message_body(answer: MessagesAnswer) -> bytes:
    return orjson.dumps(_message(answer, final=True))


def message_events(answer: MessagesAnswer, chunks: int) -> list[bytes]:
    """The whole SSE stream; each event's ``event:`` name equals its data's ``type``."""
    return [named_event(data["type"], data) for data in _event_payloads(answer, chunks)]


def _event_payloads(answer: MessagesAnswer, chunks: int) -> Iterator[dict[str, Any]]:
    yield {"type": "message_start", "message": _message(answer, final=False)}
    for index, block in enumerate(answer.blocks):
        opening = (
            {"type": "text", "text": ""}
            if block.type == "text"
            else {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
        )
        yield {"type": "content_block_start", "index": index, "content_block": opening}
        if index == 0:
            yield {"type": "ping"}
        for delta in _deltas(block, chunks):
            yield {"type": "content_block_delta", "index": index, "delta": delta}
        yield {"type": "content_block_stop", "index": index}
    if not answer.blocks:
        yield {"type": "ping"}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence},
        # Cumulative, as the API's: the input and cache counts again, and the output.
        "usage": {
            "input_tokens": answer.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": answer.output_tokens,
        },
    }
    yield {"type": "message_stop"}


def _deltas(block: Block, chunks: int) -> Iterator[dict[str, Any]]:
    if block.type == "text":
        for piece in content.split_words(block.text, chunks):
            yield {"type": "text_delta", "text": piece}
        return
    # The API opens a tool's input with an empty fragment; the SDK concatenates them all.
    yield {"type": "input_json_delta", "partial_json": ""}
    for piece in content.split_even(block.input_json, chunks):
        yield {"type": "input_json_delta", "partial_json": piece}


def with_error_event(events: Sequence[bytes], status: int, model: str) -> list[bytes]:
    """The first half of a stream, then an ``error`` event: an overload after the 200 went out."""
    message = anthropic_error_message(status, model=model, param="messages", retry_ms=1000)
    error = {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
    return [*events[: max(1, len(events) // 2)], named_event("error", error)]
