import orjson
import pytest

from proxy.errors import InvalidRequest
from proxy.models import Route
from proxy.pipeline.parse import check_path, classify, encode_outbound, parse_request


@pytest.mark.parametrize(
    ("tail", "route"),
    [
        ("chat/completions", Route.CHAT),
        ("completions", Route.COMPLETIONS),
        ("embeddings", Route.EMBEDDINGS),
        ("responses", Route.RESPONSES),
        ("responses/resp_1/input_items", Route.RESPONSES),
        ("models", Route.MODELS),
        ("models/gpt-4o", Route.MODELS),
        ("files", Route.OTHER),
        ("audio/speech", Route.OTHER),
    ],
)
def test_classify(tail: str, route: Route) -> None:
    assert classify(tail) is route


@pytest.mark.parametrize("tail", ["../admin", "models/..", "a/%2e%2e/b", "./x"])
def test_dot_segments_are_refused(tail: str) -> None:
    with pytest.raises(InvalidRequest):
        check_path(tail)


def test_non_stream_body_is_forwarded_byte_for_byte() -> None:
    body = b'{ "model" : "gpt-4o", "messages": [], "x_unknown": {"n": 1.0e0} }'
    parsed = parse_request(Route.CHAT, "POST", "chat/completions", body)
    assert encode_outbound(parsed, payload_changed=False) == (body, False)
    assert parsed.model == "gpt-4o"
    assert not parsed.stream


def test_stream_without_usage_option_gets_it_added_without_reencoding() -> None:
    body = b'{"model":"m","stream":true,"temperature":1.0e0,"x_unknown":[1,2]}'
    out, injected = encode_outbound(
        parse_request(Route.CHAT, "POST", "chat/completions", body), False
    )
    assert injected
    assert out == (
        b'{"stream_options":{"include_usage":true},"model":"m","stream":true,'
        b'"temperature":1.0e0,"x_unknown":[1,2]}'
    )
    assert orjson.loads(out)["stream_options"] == {"include_usage": True}


def test_stream_with_other_stream_options_keeps_them() -> None:
    body = b'{"model":"m","stream":true,"stream_options":{"include_obfuscation":false}}'
    out, injected = encode_outbound(
        parse_request(Route.COMPLETIONS, "POST", "completions", body), False
    )
    assert injected
    assert orjson.loads(out)["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }


def test_client_that_asked_for_usage_is_left_alone() -> None:
    body = b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}'
    parsed = parse_request(Route.CHAT, "POST", "chat/completions", body)
    assert encode_outbound(parsed, False) == (body, False)


def test_responses_stream_is_not_given_stream_options() -> None:
    body = b'{"model":"m","stream":true,"input":"hi"}'
    parsed = parse_request(Route.RESPONSES, "POST", "responses", body)
    assert parsed.stream
    assert encode_outbound(parsed, False) == (body, False)


@pytest.mark.parametrize(
    "body", [b"{not json", b"[1,2]", b'{"a": NaN}', b"\xff\xfe", b"[" * 5000 + b"]" * 5000]
)
def test_malformed_bodies_are_invalid_requests(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(Route.CHAT, "POST", "chat/completions", body)
    assert info.value.status == 400
    assert info.value.to_openai_body()["error"]["type"] == "invalid_request_error"


def test_other_routes_are_not_parsed() -> None:
    body = b"--boundary\r\nnot json"
    assert parse_request(Route.OTHER, "POST", "files", body).body is body
    assert parse_request(Route.RESPONSES, "POST", "responses/r1/cancel", b"").body == b""


def test_a_changed_payload_is_encoded_once_with_usage_added() -> None:
    parsed = parse_request(Route.CHAT, "POST", "chat/completions", b'{"model":"m","stream":true}')
    assert parsed.payload is not None
    parsed.payload["model"] = "pinned"
    out, injected = encode_outbound(parsed, payload_changed=True)
    assert injected
    assert orjson.loads(out) == {
        "model": "pinned",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("route", "tail"), [(Route.CHAT, "chat/completions"), (Route.RESPONSES, "responses")]
)
def test_prompt_variables_without_a_named_prompt_say_how_to_name_one(
    route: Route, tail: str
) -> None:
    body = b'{"model": "m", "messages": [], "prompt_variables": {"name": "Ada"}}'
    with pytest.raises(InvalidRequest) as info:
        parse_request(route, "POST", tail, body)
    assert info.value.param == "prompt_variables"
    assert "/p/{slug}/v1" in info.value.message
    assert "X-Prompt-Slug" in info.value.message
    parsed = parse_request(route, "POST", tail, body, prompt_named=True)
    assert parsed.payload is not None
    assert parsed.payload["prompt_variables"] == {"name": "Ada"}
