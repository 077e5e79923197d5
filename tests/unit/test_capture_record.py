"""``Capture``, the record of a captured call: its JSON form and its stored bytes read back
as the same capture, and a capture no store could keep is refused when it is made, naming
the field; a batch is checked whole before a store writes any of it."""

from __future__ import annotations

import math
import re
from typing import Any

import orjson
import pytest

from proxy.capture.records import (
    MAX_BATCH,
    Capture,
    CaptureError,
    CaptureTooLarge,
    check_read,
    check_store_options,
    decode,
    encode,
    encode_batch,
    new_capture_id,
)


def fields(**changes: Any) -> dict[str, Any]:
    made: dict[str, Any] = {
        "id": "1765000000000-0a1b2c3d",
        "slug": "tier=gold/support-reply@claude",
        "version": 4,
        "arm": "canary",
        "rollout_id": "ro-7",
        "layers": "guardrails@2,tier:gold@1,base@4",
        "tenant": "acme",
        "prompt_hash": "ab" * 32,
        "model": "gpt-4o-mini",
        "request": {
            "messages": [{"role": "user", "content": "rembourser — 返金 🚀"}],
            "prompt_variables": {"name": "Zoë", "items": [1, 2.5, None, {"deep": [True]}]},
            "params": {"temperature": 0.2, "max_tokens": 200},
        },
        "answer": {
            "text": "a\x00b",
            "finish_reason": "stop",
            "tool_calls": [{"id": "t1", "function": {"name": "f", "arguments": "{}"}}],
            "status": 200,
        },
        "at": 1765000000.125,
    }
    made.update(changes)
    return made


def test_the_json_form_and_the_stored_bytes_read_back_as_the_same_capture() -> None:
    capture = Capture(**fields())
    assert Capture.from_dict(orjson.loads(orjson.dumps(capture.to_dict()))) == capture
    back = decode(encode(capture))
    assert back == capture
    assert back.answer["text"] == "a\x00b"
    assert back.at == 1765000000.125
    bare = Capture(
        **fields(rollout_id=None, layers=None, tenant=None, prompt_hash=None, model=None)
    )
    assert decode(encode(bare)) == bare
    # The optional texts may be absent from the JSON form.
    data = bare.to_dict()
    for name in ("rollout_id", "layers", "tenant", "prompt_hash", "model"):
        del data[name]
    assert Capture.from_dict(data) == bare


def test_a_float_json_cannot_hold_is_stored_as_null() -> None:
    capture = Capture(**fields(request={"params": {"temperature": math.nan}}))
    assert decode(encode(capture)).request == {"params": {"temperature": None}}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"id": "has space"}, "capture id"),
        ({"id": ""}, "capture id"),
        ({"id": "x" * 65}, "capture id"),
        ({"id": 12}, "capture id"),
        ({"slug": ""}, "capture slug"),
        ({"slug": "s" * 201}, "capture slug"),
        ({"slug": "a\x00b"}, "capture slug"),
        ({"version": 0}, "capture version"),
        ({"version": True}, "capture version"),
        ({"version": "3"}, "capture version"),
        ({"version": 2**31}, "capture version"),
        ({"arm": "stable canary"}, "capture arm"),
        ({"arm": ""}, "capture arm"),
        ({"rollout_id": ""}, "capture rollout_id"),
        ({"rollout_id": 7}, "capture rollout_id"),
        ({"layers": "l" * 1001}, "capture layers"),
        ({"tenant": "t" * 201}, "capture tenant"),
        ({"prompt_hash": "a\x00"}, "capture prompt_hash"),
        ({"model": ["gpt"]}, "capture model"),
        ({"request": [1, 2]}, "capture request"),
        ({"answer": "text"}, "capture answer"),
        ({"at": math.inf}, "capture at"),
        ({"at": math.nan}, "capture at"),
        ({"at": "now"}, "capture at"),
        ({"at": False}, "capture at"),
    ],
)
def test_a_field_out_of_bounds_is_refused_by_name(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(CaptureError, match=re.escape(named)):
        Capture(**fields(**changes))


def test_the_json_form_names_what_it_lacks() -> None:
    data = Capture(**fields()).to_dict()
    del data["answer"]
    with pytest.raises(CaptureError, match="needs 'answer'"):
        Capture.from_dict(data)
    with pytest.raises(CaptureError, match="JSON object"):
        Capture.from_dict([])  # type: ignore[arg-type]
    with pytest.raises(CaptureError, match="not JSON"):
        decode(b"{not json")


def test_a_part_that_is_not_json_is_refused_when_encoded() -> None:
    capture = Capture(**fields(request={"stop": {"a", "b"}}))
    with pytest.raises(CaptureError, match="not JSON"):
        encode(capture)
    with pytest.raises(CaptureError, match="not JSON"):
        encode_batch([Capture(**fields(id="ok")), capture], max_bytes=10**6)


def test_a_batch_is_checked_whole_against_the_size_limit() -> None:
    small = Capture(**fields(id="small"))
    size = len(encode(small))
    assert [e.data for e in encode_batch([small], max_bytes=size)] == [encode(small)]
    big = Capture(**fields(id="big", answer={"text": "x" * size}))
    with pytest.raises(CaptureTooLarge, match=f"capture big: {len(encode(big)):,} bytes"):
        encode_batch([small, big], max_bytes=size)
    assert encode_batch([], max_bytes=1) == []


def test_a_batch_holds_captures_and_not_too_many() -> None:
    capture = Capture(**fields())
    with pytest.raises(CaptureError, match="sequence of captures"):
        encode_batch(capture, max_bytes=10**6)  # type: ignore[arg-type]
    with pytest.raises(CaptureError, match="not dict"):
        encode_batch([capture.to_dict()], max_bytes=10**6)  # type: ignore[list-item]
    with pytest.raises(CaptureError, match=f"at most {MAX_BATCH}"):
        encode_batch([capture] * (MAX_BATCH + 1), max_bytes=10**6)


def test_ids_sort_by_time_and_are_unique() -> None:
    first = new_capture_id(1765000000.001)
    assert re.fullmatch(r"1765000000001-[0-9a-f]{8}", first)
    assert new_capture_id(1765000000.002) > first
    assert len({new_capture_id(1765000000.0) for _ in range(200)}) == 200
    Capture(**fields(id=new_capture_id()))  # a valid id


def test_reads_and_stores_refuse_bad_bounds_and_options() -> None:
    check_read(0.0, None, 1)
    for since, until, limit, named in (
        (math.nan, None, 1, "since"),
        ("0", None, 1, "since"),
        (0.0, math.nan, 1, "until"),
        (0.0, None, 0, "limit"),
        (0.0, None, True, "limit"),
    ):
        with pytest.raises(CaptureError, match=named):
            check_read(since, until, limit)  # type: ignore[arg-type]
    check_store_options(1, 0.5, 1)
    for keep, hours, size, named in (
        (0, 72.0, 1024, "keep_per_slug"),
        (10, 0, 1024, "keep_hours"),
        (10, math.inf, 1024, "keep_hours"),
        (10, 72.0, 0, "max_bytes"),
    ):
        with pytest.raises(ValueError, match=named):
            check_store_options(keep, hours, size)
