"""Pairs as rotated JSON-lines files: ``dir/pairs.jsonl``, ``pairs.jsonl.1`` ... ``.max_files``.

For a single node (embedded registry). Lines are encoded on the loop (orjson, cheap) and
written by one writer thread, fed by a bounded queue: a slow or full disk never blocks the
loop, and past ``queue_size`` waiting lines pairs are dropped and counted. The thread and
the folder are created on the first pair, so an idle proxy touches nothing.

Followers are in-process: a pair handed to the writer is also offered to every live
``follow`` (only this process writes these files).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import orjson

from proxy.config import ShadowSinkConfig
from proxy.log import APP_LOGGER
from proxy.prompt_key import PromptKey
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.pairs import FOLLOW_BACKLOG, Pair

_log = logging.getLogger(APP_LOGGER)

FILE_NAME = "pairs.jsonl"
_STOP = b""
#: A follower that falls this far behind loses pairs rather than holding memory.
FOLLOWER_QUEUE = 1000
CLOSE_TIMEOUT = 5.0
_MTIME_SLACK = 2.0


class _Follower:
    __slots__ = ("key", "queue")

    def __init__(self, key: PromptKey) -> None:
        self.key = key
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(FOLLOWER_QUEUE + 1)

    def offer(self, pair: Pair) -> None:
        if pair.key == self.key and self.queue.qsize() < FOLLOWER_QUEUE:
            self.queue.put_nowait(pair.to_dict())

    def end(self) -> None:
        self.queue.put_nowait(None)  # the extra slot keeps room for the end marker


class FilePairSink:
    def __init__(self, config: ShadowSinkConfig, metrics: ShadowMetrics) -> None:
        self.dir = Path(config.dir)
        self.path = self.dir / FILE_NAME
        self._max_bytes = config.max_file_bytes
        self._max_files = config.max_files
        self._metrics = metrics
        # Unbounded underneath so `close` can always queue its stop marker; `add` enforces
        # the bound itself.
        self._queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._limit = config.queue_size
        self._thread: threading.Thread | None = None
        self._followers: set[_Follower] = set()
        self._closed = False

    # -- writing --------------------------------------------------------------------------

    def add(self, pair: Pair) -> None:
        if self._closed or self._queue.qsize() >= self._limit:
            self._metrics.pair("sink_dropped")
            return
        self._queue.put(pair.to_json() + b"\n")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="promptproxy-shadow-pairs", daemon=True
            )
            self._thread.start()
        for follower in self._followers:
            follower.offer(pair)

    @property
    def pending(self) -> int:
        """Pairs queued and not yet written."""
        return self._queue.qsize()

    def _run(self) -> None:
        handle: IO[bytes] | None = None
        try:
            while True:
                lines = [self._queue.get()]
                while True:
                    try:
                        lines.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stopping = _STOP in lines
                batch = [line for line in lines if line]
                if batch:
                    handle = self._write(handle, batch)
                if stopping:
                    return
        finally:
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()

    def _write(self, handle: IO[bytes] | None, batch: list[bytes]) -> IO[bytes] | None:
        written = 0
        try:
            if handle is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                handle = self.path.open("ab")
            size = handle.tell()
            chunk: list[bytes] = []
            for line in batch:
                if size and size + len(line) > self._max_bytes:
                    handle.write(b"".join(chunk))
                    written += len(chunk)
                    chunk = []
                    handle.close()
                    handle = None
                    self._rotate()
                    handle = self.path.open("ab")
                    size = 0
                chunk.append(line)
                size += len(line)
            handle.write(b"".join(chunk))
            handle.flush()
            written += len(chunk)
        except OSError as exc:
            _log.warning("shadow pairs: cannot write to %s: %s", self.dir, exc)
            self._metrics.pair("sink_dropped", len(batch) - written)
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()
            handle = None  # reopen on the next batch
        if written:
            self._metrics.pair("written", written)
        return handle

    def _rotate(self) -> None:
        oldest = self._numbered(self._max_files)
        with contextlib.suppress(FileNotFoundError):
            oldest.unlink()
        for number in range(self._max_files - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._numbered(number), self._numbered(number + 1))
        os.replace(self.path, self._numbered(1))

    def _numbered(self, number: int) -> Path:
        return self.dir / f"{FILE_NAME}.{number}"

    async def close(self) -> None:
        if self._closed:
            return  # closed by the shadow runner already, now by the backend
        self._closed = True
        for follower in list(self._followers):
            follower.end()
        thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(thread.join, CLOSE_TIMEOUT)
            if thread.is_alive():
                _log.warning("shadow pairs: writer still busy after %.0fs", CLOSE_TIMEOUT)

    # -- reading --------------------------------------------------------------------------

    def _files(self) -> list[Path]:
        """Oldest first: the highest number first, the live file last."""
        numbered = []
        for path in self.dir.glob(FILE_NAME + ".*"):
            suffix = path.name[len(FILE_NAME) + 1 :]
            if suffix.isdigit():
                numbered.append((int(suffix), path))
        return [path for _, path in sorted(numbered, reverse=True)] + [self.path]

    def _read_sync(
        self, key: PromptKey, since: float | None, limit: int, rollout_id: str | None
    ) -> list[dict[str, Any]]:
        text = key.text  # what a record's "slug" holds
        needle = b'"slug":' + orjson.dumps(text) + b","
        found: deque[dict[str, Any]] = deque(maxlen=limit if since is None else None)
        for path in self._files():
            try:
                # Every line of a file was written before the file's mtime: skip old files
                # (with slack for file systems that keep coarse times).
                if since is not None and path.stat().st_mtime < since - _MTIME_SLACK:
                    continue
                with path.open("rb") as handle:
                    for line in handle:
                        if needle not in line:
                            continue
                        try:
                            record = orjson.loads(line)
                        except orjson.JSONDecodeError:  # a line being written right now
                            continue
                        if not isinstance(record, dict) or record.get("slug") != text:
                            continue
                        if rollout_id is not None and record.get("rollout_id") != rollout_id:
                            continue
                        ts = record.get("ts")
                        if since is not None and not (isinstance(ts, float | int) and ts >= since):
                            continue
                        found.append(record)
                        if since is not None and len(found) >= limit:
                            return list(found)
            except FileNotFoundError:  # rotated away while we looked
                continue
        return list(found)

    async def read(
        self, key: PromptKey, since: float | None, limit: int, rollout_id: str | None = None
    ) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        return await asyncio.to_thread(self._read_sync, key, since, limit, rollout_id)

    async def follow(self, key: PromptKey, since: float | None) -> AsyncIterator[dict[str, Any]]:
        if self._closed:
            return
        follower = _Follower(key)
        # Listen before reading the files: a pair recorded meanwhile arrives at least once.
        self._followers.add(follower)
        try:
            seen: set[str] = set()
            if since is not None:
                for record in await self.read(key, since, FOLLOW_BACKLOG):
                    seen.add(str(record.get("pair_id")))
                    yield record
            while True:
                live = await follower.queue.get()
                if live is None:
                    return
                if seen and live["pair_id"] in seen:
                    continue
                yield live
        finally:
            self._followers.discard(follower)
