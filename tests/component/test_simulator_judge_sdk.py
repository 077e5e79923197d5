"""The simulated judge over HTTP, driven by the real ``openai`` and ``anthropic`` SDKs the way an
eval run drives a judge: the answer under test comes from the simulator itself (clean, or
degraded by ``[[sim noise=...]]``), then ``sim-judge`` scores it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import jsonschema
import openai
import orjson
import pytest
from pydantic import BaseModel

from proxy.simulator import SimulatorSettings, start_simulator

pytestmark = pytest.mark.timeout(10)

QUESTION = "Where is my parcel? It was due on Monday."
SUPPORT = "You are the support assistant of Acme. Answer the customer's question."
JUDGE = "You grade support answers. Reply with JSON: a score from 0 to 1 and a reason."
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"score": {"type": "number"}, "reason": {"type": "string"}},
    "required": ["score", "reason"],
    "additionalProperties": False,
}


class Verdict(BaseModel):
    score: float
    reason: str


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    # Seeded, so the noisy answer (and so its score) is the same run after run.
    runner, port = await start_simulator("127.0.0.1", 0, SimulatorSettings(chunks=4, seed=11))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def sdk(sim_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{sim_url}/v1", api_key="x", max_retries=0, timeout=5)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def claude(sim_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=sim_url, api_key="x", max_retries=0, timeout=5)
    try:
        yield client
    finally:
        await client.close()


async def answer(sdk: openai.AsyncOpenAI, system: str) -> str:
    completion = await sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": QUESTION}],
    )
    text = completion.choices[0].message.content
    assert text is not None
    return text


def judge_messages(answer: str) -> Any:
    return [
        {"role": "system", "content": JUDGE},
        {"role": "user", "content": f"Question:\n{QUESTION}\n\nAnswer:\n{answer}"},
    ]


async def judge(sdk: openai.AsyncOpenAI, answer: str, model: str = "sim-judge") -> dict[str, Any]:
    completion = await sdk.chat.completions.create(model=model, messages=judge_messages(answer))
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    verdict: dict[str, Any] = orjson.loads(choice.message.content or "")
    jsonschema.validate(verdict, VERDICT_SCHEMA)
    return verdict


async def test_judge_scores_a_clean_answer_high_and_a_noisy_one_lower(
    sdk: openai.AsyncOpenAI,
) -> None:
    clean = await answer(sdk, SUPPORT)
    noisy = await answer(sdk, f"{SUPPORT} [[sim noise=0.4]]")
    assert clean != noisy
    clean_verdict = await judge(sdk, clean)
    assert clean_verdict == {
        "score": 1.0,
        "reason": f"0 of {len(clean.split())} words are off-topic noise.",
    }
    noisy_verdict = await judge(sdk, noisy)
    assert 0.0 < noisy_verdict["score"] < 1.0
    assert noisy_verdict["reason"].endswith(f"of {len(noisy.split())} words are off-topic noise.")
    # The strict judge passes the clean answer and fails any noise.
    assert (await judge(sdk, clean, "sim-judge-strict"))["score"] == 1.0
    assert (await judge(sdk, noisy, "sim-judge-strict"))["score"] == 0.0
    # Same request, same verdict.
    assert await judge(sdk, noisy) == noisy_verdict


async def test_identical_judge_requests_get_identical_bytes(sdk: openai.AsyncOpenAI) -> None:
    async def raw() -> bytes:
        response = await sdk.chat.completions.with_raw_response.create(
            model="sim-judge", messages=judge_messages("Parcel on its way, banana.")
        )
        return response.http_response.content

    first = await raw()
    assert first == await raw()
    content = orjson.loads(first)["choices"][0]["message"]["content"]
    assert orjson.loads(content) == {"score": 0.8, "reason": "1 of 5 words are off-topic noise."}


async def test_stream_carries_the_same_verdict_and_usage(sdk: openai.AsyncOpenAI) -> None:
    messages = judge_messages("Parcel on its way, banana.")
    completion = await sdk.chat.completions.create(model="sim-judge", messages=messages)
    stream = await sdk.chat.completions.create(
        model="sim-judge",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish: list[str] = []
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason is not None:
                finish.append(choice.finish_reason)
    text = completion.choices[0].message.content
    assert text is not None
    assert "".join(pieces) == text
    assert len([p for p in pieces if p]) > 1  # really streamed in pieces
    assert finish == ["stop"]
    assert usage is not None
    assert completion.usage is not None
    assert usage.model_dump() == completion.usage.model_dump()
    # Usage counts words as for any answer: the judge's prompt in, the verdict out.
    assert usage.completion_tokens == len(text.split())
    prompt_words = sum(len(str(m["content"]).split()) for m in messages)
    assert usage.prompt_tokens == prompt_words


async def test_response_format_gets_the_verdict_not_a_schema_sample(
    sdk: openai.AsyncOpenAI,
) -> None:
    messages = judge_messages("Parcel on its way, banana.")
    expected = {"score": 0.8, "reason": "1 of 5 words are off-topic noise."}
    schema_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT_SCHEMA},
    }
    formats: list[Any] = [schema_format, {"type": "json_object"}]
    for response_format in formats:
        completion = await sdk.chat.completions.create(
            model="sim-judge", messages=messages, response_format=response_format
        )
        assert orjson.loads(completion.choices[0].message.content or "") == expected
        stream = await sdk.chat.completions.create(
            model="sim-judge", messages=messages, response_format=response_format, stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert orjson.loads("".join(pieces)) == expected
    # The SDK's structured-output helper parses it into the caller's model.
    parsed = await sdk.chat.completions.parse(
        model="sim-judge", messages=messages, response_format=Verdict
    )
    assert parsed.choices[0].message.parsed == Verdict(**expected)


async def test_messages_face_judges_the_same_way(
    sdk: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    noisy = await answer(sdk, f"{SUPPORT} [[sim noise=0.4]]")
    user = judge_messages(noisy)[1:]
    message = await claude.messages.create(
        model="sim-judge", max_tokens=256, system=JUDGE, messages=user
    )
    (block,) = message.content
    assert block.type == "text"
    assert orjson.loads(block.text) == await judge(sdk, noisy)
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == len(block.text.split())
    async with claude.messages.stream(
        model="sim-judge-strict", max_tokens=256, system=JUDGE, messages=user
    ) as stream:
        streamed = "".join([text async for text in stream.text_stream])
        final = await stream.get_final_message()
    assert orjson.loads(streamed)["score"] == 0.0
    assert final.stop_reason == "end_turn"
