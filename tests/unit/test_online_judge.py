"""Online judging's pure parts: which requests are sampled, the bounded queue that never
makes a request wait (drops counted), what a judge gets and what a score becomes, the
configuration, and the analysis's ``judge_score`` check on crafted arm statistics."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from proxy.analysis.judge import JUDGE_SCORE, Check, Judgement, judge, judge_tiers
from proxy.analysis.window import ArmStats, WindowRecorder
from proxy.config import EvalsConfig, FeedbackConfig
from proxy.evals.assertions import EvalAnswer
from proxy.evals.online import Judged, OnlineJudge
from proxy.exchange.answer import Answer
from proxy.exchange.outcome import Exchange
from proxy.metrics import ProxyMetrics
from proxy.models import Route
from proxy.pipeline.capturing import ShareSampler
from proxy.prompt_key import PromptKey
from proxy.registry.analysis_policy import AnalysisPolicy, PolicyError, Thresholds
from proxy.registry.models import RegistrySnapshot, VariableSpec, VersionDraft

KEY = PromptKey("support")
JUDGE_KEY = PromptKey("judge.quality")
RULE = {"match": "support*", "share": 1.0, "rubric": "On topic.", "judge": "judge.quality"}

# -- the sampler ---------------------------------------------------------------------------------


def test_a_slug_without_a_share_is_never_sampled_and_its_share_is_read_once() -> None:
    asked: list[str] = []
    draws: list[float] = []

    def share_of(slug: str) -> float:
        asked.append(slug)
        return {"support": 0.1}.get(slug, 0.0)

    def draw() -> float:
        draws.append(0.0)
        return 0.05 if len(draws) % 2 else 0.5

    sampler = ShareSampler(share_of, draw)
    assert [sampler.sampled("other") for _ in range(3)] == [False] * 3
    assert draws == []  # no share: no draw
    assert [sampler.sampled("support") for _ in range(4)] == [True, False, True, False]
    assert asked == ["other", "support"]


def test_the_config_shares_go_by_the_first_matching_rule() -> None:
    config = EvalsConfig(
        online=[  # type: ignore[list-item]
            {"match": "support-vip", "share": 0.5, "rubric": "r", "judge": "judge.a"},
            {"match": "support*", "share": 0.1, "rubric": "r"},
        ],
        judge="judge.default",
    )
    assert config.online_share("support-vip") == 0.5
    assert config.online_share("support-basic") == 0.1
    assert config.online_share("billing") == 0.0
    rule = config.online_rule("support-basic")
    assert rule is not None
    assert config.online_judge(rule) == "judge.default"


def test_a_rule_without_a_judge_needs_a_default_one() -> None:
    with pytest.raises(ValidationError, match="names no judge"):
        EvalsConfig(online=[{"match": "x", "share": 1, "rubric": "r"}])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        EvalsConfig(online=[{**RULE, "share": 1.5}])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        EvalsConfig(online=[{**RULE, "judge": "quality"}])  # type: ignore[list-item]


def test_feedback_may_not_be_named_like_the_judge_score() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        FeedbackConfig(names=("thumbs_up", "judge_score"))


# -- the queue -----------------------------------------------------------------------------------


def _metrics() -> ProxyMetrics:
    metrics = ProxyMetrics(CollectorRegistry(), [])
    return metrics


def _snapshot(*, judge_model: str | None = "sim-judge", prod: bool = True) -> RegistrySnapshot:
    judge_version = VersionDraft(
        key=JUDGE_KEY,
        template="Grade: {{ rubric }}",
        variables=(VariableSpec("rubric", "string"),),
        model=judge_model,
    ).to_version(1, 0.0)
    served = VersionDraft(key=KEY, template="Help.").to_version(3, 0.0)
    return RegistrySnapshot(
        revision=1,
        versions={JUDGE_KEY: {1: judge_version}, KEY: {3: served}},
        prod={KEY: 3, **({JUDGE_KEY: 1} if prod else {})},
    )


def _judge(
    queue_size: int = 8,
    snapshot: RegistrySnapshot | None = None,
    window: WindowRecorder | None = None,
) -> tuple[OnlineJudge, ProxyMetrics]:
    metrics = _metrics()
    metrics.set_registry(snapshot or _snapshot())
    config = EvalsConfig(online=[RULE], online_queue_size=queue_size)  # type: ignore[list-item]
    found = snapshot or _snapshot()
    return OnlineJudge(config, lambda: found, metrics, window), metrics


def _served(
    text: str = "Reset it.", status: int = 200, judged: bool = True, rollout: str | None = None
) -> Exchange:
    ex = Exchange("r", "POST", Route.CHAT, 0.0, key=KEY, version="3", arm="canary")
    ex.status = status
    ex.rollout_id = rollout
    if judged:
        body = {"model": "m", "messages": [{"role": "user", "content": "It reboots."}]}
        ex.judged = orjson.dumps(body)
        ex.answer = Answer(1000)
        ex.answer.add_text(text)
    return ex


def _count(metrics: ProxyMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value("promptproxy_online_judge_total", {"result": result})
    return value or 0.0


async def test_a_full_queue_drops_and_counts_and_never_waits() -> None:
    online, metrics = _judge(queue_size=2)
    for _ in range(5):
        online.finished(_served())  # returns at once: no worker runs here
    assert online.pending == 2
    assert _count(metrics, "queue_full") == 3


async def test_only_sampled_answers_served_whole_are_queued() -> None:
    online, metrics = _judge()
    online.finished(_served(judged=False))
    online.finished(_served(status=502))
    failed = _served()
    failed.error_class = "client_disconnected"
    online.finished(failed)
    assert online.pending == 0
    online.finished(_served())
    assert online.pending == 1
    assert _count(metrics, "queue_full") == 0


class FakeCaller:
    """The data plane's answer to a judge call: what a judge said."""

    def __init__(self, said: str, error: str | None = None) -> None:
        self.said, self.error = said, error
        self.calls: list[tuple[str, int, dict[str, Any]]] = []

    async def call(
        self, slug: str, version: int, body: dict[str, Any], tenant: str | None = None
    ) -> EvalAnswer:
        self.calls.append((slug, version, body))
        return EvalAnswer(200 if self.error is None else 0, self.said, "stop", (), self.error)


def _item(rollout: str | None = None, arm: str = "canary") -> Judged:
    body = orjson.dumps({"messages": [{"role": "user", "content": "It reboots."}]})
    return Judged(KEY, "3", arm, rollout, body, "Reset it.")


async def test_a_score_is_a_metric_and_under_a_rollout_a_window_outcome() -> None:
    window = WindowRecorder(lambda: 100.0)
    online, metrics = _judge(window=window)
    caller = FakeCaller('{"score": 0.8, "reason": "fine"}')

    assert await online.judge(caller, _item(rollout="r1")) == 0.8  # type: ignore[arg-type]
    assert await online.judge(caller, _item(arm="pinned")) == 0.8  # type: ignore[arg-type]

    (slug, version, body) = caller.calls[0]
    assert (slug, version) == ("judge.quality", 1)
    assert body["model"] == "sim-judge"
    assert body["prompt_variables"] == {"rubric": "On topic."}
    assert body["messages"][0]["content"] == ("Question:\nuser: It reboots.\n\nAnswer:\nReset it.")
    labels = {"slug": "support", "version": "3", "arm": "canary", "variant": ""}
    assert metrics.registry.get_sample_value("promptproxy_judge_score_sum", labels) == 0.8
    assert _count(metrics, "scored") == 2
    # Only the rollout's served answer reaches its window.
    (batch,) = window.drain().values()
    ((_, arms),) = batch.slots.items()
    assert list(arms) == ["canary"]
    assert arms["canary"].feedback[JUDGE_SCORE].mean == pytest.approx(0.8)


async def test_no_score_and_no_judge_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    online, metrics = _judge()
    assert await online.judge(FakeCaller("I think it is fine"), _item()) is None  # type: ignore[arg-type]
    assert await online.judge(FakeCaller("", error="the call failed"), _item()) is None  # type: ignore[arg-type]
    assert _count(metrics, "judge_failed") == 2

    for snapshot in (_snapshot(prod=False), _snapshot(judge_model=None)):
        unready, metrics = _judge(snapshot=snapshot)
        caller = FakeCaller('{"score": 1, "reason": "ok"}')
        caplog.clear()
        for _ in range(3):
            assert await unready.judge(caller, _item()) is None  # type: ignore[arg-type]
        assert caller.calls == []
        assert _count(metrics, "no_judge") == 3
        # Said once, not once per answer.
        assert len([r for r in caplog.records if "judge.quality" in r.getMessage()]) == 1


# -- the analysis check --------------------------------------------------------------------------


def _policy(max_drop: float | None = 0.1, min_samples: int = 50) -> AnalysisPolicy:
    return AnalysisPolicy(
        min_samples=min_samples,
        thresholds=Thresholds(
            error_rate_increase=None,
            p95_latency_ratio=None,
            p95_ttft_ratio=None,
            length_finish_increase=None,
            answer_length_drift=None,
            shadow_divergence=False,
            judge_max_drop=max_drop,
        ),
    )


def _scored(scores: list[float], requests: int = 200) -> ArmStats:
    stats = ArmStats(requests=requests)
    for score in scores:
        stats.add_feedback(JUDGE_SCORE, score)
    return stats


def _check(judgement: Judgement) -> Check:
    return next(c for c in judgement.checks if c.name == JUDGE_SCORE)


def test_a_judge_score_drop_beyond_the_limit_fails_with_the_numbers() -> None:
    stable = _scored([1.0, 0.9] * 40)  # 0.95
    worse = _scored([0.6, 0.4] * 40)  # 0.5
    judgement = judge(_policy(), stable, worse)
    check = _check(judgement)
    assert (judgement.verdict, check.result) == ("fail", "fail")
    assert check.stable == pytest.approx(0.95)
    assert check.candidate == pytest.approx(0.5)
    assert check.p_value is not None
    assert check.p_value < 0.01
    assert judgement.summary() == "judge_score: mean 0.5 vs stable 0.95 (limit -0.1)"


def test_a_judge_score_within_the_limit_or_higher_passes() -> None:
    stable = _scored([1.0, 0.8] * 40)  # 0.9
    assert judge(_policy(), stable, _scored([0.9, 0.75] * 40)).verdict == "pass"  # -0.075
    assert judge(_policy(), stable, _scored([1.0] * 80)).verdict == "pass"


def test_a_large_drop_the_test_does_not_support_passes() -> None:
    # Enough samples for the check, but too noisy: 0.6 vs 0.45 on 10 spread scores.
    stable = _scored([0.2, 1.0] * 5)
    candidate = _scored([0.0, 0.9] * 5)
    check = _check(judge(_policy(min_samples=10), stable, candidate))
    assert check.result == "pass"
    assert check.p_value is not None
    assert check.p_value > 0.01


def test_too_few_scores_hold_the_verdict_and_no_limit_means_no_check() -> None:
    stable = _scored([1.0] * 80)
    few = judge(_policy(), stable, _scored([0.0] * 20))
    assert (few.verdict, _check(few).result) == ("inconclusive", "inconclusive")
    assert "too few judge scores (80 stable, 20 candidate; 50 needed)" in _check(few).note
    assert not [c for c in judge(_policy(None), stable, stable).checks if c.name == JUDGE_SCORE]


def test_a_tier_is_not_judged_on_scores_kept_for_the_whole_only() -> None:
    arms = {
        "stable": _scored([1.0] * 80, requests=400),
        "canary": _scored([1.0] * 80, requests=400),
        "stable@gold": ArmStats(requests=200),
        "canary@gold": ArmStats(requests=200),
    }
    judgement = judge_tiers(_policy(), arms, "canary")
    assert judgement.verdict == "pass"
    assert not judgement.tiers["gold"].checks


def test_the_policy_reads_and_writes_judge_drop() -> None:
    policy = AnalysisPolicy.from_dict({"thresholds": {"judge_drop": {"max_drop": 0.05}}})
    assert policy.thresholds.judge_max_drop == 0.05
    assert policy.to_dict()["thresholds"]["judge_drop"] == {"max_drop": 0.05}
    assert AnalysisPolicy.from_dict(policy.to_dict()) == policy
    with pytest.raises(PolicyError) as bad:
        AnalysisPolicy.from_dict({"thresholds": {"judge_drop": {"max_drop": 2}}})
    assert bad.value.param == "analysis.thresholds.judge_drop.max_drop"
    with pytest.raises(PolicyError) as missing:
        AnalysisPolicy.from_dict({"thresholds": {"judge_drop": {"name": "x"}}})
    assert missing.value.param == "analysis.thresholds.judge_drop.name"
