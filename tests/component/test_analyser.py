"""The analyser's decisions on the real registry, with a hand-driven clock and counts, on
each backend (the pool, lease and state of the embedded, Redis and PostgreSQL backends).

Counts go straight into a ``WindowRecorder`` at chosen times; each ``tick`` is one look by
the lease holder. What an operator would see is checked: whether the rollout still runs and
at what percentage, the prod version, who changed it and why (the audit), and the verdicts
``status`` reports.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxy.analysis.analyser import Analyser
from proxy.analysis.window import WindowRecorder
from proxy.config import AnalysisConfig
from proxy.errors import NotFound
from proxy.prompt_key import PromptKey
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.registry.models import Rollout, RolloutMode, VersionDraft
from proxy.services import Services
from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.redis_server import RedisServer, redis_server_fixture
from tests.support import make_settings, proxy_clients

redis_server = redis_server_fixture("module")
postgres_server = postgres_server_fixture("module")

SLUG = PromptKey("support")
INTERVAL = 10.0


class Clock:
    def __init__(self) -> None:
        # The registry stamps rollouts with the real time: start from it.
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["embedded", "redis", "postgres"])
async def services(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Services]:
    if request.param == "embedded":
        store = {
            "registry.store": f"embedded:{tmp_path / 'registry.db'}",
            "shadow.sink": {"dir": str(tmp_path / "shadow")},
        }
    elif request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        store = {"registry.store": redis.url, "registry.redis_prefix": f"t-{uuid.uuid4().hex}:"}
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        store = {"registry.store": postgres.new_database()}
    async with proxy_clients(make_settings(**store)) as (_, _, services):
        # The harness's analyser is the only one: on the hand-driven clock.
        await services.analysis.close()
        yield services


class Harness:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.clock = Clock()
        self.recorder = WindowRecorder(self.clock)
        self.analyser = Analyser(
            config=AnalysisConfig(flush_seconds=1.0),
            snapshot=lambda: services.snapshot.current,
            registry=services.registry,
            recorder=self.recorder,
            pool=services.backend.pool,
            lease=services.backend.lease,
            state=services.backend.state,
            metrics=services.metrics,
            clock=self.clock,
        )

    async def start(
        self, policy: dict[str, Any], percent: float = 10, mode: RolloutMode = RolloutMode.CANARY
    ) -> Rollout:
        registry = self.services.registry
        for n in (1, 2):
            await registry.push(VersionDraft(key=SLUG, template=f"v{n}"), actor="test")
        await registry.promote(SLUG, 1, "test", "")
        change = await registry.set_rollout(
            SLUG,
            2,
            mode,
            percent,
            "none",
            "operator",
            "",
            AnalysisPolicy.from_dict({"interval": INTERVAL, "min_samples": 50, **policy}),
        )
        await self.refresh()
        self.clock.now = max(self.clock.now, change.rollout.updated_at)
        return change.rollout

    async def refresh(self) -> None:
        assert await self.services.refresher.load_once()

    def traffic(
        self,
        arm: str,
        requests: int,
        errors: int = 0,
        truncated: int = 0,
        tier: str | None = None,
    ) -> None:
        rollout = self.services.snapshot.current.rollouts[SLUG]
        for i in range(requests):
            self.recorder.observe_call(
                SLUG,
                rollout.id,
                arm,
                failed=i < errors,
                duration=0.2 + (i % 7) * 0.01,
                ttft=None,
                output_tokens=40 + i % 5,
                finish_reason="length" if i < truncated else "stop",
                tier=tier,
            )

    async def interval(self, candidate_arm: str = "canary", **candidate: int) -> None:
        """One interval of traffic, then the verdict that judges it."""
        self.clock.now += 1
        self.traffic("stable", 400)
        self.traffic(candidate_arm, **{"requests": 100, **candidate})
        self.clock.now += INTERVAL + 2
        await self.analyser.flush()
        await self.analyser.tick()
        await self.refresh()

    async def rollout(self) -> Rollout | None:
        try:
            return await self.services.registry.get_rollout(SLUG)
        except NotFound:
            return None

    async def verdicts(self, rollout: Rollout) -> list[dict[str, Any]]:
        status = await self.analyser.status(rollout)
        assert status is not None
        return list(status["verdicts"])

    async def last_audit(self) -> Any:
        (entry,) = await self.services.registry.audit(SLUG, limit=1)
        return entry


async def test_a_failing_candidate_is_aborted_after_the_tolerated_failures(
    services: Services,
) -> None:
    h = Harness(services)
    rollout = await h.start({"failure_limit": 1})

    await h.interval(errors=15)  # 15 % errors against none: a failed verdict, tolerated
    assert await h.rollout() is not None
    (verdict,) = await h.verdicts(rollout)
    assert verdict["verdict"] == "fail"
    assert verdict["action"] is None
    error_check = next(c for c in verdict["checks"] if c["name"] == "error_rate")
    assert (error_check["result"], error_check["candidate"]) == ("fail", 0.15)

    await h.interval(errors=15)  # the second one aborts
    assert await h.rollout() is None
    entry = await h.last_audit()
    assert entry.action == "rollout_abort"
    assert entry.actor == h.analyser.actor
    assert "error_rate: errors 15.0 % vs stable 0.0 %" in entry.reason
    assert services.snapshot.current.prod[SLUG] == 1


async def test_a_passing_candidate_is_ramped_through_the_steps_then_promoted(
    services: Services,
) -> None:
    h = Harness(services)
    await h.start({"steps": [10, 50]})

    await h.interval()
    rollout = await h.rollout()
    assert rollout is not None
    assert rollout.percent == 50
    assert (await h.last_audit()).reason == "analysis passed at 10 %"

    # Right after the ramp, the window starts at the ramp: the 10 % traffic is not reused.
    await h.interval()
    assert await h.rollout() is None
    entry = await h.last_audit()
    assert (entry.action, entry.actor) == ("promote", h.analyser.actor)
    assert services.snapshot.current.prod[SLUG] == 2


async def test_too_few_samples_hold_the_rollout(services: Services) -> None:
    h = Harness(services)
    rollout = await h.start({"steps": [10, 50], "min_samples": 500})
    await h.interval()
    await h.interval()
    current = await h.rollout()
    assert current is not None
    assert current.percent == 10
    assert [v["verdict"] for v in await h.verdicts(rollout)] == ["inconclusive"] * 2


async def test_a_truncating_candidate_fails_even_with_no_errors(services: Services) -> None:
    h = Harness(services)
    rollout = await h.start({})
    await h.interval(truncated=20)
    assert await h.rollout() is None
    assert "length_finish" in (await h.last_audit()).reason
    (verdict,) = await h.verdicts(rollout)
    assert verdict["action"] == "abort"


async def test_a_shadow_rollout_ramps_but_is_never_promoted_by_the_analyser(
    services: Services,
) -> None:
    h = Harness(services)
    await h.start(
        {"steps": [10, 50], "thresholds": {"shadow_divergence": False}}, mode=RolloutMode.SHADOW
    )
    for _ in range(3):
        await h.interval(candidate_arm="shadow")
    rollout = await h.rollout()
    assert rollout is not None  # still shadowing, at the last step: a human starts the canary
    assert rollout.percent == 50


async def test_after_an_abort_the_failed_checks_stay_readable(services: Services) -> None:
    from proxy.cli.rollout import _describe_ended
    from proxy.web import admin_models as api

    h = Harness(services)
    rollout = await h.start({})
    await h.interval(errors=30)
    assert await h.rollout() is None

    last = await h.analyser.last(SLUG)
    assert last is not None
    assert last["rollout_id"] == rollout.id
    assert last["verdicts"][0]["action"] == "abort"
    text = _describe_ended(api.LastAnalysis.model_validate(last))
    assert "ended by the analyser (abort)" in text
    assert "error_rate" in text
    assert "fail" in text


async def test_a_canary_at_100_percent_is_not_judged_on_stable_leftovers(
    services: Services,
) -> None:
    """An operator may still set a canary to 100 %: stable then serves nobody, and the few
    stable requests a window holds (from before the step) are no baseline. The analyser
    holds with an inconclusive verdict that says why, and neither passes nor promotes."""
    h = Harness(services)
    rollout = await h.start({"min_samples": 10}, percent=100)
    h.clock.now += 1
    h.traffic("stable", 12)  # in flight when the step was taken
    h.traffic("canary", 100)
    h.clock.now += INTERVAL + 2
    await h.analyser.flush()
    await h.analyser.tick()
    await h.refresh()

    current = await h.rollout()
    assert current is not None
    assert current.percent == 100
    (verdict,) = await h.verdicts(rollout)
    assert verdict["verdict"] == "inconclusive"
    assert verdict["samples"] == {"stable": 12, "canary": 100}
    (check,) = verdict["checks"]
    assert check["name"] == "stable_traffic"
    assert "stable has no traffic to compare with" in check["note"]


async def test_a_candidate_worse_for_one_tier_is_aborted_though_better_on_the_whole(
    services: Services,
) -> None:
    """Tier arms (``canary@enterprise``) go through every backend's pool like the arms."""
    from proxy.web import admin_models as api

    h = Harness(services)
    rollout = await h.start({})
    h.clock.now += 1
    # Stable cuts 20 % of every tier's answers; the candidate none of free's, but 60 % of
    # enterprise's: 36 of 260 on the whole (13.8 %), better than stable's 20 %.
    h.traffic("stable", 300, truncated=60, tier="free")
    h.traffic("stable", 100, truncated=20, tier="enterprise")
    h.traffic("canary", 200, tier="free")
    h.traffic("canary", 60, truncated=36, tier="enterprise")
    h.clock.now += INTERVAL + 2
    await h.analyser.flush()
    await h.analyser.tick()
    await h.refresh()

    assert await h.rollout() is None
    assert (await h.last_audit()).reason == (
        "analysis failed: tier enterprise: length_finish: truncated 60.0 % vs stable 20.0 % "
        "(limit +5.0 points)"
    )
    (verdict,) = await h.verdicts(rollout)
    whole = next(c for c in verdict["checks"] if c["name"] == "length_finish")
    assert (whole["result"], whole["candidate"]) == ("pass", 0.1385)
    assert verdict["samples"] == {"stable": 400, "canary": 260}
    tiers = verdict["tiers"]
    assert {t: v["verdict"] for t, v in tiers.items()} == {"enterprise": "fail", "free": "pass"}
    assert tiers["enterprise"]["samples"] == {"stable": 100, "canary": 60}
    last = await h.analyser.last(SLUG)
    assert last is not None
    model = api.LastAnalysis.model_validate(last)
    assert model.verdicts[0].tiers is not None
    assert model.verdicts[0].tiers["enterprise"].verdict == "fail"
