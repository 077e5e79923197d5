"""``POST /v1/embeddings`` and the ``/v1/models`` listing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from . import content
from .errors import RequestError
from .params import Body, optional_int, require_model
from .settings import (
    CREATED_BASE,
    DEFAULT_EMBEDDING_DIMENSIONS,
    MAX_EMBEDDING_DIMENSIONS,
    MODELS,
    OWNED_BY,
)


def embeddings_body(body: Body) -> bytes:
    model = require_model(body)
    inputs = _inputs(body.get("input"))
    dimensions = (
        optional_int(body, "dimensions", maximum=MAX_EMBEDDING_DIMENSIONS)
        or DEFAULT_EMBEDDING_DIMENSIONS
    )
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise RequestError(
            "'encoding_format' must be 'float' or 'base64'.", "encoding_format", "invalid_value"
        )
    data = []
    for index, item in enumerate(inputs):
        vector = content.embedding_vector(item, dimensions)
        embedding: Any = (
            content.embedding_base64(vector) if encoding == "base64" else vector.tolist()
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(content.embedding_tokens(item) for item in inputs)
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _inputs(value: Any) -> Sequence[str | list[int]]:
    """Normalise the four accepted ``input`` shapes to a list of strings or token arrays."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if _is_tokens(value):
            return [value]
        if all(isinstance(v, list) and v and _is_tokens(v) for v in value):
            return value
    raise RequestError(
        "'input' must be a string, an array of strings, or an array of token arrays.",
        "input",
        "invalid_value",
    )


def _is_tokens(value: list[Any]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": CREATED_BASE, "owned_by": OWNED_BY}


def models_list_body() -> bytes:
    return orjson.dumps({"object": "list", "data": [model_object(m) for m in MODELS]})
