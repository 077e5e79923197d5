"""The simulated judge (``sim-judge*`` models): which text it judges, how it scores it, and
how the chat, Responses and Messages planners answer with its verdict."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from proxy.simulator.chat import chat_body, chat_events, plan_chat
from proxy.simulator.content import answer_text, count_tokens
from proxy.simulator.directives import Directives, Steering
from proxy.simulator.judge import (
    JudgeRule,
    judge_answer,
    judge_document,
    judge_rule,
    judge_words,
    judged_text,
    verdict,
)
from proxy.simulator.messages import message_body, plan_message
from proxy.simulator.responses_api import plan_response

pytestmark = pytest.mark.timeout(5)

PROPORTIONAL = JudgeRule.PROPORTIONAL
STRICT = JudgeRule.STRICT
QUESTION = "Where is my parcel?"
CLEAN = answer_text(QUESTION)


def judged(answer: str, question: str = QUESTION) -> str:
    """The last user message an eval run sends its judge."""
    return f"Question:\n{question}\n\nAnswer:\n{answer}"


def document(last_user: str, rule: JudgeRule = PROPORTIONAL) -> dict[str, Any]:
    found: dict[str, Any] = orjson.loads(judge_document(last_user, rule))
    return found


# --- the rule -------------------------------------------------------------------------------


def test_model_names_choose_the_rule() -> None:
    assert judge_rule("sim-judge") is PROPORTIONAL
    assert judge_rule("sim-judge-v2") is PROPORTIONAL  # a suffix pins a version
    assert judge_rule("sim-judge-strict") is STRICT
    assert judge_rule("sim-judge-strict-2") is STRICT
    for model in ("gpt-4o-mini", "sim-judg", "my-sim-judge", "sim-status-500", ""):
        assert judge_rule(model) is None, model


def test_clean_simulated_answer_scores_full_marks() -> None:
    words = len(CLEAN.split())
    assert document(judged(CLEAN)) == {
        "score": 1.0,
        "reason": f"0 of {words} words are off-topic noise.",
    }
    assert document(judged(CLEAN), STRICT)["score"] == 1.0


def test_half_noise_scores_half_and_strict_fails_it() -> None:
    answer = "Your parcel arrives tomorrow banana kettle meadow orbit"
    assert document(judged(answer)) == {
        "score": 0.5,
        "reason": "4 of 8 words are off-topic noise.",
    }
    assert document(judged(answer), STRICT) == {
        "score": 0.0,
        "reason": "4 of 8 words are off-topic noise. The strict judge fails any noise.",
    }


def test_score_is_rounded_to_two_decimals() -> None:
    assert verdict("one two banana", PROPORTIONAL).score == 0.67
    assert verdict("a b c d e f banana", PROPORTIONAL).score == 0.86


def test_one_word_reason_is_singular() -> None:
    assert verdict("pebble", PROPORTIONAL).reason == "1 of 1 word is off-topic noise."
    assert verdict("pebble", PROPORTIONAL).score == 0.0


@pytest.mark.parametrize(
    "last_user", [judged(""), judged("   \n  "), "", "Answer:", judged("... -- !")]
)
def test_empty_answer_scores_zero(last_user: str) -> None:
    assert document(last_user) == {"score": 0.0, "reason": "The answer is empty."}
    assert document(last_user, STRICT)["score"] == 0.0


def test_without_an_answer_line_the_whole_message_is_judged() -> None:
    message = "Rate: the meadow is green"
    assert judged_text(message) == message
    assert document(message) == {"score": 0.8, "reason": "1 of 5 words are off-topic noise."}


def test_only_what_follows_the_last_answer_line_is_judged() -> None:
    # Noise in the question, in an earlier answer or on a line that merely starts with
    # "Answer:" is not the judged answer's fault.
    message = (
        "Question:\nWhy is the banana kettle hollow?\n\nAnswer:\nbanana orbit\n\n"
        "Answer: lantern\n  Answer:  \nThe parcel is on its way."
    )
    assert judged_text(message) == "The parcel is on its way."
    assert verdict(judged_text(message), STRICT).score == 1.0


def test_punctuation_at_word_ends_and_case_do_not_hide_noise() -> None:
    answer = 'BANANA, "Meadow"! (orbit)... Tundra\u2019s? well-known don\'t \u2014 stop.'
    # Words: banana meadow orbit tundra's well-known don't stop (the lone dash is no word).
    assert judge_words(answer) == [
        "banana",
        "meadow",
        "orbit",
        "tundra\u2019s",
        "well-known",
        "don't",
        "stop",
    ]
    assert verdict(answer, PROPORTIONAL).noise == 3
    assert verdict(answer, PROPORTIONAL).score == 0.57


def test_noise_directive_lowers_the_score_by_the_share_of_swapped_words() -> None:
    clean_words = CLEAN.split(" ")
    for noise, seed in ((0.2, 1), (0.5, 2), (0.9, 3)):
        noisy, cut = Steering(Directives(noise=noise), random.Random(seed)).shape(CLEAN, 0)
        assert not cut
        swapped = sum(a != b for a, b in zip(clean_words, noisy.split(" "), strict=True))
        assert swapped > 0
        score = document(judged(noisy))["score"]
        assert score == round(1 - swapped / len(clean_words), 2) < 1.0
        assert document(judged(noisy), STRICT)["score"] == 0.0


def test_truncate_directive_cuts_the_verdict_short() -> None:
    full = judge_document(judged(CLEAN), PROPORTIONAL)
    steering = Steering(Directives(truncate=1.0, noise=1.0), random.Random(4))
    text, cut = judge_answer(judged(CLEAN), PROPORTIONAL, steering)
    assert cut
    assert 0 < len(text) < len(full)
    assert full.startswith(text)  # noise does not touch the verdict
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
    untouched = Steering(Directives(noise=1.0, longer=3.0), random.Random(4))
    assert judge_answer(judged(CLEAN), PROPORTIONAL, untouched) == (full, False)


# --- the planners ---------------------------------------------------------------------------

SCHEMA: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "verdict",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"score": {"type": "number"}, "reason": {"type": "string"}},
            "required": ["score", "reason"],
            "additionalProperties": False,
        },
    },
}
NOISY = "The parcel banana is on its way"


def judge_chat(model: str = "sim-judge", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a strict grader. Answer JSON."},
            {"role": "user", "content": judged(NOISY)},
        ],
        **extra,
    }


@pytest.mark.parametrize(
    "response_format", [None, SCHEMA, {"type": "json_object"}, {"type": "text"}]
)
def test_chat_answers_the_verdict_whatever_the_response_format(response_format: Any) -> None:
    extra = {} if response_format is None else {"response_format": response_format}
    answer = plan_chat(judge_chat(**extra), chunks=4)
    (choice,) = answer.choices
    assert orjson.loads(choice.text or "") == {
        "score": 0.86,
        "reason": "1 of 7 words are off-topic noise.",
    }
    assert choice.finish_reason == "stop"
    assert choice.completion_tokens == count_tokens(choice.text or "")
    assert answer.prompt_tokens == count_tokens("You are a strict grader. Answer JSON.") + (
        count_tokens(judged(NOISY))
    )


def test_chat_stream_carries_the_verdict_and_the_strict_model_its_rule() -> None:
    answer = plan_chat(judge_chat("sim-judge-strict", stream=True), chunks=3)
    events = chat_events(answer, 3)
    deltas = [
        orjson.loads(e.removeprefix(b"data: "))["choices"][0]["delta"].get("content") or ""
        for e in events[:-1]
    ]
    assert orjson.loads("".join(deltas))["score"] == 0.0
    assert chat_body(answer) == chat_body(plan_chat(judge_chat("sim-judge-strict", stream=True), 3))


def test_max_tokens_cuts_the_verdict_with_finish_length() -> None:
    (choice,) = plan_chat(judge_chat(max_tokens=2), chunks=1).choices
    assert choice.finish_reason == "length"
    assert count_tokens(choice.text or "") == 2


def test_responses_api_answers_the_verdict() -> None:
    body = {"model": "sim-judge", "instructions": "Grade it.", "input": judged(NOISY)}
    answer = plan_response(body, chunks=4)
    assert orjson.loads(answer.text)["score"] == 0.86


def test_messages_api_answers_the_verdict_as_its_text_block() -> None:
    body = {
        "model": "sim-judge",
        "max_tokens": 100,
        "system": "You are a strict grader.",
        "messages": [{"role": "user", "content": judged(NOISY)}],
    }
    message = orjson.loads(message_body(plan_message(body, chunks=4)))
    (block,) = message["content"]
    assert orjson.loads(block["text"]) == {
        "score": 0.86,
        "reason": "1 of 7 words are off-topic noise.",
    }
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["output_tokens"] == count_tokens(block["text"])


def test_other_models_still_answer_normally() -> None:
    (choice,) = plan_chat(judge_chat("gpt-4o-mini"), chunks=4).choices
    assert (choice.text or "").startswith("Simulated answer to: Question:")
