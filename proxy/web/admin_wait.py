"""The `wait` of admin writes, and the `served` object of their answers.

Every write endpoint takes `?wait=SECONDS` (above 0, at most 60; ``admin_params.WaitQuery``):
the answer then comes once every live replica serves the change, or the wait is over, and
its `served` object says which replicas confirmed. Without it, `served` still says whether
the answering process serves the change (it loads it before answering, unless the store
failed just then).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from proxy.registry.models import AuditEntry
from proxy.services import Services
from proxy.web import admin_models as api


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float | None
    #: monotonic time just before the write: the reported confirmation time counts from it
    started: float


def start(seconds: float | None) -> Wait:
    """Call just before the write."""
    return Wait(seconds, time.monotonic())


async def served(services: Services, wait: Wait) -> api.Served:
    found = await services.registry.served(wait.seconds, wait.started)
    return api.Served.model_validate(found.to_dict())


async def written(services: Services, entry: AuditEntry, wait: Wait) -> api.AuditWritten:
    """The answer of a write that made one audit entry."""
    return api.AuditWritten.model_validate(
        {**entry.to_dict(), "served": await served(services, wait)}
    )
