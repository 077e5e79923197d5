"""The background bootstrap of a cold start: waits out an unavailable store, and gives up
(so the replica still loads its snapshot and serves) on errors that retrying cannot fix."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.errors import Conflict, ServiceUnavailable
from proxy.prompt_key import PromptKey
from proxy.registry.bootstrap import bootstrap_prompts, bootstrap_when_reachable, start_registry
from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.models import PromptVersion
from proxy.registry.service import PromptSummary, RegistryService
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from proxy.registry.store import StoreUnavailable
from proxy.tasks import BackgroundTasks


class FakeService:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.pushes = 0

    async def push(self, draft: Any, actor: str) -> tuple[PromptVersion, bool]:
        self.pushes += 1
        if self.failures:
            raise self.failures.pop(0)
        version = draft.to_version(1, 0.0)
        return version, True

    async def get_prompt(self, key: PromptKey) -> tuple[PromptSummary, list[PromptVersion]]:
        return PromptSummary(key, 1, 1, 1, 0.0), []

    async def promote(self, *args: Any) -> None:
        raise AssertionError("the fake already has a prod")


def _folder(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "greet.md").write_text("---\nauthor: t\n---\nSay hello.\n")
    return tmp_path


async def test_waits_out_an_unavailable_store(tmp_path: Path) -> None:
    service = FakeService([ServiceUnavailable("down"), ServiceUnavailable("down")])
    assert await bootstrap_when_reachable(service, _folder(tmp_path)) == 1  # type: ignore[arg-type]
    assert service.pushes == 3


async def test_gives_up_on_an_error_retrying_cannot_fix(tmp_path: Path) -> None:
    service = FakeService([Conflict("no")] * 10)
    assert await bootstrap_when_reachable(service, _folder(tmp_path)) is None  # type: ignore[arg-type]
    assert service.pushes == 3


async def _until(check: Callable[[], bool]) -> None:
    """Poll state other tasks own (there is no event to wait on) for up to 10 s."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 10 s")


class GatedStore:
    """An embedded store that is down until ``up`` is set, and holds every promote until
    ``promote_gate`` is set: the moment between a bootstrap's push and its promote."""

    def __init__(self, inner: EmbeddedStore) -> None:
        self._inner = inner
        self.up = False
        self.promote_gate = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if not self.up:
                raise StoreUnavailable("connection refused")
            if name == "promote":
                await self.promote_gate.wait()
            return await attr(*args, **kwargs)

        return call


async def test_a_deferred_bootstrap_keeps_the_replica_unready_until_it_is_done(
    tmp_path: Path,
) -> None:
    """The push already loads a snapshot here (read your writes); readiness must still wait
    for the promote, or a replica takes traffic for a prompt with no prod version (409)."""
    store = GatedStore(EmbeddedStore(tmp_path / "registry.db"))
    holder = SnapshotHolder()
    refresher = SnapshotRefresher(store, holder)  # type: ignore[arg-type]
    service = RegistryService(store, serve=refresher.serve)  # type: ignore[arg-type]
    tasks = BackgroundTasks()
    await start_registry(service, refresher, holder, tasks, _folder(tmp_path / "prompts"))
    try:
        assert not holder.ready
        store.up = True
        await _until(lambda: holder.loaded)  # pushed and served here, not yet promoted
        assert PromptKey("greet") in holder.current.versions
        assert not holder.ready
        store.promote_gate.set()
        await _until(lambda: holder.ready)
        assert holder.current.prod[PromptKey("greet")] == 1
    finally:
        await tasks.close()
        await store.close()


async def test_two_replicas_bootstrapping_one_store_at_once_both_start(tmp_path: Path) -> None:
    """Replicas (or `--workers`) started together on an empty shared store each push the
    folder and each see no prod: one promote wins, and the other's promote of the version
    that is prod by now must not fail its start (it did: a traceback, the process exited)."""
    store = EmbeddedStore(tmp_path / "registry.db")
    folder = _folder(tmp_path / "prompts")
    (folder / "farewell.md").write_text("---\nauthor: t\n---\nSay goodbye.\n")
    services = [RegistryService(store) for _ in range(2)]
    try:
        created = await asyncio.gather(*(bootstrap_prompts(s, folder) for s in services))
        assert sorted(created) == [0, 2]
        for slug in ("greet", "farewell"):
            summary, _ = await services[0].get_prompt(PromptKey(slug))
            assert summary.prod_version == 1
        promotes = [e for e in await store.audit(None) if e.action == "promote"]
        assert len(promotes) == 2  # one per prompt, by whichever replica won
    finally:
        await store.close()
