"""Divergence measures of a pair, their binned counts, and the noise-calibrated verdict."""

from __future__ import annotations

import random
from typing import Any

import pytest

from proxy.shadow.compare import (
    DIVERGENCE_BINS,
    MEASURES,
    Divergence,
    DivergenceCounts,
    bin_of,
    divergence,
    expects_json,
    shadow_verdict,
)
from proxy.shadow.models import ArmResult, ToolCall


def arm(text: str = "", finish: str | None = "stop", **kwargs: Any) -> ArmResult:
    return ArmResult(version=1, status=200, text=text, finish_reason=finish, **kwargs)


def test_identical_answers_do_not_diverge() -> None:
    d = divergence(arm("Your order ships Monday."), arm("Your order ships Monday."), False)
    assert d == Divergence(0.0, 0.0, None, None, 0.0)


def test_text_distance_and_length_drift_grow_with_the_difference() -> None:
    base = "Your order #1234 ships on Monday from the Lyon warehouse."
    close = divergence(arm(base), arm(base.replace("Monday", "Tuesday")), False)
    far = divergence(arm(base), arm("I cannot help with that."), False)
    assert close.text_distance is not None
    assert far.text_distance is not None
    assert 0 < close.text_distance < 0.15 < 0.5 < far.text_distance <= 1
    assert far.length_drift == pytest.approx(1 - len("I cannot help with that.") / len(base))
    # A cut answer is a difference, not a match (partial_ratio would score it 100).
    cut = divergence(arm(base), arm(base[:20]), False)
    assert cut.text_distance is not None
    assert cut.text_distance > 0.4
    assert divergence(arm(""), arm(""), False).length_drift == 0.0
    assert divergence(arm(""), arm("x"), False).length_drift == 1.0


def test_json_invalid_judges_the_shadow_only_and_only_when_json_was_asked() -> None:
    good, bad = '{"ok": true}', '```json\n{"ok": true}\n```'
    assert divergence(arm(good), arm(bad), True).json_invalid == 1.0
    assert divergence(arm(bad), arm(good), True).json_invalid == 0.0
    assert divergence(arm(bad), arm(bad), True).json_invalid == 1.0
    assert divergence(arm(good), arm(" [1, 2] "), True).json_invalid == 0.0
    assert divergence(arm(good), arm(bad), False).json_invalid is None
    assert divergence(arm(good), arm(bad[:8], truncated=True), True).json_invalid is None
    tools_only = arm("", tool_calls=[ToolCall("lookup", "{}")])
    assert divergence(arm(good), tools_only, True).json_invalid is None


def test_tool_calls_compare_names_in_order_and_arguments_as_json() -> None:
    a = [ToolCall("lookup", '{"id": 7, "full": true}'), ToolCall("refund", '{"amount": 5}')]
    same_reordered_keys = [
        ToolCall("lookup", '{"full":true,"id":7}'),
        ToolCall("refund", '{ "amount": 5 }'),
    ]
    swapped = [a[1], a[0]]
    other_value = [ToolCall("lookup", '{"id": 8, "full": true}'), a[1]]
    assert divergence(arm(tool_calls=a), arm(tool_calls=same_reordered_keys), False) == (
        Divergence(0.0, 0.0, None, 0.0, 0.0)
    )
    assert divergence(arm(tool_calls=a), arm(tool_calls=swapped), False).tool_calls_differ == 1.0
    assert divergence(arm(tool_calls=a), arm(tool_calls=other_value), False).tool_calls_differ == 1
    assert divergence(arm(tool_calls=a), arm(tool_calls=a[:1]), False).tool_calls_differ == 1.0
    assert divergence(arm("hi"), arm(tool_calls=a), False).tool_calls_differ == 1.0
    broken = [ToolCall("lookup", '{"id": 7,')]
    assert divergence(arm(tool_calls=broken), arm(tool_calls=broken), False).tool_calls_differ == 0
    assert divergence(arm("a"), arm("b"), False).tool_calls_differ is None


def test_finish_reason_changed() -> None:
    assert divergence(arm("a", "stop"), arm("a", "length"), False).finish_reason_changed == 1.0
    assert divergence(arm("a", None), arm("a", None), False).finish_reason_changed == 0.0


def test_expects_json_reads_chat_and_responses_bodies() -> None:
    assert expects_json({"response_format": {"type": "json_object"}})
    assert expects_json({"response_format": {"type": "json_schema", "json_schema": {}}})
    assert expects_json({"text": {"format": {"type": "json_schema", "name": "x"}}})
    assert not expects_json({"response_format": {"type": "text"}})
    assert not expects_json({"text": {"format": {"type": "text"}}})
    assert not expects_json({"messages": [], "text": "not a mapping", "response_format": None})


def test_divergence_round_trips_through_a_dict() -> None:
    d = Divergence(0.25, 0.5, None, 1.0, 0.0)
    assert list(d.to_dict()) == list(MEASURES)
    assert Divergence.from_dict(d.to_dict()) == d
    assert Divergence.from_dict({"text_distance": "x", "length_drift": True}) == Divergence(
        None, None, None, None, None
    )


def test_bins_cover_zero_to_one() -> None:
    # Nearest point of the grid i/49: 0 and 1 exact, every value within 1/98 of its bin.
    assert bin_of(0.0) == 0
    assert bin_of(0.01) == 0
    assert bin_of(0.011) == 1
    assert bin_of(0.5) == 24  # halfway between 24/49 and 25/49: round half to even
    assert bin_of(1.0) == DIVERGENCE_BINS - 1
    assert bin_of(1.7) == DIVERGENCE_BINS - 1
    assert bin_of(-0.1) == 0
    with pytest.raises(ValueError, match="NaN"):
        bin_of(float("nan"))


def test_counts_add_merge_and_round_trip_through_flat_fields() -> None:
    a = DivergenceCounts.of([Divergence(0.0, 0.1, None, None, 1.0)] * 3)
    b = DivergenceCounts.of([Divergence(0.5, 0.1, 1.0, None, 0.0)])
    a.merge(b)
    assert a.total("text_distance") == 4
    assert a.total("json_invalid") == 1
    assert a.total("tool_calls_differ") == 0
    assert a.mean("finish_reason_changed") == pytest.approx(0.75)  # yes/no means are exact
    assert a.mean("tool_calls_differ") is None
    fields = a.to_fields()
    assert fields == {
        "text_distance:0": 3,
        "text_distance:24": 1,
        "length_drift:5": 4,
        "json_invalid:49": 1,
        "finish_reason_changed:49": 3,
        "finish_reason_changed:0": 1,
    }
    assert DivergenceCounts.from_fields(fields) == a
    as_redis = {k.encode(): str(v).encode() for k, v in fields.items()}
    as_redis[b"future_measure:3"] = b"9"
    as_redis[b"text_distance:999"] = b"9"
    assert DivergenceCounts.from_fields(as_redis) == a


# -- the verdict ------------------------------------------------------------------------


def simulated(rng: random.Random, n: int, shift: float = 0.0) -> DivergenceCounts:
    """Pairs whose divergences look like an LLM's: text distance mostly small with a long
    tail, a few finish-reason flips, JSON failures now and then, tools on a third."""
    counts = DivergenceCounts()
    for _ in range(n):
        text = min(1.0, rng.betavariate(2, 8) + shift)
        tools = rng.random() < 0.3
        counts.add(
            Divergence(
                text_distance=text,
                length_drift=min(1.0, abs(rng.gauss(0, 0.15)) + shift),
                json_invalid=float(rng.random() < 0.05 + shift),
                tool_calls_differ=float(rng.random() < 0.1 + shift) if tools else None,
                finish_reason_changed=float(rng.random() < 0.04 + shift),
            )
        )
    return counts


def test_same_distribution_rarely_fails() -> None:
    """Noise and candidate from one distribution, 200 times, 100 pairs each.

    Each measure's test alone (margin 0) fails with probability at most alpha = 0.01: 2
    expected in 200, and more than 7 happens with probability 0.1 % (binomial). The
    overall verdict fails when any of five measures does, so at most 5 % of the time
    (union bound; the margin barely helps at 100 pairs, where a significant shift of a
    yes/no rate is already above 5 points): 10 expected, more than 18 with probability
    0.6 %. The seed is fixed, so the test is deterministic; the bounds say it is not
    tuned to the seed."""
    rng = random.Random(20240501)
    p_only = dict.fromkeys(MEASURES, 0)
    overall = 0
    for _ in range(200):
        noise, candidate = simulated(rng, 100), simulated(rng, 100)
        strict = shadow_verdict(noise, candidate, margin=0.0)
        for m in strict.measures:
            p_only[m.measure] += m.result == "fail"
        overall += shadow_verdict(noise, candidate).result == "fail"
    assert max(p_only.values()) <= 7, p_only
    assert overall <= 18, overall


def test_a_clearly_worse_candidate_fails_on_what_got_worse() -> None:
    rng = random.Random(5)
    noise, candidate = simulated(rng, 200), simulated(rng, 200, shift=0.15)
    verdict = shadow_verdict(noise, candidate)
    assert verdict.result == "fail"
    text = verdict.measures[0]
    assert text.measure == "text_distance"
    assert text.result == "fail"
    assert text.p_value is not None
    assert text.p_value < 1e-10
    assert text.effect is not None
    assert text.effect > 0.75
    assert text.candidate_mean is not None
    assert text.noise_mean is not None
    assert text.candidate_mean - text.noise_mean == pytest.approx(0.15, abs=0.03)
    assert (text.noise_n, text.candidate_n) == (200, 200)


def test_a_better_candidate_passes() -> None:
    rng = random.Random(6)
    worse_noise = simulated(rng, 200, shift=0.15)
    assert shadow_verdict(worse_noise, simulated(rng, 200)).result == "pass"


def test_significant_but_small_shift_passes_within_the_margin() -> None:
    noise = DivergenceCounts.of([Divergence(0.0, 0.0, None, None, 0.0)] * 5000)
    candidate = DivergenceCounts.of(
        [Divergence(0.0, 0.0, None, None, 0.0)] * 4900
        + [Divergence(0.0, 0.0, None, None, 1.0)] * 100
    )
    verdict = shadow_verdict(noise, candidate)
    finish = verdict.measures[MEASURES.index("finish_reason_changed")]
    assert finish.p_value is not None
    assert finish.p_value < 1e-10
    assert finish.result == "pass"  # 2 points more flips: below the 5-point margin
    assert shadow_verdict(noise, candidate, margin=0.01).result == "fail"


def test_too_few_pairs_is_inconclusive_and_inapplicable_measures_do_not_block() -> None:
    rng = random.Random(7)
    few = shadow_verdict(simulated(rng, 29), simulated(rng, 500, shift=0.3))
    assert few.result == "inconclusive"
    assert all(m.result == "inconclusive" for m in few.measures)
    plain = [Divergence(0.1, 0.1, None, None, 0.0)] * 40
    verdict = shadow_verdict(DivergenceCounts.of(plain), DivergenceCounts.of(plain))
    assert verdict.result == "pass"
    by_name = {m.measure: m for m in verdict.measures}
    assert by_name["json_invalid"].result == "inconclusive"
    assert by_name["json_invalid"].p_value is None
    assert by_name["text_distance"].p_value == 1.0
    assert verdict.to_dict()["measures"][0] == {
        "measure": "text_distance",
        "result": "pass",
        "noise_mean": pytest.approx(5 / 49),
        "candidate_mean": pytest.approx(5 / 49),
        "noise_n": 40,
        "candidate_n": 40,
        "p_value": 1.0,
        "effect": 0.5,
    }
