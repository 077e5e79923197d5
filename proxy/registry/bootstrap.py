"""Push a folder of prompt files at start (first runs, demos, GitOps-style seeding).

Pushing is idempotent (identical content returns the existing version), and a prompt that
has no prod version gets the pushed version promoted, so the first run serves the examples.
"""

from __future__ import annotations

import logging
from pathlib import Path

from proxy.log import APP_LOGGER
from proxy.registry.prompt_files import load_prompt_dir
from proxy.registry.service import RegistryService

_log = logging.getLogger(APP_LOGGER)
ACTOR = "bootstrap"


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
