"""The Redis feedback index closes even when a cancel is lost inside redis-py (Python 3.11's
``asyncio.wait_for`` drops a cancel that lands as the command completes), and a final flush
against a Redis that does not answer is bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy import feedback
from proxy.feedback import Answered, RedisRequestIndex
from proxy.prompt_key import PromptKey


class Pipeline:
    def __init__(self, execute: Any) -> None:
        self.execute = execute

    def set(self, *args: Any, **kwargs: Any) -> None:
        pass


class LosesCancels:
    """A client whose pipeline swallows a cancel the way redis-py's wait_for can."""

    def __init__(self) -> None:
        self.executes = 0

    def pipeline(self, transaction: bool) -> Pipeline:
        async def execute() -> list[Any]:
            self.executes += 1
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                return []  # the cancel is lost: the command "completed"
            return []

        return Pipeline(execute)


class Frozen:
    """A client whose pipeline never answers (a SIGSTOPped Redis without a socket timeout)."""

    def pipeline(self, transaction: bool) -> Pipeline:
        async def execute() -> list[Any]:
            await asyncio.Event().wait()
            return []

        return Pipeline(execute)


def _answered() -> Answered:
    return Answered(key=PromptKey("s"), version="1", arm="stable", rollout_id=None, at=0.0)


async def test_close_ends_a_flush_loop_that_lost_its_cancel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feedback, "_FLUSH_SECONDS", 0.0)
    client = LosesCancels()
    index = RedisRequestIndex(client, "p:", 60, on_error=lambda op: None)  # type: ignore[arg-type]
    index.start()

    async def keep_writing() -> None:
        n = 0
        while True:
            index.remember(f"r{n}", _answered())
            n += 1
            await asyncio.sleep(0.001)

    writer = asyncio.create_task(keep_writing())
    await asyncio.sleep(0.5)  # the loop flushes (and loses a cancel now and then) meanwhile
    writer.cancel()
    assert client.executes >= 2
    async with asyncio.timeout(5):
        await index.close()


async def test_the_final_flush_against_a_frozen_redis_is_bounded() -> None:
    index = RedisRequestIndex(Frozen(), "p:", 60, on_error=lambda op: None)  # type: ignore[arg-type]
    index.remember("r1", _answered())
    async with asyncio.timeout(5):
        await index.close()
