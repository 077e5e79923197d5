"""Answers of the simulated provider depend on the prompt: the system prompt and the
messages decide the words and the length, ``response_format`` / ``text.format`` get JSON
that validates, tools get schema-valid arguments and the call the user asked for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.simulator import SimulatorSettings, build_simulator_app
from proxy.simulator.content import answer_text, tool_arguments

pytestmark = pytest.mark.timeout(10)

Client = TestClient[web.Request, web.Application]

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
QUESTION = "Where is my parcel? It is late."
SUPPORT = "You are the support assistant of Acme. Answer the customer's question kindly."
PIRATE = "You are a pirate captain. Answer every question with sea shanties and treasure maps."


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    client = TestClient(TestServer(build_simulator_app(SimulatorSettings(seed=7))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def chat_body(system: str | None, user: str = QUESTION, **extra: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": user}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return {"model": "gpt-4o-mini", "messages": messages, **extra}


async def post(client: Client, path: str, body: dict[str, Any]) -> bytes:
    resp = await client.post(path, json=body)
    raw = await resp.read()
    assert resp.status == 200, raw
    return raw


async def chat_message(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = orjson.loads(await post(client, CHAT, body))["choices"][0]["message"]
    return message


async def chat_text(client: Client, body: dict[str, Any]) -> str:
    text = (await chat_message(client, body))["content"]
    assert isinstance(text, str)
    return text


# --- text answers -------------------------------------------------------------------------


async def test_two_system_prompts_answer_differently(client: Client) -> None:
    support = await chat_text(client, chat_body(SUPPORT))
    pirate = await chat_text(client, chat_body(PIRATE))
    # Both still answer the same question...
    assert support.startswith(f"Simulated answer to: {QUESTION}")
    assert pirate.startswith(f"Simulated answer to: {QUESTION}")
    # ...in other words and at another length.
    assert support != pirate
    assert set(support.split()) != set(pirate.split())
    assert len(support.split()) != len(pirate.split())
    assert "pirate" in pirate.lower().split()
    assert "pirate" not in support.lower().split()


async def test_the_same_request_answers_byte_identical(client: Client) -> None:
    for body in (
        chat_body(SUPPORT),
        chat_body(PIRATE, stream=True, stream_options={"include_usage": True}),
        chat_body(SUPPORT, n=3),
    ):
        assert await post(client, CHAT, body) == await post(client, CHAT, body)
    responses = {"model": "gpt-4o", "input": QUESTION, "instructions": PIRATE}
    assert await post(client, RESPONSES, responses) == await post(client, RESPONSES, responses)


async def test_the_messages_matter_as_well_as_the_system_prompt(client: Client) -> None:
    first = await chat_text(client, chat_body(SUPPORT))
    earlier = {"role": "assistant", "content": "Could you give me the order number?"}
    body = chat_body(SUPPORT)
    body["messages"].insert(1, earlier)
    second = await chat_text(client, body)
    assert first != second  # same last question, other conversation
    assert await chat_text(client, chat_body(SUPPORT, "Can I pay by card?")) != first


async def test_a_cosmetic_edit_or_a_directive_does_not_change_the_words(client: Client) -> None:
    """Courtesy words and markers carry no instruction: a candidate that only adds them is
    answered as stable is (the noise-only analysis scenarios depend on it)."""
    plain = await chat_text(client, chat_body(SUPPORT))
    assert await chat_text(client, chat_body(f"{SUPPORT} Please.")) == plain
    reordered = "Answer the customer's question kindly. You are the support assistant of Acme."
    assert await chat_text(client, chat_body(reordered)) == plain
    marked = await chat_text(client, chat_body(f"{SUPPORT} [[sim longer=1]]"))
    assert marked == plain


async def test_the_responses_api_answers_by_its_instructions(client: Client) -> None:
    async def text(body: dict[str, Any]) -> str:
        out: str = orjson.loads(await post(client, RESPONSES, body))["output"][0]["content"][0][
            "text"
        ]
        return out

    support = await text({"model": "gpt-4o", "input": QUESTION, "instructions": SUPPORT})
    pirate = await text({"model": "gpt-4o", "input": QUESTION, "instructions": PIRATE})
    assert support != pirate
    assert len(support.split()) != len(pirate.split())
    # The Responses API and chat answer the same conversation with the same words.
    assert support == await chat_text(client, chat_body(SUPPORT))
    developer = [
        {"role": "developer", "content": PIRATE},
        {"role": "user", "content": QUESTION},
    ]
    assert await text({"model": "gpt-4o", "input": developer}) == pirate


def test_answer_text_depends_on_the_whole_prompt() -> None:
    """The single-string helper (system prompt and question joined) still echoes and is
    deterministic, and a different system part answers with other words."""
    support = answer_text(f"{SUPPORT}\n\n{QUESTION}")
    pirate = answer_text(f"{PIRATE}\n\n{QUESTION}")
    assert support == answer_text(f"{SUPPORT}\n\n{QUESTION}")
    assert support.startswith("Simulated answer to: You are the support")
    assert support.split()[-8:] != pirate.split()[-8:]
    assert len(answer_text(QUESTION, min_words=80).split()) >= 80


# --- JSON answers -------------------------------------------------------------------------

SCHEMAS: dict[str, dict[str, Any]] = {
    "flat": {
        "type": "object",
        "properties": {
            "answer": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "escalate": {"type": "boolean"},
            "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        },
        "required": ["answer", "confidence", "escalate", "priority"],
        "additionalProperties": False,
    },
    "enum-and-nullable": {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "category": {"enum": ["billing", "shipping", "other"]},
            "note": {"type": ["string", "null"]},
            "status": {"const": "ok"},
        },
        "required": ["sentiment", "category", "note", "status"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "order": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "minLength": 6, "maxLength": 40},
                    "items": {
                        "type": "array",
                        "minItems": 2,
                        "maxItems": 4,
                        "items": {
                            "type": "object",
                            "properties": {
                                "sku": {"type": "string"},
                                "quantity": {"type": "integer", "exclusiveMinimum": 0},
                                "size": {"type": "string", "enum": ["S", "M", "L"]},
                            },
                            "required": ["sku", "quantity", "size"],
                            "additionalProperties": False,
                        },
                    },
                },
                "required": ["id", "items"],
                "additionalProperties": False,
            },
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "score": {"type": "number", "multipleOf": 0.5, "minimum": 2},
        },
        "required": ["order", "tags", "score"],
        "additionalProperties": False,
    },
    "defs-and-anyof": {
        "type": "object",
        "$defs": {
            "step": {
                "type": "object",
                "properties": {
                    "explanation": {"type": "string"},
                    "output": {"type": "string"},
                },
                "required": ["explanation", "output"],
                "additionalProperties": False,
            }
        },
        "properties": {
            "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}},
            "final_answer": {"anyOf": [{"type": "null"}, {"type": "string", "format": "date"}]},
            "contact": {"type": "string", "format": "email"},
        },
        "required": ["steps", "final_answer", "contact"],
        "additionalProperties": False,
    },
}


def schema_format(name: str) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": name.replace("-", "_"), "schema": SCHEMAS[name], "strict": True},
    }


@pytest.mark.parametrize("name", sorted(SCHEMAS))
async def test_json_schema_answers_validate(client: Client, name: str) -> None:
    for system in (SUPPORT, PIRATE):
        body = chat_body(system, response_format=schema_format(name))
        text = await chat_text(client, body)
        document = orjson.loads(text)
        jsonschema.validate(document, SCHEMAS[name])
        assert await chat_text(client, body) == text  # deterministic


async def test_json_schema_answers_follow_the_prompt(client: Client) -> None:
    body = {"response_format": schema_format("flat")}
    support = orjson.loads(await chat_text(client, chat_body(SUPPORT, **body)))
    pirate = orjson.loads(await chat_text(client, chat_body(PIRATE, **body)))
    assert support["answer"] != pirate["answer"]


async def test_json_schema_answers_stream_the_same_document(client: Client) -> None:
    body = chat_body(SUPPORT, response_format=schema_format("nested"))
    whole = await chat_text(client, body)
    raw = await post(client, CHAT, {**body, "stream": True})
    events = [orjson.loads(line[6:]) for line in raw.decode().split("\n\n") if line[6:7] == "{"]
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert streamed == whole


async def test_json_object_answers_an_object(client: Client) -> None:
    body = chat_body(SUPPORT, response_format={"type": "json_object"})
    document = orjson.loads(await chat_text(client, body))
    assert isinstance(document, dict)
    assert document["answer"].startswith("Simulated answer to:")


async def test_a_directive_cut_leaves_the_json_cut(client: Client) -> None:
    body = chat_body(f"{SUPPORT} [[sim truncate=1]]", response_format=schema_format("flat"))
    answer = orjson.loads(await post(client, CHAT, body))["choices"][0]
    assert answer["finish_reason"] == "length"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(answer["message"]["content"])


async def test_noise_stays_inside_the_json_strings(client: Client) -> None:
    body = chat_body(f"{SUPPORT} [[sim noise=1 longer=2]]", response_format=schema_format("flat"))
    jsonschema.validate(orjson.loads(await chat_text(client, body)), SCHEMAS["flat"])


@pytest.mark.parametrize("name", sorted(SCHEMAS))
async def test_responses_text_format_json_schema_validates(client: Client, name: str) -> None:
    text_format = {"type": "json_schema", "name": "answer", "schema": SCHEMAS[name], "strict": True}
    body = {"model": "gpt-4o", "input": QUESTION, "instructions": SUPPORT}
    response = orjson.loads(
        await post(client, RESPONSES, {**body, "text": {"format": text_format}})
    )
    document = orjson.loads(response["output"][0]["content"][0]["text"])
    jsonschema.validate(document, SCHEMAS[name])
    assert response["text"]["format"] == text_format
    as_object = {**body, "text": {"format": {"type": "json_object"}}}
    response = orjson.loads(await post(client, RESPONSES, as_object))
    assert isinstance(orjson.loads(response["output"][0]["content"][0]["text"]), dict)


# --- tools --------------------------------------------------------------------------------

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather and forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
REFUND: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "refund_order",
        "description": "Refund a customer's order, in part or in full.",
        "parameters": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string", "minLength": 4},
                "reason": {"type": "string", "enum": ["late", "damaged", "other"]},
                "lines": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string"},
                            "amount": {"type": "number", "exclusiveMinimum": 0},
                        },
                        "required": ["sku", "amount"],
                        "additionalProperties": False,
                    },
                },
                "notify": {"type": "boolean"},
            },
            "required": ["order_id", "reason", "lines", "notify"],
            "additionalProperties": False,
        },
    },
}
SEARCH: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search the help center articles.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
        },
    },
}
TOOLS = [WEATHER, REFUND, SEARCH]
SCHEMA_OF = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


async def tool_calls(client: Client, user: str, **extra: Any) -> list[tuple[str, Any]]:
    message = await chat_message(client, chat_body(SUPPORT, user, tools=TOOLS, **extra))
    calls = [
        (c["function"]["name"], orjson.loads(c["function"]["arguments"]))
        for c in message["tool_calls"]
    ]
    for name, arguments in calls:
        jsonschema.validate(arguments, SCHEMA_OF[name])
    return calls


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("What is the weather in Paris for 3 days, in fahrenheit?", "get_weather"),
        ("My parcel was damaged, I want a refund.", "refund_order"),
        ("Search the help articles about returns", "search_docs"),
    ],
)
async def test_auto_tool_choice_follows_the_user_message(
    client: Client, user: str, expected: str
) -> None:
    calls = await tool_calls(client, user, parallel_tool_calls=False)
    assert [name for name, _ in calls] == [expected]
    (first, _), *_ = await tool_calls(client, user)
    assert first == expected


async def test_tool_arguments_use_what_the_user_said(client: Client) -> None:
    user = "What is the weather in Paris for 3 days, in fahrenheit?"
    ((_, arguments),) = await tool_calls(client, user, parallel_tool_calls=False)
    assert arguments == {"city": "Paris", "unit": "fahrenheit", "days": 3}
    ((_, refund),) = await tool_calls(
        client, "My parcel was damaged, I want a refund.", parallel_tool_calls=False
    )
    assert refund["reason"] == "damaged"


async def test_no_shared_word_calls_the_first_tools_and_a_named_choice_wins(
    client: Client,
) -> None:
    calls = await tool_calls(client, "Hello!")
    assert [name for name, _ in calls] == ["get_weather", "refund_order"]
    named = {"type": "function", "function": {"name": "search_docs"}}
    calls = await tool_calls(client, "What is the weather in Paris?", tool_choice=named)
    assert [name for name, _ in calls] == ["search_docs"]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_tool_arguments_validate_against_answer_schemas(name: str) -> None:
    for context in ("", QUESTION, "Ship 2 large items to Berlin by Friday"):
        arguments = orjson.loads(tool_arguments(SCHEMAS[name], context))
        jsonschema.validate(arguments, SCHEMAS[name])
        assert tool_arguments(SCHEMAS[name], context) == tool_arguments(SCHEMAS[name], context)


def test_tool_arguments_respect_bounds_and_closed_objects() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 10, "maximum": 20, "multipleOf": 5},
            "ratio": {"type": "number", "exclusiveMaximum": 1, "exclusiveMinimum": 0},
            "labels": {"type": "array", "items": {"type": "string"}, "minItems": 3},
            "flags": {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True},
        },
        "required": ["n", "ratio", "labels", "flags"],
        "additionalProperties": False,
    }
    arguments = orjson.loads(tool_arguments(schema, "use 99 of them"))
    jsonschema.validate(arguments, schema)
    assert orjson.loads(tool_arguments({"type": "object", "additionalProperties": False})) == {}
