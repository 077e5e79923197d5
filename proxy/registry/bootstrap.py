"""Push a folder of prompt files at start (first runs, demos, GitOps-style seeding).

Pushing is idempotent (identical content returns the existing version), and a prompt that
has no prod version gets the pushed version promoted, so the first run serves the examples.

A store that is down at start must not stop the process (every replica restarted during a
Redis blip would crash-loop): ``start_registry`` then retries the bootstrap in the
background, and the replica stays not-ready (no snapshot) until it has been done.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from proxy.errors import ServiceUnavailable
from proxy.log import APP_LOGGER
from proxy.registry.prompt_files import load_prompt_dir
from proxy.registry.service import RegistryService
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from proxy.tasks import BackgroundTasks

_log = logging.getLogger(APP_LOGGER)
ACTOR = "bootstrap"
_FIRST_RETRY = 0.1
_MAX_RETRY = 2.0
_ATTEMPTS_ON_ERROR = 3


async def bootstrap_prompts(service: RegistryService, folder: Path) -> int:
    """Returns how many versions were created."""
    created_count = 0
    for path, draft in load_prompt_dir(folder):
        version, created = await service.push(draft, ACTOR)
        created_count += created
        summary, _ = await service.get_prompt(version.slug)
        if summary.prod_version is None:
            await service.promote(version.slug, version.version, ACTOR, f"bootstrap from {path}")
        _log.info(
            "prompt %s v%d from %s (%s)",
            version.slug,
            version.version,
            path,
            "new" if created else "unchanged",
        )
    return created_count


async def bootstrap_when_reachable(service: RegistryService, folder: Path) -> int | None:
    """``bootstrap_prompts``, retried (with backoff) for as long as the store is unavailable.
    Other failures (another replica promoting the same prompt at the same moment) get a
    few more attempts, then the bootstrap is given up (None): the replica must still load
    its snapshot and serve rather than stay unready forever."""
    delay = _FIRST_RETRY
    failures = 0
    while True:
        try:
            return await bootstrap_prompts(service, folder)
        except ServiceUnavailable as exc:
            _log.warning("registry bootstrap from %s waits for the store: %s", folder, exc)
        except Exception:
            failures += 1
            _log.exception("registry bootstrap from %s failed (attempt %d)", folder, failures)
            if failures >= _ATTEMPTS_ON_ERROR:
                _log.error("registry bootstrap from %s given up; serving the store as is", folder)
                return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, _MAX_RETRY)


async def start_registry(
    service: RegistryService,
    refresher: SnapshotRefresher,
    holder: SnapshotHolder,
    tasks: BackgroundTasks,
    bootstrap_dir: Path | None,
) -> None:
    """Bootstrap (if configured) and load the first snapshot now when the store answers,
    else leave both to a background task: the process starts either way, and is ready
    once it has a snapshot and the bootstrap is done (``holder.ready``)."""
    if bootstrap_dir is not None:
        try:  # a broken folder (not a store error) still fails the start: a config error
            await bootstrap_prompts(service, bootstrap_dir)
        except ServiceUnavailable as exc:
            _log.warning("registry store unavailable at start, bootstrap deferred: %s", exc)
            holder.bootstrap_pending = True
            tasks.spawn(
                _bootstrap_then_refresh(service, refresher, holder, bootstrap_dir),
                name="registry",
            )
            return
    # Best effort: with the store down at a cold start, readiness stays 503 until the
    # refresher gets a first snapshot.
    await refresher.load_once()
    tasks.spawn(refresher.run(), name="registry-refresher")


async def _bootstrap_then_refresh(
    service: RegistryService, refresher: SnapshotRefresher, holder: SnapshotHolder, folder: Path
) -> None:
    try:
        await bootstrap_when_reachable(service, folder)
    finally:
        holder.bootstrap_pending = False
    await refresher.run()
