"""Each assertion kind on recorded chat completion answers: what passes, what fails, and
the reason a reader of an eval report gets."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import pytest

from proxy.evals.assertions import (
    Assertion,
    Contains,
    EvalAnswer,
    FinishReason,
    JsonSchema,
    Judge,
    Length,
    NotContains,
    Regex,
    ToolCall,
    ToolCalled,
    answer_from_chat_completion,
    check,
    same_json,
)


def completion(
    message: dict[str, Any], finish_reason: str | None = "stop", model: str = "gpt-4o-mini"
) -> dict[str, Any]:
    """A chat completion body as the OpenAI API returns it."""
    return {
        "id": "chatcmpl-AbC123xyz",
        "object": "chat.completion",
        "created": 1733493000,
        "model": f"{model}-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "refusal": None, **message},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 112, "completion_tokens": 41, "total_tokens": 153},
        "system_fingerprint": "fp_0ba0d124f1",
    }


REPLY = (
    "Hi Ana, I'm sorry your Acme Router stopped working. A colleague will confirm whether a "
    "refund is possible and get back to you within two working days."
)
REPLY_BODY = completion({"content": REPLY})
TOOL_BODY = completion(
    {
        "content": None,
        "tool_calls": [
            {
                "id": "call_Zx81",
                "type": "function",
                "function": {"name": "lookup_order", "arguments": '{"order_id": "123"}'},
            },
            {
                "id": "call_Zx82",
                "type": "function",
                "function": {
                    "name": "notify",
                    "arguments": '{"channel": "email", "urgent": true, "retries": 2}',
                },
            },
        ],
    },
    finish_reason="tool_calls",
)
CUT_BODY = completion(
    {"content": "Dear Ana Silva, thank you for contacting us. To reset"}, "length"
)
JSON_BODY = completion({"content": '{"category": "billing", "confidence": 0.92}'})
RATE_LIMITED = {
    "error": {
        "message": "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 500.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}

REPLY_ANSWER = answer_from_chat_completion(200, REPLY_BODY)
TOOL_ANSWER = answer_from_chat_completion(200, TOOL_BODY)
CUT_ANSWER = answer_from_chat_completion(200, CUT_BODY)
JSON_ANSWER = answer_from_chat_completion(200, JSON_BODY)
ERROR_ANSWER = answer_from_chat_completion(429, RATE_LIMITED)

CATEGORY_SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"enum": ["billing", "bug", "other"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["category", "confidence"],
    "additionalProperties": False,
}


def passes(assertion: Assertion, answer: EvalAnswer) -> None:
    verdict = check(assertion, answer)
    assert verdict.passed is True, verdict.detail


def fails(assertion: Assertion, answer: EvalAnswer) -> str:
    verdict = check(assertion, answer)
    assert verdict.passed is False
    assert verdict.detail
    return verdict.detail


# -- reading an answer ---------------------------------------------------------------------


def test_a_text_answer_is_read() -> None:
    assert EvalAnswer(200, REPLY, "stop", (), None) == REPLY_ANSWER
    assert CUT_ANSWER.finish_reason == "length"


def test_a_tool_calling_answer_has_no_text_and_its_calls() -> None:
    assert (
        EvalAnswer(
            status=200,
            text="",
            finish_reason="tool_calls",
            tool_calls=(
                ToolCall("lookup_order", '{"order_id": "123"}'),
                ToolCall("notify", '{"channel": "email", "urgent": true, "retries": 2}'),
            ),
            error=None,
        )
        == TOOL_ANSWER
    )


def test_a_refusal_is_the_text_when_there_is_no_content() -> None:
    body = completion({"content": None, "refusal": "I can't help with that."})
    assert answer_from_chat_completion(200, body).text == "I can't help with that."


def test_content_parts_and_the_legacy_function_call_are_read() -> None:
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "Ana"}]
    legacy = {"name": "lookup_order", "arguments": '{"order_id": "9"}'}
    answer = answer_from_chat_completion(
        200, completion({"content": parts, "function_call": legacy}, "function_call")
    )
    assert answer.text == "Hello Ana"
    assert answer.tool_calls == (ToolCall("lookup_order", '{"order_id": "9"}'),)


def test_an_error_body_or_status_is_an_error_with_no_text() -> None:
    assert (
        EvalAnswer(
            status=429,
            text="",
            finish_reason=None,
            tool_calls=(),
            error="HTTP 429: Rate limit reached for gpt-4o-mini on requests per min (RPM): "
            "Limit 500. (rate_limit_exceeded)",
        )
        == ERROR_ANSWER
    )
    assert answer_from_chat_completion(502, None).error == "HTTP 502"
    # An error body is an error even with a 2xx status (a stream cut mid-answer says so).
    assert (
        answer_from_chat_completion(200, {"error": {"message": "boom"}}).error == "HTTP 200: boom"
    )
    assert answer_from_chat_completion(200, [1]).error == "the answer is not a JSON object"
    assert answer_from_chat_completion(200, {"choices": []}).error == "the answer has no choices"


# -- each kind ------------------------------------------------------------------------------


def test_contains() -> None:
    passes(Contains("colleague"), REPLY_ANSWER)
    assert fails(Contains("Colleague"), REPLY_ANSWER) == "expected 'Colleague' in the answer"
    passes(Contains("COLLEAGUE", case_sensitive=False), REPLY_ANSWER)
    assert fails(Contains("colleague"), TOOL_ANSWER) == "expected 'colleague' in the answer"


def test_not_contains_quotes_where_it_was_found() -> None:
    passes(NotContains("refund is approved"), REPLY_ANSWER)
    detail = fails(NotContains("REFUND IS POSSIBLE", case_sensitive=False), REPLY_ANSWER)
    assert detail.startswith("'REFUND IS POSSIBLE' found: …")
    assert "whether a refund is possible and get back" in detail
    passes(NotContains("REFUND IS POSSIBLE"), REPLY_ANSWER)


def test_regex_searches_the_text() -> None:
    passes(Regex(re.compile(r"(?i)SORRY|apolog")), REPLY_ANSWER)
    passes(Regex(re.compile(r"^\s*billing\s*$")), answer_with("  billing\n"))
    assert fails(Regex(re.compile(r"^\s*billing\s*$")), answer_with("billing, bug")) == (
        r"no match for /^\s*billing\s*$/"
    )


def test_json_schema() -> None:
    passes(JsonSchema(CATEGORY_SCHEMA), JSON_ANSWER)
    assert fails(JsonSchema(CATEGORY_SCHEMA), REPLY_ANSWER) == (
        "answer is not JSON: Expecting value at line 1 column 1"
    )
    wrong = answer_with('{"category": "refunds", "confidence": 0.5}')
    assert fails(JsonSchema(CATEGORY_SCHEMA), wrong) == (
        "$.category: 'refunds' is not one of ['billing', 'bug', 'other']"
    )
    fenced = answer_with('```json\n{"category": "bug", "confidence": 1}\n```')
    assert fails(JsonSchema(CATEGORY_SCHEMA), fenced).startswith("answer is not JSON")
    extra = answer_with('{"category": "bug", "confidence": 1, "why": "crash"}')
    assert "'why' was unexpected" in fails(JsonSchema(CATEGORY_SCHEMA), extra)


def test_json_schema_never_fetches_a_remote_ref(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite refuses such a schema; the check, given one anyway, fails without a fetch.
    fetched: list[object] = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kw: fetched.append(args))
    remote = JsonSchema({"$ref": "https://example.invalid/schemas/ticket.json"})
    assert fails(remote, JSON_ANSWER).startswith("the schema cannot be used:")
    assert fetched == []


def test_finish_reason() -> None:
    passes(FinishReason(("stop",)), REPLY_ANSWER)
    passes(FinishReason(("stop", "tool_calls")), TOOL_ANSWER)
    assert fails(FinishReason(("stop",)), CUT_ANSWER) == "finish_reason 'length', expected 'stop'"
    assert fails(FinishReason(("stop", "tool_calls")), CUT_ANSWER) == (
        "finish_reason 'length', expected 'stop' or 'tool_calls'"
    )
    no_reason = answer_from_chat_completion(200, completion({"content": "x"}, None))
    assert fails(FinishReason(("stop",)), no_reason) == "no finish_reason, expected 'stop'"


def test_tool_called_by_name() -> None:
    passes(ToolCalled("lookup_order"), TOOL_ANSWER)
    passes(ToolCalled("notify"), TOOL_ANSWER)
    assert fails(ToolCalled("refund"), TOOL_ANSWER) == (
        "tool 'refund' not called (called: lookup_order, notify)"
    )
    assert fails(ToolCalled("refund"), REPLY_ANSWER) == "tool 'refund' not called (called: none)"


def test_tool_called_arguments_are_a_subset_match() -> None:
    passes(ToolCalled("lookup_order", {"order_id": "123"}), TOOL_ANSWER)
    passes(ToolCalled("notify", {"urgent": True}), TOOL_ANSWER)
    passes(ToolCalled("notify", {"retries": 2.0, "channel": "email"}), TOOL_ANSWER)
    assert fails(ToolCalled("lookup_order", {"order_id": "124"}), TOOL_ANSWER) == (
        "lookup_order: $.order_id: '123' is not '124'"
    )
    assert fails(ToolCalled("lookup_order", {"order_id": 123}), TOOL_ANSWER) == (
        "lookup_order: $.order_id: '123' is not 123"
    )
    # JSON's true is not the number 1, though Python's True == 1.
    assert fails(ToolCalled("notify", {"urgent": 1}), TOOL_ANSWER) == (
        "notify: $.urgent: true is not 1"
    )
    assert fails(ToolCalled("lookup_order", {"customer": "ana"}), TOOL_ANSWER) == (
        "lookup_order: $.customer missing"
    )


def test_tool_called_passes_when_any_call_of_it_matches() -> None:
    calls = (
        ToolCall("lookup_order", '{"order_id": "1"}'),
        ToolCall("lookup_order", '{"order_id": "2"}'),
    )
    answer = EvalAnswer(200, "", "tool_calls", calls, None)
    passes(ToolCalled("lookup_order", {"order_id": "2"}), answer)
    assert fails(ToolCalled("lookup_order", {"order_id": "3"}), answer) == (
        "lookup_order: $.order_id: '1' is not '3' (and 1 other calls of it)"
    )


def test_tool_called_with_arguments_that_are_not_json() -> None:
    calls = (ToolCall("lookup_order", '{"order_id": "123"'),)
    answer = EvalAnswer(200, "", "tool_calls", calls, None)
    passes(ToolCalled("lookup_order"), answer)
    detail = fails(ToolCalled("lookup_order", {"order_id": "123"}), answer)
    assert detail.startswith("lookup_order: arguments are not JSON (")
    not_object = EvalAnswer(200, "", "tool_calls", (ToolCall("lookup_order", "[1]"),), None)
    assert fails(ToolCalled("lookup_order", {"a": 1}), not_object) == (
        "lookup_order: arguments are not a JSON object: '[1]'"
    )


def test_length_bounds() -> None:
    words = len(REPLY.split())
    passes(Length(min_chars=20, max_chars=len(REPLY)), REPLY_ANSWER)
    passes(Length(min_words=words, max_words=words), REPLY_ANSWER)
    assert fails(Length(max_chars=100), REPLY_ANSWER) == f"{len(REPLY)} characters, at most 100"
    assert fails(Length(max_words=10), REPLY_ANSWER) == f"{words} words, at most 10"
    assert fails(Length(min_words=1), TOOL_ANSWER) == "0 words, at least 1"
    assert fails(Length(min_chars=200), answer_with("é" * 199)) == "199 characters, at least 200"


def test_a_judge_is_not_checked_here() -> None:
    judge = Judge("Polite and does not promise a refund", 0.7, "judge.helpfulness")
    for answer in (REPLY_ANSWER, ERROR_ANSWER):
        verdict = check(judge, answer)
        assert verdict.passed is None
        assert verdict.detail == "scored by a judge"


@pytest.mark.parametrize(
    "assertion",
    [
        Contains("x"),
        NotContains("Rate limit"),
        Regex(re.compile("")),
        JsonSchema({"type": "object"}),
        FinishReason(("stop",)),
        ToolCalled("lookup_order"),
        Length(min_chars=0),
    ],
    ids=lambda a: a.kind,
)
def test_an_error_fails_every_other_assertion_with_the_error(assertion: Assertion) -> None:
    assert fails(assertion, ERROR_ANSWER) == f"no answer: {ERROR_ANSWER.error}"


def test_json_values_compare_as_json() -> None:
    assert same_json({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not same_json(True, 1)
    assert not same_json(0, False)
    assert not same_json({"a": 1}, {"a": 1, "b": 2})
    assert not same_json([1, 2], [2, 1])
    assert not same_json("1", 1)


def answer_with(text: str) -> EvalAnswer:
    return answer_from_chat_completion(200, completion({"content": text}))
