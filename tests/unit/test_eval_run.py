"""``EvalRun``, the record of an eval run: its JSON form reads back as the same run, and a
run that no store could keep is refused when it is made, naming the field."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from proxy.evals.runs import (
    MAX_SUMMARY_BYTES,
    EvalRun,
    EvalRunError,
    EvalRunTooLarge,
    decode_run,
    encode_run,
    new_run_id,
)


def fields(**changes: Any) -> dict[str, Any]:
    made: dict[str, Any] = {
        "id": "1765000000000-0a1b2c3d",
        "slug": "tier=gold/support-reply@claude",
        "candidate": 4,
        "baseline": 3,
        "kind": "eval",
        "actor": "cli:zoë",
        "started_at": 1765000000.125,
        "finished_at": 1765000042.5,
        "suite_name": "support-reply.eval.yaml",
        "suite_sha256": "ab" * 32,
        "judges": (("judge.tone", 2), ("judge.facts", 7)),
        "passed": True,
        "summary": {"pass_rate": 0.95, "interval": [0.9, 0.98], "cases": 40},
        "detail": {
            "cases": [
                {"name": "refund — 返金", "passed": False, "answer": "a\x00b", "score": None},
                {"name": "deep", "nested": {"a": [1, {"b": [True, 1e-300, -0.0]}]}},
            ]
        },
    }
    made.update(changes)
    return made


def test_the_json_form_reads_back_as_the_same_run() -> None:
    run = EvalRun(**fields())
    data = orjson.loads(orjson.dumps(run.to_dict()))
    assert data["judges"] == [["judge.tone", 2], ["judge.facts", 7]]
    back = EvalRun.from_dict(data)
    assert back == run
    assert back.judges == (("judge.tone", 2), ("judge.facts", 7))
    assert back.detail["cases"][0]["answer"] == "a\x00b"


def test_the_stores_encoding_reads_back_and_a_listing_has_no_detail() -> None:
    run = EvalRun(**fields(baseline=None, judges=()))
    encoded = encode_run(run, max_detail_bytes=1 << 20)
    assert decode_run(encoded.head, encoded.detail) == run
    listed = decode_run(encoded.head)
    assert listed.detail == {}
    assert listed.summary == run.summary
    assert listed.baseline is None


def test_from_dict_takes_a_run_without_baseline_or_detail() -> None:
    data = fields()
    del data["baseline"], data["detail"]
    run = EvalRun.from_dict(data)
    assert (run.baseline, run.detail) == (None, {})


def test_from_dict_names_what_is_missing() -> None:
    data = fields()
    del data["suite_sha256"]
    with pytest.raises(EvalRunError, match="suite_sha256"):
        EvalRun.from_dict(data)
    with pytest.raises(EvalRunError, match="JSON object"):
        EvalRun.from_dict([])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"id": "has space"}, "id"),
        ({"id": ""}, "id"),
        ({"slug": ""}, "slug"),
        ({"slug": "s" * 201}, "slug"),
        ({"slug": "a\x00b"}, "slug"),
        ({"candidate": 0}, "candidate"),
        ({"candidate": True}, "candidate"),
        ({"candidate": "4"}, "candidate"),
        ({"baseline": -1}, "baseline"),
        ({"kind": "not a kind"}, "kind"),
        ({"started_at": math.nan}, "started_at"),
        ({"finished_at": math.inf}, "finished_at"),
        ({"finished_at": 1765000000.0}, "before started_at"),
        ({"judges": (("judge.tone",),)}, "judge"),
        ({"judges": (("judge.tone", 0),)}, "judge version"),
        ({"passed": 1}, "passed"),
        ({"summary": [1]}, "summary"),
        ({"detail": None}, "detail"),
    ],
)
def test_a_run_no_store_could_keep_is_refused_naming_the_field(
    change: dict[str, Any], named: str
) -> None:
    with pytest.raises(EvalRunError, match=named):
        EvalRun(**fields(**change))


def test_a_summary_or_detail_over_its_limit_is_refused_when_encoded() -> None:
    big = EvalRun(**fields(summary={"x": "y" * MAX_SUMMARY_BYTES}))
    with pytest.raises(EvalRunTooLarge, match="summary is 16,392 bytes"):
        encode_run(big, max_detail_bytes=1 << 20)
    run = EvalRun(**fields(detail={"x": "y" * 2000}))
    with pytest.raises(EvalRunTooLarge, match="detail is 2,008 bytes encoded, over the store's"):
        encode_run(run, max_detail_bytes=2007)
    assert len(encode_run(run, max_detail_bytes=2008).detail) == 2008


def test_what_is_not_json_is_refused_when_encoded() -> None:
    with pytest.raises(EvalRunError, match="detail is not JSON"):
        encode_run(EvalRun(**fields(detail={"when": {1, 2}})), max_detail_bytes=1 << 20)
    with pytest.raises(EvalRunError, match="summary is not JSON"):
        encode_run(EvalRun(**fields(summary={1: "key not text"})), max_detail_bytes=1 << 20)


def test_run_ids_sort_by_time_and_differ() -> None:
    ids = [new_run_id(t) for t in (5.0, 1765000000.001, 1765000000.002)]
    assert ids == sorted(ids)
    assert new_run_id(5.0) != new_run_id(5.0)
    assert ids[1].startswith("1765000000001-")
    EvalRun(**fields(id=new_run_id()))  # a valid id
