"""The rollout analyser: placeholder interface while it is being built (issue 5)."""

from __future__ import annotations

from typing import Any

from proxy.registry.models import Rollout


class Analyser:
    async def status(self, rollout: Rollout) -> dict[str, Any] | None:
        """The rollout's analysis state for the admin API; None when it has no policy."""
        return None
