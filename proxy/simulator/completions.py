"""``POST /v1/completions``: the legacy ``text_completion`` API, same rules as chat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from . import content
from .errors import RequestError
from .framing import DONE, ChunkFramer, interleave
from .params import Body, flag, include_usage, max_output_tokens, optional_int, require_model, usage
from .settings import MAX_N, SYSTEM_FINGERPRINT


@dataclass(frozen=True, slots=True)
class TextChoice:
    index: int
    text: str
    finish_reason: str


@dataclass(frozen=True, slots=True)
class CompletionAnswer:
    id: str
    created: int
    model: str
    include_usage: bool
    choices: tuple[TextChoice, ...]
    prompt_tokens: int

    def usage(self) -> dict[str, Any]:
        completion = sum(content.count_tokens(c.text) for c in self.choices)
        return usage(self.prompt_tokens, completion)


def plan_completion(body: Body, chunks: int) -> CompletionAnswer:
    model = require_model(body)
    prompts, prompt_tokens = _prompts(body.get("prompt"))
    n = optional_int(body, "n", maximum=MAX_N) or 1
    limit = max_output_tokens(body, "max_tokens")
    stream = flag(body, "stream", False)
    digest = content.request_digest(body)
    choices = []
    # OpenAI numbers choices prompt-major: prompt 0 gets indices 0..n-1, and so on.
    for p, prompt in enumerate(prompts):
        for j in range(n):
            text, cut = content.truncate_words(content.answer_text(prompt, j, chunks), limit)
            choices.append(TextChoice(p * n + j, text, "length" if cut else "stop"))
    return CompletionAnswer(
        id="cmpl-" + digest[:12].hex(),
        created=content.created_from(digest),
        model=model,
        include_usage=include_usage(body, stream),
        choices=tuple(choices),
        prompt_tokens=prompt_tokens,
    )


def _prompts(prompt: Any) -> tuple[list[str], int]:
    """Prompt texts and their token count; token-id prompts are echoed as their numbers."""
    if isinstance(prompt, str):
        return [prompt], content.count_tokens(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt), sum(content.count_tokens(p) for p in prompt)
        if all(_is_token_list(p) for p in prompt):
            return [" ".join(map(str, p)) for p in prompt], sum(len(p) for p in prompt)
        if _is_token_list(prompt):
            return [" ".join(map(str, prompt))], len(prompt)
    raise RequestError(
        "'prompt' must be a string, an array of strings or an array of token arrays.",
        "prompt",
        "invalid_value",
    )


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _header(answer: CompletionAnswer) -> dict[str, Any]:
    return {
        "id": answer.id,
        "object": "text_completion",
        "created": answer.created,
        "model": answer.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def completion_body(answer: CompletionAnswer) -> bytes:
    body = _header(answer)
    body["choices"] = [
        {"text": c.text, "index": c.index, "logprobs": None, "finish_reason": c.finish_reason}
        for c in answer.choices
    ]
    body["usage"] = answer.usage()
    return orjson.dumps(body)


def completion_events(answer: CompletionAnswer, chunks: int) -> list[bytes]:
    framer = ChunkFramer(_header(answer), answer.include_usage)
    per_choice = []
    for choice in answer.choices:
        pieces: list[dict[str, Any]] = [
            {"text": piece, "index": choice.index, "logprobs": None, "finish_reason": None}
            for piece in content.split_words(choice.text, chunks)
        ]
        pieces.append(
            {
                "text": "",
                "index": choice.index,
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
        )
        per_choice.append(pieces)
    events = [framer.choices([chunk]) for chunk in interleave(per_choice)]
    if answer.include_usage:
        events.append(framer.usage(answer.usage()))
    events.append(DONE)
    return events
