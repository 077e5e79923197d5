"""``CaptureService``: the captured calls of this replica written to the store, and read
back for a replay.

Every ``capture.flush_seconds`` the recorder's list is drained: each body is decoded and
redacted by the log's rules (a key pasted into a message is masked before it is kept),
checked against ``capture.max_bytes``, and the batch is added to the store. A batch the
store refuses is dropped and counted, not retried: captures are samples, and holding them
would grow memory while the store is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from proxy.capture.recorder import CaptureRecorder, Pending
from proxy.capture.records import Capture, CaptureError, CaptureStore, encode, new_capture_id
from proxy.config import CaptureConfig
from proxy.log import APP_LOGGER, redact
from proxy.metrics import ProxyMetrics
from proxy.registry.store import StoreUnavailable
from proxy.tasks import BackgroundTasks

_log = logging.getLogger(APP_LOGGER)
#: Fields whose value is a credential whatever it looks like (a tool's `api_key` argument,
#: a header pasted as JSON).
_SECRET_KEYS = frozenset(
    {
        "authorization",
        "api_key",
        "x_api_key",
        "apikey",
        "token",
        "access_token",
        "password",
        "secret",
        "client_secret",
        "x_goog_api_key",
    }
)
#: Captures per write: a store call stays short (each capture is up to capture.max_bytes).
_BATCH = 100


class CaptureService:
    def __init__(
        self,
        config: CaptureConfig,
        recorder: CaptureRecorder,
        store: CaptureStore,
        metrics: ProxyMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self.recorder = recorder
        self._store = store
        self._results = {
            result: metrics.captures.labels(result)
            for result in ("written", "queue_full", "too_large", "store_failed")
        }
        self._dropped_counted = 0
        self._large_counted = 0
        self._clock = clock
        self._tasks = BackgroundTasks()
        self._lock = asyncio.Lock()

    @property
    def store(self) -> CaptureStore:
        return self._store

    def start(self) -> None:
        if self._config.slugs:
            self._tasks.spawn(self._loop(), name="capture-flush")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.flush_seconds)
            try:
                await self.flush()
            except Exception:  # the next flush must still run: log it, keep going
                _log.exception("writing captured calls failed")

    async def flush(self) -> int:
        """Write what the recorder holds; the number written."""
        async with self._lock:
            dropped = self.recorder.dropped - self._dropped_counted
            if dropped:
                self._results["queue_full"].inc(dropped)
                self._dropped_counted += dropped
            large = self.recorder.too_large - self._large_counted
            if large:
                self._results["too_large"].inc(large)
                self._large_counted += large
            pending = self.recorder.take()
            written = 0
            for start in range(0, len(pending), _BATCH):
                # Decoding, redacting and encoding are CPU work: off the event loop, a
                # batch at a time, so requests are served meanwhile.
                batch = await asyncio.to_thread(self._captures, pending[start : start + _BATCH])
                if not batch:
                    continue
                try:
                    await self._store.add(batch)
                except (StoreUnavailable, CaptureError) as exc:
                    self._results["store_failed"].inc(len(batch))
                    _log.warning("%d captured calls were not stored: %s", len(batch), exc)
                    continue
                self._results["written"].inc(len(batch))
                written += len(batch)
            return written

    def _captures(self, pending: list[Pending]) -> list[Capture]:
        return [c for c in map(self._capture, pending) if c is not None]

    def _capture(self, pending: Pending) -> Capture | None:
        try:
            request = orjson.loads(pending.body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(request, dict):
            return None
        answer: dict[str, Any] = {
            "status": pending.status,
            "text": redact(pending.text),
            "finish_reason": pending.finish_reason,
            "tool_calls": [
                {"name": name, "arguments": redact(arguments)}
                for name, arguments in pending.tool_calls
            ],
            "cut": pending.cut,
        }
        try:
            capture = self._record(pending, redacted(request), answer)
        except CaptureError:  # a field the store cannot keep (a slug or model too long...)
            self._results["too_large"].inc()
            return None
        if len(encode(capture)) > self._config.max_bytes:
            self._results["too_large"].inc()
            return None
        return capture

    @staticmethod
    def _record(pending: Pending, request: dict[str, Any], answer: dict[str, Any]) -> Capture:
        return Capture(
            id=new_capture_id(pending.at),
            slug=pending.slug,
            version=pending.version,
            arm=pending.arm,
            rollout_id=pending.rollout_id,
            layers=pending.layers,
            tenant=pending.tenant,
            prompt_hash=pending.prompt_hash,
            model=pending.model,
            request=request,
            answer=answer,
            at=pending.at,
        )

    async def read(
        self, slug: str, since: float, until: float | None = None, limit: int = 1000
    ) -> list[Capture]:
        await self.flush()  # this replica's latest, as a usage query does
        return list(await self._store.read(slug, since=since, until=until, limit=limit))

    async def close(self) -> None:
        await self._tasks.close()
        try:
            await self.flush()
        except Exception:  # the store may be closing: a last flush is best effort
            _log.warning("the last captured calls could not be written at shutdown")


def redacted(value: Any) -> Any:
    """``value`` with every string passed through the log's redaction. Iterative: a body's
    depth is the caller's choice."""
    root: list[Any] = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        container, key = stack.pop()
        item = container[key]
        if isinstance(item, str):
            container[key] = redact(item)
        elif isinstance(item, Mapping):
            copy = dict(item)
            container[key] = copy
            for name in copy:
                if isinstance(name, str) and name.lower().replace("-", "_") in _SECRET_KEYS:
                    copy[name] = "[REDACTED]"
                else:
                    stack.append((copy, name))
        elif isinstance(item, list):
            copied = list(item)
            container[key] = copied
            stack.extend((copied, i) for i in range(len(copied)))
    return root[0]
