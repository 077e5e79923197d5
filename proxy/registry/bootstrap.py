"""Push a folder of prompt files at start (first runs, demos, GitOps-style seeding).

Pushing is idempotent (identical content returns the existing version), and a prompt that
has no prod version gets the pushed version promoted, so the first run serves the examples.

A store that is down at start must not stop the process (every replica restarted during a
Redis blip would crash-loop): ``start_registry`` then retries the bootstrap in the
background, and the replica stays not-ready (no snapshot) until it has been done.

Nor may a bootstrap start a new registry in a store that lost the one the fleet serves: a
new process first adopts the fleet's generation (``fleet_adopt``), its pushes are then
refused as ``registry_store_replaced``, and the bootstrap waits in the background like for
a store that is down, until a restore brings the registry back (its pushes of identical
content are then no-ops).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from proxy.errors import Conflict, ServiceUnavailable
from proxy.log import APP_LOGGER
from proxy.prompt_key import PromptKey
from proxy.registry.gates import GATES_CODE
from proxy.registry.prompt_files import load_prompt_dir
from proxy.registry.service import RegistryService
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from proxy.registry.store import StoreUnavailable
from proxy.tasks import BackgroundTasks

_log = logging.getLogger(APP_LOGGER)
ACTOR = "bootstrap"
_FIRST_RETRY = 0.1
_MAX_RETRY = 2.0
_ATTEMPTS_ON_ERROR = 3
#: The refusal of a write into a store that lost the registry (``service.store_errors``).
STORE_LOST = "registry_store_replaced"
#: A promote the store refused as it stands (``service.store_errors``).
INVALID_TRANSITION = "invalid_transition"


def _waits(exc: Exception) -> bool:
    """The store cannot take the bootstrap now, but will (back up, or restored)."""
    return isinstance(exc, ServiceUnavailable | StoreUnavailable) or (
        isinstance(exc, Conflict) and exc.code == STORE_LOST
    )


async def bootstrap_prompts(service: RegistryService, folder: Path) -> int:
    """Returns how many versions were created."""
    created_count = 0
    for path, draft in load_prompt_dir(folder):
        version, created = await service.push(draft, ACTOR)
        created_count += created
        summary, _ = await service.get_prompt(version.key)
        if summary.prod_version is None:
            # A prompt this folder just created: nothing could have run an eval of it yet,
            # so its gates are overridden, and the audit says so. A prompt that was already
            # there without a prod (pushed as drafts by a CI sync) is promoted only through
            # its gates: a restart must not ship what no one promoted.
            first = created and version.version == 1
            try:
                await service.promote(
                    version.key,
                    version.version,
                    ACTOR,
                    f"bootstrap from {path}",
                    override_gates=first,
                )
            except Conflict as exc:
                if exc.code == GATES_CODE:
                    _log.warning(
                        "prompt %s v%d left unpromoted: %s", version.key, version.version, exc
                    )
                elif not await _promoted_meanwhile(service, version.key, exc):
                    raise
        _log.info(
            "prompt %s v%d from %s (%s)",
            version.key,
            version.version,
            path,
            "new" if created else "unchanged",
        )
    return created_count


async def _promoted_meanwhile(service: RegistryService, key: PromptKey, exc: Conflict) -> bool:
    """Replicas (or workers) started together on an empty shared store each push the folder
    and each find no prod; the one that promotes second is refused (the version is prod
    now). That is the bootstrap done, by another process, not a failed start."""
    if exc.code != INVALID_TRANSITION:
        return False
    summary, _ = await service.get_prompt(key)
    return summary.prod_version is not None


async def bootstrap_when_reachable(
    service: RegistryService,
    folder: Path,
    on_lost: Callable[[], Awaitable[object]] | None = None,
) -> int | None:
    """``bootstrap_prompts``, retried (with backoff) for as long as the store is unavailable
    or lost (``on_lost`` is called then: a snapshot read records the loss where /readyz
    and the metric see it). Other failures (another replica promoting the same prompt at
    the same moment) get a few more attempts, then the bootstrap is given up (None): the
    replica must still load its snapshot and serve rather than stay unready forever."""
    delay = _FIRST_RETRY
    failures = 0
    while True:
        try:
            return await bootstrap_prompts(service, folder)
        except Exception as exc:
            if _waits(exc):
                _log.warning("registry bootstrap from %s waits for the store: %s", folder, exc)
                if isinstance(exc, Conflict) and on_lost is not None:
                    await on_lost()
            else:
                failures += 1
                _log.exception("registry bootstrap from %s failed (attempt %d)", folder, failures)
                if failures >= _ATTEMPTS_ON_ERROR:
                    _log.error(
                        "registry bootstrap from %s given up; serving the store as is", folder
                    )
                    return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, _MAX_RETRY)


async def start_registry(
    service: RegistryService,
    refresher: SnapshotRefresher,
    holder: SnapshotHolder,
    tasks: BackgroundTasks,
    bootstrap_dir: Path | None,
    adopt: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Adopt the fleet's registry generation (``adopt``, see ``fleet_adopt``), bootstrap
    (if configured) and load the first snapshot now when the store answers, else leave
    them to a background task: the process starts either way, and is ready once it has a
    snapshot and the bootstrap is done (``holder.ready``)."""
    try:
        if adopt is not None:
            await adopt()
            adopt = None  # done: not again in the background
        if bootstrap_dir is not None:
            # a broken folder (not a store error) still fails the start: a config error
            await bootstrap_prompts(service, bootstrap_dir)
    except (ServiceUnavailable, StoreUnavailable, Conflict) as exc:
        if not _waits(exc):
            raise
        _log.warning("registry store unavailable or lost at start, start deferred: %s", exc)
        holder.bootstrap_pending = bootstrap_dir is not None
        tasks.spawn(_start_later(service, refresher, holder, bootstrap_dir, adopt), name="registry")
        return
    # Best effort: with the store down at a cold start, readiness stays 503 until the
    # refresher gets a first snapshot.
    await refresher.load_once()
    tasks.spawn(refresher.run(), name="registry-refresher")


async def _start_later(
    service: RegistryService,
    refresher: SnapshotRefresher,
    holder: SnapshotHolder,
    folder: Path | None,
    adopt: Callable[[], Awaitable[object]] | None,
) -> None:
    try:
        delay = _FIRST_RETRY
        while adopt is not None:
            try:
                await adopt()
                adopt = None
            except StoreUnavailable as exc:
                _log.warning("registry start waits for the store: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY)
        if folder is not None:
            await bootstrap_when_reachable(service, folder, refresher.load_once)
    finally:
        holder.bootstrap_pending = False
    await refresher.run()
