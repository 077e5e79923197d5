"""FilePairSink: rotated JSON-lines files, read back by slug and time, followed live."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from prometheus_client import CollectorRegistry

from proxy.config import ShadowSinkConfig
from proxy.models import Route
from proxy.prompt_key import PromptKey
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.models import ArmResult, ShadowKind
from proxy.shadow.pairs import Pair, PairMeta
from proxy.shadow.sink_files import FILE_NAME, FilePairSink

SUPPORT = PromptKey("support")


def pair(n: int, ts: float, slug: str = "support", text: str = "answer") -> Pair:
    meta = PairMeta(
        f"p{n}", PromptKey(slug), "ro", ShadowKind.CANDIDATE.value, f"r{n}", Route.CHAT.value, False
    )
    return Pair.build(
        meta, ArmResult(version=1, text=f"{text} {n}"), ArmResult(version=2, text=text), ts
    )


class Sink:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.registry = CollectorRegistry()
        self.metrics = ShadowMetrics(self.registry)
        self.dir = tmp_path / "pairs"
        self.sink = FilePairSink(
            ShadowSinkConfig.model_validate({"dir": str(self.dir), **config}), self.metrics
        )

    def count(self, outcome: str) -> float:
        return (
            self.registry.get_sample_value("promptproxy_shadow_pairs_total", {"outcome": outcome})
            or 0.0
        )

    async def settle(self, total: int) -> None:
        """Wait until the writer thread has written (or dropped) ``total`` pairs."""
        for _ in range(1000):
            if self.count("written") + self.count("sink_dropped") >= total:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the writer did not drain")


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[Sink]:
    sink = Sink(tmp_path)
    yield sink
    await sink.sink.close()


async def test_an_idle_sink_creates_nothing(tmp_path: Path) -> None:
    sink = Sink(tmp_path)
    assert await sink.sink.read(SUPPORT, None, 10) == []
    await sink.sink.close()
    assert not sink.dir.exists()


async def test_pairs_are_read_back_oldest_first_by_slug(files: Sink) -> None:
    for n in range(10):
        files.sink.add(pair(n, 1000.0 + n, slug="support" if n % 2 == 0 else "sup"))
    await files.settle(10)
    assert files.count("written") == 10
    got = await files.sink.read(SUPPORT, None, 100)
    assert [p["pair_id"] for p in got] == ["p0", "p2", "p4", "p6", "p8"]
    assert [p["pair_id"] for p in await files.sink.read(PromptKey("sup"), None, 100)] == [
        "p1",
        "p3",
        "p5",
        "p7",
        "p9",
    ]
    assert await files.sink.read(PromptKey("nobody"), None, 100) == []


async def test_since_and_limit(files: Sink) -> None:
    for n in range(10):
        files.sink.add(pair(n, 1000.0 + n))
    await files.settle(10)
    since = await files.sink.read(SUPPORT, 1004.0, 3)
    assert [p["pair_id"] for p in since] == ["p4", "p5", "p6"]  # the first 3 at or after
    last = await files.sink.read(SUPPORT, None, 3)
    assert [p["pair_id"] for p in last] == ["p7", "p8", "p9"]  # no since: the newest 3
    assert await files.sink.read(SUPPORT, 2000.0, 3) == []


async def test_rotation_keeps_max_files(tmp_path: Path) -> None:
    files = Sink(tmp_path, max_file_bytes=4096, max_files=2)
    try:
        big = "x" * 600
        for n in range(60):
            files.sink.add(pair(n, 1000.0 + n, text=big))
            if n % 10 == 9:
                await files.settle(n + 1)
        names = sorted(p.name for p in files.dir.iterdir())
        assert names == [FILE_NAME, f"{FILE_NAME}.1", f"{FILE_NAME}.2"]
        for path in files.dir.iterdir():
            assert path.stat().st_size <= 4096
            for line in path.read_bytes().splitlines():
                orjson.loads(line)  # whole lines only, never split across files
        kept = await files.sink.read(SUPPORT, None, 1000)
        numbers = [int(p["pair_id"][1:]) for p in kept]
        # The newest survive, in order; the oldest were rotated away.
        assert numbers == list(range(60 - len(numbers), 60))
        assert 0 < len(numbers) < 60
    finally:
        await files.sink.close()


async def test_close_writes_everything_queued_and_refuses_later_pairs(tmp_path: Path) -> None:
    files = Sink(tmp_path)
    for n in range(200):
        files.sink.add(pair(n, 1000.0 + n))
    await files.sink.close()
    lines = (files.dir / FILE_NAME).read_bytes().splitlines()
    assert len(lines) == 200
    files.sink.add(pair(999, 2000.0))
    assert files.count("sink_dropped") == 1


def hold_writer(sink: FilePairSink) -> threading.Event:
    """Make the writer thread wait before its first write, so the queue can fill."""
    release = threading.Event()
    original: Callable[..., Any] = sink._write

    def slow(*args: Any) -> Any:
        release.wait(10)
        return original(*args)

    sink._write = slow  # type: ignore[method-assign]
    return release


async def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    files = Sink(tmp_path, queue_size=5)
    release = hold_writer(files.sink)
    for n in range(50):
        files.sink.add(pair(n, 1000.0 + n))  # returns at once even though the disk "hangs"
    dropped = files.count("sink_dropped")
    # Kept: at most one queue's worth in the writer's hands and one in the queue.
    assert dropped >= 50 - 2 * 5
    release.set()
    await files.sink.close()
    written = files.count("written")
    assert written + dropped == 50
    assert len((files.dir / FILE_NAME).read_bytes().splitlines()) == written


async def test_a_broken_disk_drops_and_counts(tmp_path: Path) -> None:
    (tmp_path / "pairs").write_text("a file where the folder should be")
    files = Sink(tmp_path)
    files.sink.add(pair(1, 1000.0))
    await files.settle(1)
    assert files.count("sink_dropped") == 1
    assert files.count("written") == 0
    await files.sink.close()


async def test_follow_replays_since_then_streams_new_pairs(files: Sink) -> None:
    for n in range(3):
        files.sink.add(pair(n, 1000.0 + n))
    await files.settle(3)
    seen: list[str] = []

    async def watch() -> None:
        async for record in files.sink.follow(SUPPORT, 1001.0):
            seen.append(record["pair_id"])

    watcher = asyncio.create_task(watch())
    for _ in range(200):
        if seen == ["p1", "p2"]:
            break
        await asyncio.sleep(0.01)
    files.sink.add(pair(3, 1003.0))
    files.sink.add(pair(4, 1004.0, slug="other"))
    files.sink.add(pair(5, 1005.0))
    for _ in range(200):
        if len(seen) == 4:
            break
        await asyncio.sleep(0.01)
    await files.sink.close()  # ends every follower
    await asyncio.wait_for(watcher, 5)
    assert seen == ["p1", "p2", "p3", "p5"]


async def test_follow_without_since_only_gets_new_pairs(files: Sink) -> None:
    files.sink.add(pair(0, 1000.0))
    await files.settle(1)
    stream = cast(AsyncGenerator[dict[str, Any], None], files.sink.follow(SUPPORT, None))
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    assert not first.done()
    files.sink.add(pair(1, 1001.0))
    assert (await asyncio.wait_for(first, 5))["pair_id"] == "p1"
    await stream.aclose()
