"""``[[sim ...]]`` directives: parsing, text effects and how the planners apply them."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from proxy.simulator.chat import chat_body, chat_events, plan_chat
from proxy.simulator.content import answer_text, count_tokens, stretch_answer
from proxy.simulator.directives import (
    NO_DIRECTIVES,
    Directives,
    Steering,
    chat_directives,
    parse_directives,
    responses_directives,
)
from proxy.simulator.errors import RequestError
from proxy.simulator.responses_api import plan_response
from proxy.simulator.state import RandomSource

pytestmark = pytest.mark.timeout(5)

USER = {"role": "user", "content": "What is the capital of France?"}


def _chat(system: Any, role: str = "system", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": role, "content": system}, USER], **extra}


def test_marker_is_read_from_system_and_developer_messages() -> None:
    assert chat_directives(_chat("Be brief. [[sim truncate=0.2 noise=0.3]] Thanks.")) == Directives(
        truncate=0.2, noise=0.3
    )
    parts = [{"type": "text", "text": "[[sim longer=1.5]]"}]
    assert chat_directives(_chat(parts, role="developer")) == Directives(longer=1.5)


def test_user_text_and_lookalike_markers_are_not_directives() -> None:
    assert chat_directives(_chat("[[sim error=1]]", role="user")) is NO_DIRECTIVES
    for text in ("[[simulate error=1]]", "[sim error=1]", "[[ sim error=1]]", "[[sim]]", "plain"):
        assert chat_directives(_chat(text)) == NO_DIRECTIVES, text
    assert not chat_directives(_chat("[[sim]]")).active


def test_commas_and_later_markers_win() -> None:
    texts = [("[[sim error=0.5, noise=0.1]]", "messages"), ("[[sim error=0.25]]", "messages")]
    assert parse_directives(texts) == Directives(error=0.25, noise=0.1)


def test_responses_read_instructions_and_system_input_items() -> None:
    body = {
        "model": "m",
        "instructions": "[[sim truncate=1]]",
        "input": [{"role": "developer", "content": "[[sim error=0.5]]"}, USER],
    }
    assert responses_directives(body) == Directives(truncate=1.0, error=0.5)
    assert responses_directives({"model": "m", "input": "[[sim error=1]]"}) is NO_DIRECTIVES


@pytest.mark.parametrize(
    "item",
    ["truncate=1.01", "error=-1", "noise=nan", "longer=0", "longer=101", "longer=inf", "x=1"],
)
def test_invalid_values_name_the_directive_and_field(item: str) -> None:
    with pytest.raises(RequestError) as caught:
        responses_directives({"instructions": f"[[sim {item}]]"})
    assert repr(item) in caught.value.message
    assert (caught.value.param, caught.value.code) == ("instructions", "invalid_value")


def test_malformed_messages_are_left_to_the_planner() -> None:
    assert chat_directives({"messages": "oops"}) is NO_DIRECTIVES


@pytest.mark.parametrize("factor", [0.5, 1.0, 1.5, 2.0, 3.0])
def test_stretch_scales_word_count_and_stays_one_sentence_end(factor: float) -> None:
    text = answer_text("Hi there", 0, 8)
    stretched = stretch_answer(text, factor)
    assert count_tokens(stretched) == round(count_tokens(text) * factor)
    assert stretched.endswith(".")
    assert "  " not in stretched
    assert stretch_answer(text, factor) == stretched  # deterministic on its own


def _steering(seed: int = 1, **values: float) -> Steering:
    return Steering(Directives(**values), random.Random(seed))


def test_noise_one_replaces_every_word_noise_zero_none() -> None:
    text = answer_text("Hi there", 0, 8)
    noisy, cut = _steering(noise=1.0).shape(text, 0)
    assert not cut
    assert count_tokens(noisy) == count_tokens(text)
    assert all(a != b for a, b in zip(noisy.split(), text.split(), strict=True))
    assert _steering(longer=1.0).shape(text, 0) == (text, False)


def test_truncate_keeps_a_nonempty_prefix() -> None:
    text = answer_text("Hi there", 0, 8)
    for seed in range(50):
        cut_text, cut = _steering(seed, truncate=1.0).shape(text, 0)
        assert cut
        assert cut_text
        assert text.startswith(cut_text)
        assert count_tokens(cut_text) < count_tokens(text)


def test_truncate_rate_over_many_plans() -> None:
    # 20,000 draws: sd of the share is 0.0028, so 0.015 is over 5 sd.
    steering = _steering(7, truncate=0.2)
    body = _chat("x")
    cut = sum(
        plan_chat(body, 8, steering).choices[0].finish_reason == "length" for _ in range(20_000)
    )
    assert abs(cut / 20_000 - 0.2) < 0.015


def test_chat_plan_usage_and_stream_match_steered_text() -> None:
    steering = _steering(3, noise=0.4, longer=2.0, truncate=0.5)
    body = _chat("x", n=4, stream=True, stream_options={"include_usage": True})
    answer = plan_chat(body, 8, steering)
    for choice in answer.choices:
        assert choice.text is not None
        assert choice.completion_tokens == count_tokens(choice.text)
    events = [orjson.loads(e.removeprefix(b"data: ")) for e in chat_events(answer, 8)[:-1]]
    for choice in answer.choices:
        mine = [c for e in events for c in e["choices"] if c["index"] == choice.index]
        assert "".join(c["delta"].get("content") or "" for c in mine) == choice.text
        assert mine[-1]["finish_reason"] == choice.finish_reason
    reported = events[-1]["usage"]["completion_tokens"]
    assert reported == sum(c.completion_tokens for c in answer.choices)
    non_stream = orjson.loads(chat_body(plan_chat(_chat("x"), 8, _steering(truncate=1.0))))
    assert non_stream["choices"][0]["finish_reason"] == "length"


def test_max_tokens_still_applies_after_longer() -> None:
    answer = plan_chat(_chat("x", max_tokens=5), 8, _steering(longer=3.0))
    assert (answer.choices[0].completion_tokens, answer.choices[0].finish_reason) == (5, "length")


def test_tool_calls_are_not_steered() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    body = _chat("x", tools=tools)
    assert plan_chat(body, 8, _steering(truncate=1.0, noise=1.0)) == plan_chat(body, 8)


def test_responses_plan_reports_a_steered_cut_as_incomplete() -> None:
    answer = plan_response({"model": "m", "input": "hi"}, 8, _steering(truncate=1.0))
    assert answer.response["status"] == "incomplete"
    assert answer.response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert answer.response["usage"]["output_tokens"] == count_tokens(answer.text)


def test_random_source_is_repeatable_only_with_a_seed() -> None:
    def draws(source: RandomSource) -> list[float]:
        return [source.request_rng().random() for _ in range(3)]

    assert draws(RandomSource(5)) == draws(RandomSource(5))
    assert draws(RandomSource(None)) != draws(RandomSource(None))
