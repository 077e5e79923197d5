"""Judges' answers read as scores, a judge's agreement with labels, and what a judge reads."""

from __future__ import annotations

import pytest

from proxy.evals.assertions import EvalAnswer, Label, Score, check, read_score
from proxy.evals.judge import judged_text
from proxy.evals.report import agreement
from proxy.evals.suite import parse_suite


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ('{"score": 0.8, "reason": "polite"}', Score(0.8, "polite")),
        ('```json\n{"score": 1, "reason": "ok"}\n```', Score(1.0, "ok")),
        ('Here you go: {"score": 0, "reason": ""} done', Score(0.0, "")),
        ('{"score": 0.5}', Score(0.5, "")),
    ],
)
def test_a_judges_score_is_read_from_its_json(text: str, score: Score) -> None:
    assert read_score(text) == score


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("I would say 0.8", "no JSON object"),
        ('{"score": 0.8, "reason": }', "not JSON"),
        ('{"score": 1.5}', "no score from 0 to 1"),
        ('{"score": true}', "no score from 0 to 1"),
        ('{"score": "0.8"}', "no score from 0 to 1"),
        ("[1, 2]", "no JSON object"),
    ],
)
def test_no_score_says_why(text: str, why: str) -> None:
    found = read_score(text)
    assert isinstance(found, str)
    assert why in found


def _answer(text: str) -> EvalAnswer:
    return EvalAnswer(200, text, "stop", (), None)


def test_a_label_passes_when_the_judge_agrees_with_it() -> None:
    good, bad = Label("pass", 0.7), Label("fail", 0.7)
    high, low = _answer('{"score": 0.9}'), _answer('{"score": 0.2}')
    assert check(good, high).passed is True
    assert check(bad, low).passed is True
    verdict = check(good, low)
    assert verdict.passed is False
    assert verdict.detail == "score 0.2 says fail, labelled pass"
    assert check(bad, _answer("no idea")).passed is False


def test_label_suites_parse_in_both_forms() -> None:
    suite = parse_suite(
        {
            "slug": "judge.polite",
            "model": "sim-judge",
            "cases": [
                {
                    "name": "rude",
                    "variables": {"rubric": "polite"},
                    "messages": [{"role": "user", "content": "Answer:\nGo away."}],
                    "assert": [{"label": "fail", "threshold": 0.6}],
                },
                {
                    "name": "kind",
                    "messages": [{"role": "user", "content": "Answer:\nGladly."}],
                    "assert": [{"type": "label", "expected": "pass"}],
                },
            ],
        }
    )
    assert [c.assertions[0] for c in suite.cases] == [Label("fail", 0.6), Label("pass", 0.5)]
    assert parse_suite(suite.to_dict()) == suite


def test_agreement_counts_chance_out() -> None:
    perfect = agreement([(True, True), (False, False)] * 5)
    assert perfect == {"n": 10, "accuracy": 1.0, "kappa": 1.0}
    # Always saying pass on half-pass labels: right half the time, no better than chance.
    constant = agreement([(True, True), (True, False)] * 5)
    assert constant["accuracy"] == 0.5
    assert constant["kappa"] == 0.0
    contrary = agreement([(False, True), (True, False)] * 5)
    assert contrary["kappa"] == -1.0
    mostly = agreement([(True, True)] * 8 + [(False, True), (False, False)])
    assert mostly["accuracy"] == 0.9
    assert 0 < mostly["kappa"] < 1


def test_the_judge_reads_the_conversation_then_the_answer() -> None:
    suite = parse_suite(
        {
            "slug": "s",
            "model": "m",
            "cases": [
                {
                    "name": "c",
                    "messages": [
                        {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                        {"role": "user", "content": "Refund?"},
                    ],
                    "assert": [{"contains": "x"}],
                }
            ],
        }
    )
    text = judged_text(suite.cases[0], "A colleague will confirm.")
    assert text == (
        "Question:\nuser: Hi\nassistant: Hello\nuser: Refund?\n\nAnswer:\nA colleague will confirm."
    )
