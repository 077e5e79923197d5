"""Pairs of one rollout: both sinks read only the asked rollout's pairs (the limit counting
those), so `shadow report`/`export` never mix an earlier rollout of the slug into a verdict."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from proxy.config import ShadowSinkConfig
from proxy.models import Route
from proxy.prompt_key import PromptKey
from proxy.shadow import sink_redis
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.models import ArmResult, ShadowKind
from proxy.shadow.pairs import Pair, PairMeta, PairSink
from proxy.shadow.sink_files import FilePairSink
from proxy.shadow.sink_redis import RedisPairSink
from tests.redis_server import running_redis


def pair(n: int, rollout_id: str) -> Pair:
    meta = PairMeta(
        f"p{n}",
        PromptKey("support"),
        rollout_id,
        ShadowKind.CANDIDATE.value,
        f"r{n}",
        Route.CHAT.value,
        False,
    )
    return Pair.build(
        meta, ArmResult(version=1, text="a"), ArmResult(version=2, text="b"), 1000.0 + n
    )


@pytest.fixture(params=["files", "redis"])
async def sink(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[PairSink]:
    metrics = ShadowMetrics(CollectorRegistry())
    if request.param == "files":
        files = FilePairSink(ShadowSinkConfig.model_validate({"dir": str(tmp_path)}), metrics)
        yield files
        await files.close()
        return
    # Small pages, so reading back through an earlier rollout's pairs takes several.
    monkeypatch.setattr(sink_redis, "_PAGE", 4)
    with running_redis(tmp_path) as server:
        redis = RedisPairSink(server.url, "t:", ShadowSinkConfig.model_validate({}), metrics)
        yield redis
        await redis.close()


async def stored(sink: PairSink, count: int) -> None:
    for _ in range(1500):
        if len(await sink.read(PromptKey("support"), None, 10_000)) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("pairs not written")


async def test_read_keeps_one_rollouts_pairs(sink: PairSink) -> None:
    # r-old: p0..p9, then r-new: p10..p14, then r-old again (a late pair): p15.
    for n in range(16):
        sink.add(pair(n, "r-new" if 10 <= n < 15 else "r-old"))
    await stored(sink, 16)

    def ids(records: list[dict[str, object]]) -> list[object]:
        return [r["pair_id"] for r in records]

    assert ids(await sink.read(PromptKey("support"), None, 100, "r-new")) == [
        f"p{n}" for n in range(10, 15)
    ]
    assert ids(await sink.read(PromptKey("support"), None, 2, "r-new")) == [
        "p13",
        "p14",
    ]  # the last 2
    assert ids(await sink.read(PromptKey("support"), 1011.0, 3, "r-new")) == ["p11", "p12", "p13"]
    assert ids(await sink.read(PromptKey("support"), None, 3, "r-old")) == ["p8", "p9", "p15"]
    assert await sink.read(PromptKey("support"), None, 100, "r-none") == []
    assert len(await sink.read(PromptKey("support"), None, 100)) == 16  # no rollout asked: all
