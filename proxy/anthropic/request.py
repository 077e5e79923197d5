"""A chat completions request, translated to a Messages API request, or refused by name.

``to_messages(body, default_max_tokens=...)`` is a pure function of the parsed JSON body.
Every field is either translated faithfully, accepted because it cannot change the answer,
or refused with ``InvalidRequest`` whose ``param`` names it (``messages[2].content[1]``,
``tools[0].function.strict``...). Nothing is dropped silently: that is the bar Anthropic's
own OpenAI-compatibility layer does not meet (it ignores ``response_format``, ``strict``,
``n``... and concatenates every system message).

Translated
    ``model`` (as given: routing and aliases are the caller's), ``messages`` (below),
    ``max_completion_tokens`` / ``max_tokens`` (``default_max_tokens`` when both are absent:
    the Messages API requires one; both present and different is refused), ``stop`` (a
    string or a list -> ``stop_sequences``; a whitespace-only sequence is refused, as the
    Messages API refuses it), ``temperature``, ``top_p``, ``user`` and ``safety_identifier``
    (-> ``metadata.user_id``), ``stream``, ``stream_options`` (only ``include_usage``, which
    the stream translator honours, and ``include_obfuscation``, padding we never add),
    ``tools`` (functions -> ``name``/``description``/``input_schema``; a schema without
    ``type``, ``{}`` included, gets ``"type": "object"``, which the Messages API requires and
    OpenAI assumes; another type is refused), ``tool_choice`` (``auto`` -> auto, ``required``
    -> any, ``none`` -> none, a named function -> tool; refused without a non-empty
    ``tools``, as OpenAI refuses it), ``parallel_tool_calls: false`` (->
    ``disable_parallel_tool_use`` on the tool choice).

Temperature
    OpenAI's scale is 0-2, Anthropic's 0-1. A value in 0-1 is passed unchanged; above 1 is
    refused (400, ``param="temperature"``). A rescaling (t/2) was rejected: the two scales
    are not calibrated to each other, so no mapping is faithful, and halving would silently
    change the value every client tuned its prompts with (0.7 would become 0.35) while
    passing 0-1 through keeps the number the caller wrote. Refusing above 1 is what a client
    can see and fix; capping to 1 (Anthropic's compatibility layer) is a silent change.

Messages
    Every ``system`` and ``developer`` message, wherever it stands, becomes a text block of
    the top-level ``system``, in order (the Messages API has no system turn). ``user``
    content: text, and ``image_url`` (a ``data:`` URL of jpeg/png/gif/webp -> a base64
    source; an ``https`` URL -> a url source; ``detail`` other than ``auto`` is refused, the
    Messages API has no such knob). ``assistant``: text, and ``tool_calls`` -> ``tool_use``
    blocks whose ``input`` is the parsed ``arguments`` (a JSON object; ``""`` is ``{}``).
    ``tool`` -> a ``tool_result`` block in a user turn; a tool message must follow the
    assistant message whose ``tool_calls`` hold its ``tool_call_id`` (or another tool
    message answering that one), else it is refused by name (``messages[i]``): the Messages
    API takes tool results only first in the user turn right after the ``tool_use``.
    Consecutive turns of one role (including tool results followed by a user message) are
    merged into one message, in order, as the Messages API requires alternating roles.

    An assistant message as the openai SDK returns it, replayed as history, is accepted:
    ``annotations`` (``[]`` or null), ``refusal``, ``audio`` and ``function_call`` (null) hold
    nothing and are left out; each is refused by name when it holds something.

    Text that is empty or only whitespace (the Messages API refuses such text blocks) is
    refused in ``user`` content, naming the part; in ``system``/``developer``, ``assistant``
    and ``tool`` content such a block is left out, as it says nothing (an assistant message
    left with no block at all is refused). Also refused: ``name`` on a message (no
    equivalent), ``audio``/``file``/``input_audio``/``refusal`` parts, the deprecated
    ``function`` role and ``function_call``, and a conversation that ends with an assistant
    message: the Messages API would *continue* that message (prefill) where chat
    completions answers after it.

Refused unless they hold their default (the value that asks for nothing)
    ``n`` (1), ``logprobs`` (false), ``top_logprobs``, ``presence_penalty`` and
    ``frequency_penalty`` (0), ``logit_bias`` (empty), ``seed``, ``response_format``
    (``{"type": "text"}``), ``modalities`` (``["text"]``), ``audio``, ``store`` (false:
    nothing stores the completion), ``service_tier`` (``auto``/``default``), ``functions``,
    ``function_call``, ``reasoning_effort``, ``verbosity``, ``web_search_options``,
    ``prediction``.

response_format
    ``json_object`` and ``json_schema`` are refused by name. A forced tool (the schema as a
    tool's ``input_schema``, ``tool_choice`` naming it, the ``tool_use`` input returned as the
    content) was considered and left for later: it collides with the caller's own tools and
    tool choice, turns a ``max_tokens`` stop into invalid JSON, and needs the response and
    stream translators to rewrite a tool call into content; half of that is not faithful.

Accepted and not sent (they cannot change the answer)
    ``metadata`` (OpenAI's tags for stored completions: with ``store`` refused they tag
    nothing) and ``prompt_cache_key`` (a routing hint for OpenAI's prompt cache).

Anything else is refused by name (``code="unsupported_parameter"``): a field added to the
OpenAI API later is refused until someone decides what it means here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import orjson

from proxy.errors import InvalidRequest

JSON = dict[str, Any]

#: Fields refused unless they hold their default: (name, is it the default?).
_DEFAULT_ONLY: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v is None or (v == 1 and not isinstance(v, bool)),
    "logprobs": lambda v: v is None or v is False,
    "top_logprobs": lambda v: v is None,
    "presence_penalty": lambda v: v is None or (v == 0 and not isinstance(v, bool)),
    "frequency_penalty": lambda v: v is None or (v == 0 and not isinstance(v, bool)),
    "logit_bias": lambda v: v is None or v == {},
    "seed": lambda v: v is None,
    "response_format": lambda v: v is None or v == {"type": "text"},
    "modalities": lambda v: v is None or v == ["text"],
    "audio": lambda v: v is None,
    "store": lambda v: v is None or v is False,
    "service_tier": lambda v: v in (None, "auto", "default"),
    "functions": lambda v: v is None,
    "function_call": lambda v: v is None,
    "reasoning_effort": lambda v: v is None,
    "verbosity": lambda v: v is None,
    "web_search_options": lambda v: v is None,
    "prediction": lambda v: v is None,
}
#: Accepted with any value and not sent: they cannot change the answer (module docstring).
_HARMLESS = frozenset({"metadata", "prompt_cache_key"})
_TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "temperature",
        "top_p",
        "user",
        "safety_identifier",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }
)
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_MESSAGE_KEYS = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset(
        {
            "role",
            "content",
            "name",
            "tool_calls",
            "refusal",
            "audio",
            "function_call",
            "annotations",
        }
    ),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}
#: Message keys accepted only when they hold nothing (the openai SDK's ``to_dict()`` and
#: ``model_dump()`` of an answer carry them empty); holding something, they are refused.
_EMPTY_ONLY: dict[str, Callable[[Any], bool]] = {
    "name": lambda v: v is None,
    "refusal": lambda v: v is None,
    "audio": lambda v: v is None,
    "function_call": lambda v: v is None,
    "annotations": lambda v: v is None or v == [],
}


def _refuse(param: str, message: str, code: str = "unsupported_parameter") -> NoReturn:
    raise InvalidRequest(message, param=param, code=code)


def _invalid(param: str, message: str) -> NoReturn:
    raise InvalidRequest(message, param=param, code="invalid_value")


def to_messages(body: JSON, *, default_max_tokens: int) -> JSON:
    """The Messages API request for the chat completions request ``body`` (module
    docstring), or ``InvalidRequest`` naming the first field that cannot be translated."""
    if not isinstance(body, dict):
        _invalid("", "the request body must be a JSON object")
    for name, value in body.items():
        if name in _TRANSLATED or name in _HARMLESS:
            continue
        is_default = _DEFAULT_ONLY.get(name)
        if is_default is None:
            _refuse(name, f"'{name}' is not supported for Claude models")
        if not is_default(value):
            _refuse(name, f"'{name}' = {_show(value)} cannot be translated for Claude models")

    model = body.get("model")
    if not isinstance(model, str) or not model:
        _invalid("model", "'model' must be a non-empty string")
    out: JSON = {"model": model, "max_tokens": _max_tokens(body, default_max_tokens)}
    system, messages = _conversation(body.get("messages"))
    if system:
        out["system"] = system
    out["messages"] = messages
    _tools(body, out)
    stop = _stop(body.get("stop"))
    if stop:
        out["stop_sequences"] = stop
    temperature = body.get("temperature")
    if temperature is not None:
        if not _is_number(temperature) or temperature < 0:
            _invalid("temperature", "'temperature' must be a number from 0 to 1")
        if temperature > 1:
            _refuse(
                "temperature",
                f"'temperature' = {temperature}: Claude models take 0 to 1 (OpenAI's scale is "
                "0 to 2 and the two are not calibrated to each other); send a value from 0 to 1",
                code="unsupported_value",
            )
        out["temperature"] = temperature
    top_p = body.get("top_p")
    if top_p is not None:
        if not _is_number(top_p) or not 0 <= top_p <= 1:
            _invalid("top_p", "'top_p' must be a number from 0 to 1")
        out["top_p"] = top_p
    user_id = _user_id(body)
    if user_id is not None:
        out["metadata"] = {"user_id": user_id}
    _stream(body, out)
    return out


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _max_tokens(body: JSON, default: int) -> int:
    completion, legacy = body.get("max_completion_tokens"), body.get("max_tokens")
    if completion is not None and legacy is not None and completion != legacy:
        _refuse(
            "max_tokens",
            "'max_tokens' and 'max_completion_tokens' disagree; send one of them",
            code="invalid_value",
        )
    value = completion if completion is not None else legacy
    if value is None:
        return default
    param = "max_completion_tokens" if completion is not None else "max_tokens"
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        _invalid(param, f"'{param}' must be a positive integer")
    return value


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    sequences = [stop] if isinstance(stop, str) else stop
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        _invalid("stop", "'stop' must be a string or a list of strings")
    for sequence in sequences:
        if not sequence.strip():
            _refuse(
                "stop",
                "Claude models refuse a stop sequence that is empty or only whitespace",
                code="unsupported_value",
            )
    return list(sequences)


def _user_id(body: JSON) -> str | None:
    user, safety = body.get("user"), body.get("safety_identifier")
    for name, value in (("user", user), ("safety_identifier", safety)):
        if value is not None and not isinstance(value, str):
            _invalid(name, f"'{name}' must be a string")
    if user is not None and safety is not None and user != safety:
        _refuse(
            "safety_identifier",
            "'user' and 'safety_identifier' disagree; Claude models take one user id",
            code="invalid_value",
        )
    return safety if safety is not None else user


def _stream(body: JSON, out: JSON) -> None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        _invalid("stream", "'stream' must be a boolean")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            _invalid("stream_options", "'stream_options' is only allowed with 'stream': true")
        if not isinstance(options, dict):
            _invalid("stream_options", "'stream_options' must be an object")
        for key, value in options.items():
            if key not in ("include_usage", "include_obfuscation"):
                _refuse(f"stream_options.{key}", f"'stream_options.{key}' is not supported")
            if value is not None and not isinstance(value, bool):
                _invalid(f"stream_options.{key}", f"'stream_options.{key}' must be a boolean")
    if stream:
        out["stream"] = True


# -- tools --------------------------------------------------------------------------------


def _tools(body: JSON, out: JSON) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            _invalid("tools", "'tools' must be a list")
        if tools:
            out["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = _tool_choice(body.get("tool_choice"))
    if choice is not None and "tools" not in out:
        # OpenAI refuses it too; the Messages API would refuse a tool choice without tools.
        _refuse(
            "tool_choice",
            "'tool_choice' is only allowed with a non-empty 'tools'",
            code="invalid_value",
        )
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        _invalid("parallel_tool_calls", "'parallel_tool_calls' must be a boolean")
    if parallel is False and "tools" in out:
        if choice is None:
            choice = {"type": "auto"}
        if choice["type"] != "none":  # no tool at all: nothing to run in parallel
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice


def _tool(tool: Any, param: str) -> JSON:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        _refuse(f"{param}.type", "only tools of type 'function' can be translated")
    for key in tool:
        if key not in ("type", "function"):
            _refuse(f"{param}.{key}", f"'{param}.{key}' is not supported")
    function = tool.get("function")
    if not isinstance(function, dict):
        _invalid(f"{param}.function", "a function tool needs a 'function' object")
    for key, value in function.items():
        if key == "strict":
            if value:
                _refuse(
                    f"{param}.function.strict",
                    "strict function calling cannot be translated for Claude models",
                )
        elif key not in ("name", "description", "parameters"):
            _refuse(f"{param}.function.{key}", f"'{param}.function.{key}' is not supported")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        _invalid(f"{param}.function.name", "a function needs a name")
    out: JSON = {"name": name}
    description = function.get("description")
    if description is not None:
        if not isinstance(description, str):
            _invalid(f"{param}.function.description", "a description must be a string")
        out["description"] = description
    parameters = function.get("parameters")
    if parameters is None:
        # OpenAI: omitting parameters defines a function with an empty parameter list.
        parameters = {"type": "object", "properties": {}}
    elif not isinstance(parameters, dict):
        _invalid(f"{param}.function.parameters", "'parameters' must be a JSON schema object")
    elif "type" not in parameters:
        # OpenAI takes a schema without a type ({} included) as an object; the Messages API
        # requires input_schema.type "object".
        parameters = {"type": "object", **parameters}
    elif parameters["type"] != "object":
        _refuse(
            f"{param}.function.parameters.type",
            "Claude models take a tool's parameters as a JSON schema of type 'object'",
            code="unsupported_value",
        )
    out["input_schema"] = parameters
    return out


def _tool_choice(choice: Any) -> JSON | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            _invalid("tool_choice.function.name", "a named tool choice needs a function name")
        return {"type": "tool", "name": name}
    _refuse("tool_choice", f"'tool_choice' = {_show(choice)} cannot be translated")


# -- messages -----------------------------------------------------------------------------


def _conversation(messages: Any) -> tuple[list[JSON], list[JSON]]:
    """(system text blocks, Messages API messages) of the chat ``messages``."""
    if not isinstance(messages, list) or not messages:
        _invalid("messages", "'messages' must be a non-empty list")
    system: list[JSON] = []
    turns: list[JSON] = []
    last_index = 0
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            _invalid(param, "a message must be an object")
        role = message.get("role")
        allowed = _MESSAGE_KEYS.get(role) if isinstance(role, str) else None
        if allowed is None:
            _refuse(f"{param}.role", f"the role {_show(role)} cannot be translated")
        for key, value in message.items():
            if key not in allowed:
                _refuse(f"{param}.{key}", f"'{key}' on a {role} message is not supported")
            is_empty = _EMPTY_ONLY.get(key)
            if is_empty is not None and not is_empty(value):
                _refuse(
                    f"{param}.{key}",
                    f"'{key}' on a message has no equivalent for Claude models",
                )
        if role in ("system", "developer"):
            system.extend(_said(_text_blocks(message.get("content"), param)))
            continue
        if role == "user":
            target, blocks = "user", _user_content(message.get("content"), param)
        elif role == "assistant":
            target, blocks = "assistant", _assistant_content(message, param)
        else:
            _check_follows_tool_call(message, turns, param)
            target, blocks = "user", [_tool_result(message, param)]
        if turns and turns[-1]["role"] == target:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": target, "content": blocks})
        last_index = i
    if not turns:
        _invalid("messages", "'messages' needs at least one user message besides system ones")
    if turns[-1]["role"] == "assistant":
        _refuse(
            f"messages[{last_index}]",
            "the conversation ends with an assistant message: Claude models would continue "
            "that message (prefill) where chat completions answers after it",
            code="unsupported_value",
        )
    return system, turns


def _check_follows_tool_call(message: JSON, turns: list[JSON], param: str) -> None:
    """A tool message must answer a tool call of the assistant turn right before it (after
    other tool messages only): the Messages API takes ``tool_result`` blocks only at the
    start of the user turn that follows the ``tool_use``."""
    previous = turns[-1] if turns else None
    if previous is not None and previous["role"] == "user":
        # Only tool results so far: the previous message was a tool message.
        only_results = all(block["type"] == "tool_result" for block in previous["content"])
        previous = turns[-2] if only_results and len(turns) > 1 else None
    calls = (
        {block["id"] for block in previous["content"] if block["type"] == "tool_use"}
        if previous is not None
        else set()
    )
    if not calls:
        _refuse(
            param,
            "a tool message must follow the assistant message with its tool call (or another "
            "tool message): Claude models take tool results only right after the tool call",
            code="unsupported_value",
        )
    call_id = message.get("tool_call_id")
    if isinstance(call_id, str) and call_id and call_id not in calls:
        _refuse(
            f"{param}.tool_call_id",
            f"'tool_call_id' {_show(call_id)} answers no tool call of the assistant message "
            "before it",
            code="invalid_value",
        )


def _said(blocks: list[JSON]) -> list[JSON]:
    """``blocks`` without the text that is empty or only whitespace."""
    return [block for block in blocks if block["type"] != "text" or block["text"].strip()]


def _text_blocks(content: Any, param: str) -> list[JSON]:
    """Text blocks of a content that may only hold text (system, developer, tool)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        _invalid(f"{param}.content", "'content' must be a string or a list of parts")
    blocks = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            _refuse(f"{param}.content[{j}]", "only text parts can be translated here")
        blocks.append(_text_part(part, f"{param}.content[{j}]"))
    return blocks


def _text_part(part: JSON, param: str) -> JSON:
    for key in part:
        if key not in ("type", "text"):
            _refuse(f"{param}.{key}", f"'{key}' on a text part is not supported")
    text = part.get("text")
    if not isinstance(text, str):
        _invalid(f"{param}.text", "a text part needs a string 'text'")
    return {"type": "text", "text": text}


def _non_empty(blocks: list[JSON], param: str, *, parts: bool) -> list[JSON]:
    """``blocks`` of a user message (``param`` is its content; ``parts``: a list of parts,
    named one by one), refused when one is empty or only whitespace."""
    for j, block in enumerate(blocks):
        if block["type"] == "text" and not block["text"].strip():
            _refuse(
                f"{param}[{j}]" if parts else param,
                "Claude models refuse text content that is empty or only whitespace",
                code="unsupported_value",
            )
    if not blocks:
        _refuse(param, "Claude models refuse a message without content", code="unsupported_value")
    return blocks


def _user_content(content: Any, param: str) -> list[JSON]:
    if isinstance(content, str):
        return _non_empty([{"type": "text", "text": content}], f"{param}.content", parts=False)
    if not isinstance(content, list):
        _invalid(f"{param}.content", "'content' must be a string or a list of parts")
    blocks = []
    for j, part in enumerate(content):
        part_param = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append(_text_part(part, part_param))
        elif kind == "image_url":
            blocks.append(_image(part, part_param))
        else:
            _refuse(part_param, f"a content part of type {_show(kind)} cannot be translated")
    return _non_empty(blocks, f"{param}.content", parts=True)


def _image(part: JSON, param: str) -> JSON:
    for key in part:
        if key not in ("type", "image_url"):
            _refuse(f"{param}.{key}", f"'{key}' on an image part is not supported")
    image = part.get("image_url")
    if not isinstance(image, dict) or not isinstance(image.get("url"), str):
        _invalid(f"{param}.image_url", "an image part needs 'image_url': {'url': ...}")
    for key, value in image.items():
        if key == "detail":
            if value not in (None, "auto"):
                _refuse(
                    f"{param}.image_url.detail",
                    f"image detail {_show(value)} has no equivalent for Claude models",
                    code="unsupported_value",
                )
        elif key != "url":
            _refuse(f"{param}.image_url.{key}", f"'{key}' on an image is not supported")
    url: str = image["url"]
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not comma or encoding != "base64" or not data:
            _invalid(f"{param}.image_url.url", "a data URL must be data:<type>;base64,<data>")
        if media_type not in _IMAGE_TYPES:
            _refuse(
                f"{param}.image_url.url",
                f"image type {_show(media_type)}: Claude models take jpeg, png, gif and webp",
                code="unsupported_value",
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith("https://"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    _refuse(
        f"{param}.image_url.url",
        "an image URL must be https:// or a base64 data: URL",
        code="unsupported_value",
    )


def _assistant_content(message: JSON, param: str) -> list[JSON]:
    content = message.get("content")
    blocks: list[JSON] = []
    if content is not None:
        blocks = _said(_text_blocks(content, param))
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if not isinstance(tool_calls, list):
            _invalid(f"{param}.tool_calls", "'tool_calls' must be a list")
        blocks.extend(
            _tool_use(call, f"{param}.tool_calls[{k}]") for k, call in enumerate(tool_calls)
        )
    if not blocks:
        _refuse(
            f"{param}.content",
            "Claude models refuse an assistant message without text or tool calls",
            code="unsupported_value",
        )
    return blocks


def _tool_use(call: Any, param: str) -> JSON:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        _refuse(f"{param}.type", "only function tool calls can be translated")
    function = call.get("function")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        _invalid(f"{param}.id", "a tool call needs an id")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        _invalid(f"{param}.function", "a tool call needs a function with a name")
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        _invalid(f"{param}.function.arguments", "'arguments' must be a JSON string")
    try:
        parsed = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        _invalid(f"{param}.function.arguments", "'arguments' is not valid JSON")
    if not isinstance(parsed, dict):
        _refuse(
            f"{param}.function.arguments",
            "Claude models take tool input as a JSON object",
            code="unsupported_value",
        )
    return {"type": "tool_use", "id": call_id, "name": function["name"], "input": parsed}


def _tool_result(message: JSON, param: str) -> JSON:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        _invalid(f"{param}.tool_call_id", "a tool message needs 'tool_call_id'")
    result: JSON = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content.strip():
            result["content"] = content
    else:
        blocks = _said(_text_blocks(content, param))
        if blocks:
            result["content"] = blocks
    return result
