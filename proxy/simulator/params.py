"""Reading request fields the way OpenAI validates them.

Only the fields the simulator acts on are checked; unknown fields are ignored so a
proxy can forward whatever it likes. Wrong types raise ``RequestError`` (a 400
with ``param`` set), which is what a real provider would say.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import RequestError

Body = Mapping[str, Any]


def model_of(body: Body) -> str:
    """The model name, or "" when absent; control switches read it before validation."""
    model = body.get("model")
    return model if isinstance(model, str) else ""


def require_model(body: Body) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(
            "You must provide a model parameter.", "model", "missing_required_parameter"
        )
    return model


def optional_int(
    body: Body, name: str, *, minimum: int = 1, maximum: int | None = None
) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    # bool is an int subclass in Python but not an integer in JSON schema.
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise RequestError(
            f"Invalid '{name}': must be {bound}, got {value}.", name, "invalid_value"
        )
    return value


def flag(body: Body, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"Invalid type for '{name}': expected a boolean.", name, "invalid_type")
    return value


def include_usage(body: Body, stream: bool) -> bool:
    """``stream_options.include_usage``, rejected without ``stream`` exactly like OpenAI does."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise RequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            "invalid_value",
        )
    if not isinstance(options, dict):
        raise RequestError(
            "Invalid type for 'stream_options': expected an object.",
            "stream_options",
            "invalid_type",
        )
    return options.get("include_usage") is True


def max_output_tokens(body: Body, *names: str) -> int | None:
    """The first of ``names`` that is set; chat accepts both the new and the legacy spelling."""
    for name in names:
        value = optional_int(body, name)
        if value is not None:
            return value
    return None


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """Chat/completions usage object, including the detail blocks current models return."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
