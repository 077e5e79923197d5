"""The embedded backend (`embedded:PATH`): one process, no server.

The registry is a SQLite file, the fleet board a second one beside it; the analysis pool,
lease and state and the feedback request index live in this process's memory; shadow pairs
go to rotated JSON-lines files (`shadow.sink.dir`); per-tenant usage to a third SQLite
file (``registry.usage.db``), eval runs to a fourth (``registry.evals.db``), captured calls
to a fifth (``registry.captures.db``). Nothing here is shared with another process but the
files, which is why this backend is never `shared`.
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from pathlib import Path

from proxy.analysis.lease import LocalLease
from proxy.analysis.pool import MemoryStatsPool
from proxy.analysis.state import MemoryStateStore
from proxy.backends.base import Backend, BackendContext
from proxy.capture.captures_sqlite import SqliteCaptureStore, captures_path
from proxy.config import Settings
from proxy.evals.runs_sqlite import SqliteEvalRunStore, evals_path
from proxy.feedback import MemoryRequestIndex
from proxy.preflight import StartupError
from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.fleet_embedded import EmbeddedFleetBoard, board_path
from proxy.registry.store import StoreUnavailable
from proxy.shadow.sink_files import FilePairSink
from proxy.usage.usage_sqlite import SqliteUsageLedger, usage_path

PREFIX = "embedded:"


def database_path(store: str) -> Path:
    return Path(store.removeprefix(PREFIX))


async def open_backend(settings: Settings, context: BackendContext) -> Backend:
    config = settings.config
    registry = config.registry
    kind = registry.backend
    assert kind.name == "embedded", "a store of another backend"
    path = database_path(registry.store)
    async with AsyncExitStack() as stack:
        try:
            store = await EmbeddedStore.open(path)
        except StoreUnavailable as exc:
            # A folder this user cannot write (a container's root-owned WORKDIR, a volume
            # mounted without the user's group) is a setup mistake: one line, no traceback.
            raise StartupError(
                f"cannot open the registry at {path.absolute()} (registry.store, as uid "
                f"{os.getuid()}): {exc.__cause__ or exc}"
            ) from None
        stack.push_async_callback(store.close)
        board = EmbeddedFleetBoard(board_path(path), config.fleet.forget_seconds)
        stack.push_async_callback(board.close)
        pool = MemoryStatsPool()
        stack.push_async_callback(pool.close)
        index = MemoryRequestIndex(config.feedback.ttl_seconds, config.feedback.max_local_entries)
        stack.push_async_callback(index.close)
        pairs = FilePairSink(config.shadow.sink, context.pair_metrics)
        stack.push_async_callback(pairs.close)
        usage = SqliteUsageLedger(usage_path(path), keep_days=config.usage.keep_days)
        stack.push_async_callback(usage.close)
        evals = SqliteEvalRunStore(
            evals_path(path),
            keep_runs=config.evals.keep_runs,
            max_detail_bytes=config.evals.max_detail_bytes,
        )
        stack.push_async_callback(evals.close)
        captures = SqliteCaptureStore(
            captures_path(path),
            keep_per_slug=config.capture.keep_per_slug,
            keep_hours=config.capture.keep_hours,
            max_bytes=config.capture.max_bytes,
        )
        stack.push_async_callback(captures.close)
        closer = stack.pop_all()
    return Backend(
        kind=kind,
        store_url=registry.store,
        store=store,
        board=board,
        pool=pool,
        lease=LocalLease(context.replica),
        state=MemoryStateStore(),
        index=index,
        pairs=pairs,
        usage=usage,
        evals=evals,
        captures=captures,
        closer=closer.aclose,
    )
